//! Carbon-aware batch jobs on a fake clock: with a deadline and a forecast, a job waits for the
//! lowest-carbon window its estimated run fits in, and says so in its manifest; without a
//! forecast it starts at once.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use murakkab::carbon_schedule::FakeClock;
use murakkab::catalog::MurakkabHome;
use murakkab::job::{CarbonSchedule, Manifest, NoProgress, run_job};
use murakkab::{CarbonSeries, Session};

const T0: i64 = 1_800_000_000;

/// A forecast of `(seconds after T0, g/kWh)` readings.
fn forecast_of(readings: &[(i64, f64)]) -> CarbonSeries {
    let lines: String = readings.iter().map(|(at, g)| format!("{},{g}\n", T0 + at)).collect();
    CarbonSeries::parse(&format!("timestamp,g_per_kwh\n{lines}")).unwrap()
}

/// 300 g/kWh for two hours, 50 for the next two, 400 after.
fn forecast() -> CarbonSeries {
    forecast_of(&[(0, 300.0), (7200, 50.0), (14_400, 400.0)])
}

const JOB: &str = "SELECT v, ai_classify('row ' || v, ['good', 'bad']) AS label \
                   FROM generate_series(1, 40) AS s(v)";

async fn setup() -> (tempfile::TempDir, Session) {
    let dir = tempfile::tempdir().unwrap();
    murakkab_exec::tiny_models::install_tiny_models(&MurakkabHome::at(dir.path())).unwrap();
    let session = Session::builder().home(dir.path()).threads(1).build().await.unwrap();
    (dir, session)
}

#[tokio::test]
async fn a_job_waits_for_the_cleanest_window_that_meets_its_deadline() {
    let (dir, session) = setup().await;
    let clock = FakeClock::at(T0);
    let mut spec = murakkab::job::JobSpec::new(dir.path().join("out"));
    spec.carbon_schedule = Some(CarbonSchedule { deadline_s: 6 * 3600, forecast: forecast() });
    spec.clock = Arc::clone(&clock) as Arc<dyn murakkab::carbon_schedule::Clock>;
    let summary = run_job(&session, JOB, &spec, &NoProgress).await.unwrap();
    assert_eq!(summary.rows, 40);
    assert_eq!(*clock.slept_until.lock().unwrap(), [T0 + 7200]);
    let schedule = Manifest::read(&spec.output).unwrap().schedule.unwrap();
    assert_eq!((schedule.submitted_unix, schedule.start_unix), (T0, T0 + 7200));
    assert_eq!(schedule.deadline_unix, T0 + 6 * 3600);
    assert_eq!(schedule.forecast_g_per_kwh, 50.0);
    assert_eq!(schedule.forecast_at_submission_g_per_kwh, 300.0);
    assert!(!schedule.misses_deadline);
}

#[tokio::test]
async fn a_deadline_before_the_clean_window_starts_at_once_and_no_forecast_means_no_schedule() {
    let (dir, session) = setup().await;
    let clock = FakeClock::at(T0);
    let mut spec = murakkab::job::JobSpec::new(dir.path().join("out"));
    spec.carbon_schedule = Some(CarbonSchedule { deadline_s: 3600, forecast: forecast() });
    spec.clock = Arc::clone(&clock) as Arc<dyn murakkab::carbon_schedule::Clock>;
    run_job(&session, JOB, &spec, &NoProgress).await.unwrap();
    assert!(clock.slept_until.lock().unwrap().is_empty(), "it did not wait");
    let schedule = Manifest::read(&spec.output).unwrap().schedule.unwrap();
    assert_eq!(schedule.start_unix, T0);

    let plain = murakkab::job::JobSpec::new(dir.path().join("plain"));
    run_job(&session, JOB, &plain, &NoProgress).await.unwrap();
    assert_eq!(Manifest::read(&plain.output).unwrap().schedule, None);
}

/// 100 g/kWh for an hour, 500 for the next two, 100 after.
fn dirty_middle() -> CarbonSeries {
    forecast_of(&[(0, 100.0), (3600, 500.0), (10_800, 100.0)])
}

#[tokio::test]
async fn a_running_job_pauses_between_parts_while_the_grid_is_dirty() {
    let (dir, session) = setup().await;
    // Each reading of the clock is 25 minutes of work: the job starts in the clean hour and
    // reaches the dirty hours after its second part.
    let clock = FakeClock::ticking(T0, 1500);
    let mut spec = murakkab::job::JobSpec::new(dir.path().join("out"));
    spec.rows_per_part = 5;
    spec.carbon_schedule = Some(CarbonSchedule { deadline_s: 6 * 3600, forecast: dirty_middle() });
    spec.clock = Arc::clone(&clock) as Arc<dyn murakkab::carbon_schedule::Clock>;
    let summary = run_job(&session, JOB, &spec, &NoProgress).await.unwrap();
    assert_eq!((summary.rows, summary.parts), (40, 8));
    assert_eq!(*clock.slept_until.lock().unwrap(), [T0 + 10_800], "one pause, until 100 again");
    let manifest = Manifest::read(&spec.output).unwrap();
    let pauses = &manifest.schedule.unwrap().pauses;
    assert_eq!(pauses.len(), 1, "{pauses:?}");
    let pause = &pauses[0];
    assert_eq!((pause.after_part, pause.from_unix, pause.until_unix), (2, T0 + 4500, T0 + 10_800));
    assert_eq!((pause.going_on_g_per_kwh, pause.after_pause_g_per_kwh), (500.0, 100.0));

    // The same job without a schedule writes the same rows and never pauses.
    let mut plain = murakkab::job::JobSpec::new(dir.path().join("plain"));
    plain.rows_per_part = 5;
    let plain_summary = run_job(&session, JOB, &plain, &NoProgress).await.unwrap();
    assert_eq!(plain_summary.rows, 40);
}
