//! Resumable batch jobs: `kill -9` at random moments, then `murakkab run --resume`, until the
//! job completes; every input row must be in the output exactly once, with the answers an
//! uninterrupted run gives.

// Test helpers unwrap: a panic here is a test failure with its message.
#![allow(clippy::unwrap_used)]
// The kill test reports how many kills landed where.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use murakkab::arrow::array::{Array, AsArray};
use murakkab::arrow::datatypes::Int64Type;
use murakkab::job::{JobStatus, Manifest};

const ROWS: i64 = 2000;

fn job_command(home: &Path, job: &Path, output: &Path, extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_murakkab"));
    command
        .args(["run", job.to_str().unwrap(), "--output", output.to_str().unwrap()])
        .args(extra)
        .env("MURAKKAB_HOME", home)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

fn write_job(dir: &Path) -> std::path::PathBuf {
    let job = dir.join("job.sql");
    std::fs::write(
        &job,
        format!(
            "SELECT value AS id, ai_classify('review number ' || CAST(value AS VARCHAR) || ': the battery life is great', \
             ['good', 'bad'], model => 'tiny-llama') AS label \
             FROM generate_series(0, {})",
            ROWS - 1
        ),
    )
    .unwrap();
    job
}

/// `id -> label` over the parts the manifest lists, failing on a duplicated id.
fn read_output(output: &Path) -> (Manifest, BTreeMap<i64, String>) {
    let manifest = Manifest::read(output).unwrap();
    let mut rows = BTreeMap::new();
    for part in &manifest.parts {
        let file = File::open(output.join(&part.file)).unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(file).unwrap().build().unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let ids = batch.column_by_name("id").unwrap().as_primitive::<Int64Type>();
            let labels = batch.column_by_name("label").unwrap();
            let labels =
                murakkab::arrow::compute::cast(labels, &murakkab::arrow::datatypes::DataType::Utf8)
                    .unwrap();
            let labels = labels.as_string::<i32>();
            for i in 0..batch.num_rows() {
                let label =
                    if labels.is_null(i) { "NULL".into() } else { labels.value(i).to_string() };
                let before = rows.insert(ids.value(i), label);
                assert!(before.is_none(), "id {} written twice", ids.value(i));
            }
        }
    }
    (manifest, rows)
}

fn finish(child: Child) -> Output {
    child.wait_with_output().unwrap()
}

/// SplitMix64: reproducible kill moments without a dependency.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[test]
fn twenty_kills_lose_and_duplicate_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    murakkab_exec::tiny_models::install_tiny_models(&murakkab::catalog::MurakkabHome::at(&home))
        .unwrap();
    let job = write_job(dir.path());

    // The reference: one uninterrupted run in a separate home (its own result cache).
    let reference_home = dir.path().join("reference-home");
    murakkab_exec::tiny_models::install_tiny_models(&murakkab::catalog::MurakkabHome::at(
        &reference_home,
    ))
    .unwrap();
    let reference_out = dir.path().join("reference");
    let started = Instant::now();
    let out = finish(
        job_command(&reference_home, &job, &reference_out, &["--rows-per-part", "64"])
            .spawn()
            .unwrap(),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let full_run = started.elapsed();
    let (_, reference) = read_output(&reference_out);
    assert_eq!(reference.len(), ROWS as usize);

    // Kill moments spread over a full run's duration: some before any part, some mid-write.
    let output = dir.path().join("out");
    let window_ms = (full_run.as_millis() as u64).max(200);
    let mut seed = 0x5EED_u64;
    let mut kills = 0;
    let mut mid_job_kills = 0;
    let mut runs = 0;
    while kills < 20 {
        runs += 1;
        assert!(runs < 200, "the job kept finishing before the kill; {kills} kills landed");
        let mut child = job_command(&home, &job, &output, &["--resume", "--rows-per-part", "64"])
            .spawn()
            .unwrap();
        let delay = Duration::from_millis(20 + next(&mut seed) % window_ms);
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        let out = finish(child);
        let manifest = output
            .join(murakkab::job::MANIFEST_FILE)
            .is_file()
            .then(|| Manifest::read(&output).unwrap());
        let complete = manifest.as_ref().is_some_and(|m| m.status == JobStatus::Complete);
        if !complete && manifest.is_some_and(|m| !m.parts.is_empty()) {
            mid_job_kills += 1;
        }
        if out.status.success() || complete {
            // Done before the kill: start the same job again from scratch so that every kill
            // lands on a job in progress.
            let (_, rows) = read_output(&output);
            assert_eq!(rows, reference, "a completed run differs from the uninterrupted one");
            std::fs::remove_dir_all(&output).unwrap();
            std::fs::remove_dir_all(home.join("cache")).unwrap();
        }
    }
    let out = finish(
        job_command(&home, &job, &output, &["--resume", "--rows-per-part", "64"]).spawn().unwrap(),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (manifest, rows) = read_output(&output);
    assert_eq!(manifest.status, JobStatus::Complete);
    assert_eq!(manifest.key, vec!["id".to_string()]);
    assert_eq!(manifest.total_rows, ROWS as u64);
    assert_eq!(rows.len(), ROWS as usize, "rows lost");
    assert_eq!(rows, reference, "the resumed output differs from the uninterrupted run");
    // Nothing but the listed parts and the manifest directory is left.
    let mut listed: Vec<String> = manifest.parts.iter().map(|p| p.file.clone()).collect();
    listed.push("_murakkab".into());
    listed.sort();
    let mut present: Vec<String> = std::fs::read_dir(&output)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    present.sort();
    assert_eq!(present, listed);
    println!(
        "{kills} kills over {runs} runs ({mid_job_kills} with some parts written), full run {:.2}s, final output resumed {} times",
        full_run.as_secs_f64(),
        manifest.resumes
    );
    assert!(mid_job_kills >= 5, "only {mid_job_kills} kills landed after a part was written");
}

#[test]
fn resume_refuses_a_changed_script_and_a_keyless_job() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let job = dir.path().join("job.sql");
    std::fs::write(&job, "SELECT value AS n FROM generate_series(1, 10)").unwrap();
    let output = dir.path().join("out");
    let run = |extra: &[&str]| finish(job_command(home, &job, &output, extra).spawn().unwrap());

    // A key that is not an output column is named, with the columns there are.
    let out = run(&["--key", "row_id"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        err.contains("job key column 'row_id' is not an output column") && err.contains(": n"),
        "{err}"
    );

    // Without a key the output is written, but an interrupted copy could not be resumed.
    let out = run(&["--overwrite"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut manifest = Manifest::read(&output).unwrap();
    assert!(manifest.key.is_empty());
    manifest.status = JobStatus::Running;
    std::fs::write(
        output.join(murakkab::job::MANIFEST_FILE),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    let out = run(&["--resume"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.contains("started without a key"), "{err}");

    // A key named with --key that repeats is refused while writing; a column that is merely
    // called `id` and repeats leaves the job complete but not resumable, with a note.
    std::fs::write(&job, "SELECT value % 3 AS id FROM generate_series(1, 10)").unwrap();
    let out = run(&["--overwrite", "--key", "id"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success() && err.contains("job key (id) is not unique"), "{err}");
    let out = run(&["--overwrite"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("note: job key (id) is not unique") && err.contains("could not be resumed"),
        "{err}"
    );
    let manifest = Manifest::read(&output).unwrap();
    assert_eq!((manifest.total_rows, manifest.key.len()), (10, 0));

    // Resuming with another script is refused; a complete job resumes to itself.
    std::fs::write(&job, "SELECT value AS id FROM generate_series(1, 10)").unwrap();
    assert!(run(&["--overwrite"]).status.success());
    let out = run(&["--resume"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(&job, "SELECT value AS id FROM generate_series(1, 11)").unwrap();
    let out = run(&["--resume"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.contains("started by a different job script"), "{err}");
}

#[test]
fn resume_sends_only_unfinished_rows_to_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    murakkab_exec::tiny_models::install_tiny_models(&murakkab::catalog::MurakkabHome::at(&home))
        .unwrap();
    let job = dir.path().join("job.sql");
    std::fs::write(
        &job,
        "SELECT value AS id, ai_classify('row ' || CAST(value AS VARCHAR), ['good', 'bad'], model => 'tiny-llama') AS label \
         FROM generate_series(1, 30)",
    )
    .unwrap();
    let output = dir.path().join("out");
    let run = |extra: &[&str]| {
        let mut command = job_command(&home, &job, &output, extra);
        command.args(["--rows-per-part", "10"]);
        finish(command.spawn().unwrap())
    };
    assert!(run(&[]).status.success());
    let (_, complete) = read_output(&output);

    // Pretend the job died after its first part, and forget every cached answer.
    let mut manifest = Manifest::read(&output).unwrap();
    manifest.parts.truncate(1);
    manifest.total_rows = manifest.parts[0].rows;
    manifest.status = JobStatus::Running;
    std::fs::write(
        output.join(murakkab::job::MANIFEST_FILE),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    std::fs::remove_dir_all(home.join("cache")).unwrap();

    let out = run(&["--resume"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    assert!(err.contains("resumed: 10 of 30 rows were already in complete parts"), "{err}");
    let (manifest, rows) = read_output(&output);
    assert_eq!((manifest.resumes, manifest.parts.len()), (1, 3));
    assert_eq!(rows, complete);
    // The done rows were filtered out before the model: 20 answers were computed and cached.
    let cached = walk_files(&home.join("cache"));
    assert_eq!(cached, 20, "cache entries after the resume");
}

fn walk_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| if e.path().is_dir() { walk_files(&e.path()) } else { 1 })
                .sum()
        })
        .unwrap_or(0)
}
