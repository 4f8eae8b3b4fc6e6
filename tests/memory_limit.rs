//! `--memory-limit` covers model weights and batches: a limit too small for the model fails
//! with "Resources exhausted" naming the largest consumers before the weights are loaded, and a
//! job under a sufficient limit stays near it in resident memory (peak RSS measured).

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use murakkab::catalog::{ModelStatus, MurakkabHome, find_model};

const MODEL: &str = "smollm2-135m-instruct";
const MB: u64 = 1 << 20;

/// Runs the CLI under `limit` and returns (success, stderr, peak RSS in bytes), polling the
/// child's high-water mark while it runs.
fn run_with_limit(home: &Path, limit: &str, sql: &str) -> (bool, String, u64) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_murakkab"))
        .args(["--memory-limit", limit, "--format", "csv", "-c", sql])
        .env("MURAKKAB_HOME", home)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_kb = 0u64;
    loop {
        if let Ok(status) = std::fs::read_to_string(&status_file) {
            let hwm = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
            peak_kb = peak_kb.max(hwm.unwrap_or(0));
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned(), peak_kb * 1024)
}

#[test]
fn a_memory_limit_bounds_the_model_and_fails_cleanly_below_it() {
    let models = MurakkabHome::from_env();
    if find_model(&models, MODEL).map_or(true, |c| c.status(&models) != ModelStatus::Pulled) {
        assert!(
            std::env::var("MURAKKAB_REQUIRE_REAL_MODELS").as_deref() != Ok("1"),
            "{MODEL} missing"
        );
        return;
    }
    // A fresh home (no result cache) that links the pulled models.
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        models.model_dir(MODEL).parent().unwrap(),
        dir.path().join("models"),
    )
    .unwrap();
    let sql = format!(
        "SELECT count(*) FILTER (WHERE ai_filter('review ' || v || ': great battery', 'is positive', model => '{MODEL}')) AS n \
         FROM generate_series(1, 48) AS s(v)"
    );

    let (ok, err, peak) = run_with_limit(dir.path(), "300M", &sql);
    assert!(!ok);
    assert!(err.contains("Resources exhausted"), "{err}");
    assert!(err.contains(&format!("model weights: {MODEL}")), "{err}");
    assert!(peak < 300 * MB, "peak RSS {} MB while refusing", peak / MB);

    // Weights (98 MB file + 540 MB f32 copy) and batches are accounted; the rest of the
    // process (binary, DataFusion, the GGUF read) stays under 256 MB beside them.
    let (ok, err, peak) = run_with_limit(dir.path(), "900M", &sql);
    assert!(ok, "{err}");
    assert!(peak < 900 * MB + 256 * MB, "peak RSS {} MB under a 900 MB limit", peak / MB);
}
