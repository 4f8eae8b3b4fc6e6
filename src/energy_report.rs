//! A statement's or job's model energy and emissions, as a user reads them.

use std::fmt;

use murakkab_compiler::MurakkabOptions;
use murakkab_exec::energy::{CpuPowerModel, ModelWork, grams_co2e};

pub use murakkab_exec::energy::EnergySource;

/// Energy of the model work between two readings of [`crate::Session::model_work`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EnergyReport {
    /// Joules.
    pub joules: f64,
    /// Whether the joules were read from hardware counters or modeled from CPU time.
    pub source: EnergySource,
    /// Grams CO2e at the session's grid intensity now (`murakkab.carbon_intensity_file` if set,
    /// else `murakkab.carbon_intensity_g_per_kwh`).
    pub grams_co2e: f64,
    /// Seconds the model held the device.
    pub model_seconds: f64,
}

impl EnergyReport {
    /// The report for `work` under a session's options (power model and grid intensity).
    pub fn of(work: ModelWork, options: &MurakkabOptions) -> Self {
        let (joules, source) = work.joules(&CpuPowerModel::from_options(options));
        Self {
            joules,
            source,
            grams_co2e: grams_co2e(joules, options.carbon_intensity_now()),
            model_seconds: work.wall_us as f64 / 1e6,
        }
    }
}

impl fmt::Display for EnergyReport {
    /// `12.34 J (modeled), 1.63 mgCO2e`: grams below one shown in milligrams.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.2} J ({}), ", self.joules, self.source)?;
        if self.grams_co2e < 1.0 {
            write!(f, "{:.3} mgCO2e", self.grams_co2e * 1000.0)
        } else {
            write!(f, "{:.3} gCO2e", self.grams_co2e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_converts_cpu_time_to_joules_and_grams() {
        let options = MurakkabOptions {
            cpu_watts_per_core: 4.0,
            idle_watts_per_core: 0.0,
            carbon_intensity_g_per_kwh: 360.0,
            ..MurakkabOptions::default()
        };
        let work = ModelWork { wall_us: 1_000_000, cpu_us: 2_500_000, measured_uj: 0 };
        let report = EnergyReport::of(work, &options);
        if report.source == EnergySource::Modeled {
            assert!((report.joules - 10.0).abs() < 1e-9, "{report:?}");
            // 10 J = 1/360,000 kWh, at 360 g/kWh: 0.001 g.
            assert!((report.grams_co2e - 0.001).abs() < 1e-12);
            assert_eq!(report.to_string(), "10.00 J (modeled), 1.000 mgCO2e");
        }
        assert_eq!(report.model_seconds, 1.0);
    }
}
