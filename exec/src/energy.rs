//! What model work costs in energy: measured where the machine lets us, modeled otherwise.
//!
//! Model calls take turns on the device (see the scheduler), so while a call holds its turn the
//! process's CPU time is that call's work. Each turn is metered: wall time, process CPU time
//! (`/proc/self/stat`), and, where Linux exposes it readably, the RAPL package energy counters
//! under `/sys/class/powercap` (then the figure is `measured`). Without RAPL (this project's
//! machine) joules come from [`CpuPowerModel`]: CPU-seconds times the watts of a busy core, plus
//! the process's share of idle power over the wall time (then the figure is `modeled`).
//! Grams CO2e are joules times the grid's intensity.
//!
//! The meter adds to the calling thread's counters (so an operator can attribute its own work)
//! and to process-wide totals (so a shell can report a statement's work).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use murakkab_compiler::MurakkabOptions;

/// Whether a figure was read from a hardware counter or computed from the power model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnergySource {
    /// RAPL counters.
    Measured,
    /// [`CpuPowerModel`] over CPU and wall time.
    Modeled,
}

impl std::fmt::Display for EnergySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Measured => "measured",
            Self::Modeled => "modeled",
        })
    }
}

/// Watts of the CPU doing model work, for machines without readable energy counters. The
/// parameters are session options (`murakkab.energy.*`); their defaults and the reasons for
/// them are documented on [`MurakkabOptions`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuPowerModel {
    /// Watts per fully busy core (hardware thread), above idle.
    pub watts_per_busy_core: f64,
    /// Watts of idle power per core the process may use.
    pub idle_watts_per_core: f64,
    /// Cores the process may use.
    pub cores: usize,
}

impl CpuPowerModel {
    /// The model a session's options describe, over the cores this process may use.
    pub fn from_options(options: &MurakkabOptions) -> Self {
        Self {
            watts_per_busy_core: options.cpu_watts_per_core,
            idle_watts_per_core: options.idle_watts_per_core,
            cores: std::thread::available_parallelism().map_or(1, usize::from),
        }
    }

    /// Joules for `cpu_seconds` of busy cores over `wall_seconds`.
    pub fn joules(&self, cpu_seconds: f64, wall_seconds: f64) -> f64 {
        cpu_seconds * self.watts_per_busy_core
            + wall_seconds * self.idle_watts_per_core * self.cores as f64
    }
}

/// Grams CO2e of `joules` at `grams_per_kwh`.
pub fn grams_co2e(joules: f64, grams_per_kwh: f64) -> f64 {
    joules / 3.6e6 * grams_per_kwh
}

/// Model work metered so far: microseconds of wall and CPU time, and microjoules read from RAPL
/// (0 without RAPL).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModelWork {
    /// Wall time of model turns, µs.
    pub wall_us: u64,
    /// Process CPU time during model turns, µs.
    pub cpu_us: u64,
    /// RAPL energy during model turns, µJ.
    pub measured_uj: u64,
}

impl ModelWork {
    /// The work done between `earlier` and `self`.
    pub fn since(self, earlier: ModelWork) -> ModelWork {
        ModelWork {
            wall_us: self.wall_us.saturating_sub(earlier.wall_us),
            cpu_us: self.cpu_us.saturating_sub(earlier.cpu_us),
            measured_uj: self.measured_uj.saturating_sub(earlier.measured_uj),
        }
    }

    /// Joules of this work and where the figure comes from.
    pub fn joules(&self, model: &CpuPowerModel) -> (f64, EnergySource) {
        if rapl_available() {
            (self.measured_uj as f64 / 1e6, EnergySource::Measured)
        } else {
            let (cpu, wall) = (self.cpu_us as f64 / 1e6, self.wall_us as f64 / 1e6);
            (model.joules(cpu, wall), EnergySource::Modeled)
        }
    }
}

static TOTAL_WALL_US: AtomicU64 = AtomicU64::new(0);
static TOTAL_CPU_US: AtomicU64 = AtomicU64::new(0);
static TOTAL_MEASURED_UJ: AtomicU64 = AtomicU64::new(0);

/// Model work of the whole process so far.
pub fn process_totals() -> ModelWork {
    ModelWork {
        wall_us: TOTAL_WALL_US.load(Ordering::Relaxed),
        cpu_us: TOTAL_CPU_US.load(Ordering::Relaxed),
        measured_uj: TOTAL_MEASURED_UJ.load(Ordering::Relaxed),
    }
}

/// Meters one model turn from creation to drop.
#[derive(Debug)]
pub(crate) struct TurnMeter {
    started: Instant,
    cpu_s: Option<f64>,
    rapl_j: Option<f64>,
}

impl TurnMeter {
    pub(crate) fn start() -> Self {
        let rapl_j = if rapl_available() { rapl_joules() } else { None };
        Self { started: Instant::now(), cpu_s: process_cpu_seconds(), rapl_j }
    }
}

impl Drop for TurnMeter {
    fn drop(&mut self) {
        let wall_us = self.started.elapsed().as_micros() as u64;
        let cpu_us = match (self.cpu_s, process_cpu_seconds()) {
            (Some(a), Some(b)) => ((b - a).max(0.0) * 1e6) as u64,
            _ => 0,
        };
        // Without RAPL (`rapl_j` is None) the directory is not read again.
        let measured_uj = match self.rapl_j.and_then(|a| rapl_joules().map(|b| (a, b))) {
            Some((a, b)) if b >= a => ((b - a) * 1e6) as u64,
            _ => 0,
        };
        TOTAL_WALL_US.fetch_add(wall_us, Ordering::Relaxed);
        TOTAL_CPU_US.fetch_add(cpu_us, Ordering::Relaxed);
        TOTAL_MEASURED_UJ.fetch_add(measured_uj, Ordering::Relaxed);
        crate::call_stats::record(|s| {
            s.wall_us += wall_us;
            s.cpu_us += cpu_us;
            s.measured_uj += measured_uj;
        });
    }
}

/// User plus system CPU seconds of this process (`/proc/self/stat`, 10 ms resolution).
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start at field 3 (state).
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // Linux reports these in USER_HZ, 100 on every mainstream configuration.
    Some((utime + stime) / 100.0)
}

const RAPL_ROOT: &str = "/sys/class/powercap";

/// Whether RAPL package counters are readable here (checked once).
pub fn rapl_available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| rapl_joules().is_some())
}

/// Sum of the RAPL package counters in joules, if any is readable.
fn rapl_joules() -> Option<f64> {
    let mut total = None;
    for entry in std::fs::read_dir(RAPL_ROOT).ok()?.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        // Packages are `intel-rapl:N` (also on AMD); `intel-rapl:N:M` are their sub-domains.
        if !name.starts_with("intel-rapl:") || name.matches(':').count() != 1 {
            continue;
        }
        let text = std::fs::read_to_string(entry.path().join("energy_uj")).ok()?;
        let uj: f64 = text.trim().parse().ok()?;
        *total.get_or_insert(0.0) += uj / 1e6;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_power_model_charges_busy_cores_and_an_idle_share() {
        let model = CpuPowerModel { watts_per_busy_core: 4.0, idle_watts_per_core: 0.8, cores: 2 };
        // 2 busy core-seconds over 1 s of wall time: 8 J busy + 1.6 J idle share.
        assert!((model.joules(2.0, 1.0) - 9.6).abs() < 1e-9);
        assert_eq!(model.joules(0.0, 0.0), 0.0);
    }

    #[test]
    fn one_kwh_at_the_grid_intensity_is_that_many_grams() {
        assert!((grams_co2e(3.6e6, 475.0) - 475.0).abs() < 1e-9);
        assert!((grams_co2e(36.0, 400.0) - 0.004).abs() < 1e-12);
    }

    #[test]
    fn a_metered_turn_adds_its_time_to_the_thread_and_the_process() {
        let before = (crate::call_stats::current(), process_totals());
        {
            let _meter = TurnMeter::start();
            // Busy for a while so the CPU clock (10 ms ticks) moves.
            let started = Instant::now();
            let mut x = 0u64;
            while started.elapsed().as_millis() < 60 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            }
            std::hint::black_box(x);
        }
        let thread = crate::call_stats::current().since(before.0);
        let process = process_totals().since(before.1);
        assert!(thread.wall_us >= 60_000, "{thread:?}");
        assert!(process.wall_us >= thread.wall_us);
        if process_cpu_seconds().is_some() {
            assert!(thread.cpu_us > 0, "a busy turn uses CPU time: {thread:?}");
        }
    }

    #[test]
    fn cpu_time_parses_from_proc() {
        if std::path::Path::new("/proc/self/stat").exists() {
            assert!(process_cpu_seconds().is_some_and(|s| s >= 0.0));
        }
    }
}
