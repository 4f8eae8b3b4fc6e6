//! `murakkab run JOB --output DIR`: a batch job with progress and a one-line summary.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use murakkab::job::{CarbonSchedule, JobProgress, JobSpec, ScheduleRecord, run_job};
use murakkab::{Error, Result, Session};

use crate::args::RunArgs;

/// Runs the job file and prints a summary line.
pub async fn run(session: &Session, args: &RunArgs) -> Result<()> {
    let script = std::fs::read_to_string(&args.job).map_err(|e| {
        Error::IoError(e).context(format!("reading job file '{}'", args.job.display()))
    })?;
    let mut spec = JobSpec::new(args.output.clone());
    spec.rows_per_part = usize::try_from(args.rows_per_part).unwrap_or(usize::MAX);
    spec.overwrite = args.overwrite;
    spec.resume = args.resume;
    spec.key = args.key.clone();
    if let (Some(deadline_s), Some(path)) = (args.deadline, &args.carbon_forecast) {
        let forecast = murakkab::CarbonSeries::read(path)
            .map_err(|e| Error::Plan(format!("--carbon-forecast: {e}")))?;
        spec.carbon_schedule = Some(CarbonSchedule { deadline_s, forecast });
    }
    let progress: Box<dyn JobProgress> = if std::io::stderr().is_terminal() {
        Box::new(BarProgress::new())
    } else {
        Box::new(LineProgress::new(Duration::from_secs(5)))
    };
    let job = run_job(session, &script, &spec, progress.as_ref());
    let summary = tokio::select! {
        result = job => result?,
        _ = tokio::signal::ctrl_c() => {
            return Err(Error::Execution(format!(
                "job cancelled by Ctrl-C; the complete parts are listed in '{}'; rerun with --resume to complete it",
                spec.output.join(murakkab::job::MANIFEST_FILE).display()
            )));
        }
    };
    drop(progress);
    if summary.resumed_rows > 0 {
        eprintln!(
            "resumed: {} of {} rows were already in complete parts",
            summary.resumed_rows, summary.rows
        );
    }
    let secs = summary.elapsed.as_secs_f64();
    eprintln!(
        "wrote {} rows in {} part{} to {} in {:.2}s ({:.0} rows/s), {}",
        summary.rows,
        summary.parts,
        if summary.parts == 1 { "" } else { "s" },
        summary.output.display(),
        secs,
        summary.rows as f64 / secs.max(1e-9),
        summary.energy,
    );
    Ok(())
}

/// A progress bar on a terminal: rows, rows/s and an ETA when the row count is known.
struct BarProgress {
    bar: ProgressBar,
}

impl BarProgress {
    fn new() -> Self {
        Self { bar: ProgressBar::new_spinner() }
    }
}

impl JobProgress for BarProgress {
    fn started(&self, estimated_rows: Option<u64>) {
        let template = match estimated_rows {
            Some(total) => {
                self.bar.set_length(total);
                "{spinner} [{elapsed_precise}] {bar:30} {human_pos}/{human_len} rows, {per_sec}, ETA {eta}"
            }
            None => "{spinner} [{elapsed_precise}] {human_pos} rows, {per_sec}",
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            self.bar.set_style(style);
        }
        self.bar.enable_steady_tick(Duration::from_millis(200));
    }

    fn advanced(&self, rows: u64) {
        self.bar.inc(rows);
    }

    fn scheduled(&self, schedule: &ScheduleRecord) {
        self.bar.suspend(|| print_schedule(schedule));
    }

    fn note(&self, message: &str) {
        self.bar.suspend(|| eprintln!("note: {message}"));
    }
}

/// One line on stderr saying when a carbon-aware job starts and why.
fn print_schedule(s: &ScheduleRecord) {
    let wait = s.start_unix - s.submitted_unix;
    if s.misses_deadline {
        eprintln!(
            "carbon-aware start: the estimated {:.0}s of model work does not fit before the \
             deadline; starting now",
            s.estimated_seconds
        );
    } else if wait > 0 {
        eprintln!(
            "carbon-aware start: waiting {}h{:02}m (until Unix time {}) for a forecast {:.0} g/kWh \
             over the estimated {:.0}s run, instead of {:.0} g/kWh now",
            wait / 3600,
            wait % 3600 / 60,
            s.start_unix,
            s.forecast_g_per_kwh,
            s.estimated_seconds,
            s.forecast_at_submission_g_per_kwh
        );
    } else {
        eprintln!(
            "carbon-aware start: now is the cleanest window before the deadline ({:.0} g/kWh)",
            s.forecast_g_per_kwh
        );
    }
}

impl Drop for BarProgress {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

/// Plain lines every `every` when stderr is not a terminal (logs, CI).
struct LineProgress {
    every: Duration,
    state: Mutex<LineState>,
}

struct LineState {
    started: Instant,
    last_print: Instant,
    rows: u64,
    estimated: Option<u64>,
}

impl LineProgress {
    fn new(every: Duration) -> Self {
        let now = Instant::now();
        Self {
            every,
            state: Mutex::new(LineState {
                started: now,
                last_print: now,
                rows: 0,
                estimated: None,
            }),
        }
    }
}

impl JobProgress for LineProgress {
    fn started(&self, estimated_rows: Option<u64>) {
        if let Ok(mut s) = self.state.lock() {
            s.estimated = estimated_rows;
        }
    }

    fn advanced(&self, rows: u64) {
        let Ok(mut s) = self.state.lock() else { return };
        s.rows += rows;
        if s.last_print.elapsed() < self.every {
            return;
        }
        s.last_print = Instant::now();
        let rate = s.rows as f64 / s.started.elapsed().as_secs_f64().max(1e-9);
        let of = s.estimated.map(|t| format!(" of ~{t}")).unwrap_or_default();
        eprintln!("progress: {} rows{of}, {rate:.0} rows/s", s.rows);
    }

    fn scheduled(&self, schedule: &ScheduleRecord) {
        print_schedule(schedule);
    }

    fn note(&self, message: &str) {
        eprintln!("note: {message}");
    }
}
