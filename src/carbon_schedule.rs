//! Carbon-aware start times for batch jobs: the window, before a deadline, whose forecast grid
//! intensity is lowest for the job's estimated duration.
//!
//! `murakkab run job.sql --output DIR --deadline 6h --carbon-forecast grid.csv` plans the job
//! (which samples and chooses models, so the optimizer's time estimate exists), then waits for
//! the start this module picks. The clock is a trait so tests run a schedule without waiting.

use std::sync::Arc;
use std::sync::Mutex;

use futures::future::BoxFuture;
use murakkab_compiler::CarbonSeries;

/// Seconds between candidate start times.
pub const START_STEP_S: i64 = 300;
/// Seconds between the forecast readings averaged over a window.
const AVERAGE_STEP_S: i64 = 60;

/// Time as a job sees it.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Seconds since the Unix epoch.
    fn now_unix(&self) -> i64;
    /// Returns at `unix` seconds (at once if that has passed).
    fn sleep_until(&self, unix: i64) -> BoxFuture<'_, ()>;
}

/// The system clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_unix(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64)
    }

    fn sleep_until(&self, unix: i64) -> BoxFuture<'_, ()> {
        let wait = (unix - self.now_unix()).max(0) as u64;
        Box::pin(tokio::time::sleep(std::time::Duration::from_secs(wait)))
    }
}

/// A clock that moves only when slept on, or by a fixed tick each time it is read: for tests
/// of schedules.
#[derive(Debug)]
pub struct FakeClock {
    now: Mutex<i64>,
    /// Seconds added after each reading (work "takes" this long between readings).
    tick: i64,
    /// Every time slept until, in order.
    pub slept_until: Mutex<Vec<i64>>,
}

impl FakeClock {
    /// A clock at `unix` seconds.
    pub fn at(unix: i64) -> Arc<Self> {
        Self::ticking(unix, 0)
    }

    /// A clock at `unix` seconds that moves `tick` seconds on after every reading.
    pub fn ticking(unix: i64, tick: i64) -> Arc<Self> {
        Arc::new(Self { now: Mutex::new(unix), tick, slept_until: Mutex::new(Vec::new()) })
    }
}

impl Clock for FakeClock {
    fn now_unix(&self) -> i64 {
        self.now.lock().map_or(0, |mut n| {
            let now = *n;
            *n += self.tick;
            now
        })
    }

    fn sleep_until(&self, unix: i64) -> BoxFuture<'_, ()> {
        if let Ok(mut now) = self.now.lock() {
            *now = (*now).max(unix);
        }
        if let Ok(mut slept) = self.slept_until.lock() {
            slept.push(unix);
        }
        Box::pin(async {})
    }
}

/// When a job should start and what the forecast says about it.
#[derive(Debug, Clone, PartialEq)]
pub struct StartPlan {
    /// The chosen start, Unix seconds.
    pub start: i64,
    /// Mean forecast intensity over the job's estimated run from `start`, g/kWh.
    pub mean_g_per_kwh: f64,
    /// The same if it started now.
    pub now_mean_g_per_kwh: f64,
    /// Whether the estimate does not fit before the deadline even starting now (it starts now).
    pub misses_deadline: bool,
}

/// Mean forecast intensity over `[start, start + duration_s]`.
fn mean_intensity(series: &CarbonSeries, start: i64, duration_s: f64) -> f64 {
    let end = start + duration_s.ceil() as i64;
    let mut sum = 0.0;
    let mut n = 0usize;
    let mut t = start;
    loop {
        sum += series.at(t);
        n += 1;
        t += AVERAGE_STEP_S;
        if t > end {
            break;
        }
    }
    sum / n as f64
}

/// The start in `[now, deadline - duration]` (every [`START_STEP_S`]) with the lowest mean
/// forecast intensity over the job's duration; the earliest of equals. Starts now when the
/// duration does not fit before the deadline.
pub fn best_start(series: &CarbonSeries, now: i64, deadline: i64, duration_s: f64) -> StartPlan {
    let now_mean = mean_intensity(series, now, duration_s);
    let latest = deadline - duration_s.ceil() as i64;
    let mut best = StartPlan {
        start: now,
        mean_g_per_kwh: now_mean,
        now_mean_g_per_kwh: now_mean,
        misses_deadline: latest < now,
    };
    let mut start = now + START_STEP_S;
    while start <= latest {
        let mean = mean_intensity(series, start, duration_s);
        if mean < best.mean_g_per_kwh - 1e-9 {
            best.start = start;
            best.mean_g_per_kwh = mean;
        }
        start += START_STEP_S;
    }
    best
}

/// Fewest share of the intensity a pause must save (against going on now) to be worth taking.
pub const PAUSE_MIN_SAVING: f64 = 0.1;

/// Between two parts of a running job: the later start for the rest of it (`remaining_s` of
/// estimated work) when waiting for it saves at least [`PAUSE_MIN_SAVING`] of the forecast
/// intensity of going on now and still ends before the deadline; `None` to go on.
pub fn pause_until(
    series: &CarbonSeries,
    now: i64,
    deadline: i64,
    remaining_s: f64,
) -> Option<StartPlan> {
    let plan = best_start(series, now, deadline, remaining_s);
    (plan.start > now
        && !plan.misses_deadline
        && plan.mean_g_per_kwh <= plan.now_mean_g_per_kwh * (1.0 - PAUSE_MIN_SAVING))
        .then_some(plan)
}

/// Parses `90s`, `45m`, `6h`, `2d` or a number of seconds.
pub fn parse_duration(text: &str) -> Result<i64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: i64 = number
        .parse()
        .map_err(|_| format!("expected a duration such as 90m or 6h, got '{text}'"))?;
    let scale = match unit.trim() {
        "" | "s" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => return Err(format!("unknown duration unit '{other}'; use s, m, h or d")),
    };
    Ok(number * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 300 g/kWh until 2h, 50 until 4h, 400 after.
    fn series() -> CarbonSeries {
        CarbonSeries::parse("timestamp,g_per_kwh\n0,300\n7200,50\n14400,400\n").unwrap()
    }

    #[test]
    fn the_cleanest_window_before_the_deadline_wins() {
        let plan = best_start(&series(), 0, 6 * 3600, 1800.0);
        assert_eq!(plan.start, 7200);
        assert!((plan.mean_g_per_kwh - 50.0).abs() < 1e-9);
        assert!((plan.now_mean_g_per_kwh - 300.0).abs() < 1e-9);
        assert!(!plan.misses_deadline);
    }

    #[test]
    fn a_tight_deadline_or_a_long_job_limits_the_choice() {
        // Deadline at 1h: the clean window is out of reach; now is as good as any.
        assert_eq!(best_start(&series(), 0, 3600, 600.0).start, 0);
        // A 3h job must start by 3h; starting at 1h covers the whole clean window.
        let plan = best_start(&series(), 0, 4 * 3600, 3.0 * 3600.0);
        assert_eq!(plan.start, 3600);
        // Longer than the time left: start now and say so.
        let plan = best_start(&series(), 0, 3600, 7200.0);
        assert_eq!(plan.start, 0);
        assert!(plan.misses_deadline);
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("6h"), Ok(21_600));
        assert_eq!(parse_duration("45m"), Ok(2_700));
        assert_eq!(parse_duration("90"), Ok(90));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3w").unwrap_err().contains("unknown duration unit 'w'"));
    }

    #[test]
    fn a_running_job_pauses_only_for_a_clearly_cleaner_window_it_can_still_finish_in() {
        let series = series();
        let t0 = 0;
        // One hour in, an hour of work left, six hours to go: wait for the 50 window.
        let pause = pause_until(&series, t0 + 3600, t0 + 6 * 3600, 3600.0).unwrap();
        assert_eq!(pause.start, t0 + 7200);
        // Already in the clean window: go on.
        assert!(pause_until(&series, t0 + 7300, t0 + 6 * 3600, 600.0).is_none());
        // The deadline leaves no room to wait.
        assert!(pause_until(&series, t0 + 3600, t0 + 7000, 3000.0).is_none());
    }
}
