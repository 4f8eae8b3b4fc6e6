//! The `murakkab` binary as a user runs it: `-c`, `-f`, `run`, `models list`, bad input.

// Test helpers unwrap: a panic here is a test failure with its message.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

fn murakkab(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_murakkab"))
        .args(args)
        .env("MURAKKAB_HOME", home)
        .env_remove("RUST_LOG")
        .output()
        .expect("the murakkab binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn command_runs_several_statements_in_one_session() {
    let home = tempfile::tempdir().unwrap();
    let out = murakkab(
        home.path(),
        &[
            "-c",
            "CREATE TABLE t AS VALUES (1), (2), (3); SELECT sum(column1) AS s FROM t;",
            "--format",
            "csv",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "s\n6\n");
}

#[test]
fn formats_table_and_json() {
    let home = tempfile::tempdir().unwrap();
    let out = murakkab(home.path(), &["-c", "SELECT 1 AS a, 'x' AS b"]);
    assert!(out.status.success());
    assert!(stdout(&out).contains("| a | b |"), "{}", stdout(&out));
    let out = murakkab(home.path(), &["--format", "json", "-c", "SELECT 1 AS a, 'x' AS b"]);
    assert_eq!(stdout(&out), "[{\"a\":1,\"b\":\"x\"}]\n");
}

#[test]
fn file_runs_like_command() {
    let dir = tempfile::tempdir().unwrap();
    let sql = dir.path().join("q.sql");
    std::fs::write(
        &sql,
        "-- a comment\nCREATE TABLE t AS VALUES ('a'), ('b');\nSELECT count(*) AS n\nFROM t;\n",
    )
    .unwrap();
    let out = murakkab(dir.path(), &["-f", sql.to_str().unwrap(), "--format", "csv"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "n\n2\n");
}

#[test]
fn bad_query_exits_1_with_one_line_naming_the_table() {
    let home = tempfile::tempdir().unwrap();
    let out = murakkab(home.path(), &["-c", "SELECT * FROM no_such_table"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("Error: "), "{err}");
    assert!(err.contains("no_such_table"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn syntax_error_and_missing_file_exit_1() {
    let home = tempfile::tempdir().unwrap();
    let out = murakkab(home.path(), &["-c", "SELEC 1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("SELEC"), "{}", stderr(&out));

    let out = murakkab(home.path(), &["-f", "/nonexistent/q.sql"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("reading SQL file '/nonexistent/q.sql'"), "{}", stderr(&out));
}

#[test]
fn an_unreadable_path_in_from_gets_a_hint() {
    let home = tempfile::tempdir().unwrap();
    let out = murakkab(home.path(), &["-c", "SELECT * FROM 'nope.csv'"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("if 'nope.csv' is a file, check that it exists and ends in .parquet"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bad_option_value_names_the_key() {
    let home = tempfile::tempdir().unwrap();
    let out = murakkab(home.path(), &["-c", "SET murakkab.objective = 'fast'"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out)
            .contains("murakkab.objective: expected one of balanced, latency, energy, carbon")
    );
}

#[test]
fn run_writes_parts_and_a_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("job.sql");
    std::fs::write(
        &job,
        "CREATE TABLE nums AS SELECT value AS n FROM generate_series(1, 2500);\n\
         SELECT n, n * 2 AS twice FROM nums WHERE n % 2 = 0;\n",
    )
    .unwrap();
    let output = dir.path().join("out.parquet");
    let out = murakkab(
        dir.path(),
        &[
            "run",
            job.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
            "--rows-per-part",
            "500",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("wrote 1250 rows in 3 parts"), "{}", stderr(&out));

    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(output.join(murakkab::job::MANIFEST_FILE)).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["status"], "complete");
    assert_eq!(manifest["total_rows"], 1250);
    let parts: Vec<u64> =
        manifest["parts"].as_array().unwrap().iter().map(|p| p["rows"].as_u64().unwrap()).collect();
    assert_eq!(parts, vec![500, 500, 250]);

    // The output directory is itself a table.
    let check = format!("SELECT count(*) AS c, sum(twice) AS s FROM '{}/'", output.display());
    let out = murakkab(dir.path(), &["--format", "csv", "-c", &check]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "c,s\n1250,3127500\n");

    // A second run refuses to clobber the output unless asked.
    let again =
        murakkab(dir.path(), &["run", job.to_str().unwrap(), "--output", output.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("already exists; pass --resume to complete it or --overwrite"),
        "{}",
        stderr(&again)
    );
    let again = murakkab(
        dir.path(),
        &["run", job.to_str().unwrap(), "--output", output.to_str().unwrap(), "--overwrite"],
    );
    assert!(again.status.success(), "{}", stderr(&again));
}

#[test]
fn run_rejects_a_job_that_ends_without_a_query() {
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("job.sql");
    std::fs::write(&job, "CREATE TABLE t AS VALUES (1);").unwrap();
    let output = dir.path().join("out");
    let out =
        murakkab(dir.path(), &["run", job.to_str().unwrap(), "--output", output.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("last statement of a job must be a query"), "{}", stderr(&out));
    assert!(!output.exists(), "nothing is written for a rejected job");
}

#[test]
fn models_list_shows_the_catalog() {
    let home = tempfile::tempdir().unwrap();
    let out = murakkab(home.path(), &["models", "list", "--format", "csv"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("id,tasks,parameters,quantization,size,pulled\n"), "{text}");
    assert!(text.contains("all-minilm-l6-v2,embed,22M,F32,91 MB,no"), "{text}");
    assert!(text.contains("smollm2-135m-instruct"), "{text}");
}

#[test]
fn ai_warnings_are_printed_after_the_result() {
    let dir = tempfile::tempdir().unwrap();
    murakkab_exec::tiny_models::install_tiny_models(&murakkab::catalog::MurakkabHome::at(
        dir.path(),
    ))
    .unwrap();
    let out = murakkab(
        dir.path(),
        &[
            "-c",
            "SELECT ai_filter(repeat('the cat sat on the mat. ', 400), 'mentions a cat', model => 'tiny-llama') IS NOT NULL AS answered",
            "--format",
            "csv",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "answered\ntrue\n");
    assert_eq!(
        stderr(&out),
        "warning: ai_filter: 1 row: prompt longer than the model's context, cut in the middle\n"
    );
}

/// The shell's `\timing` line, `EXPLAIN ANALYZE` and `murakkab run` report the model work's
/// joules (modeled on machines without RAPL) and CO2e.
#[test]
fn energy_and_co2e_are_reported_by_timing_explain_analyze_and_jobs() {
    let dir = tempfile::tempdir().unwrap();
    murakkab_exec::tiny_models::install_tiny_models(&murakkab::catalog::MurakkabHome::at(
        dir.path(),
    ))
    .unwrap();
    let query = "SELECT ai_complete('say something about ' || v, model => 'tiny-llama', max_tokens => 8) AS a \
                 FROM generate_series(1, 24) AS s(v)";
    let mut shell = Command::new(env!("CARGO_BIN_EXE_murakkab"))
        .env("MURAKKAB_HOME", dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = shell.stdin.take().unwrap();
        writeln!(stdin, "SET murakkab.carbon_intensity_g_per_kwh = 1000;").unwrap();
        writeln!(stdin, "\\timing on").unwrap();
        writeln!(stdin, "{query};").unwrap();
        // Other prompts than the query's, which are in the result cache by then.
        writeln!(stdin, "EXPLAIN ANALYZE {};", query.replace("say", "tell")).unwrap();
    }
    let out = shell.wait_with_output().unwrap();
    let text = stdout(&out);
    let timing = text.lines().find(|l| l.starts_with("24 rows in ")).unwrap_or_else(|| {
        panic!("no timing line for the query: {text}\n{}", stderr(&out));
    });
    // `24 rows in 0.123s, 1.23 J (modeled), 0.342 mgCO2e`
    let joules: f64 =
        timing.split(", ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(joules > 0.0, "{timing}");
    assert!(timing.contains(" J (modeled), ") || timing.contains(" J (measured), "), "{timing}");
    assert!(timing.ends_with("gCO2e"), "{timing}");
    let analyze = text.lines().find(|l| l.contains("AiMapExec")).unwrap_or_default();
    for part in ["energy=", "co2e=", "energy_mj=", "cpu_ms=", "models=[tiny-llama]"] {
        assert!(analyze.contains(part), "{part} missing: {analyze}");
    }
    // The operator's wall time with any partition evaluating: no more than the partitions'
    // summed model time.
    let seconds = |name: &str| -> f64 {
        let at = analyze.find(name).unwrap_or_else(|| panic!("{name} missing: {analyze}"));
        let value = &analyze[at + name.len()..];
        let end = value.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap();
        let unit = &value[end..];
        let scale = if unit.starts_with("ms") {
            1e-3
        } else if unit.starts_with("µs") {
            1e-6
        } else if unit.starts_with("ns") {
            1e-9
        } else {
            1.0
        };
        value[..end].parse::<f64>().unwrap() * scale
    };
    let wall = seconds("model_wall=");
    assert!(wall > 0.0 && wall <= seconds("elapsed_compute=") + 0.01, "{analyze}");

    let job = dir.path().join("job.sql");
    std::fs::write(&job, format!("{};\n", query.replace("say", "write"))).unwrap();
    let output = dir.path().join("out");
    let out =
        murakkab(dir.path(), &["run", job.to_str().unwrap(), "--output", output.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains(" J ("), "{}", stderr(&out));
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(output.join(murakkab::job::MANIFEST_FILE)).unwrap(),
    )
    .unwrap();
    assert!(manifest["energy_j"].as_f64().unwrap() > 0.0, "{manifest}");
    assert!(["modeled", "measured"].contains(&manifest["energy_source"].as_str().unwrap()));
    assert!(manifest["co2e_g"].as_f64().unwrap() > 0.0, "{manifest}");
}

#[test]
fn calibrate_measures_every_pulled_model_and_stores_the_profile() {
    let empty = tempfile::tempdir().unwrap();
    let out = murakkab(empty.path(), &["calibrate"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("calibrate: no model is pulled"), "{}", stderr(&out));

    let dir = tempfile::tempdir().unwrap();
    let home = murakkab::catalog::MurakkabHome::at(dir.path());
    murakkab_exec::tiny_models::install_tiny_models(&home).unwrap();
    let out = murakkab(dir.path(), &["calibrate"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("tiny-llama: prefill "), "{}", stdout(&out));
    assert!(stdout(&out).contains(" embeddings/s"), "{}", stdout(&out));
    let profile = murakkab::catalog::DeviceProfile::load(&home);
    let speed = profile.models.get("tiny-llama").expect("tiny-llama measured");
    assert!(speed.measured && speed.prefill_tokens_per_s > 0.0 && speed.decode_tokens_per_s > 0.0);
    assert!(stdout(&out).contains(" tokens/s (scored whole)"), "{}", stdout(&out));
    assert!(
        speed.statement_tokens_per_s > 0.0
            && speed.statement_tokens_per_s <= speed.prefill_tokens_per_s,
        "{speed:?}"
    );
}

#[test]
fn run_with_a_forecast_says_when_it_starts_and_checks_its_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("job.sql");
    std::fs::write(&job, "SELECT value AS n FROM generate_series(1, 10);\n").unwrap();
    let forecast = dir.path().join("grid.csv");
    std::fs::write(&forecast, "timestamp,g_per_kwh\n0,200\n").unwrap();
    let output = dir.path().join("out");
    let args = |extra: &[&str]| {
        let mut a = vec!["run", job.to_str().unwrap(), "--output", output.to_str().unwrap()];
        a.extend_from_slice(extra);
        murakkab(dir.path(), &a)
    };
    let out = args(&["--deadline", "2h", "--carbon-forecast", forecast.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(
            "carbon-aware start: now is the cleanest window before the deadline (200 g/kWh)"
        ),
        "{}",
        stderr(&out)
    );
    let out = args(&["--overwrite", "--carbon-forecast", forecast.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--deadline"), "{}", stderr(&out));
    let out = args(&["--overwrite", "--deadline", "soon"]);
    assert!(
        stderr(&out).contains("expected a duration such as 90m or 6h, got 'soon'"),
        "{}",
        stderr(&out)
    );
    let missing = dir.path().join("none.csv");
    let out =
        args(&["--overwrite", "--deadline", "1h", "--carbon-forecast", missing.to_str().unwrap()]);
    assert!(
        stderr(&out).contains("--carbon-forecast: cannot read carbon intensity file"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn ctrl_c_cancels_a_long_ai_query_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    murakkab_exec::tiny_models::install_tiny_models(&murakkab::catalog::MurakkabHome::at(
        dir.path(),
    ))
    .unwrap();
    // About a minute of generation with the tiny model.
    let query = "SELECT count(ai_complete('say something about ' || v, model => 'tiny-llama', max_tokens => 64)) \
                 FROM generate_series(1, 20000) AS s(v)";
    let mut child = Command::new(env!("CARGO_BIN_EXE_murakkab"))
        .args(["-c", query])
        .env("MURAKKAB_HOME", dir.path())
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Let the model load and the work queue up.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(child.try_wait().unwrap().is_none(), "the query finished before Ctrl-C");
    let sent = std::time::Instant::now();
    let kill = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    let took = sent.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("query cancelled by Ctrl-C"), "{}", stderr(&out));
    assert!(took < std::time::Duration::from_secs(1), "exited {took:?} after Ctrl-C");
}
