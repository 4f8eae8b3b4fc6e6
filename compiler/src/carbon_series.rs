//! A grid carbon-intensity time series: `timestamp,g_per_kwh` lines, so that emissions use the
//! intensity of the hour the work ran in rather than one fixed figure.
//!
//! Timestamps are RFC 3339 (`2026-11-29T10:00:00Z`) or Unix seconds; an optional header line and
//! blank lines are skipped; rows may come in any order. The value in force at time `t` is the
//! latest row at or before `t` (before the first row, the first row's).

use std::path::Path;

use datafusion::arrow::compute::kernels::cast_utils::string_to_timestamp_nanos;

/// Intensity readings sorted by time.
#[derive(Debug, Clone, PartialEq)]
pub struct CarbonSeries {
    /// (Unix seconds, grams CO2e per kWh), ascending by time.
    points: Vec<(i64, f64)>,
}

impl CarbonSeries {
    /// Reads and checks a series file; errors name the file and line.
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read carbon intensity file '{}': {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("carbon intensity file '{}': {e}", path.display()))
    }

    /// Parses series text (see the module docs).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut points = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let Some((time, value)) = line.split_once(',') else {
                return Err(format!(
                    "line {}: expected 'timestamp,g_per_kwh', got '{line}'",
                    n + 1
                ));
            };
            let (time, value) = (time.trim(), value.trim());
            let seconds = match time.parse::<i64>() {
                Ok(s) => s,
                Err(_) => match string_to_timestamp_nanos(time) {
                    Ok(nanos) => nanos.div_euclid(1_000_000_000),
                    // A header line such as `timestamp,g_per_kwh`.
                    Err(_) if n == 0 && value.parse::<f64>().is_err() => continue,
                    Err(_) => {
                        return Err(format!(
                            "line {}: '{time}' is not an RFC 3339 time or Unix seconds",
                            n + 1
                        ));
                    }
                },
            };
            let grams: f64 =
                value.parse().ok().filter(|g: &f64| g.is_finite() && *g >= 0.0).ok_or_else(
                    || format!("line {}: '{value}' is not a number of g/kWh >= 0", n + 1),
                )?;
            points.push((seconds, grams));
        }
        if points.is_empty() {
            return Err("no readings".into());
        }
        points.sort_by_key(|p| p.0);
        Ok(Self { points })
    }

    /// Grams CO2e per kWh in force at `unix_seconds`.
    pub fn at(&self, unix_seconds: i64) -> f64 {
        let after = self.points.partition_point(|p| p.0 <= unix_seconds);
        self.points[after.saturating_sub(1)].1
    }

    /// The readings, ascending by time (Unix seconds, g/kWh).
    pub fn points(&self) -> &[(i64, f64)] {
        &self.points
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_value_in_force_is_the_latest_at_or_before_the_time() {
        let s = CarbonSeries::parse(
            "timestamp,g_per_kwh\n2026-11-29T12:00:00Z,300\n2026-11-29T10:00:00Z,500\n\n2026-11-29T11:00:00+00:00,400\n",
        )
        .unwrap();
        let ten = 1_795_946_400; // 2026-11-29T10:00:00Z
        assert_eq!(s.at(ten - 1), 500.0, "before the first reading: the first");
        assert_eq!(s.at(ten), 500.0);
        assert_eq!(s.at(ten + 3599), 500.0);
        assert_eq!(s.at(ten + 3600), 400.0);
        assert_eq!(s.at(ten + 10 * 3600), 300.0, "after the last: the last");
        assert_eq!(CarbonSeries::parse("100,7").unwrap().at(0), 7.0, "Unix seconds work too");
    }

    #[test]
    fn bad_lines_are_named() {
        let err = CarbonSeries::parse("2026-11-29T10:00:00Z,500\nsoon,3").unwrap_err();
        assert!(err.contains("line 2: 'soon' is not an RFC 3339 time"), "{err}");
        let err = CarbonSeries::parse("2026-11-29T10:00:00Z,-1").unwrap_err();
        assert!(err.contains("line 1: '-1' is not a number of g/kWh >= 0"), "{err}");
        assert!(CarbonSeries::parse("timestamp,g\n").unwrap_err().contains("no readings"));
        assert!(
            CarbonSeries::parse("2026").unwrap_err().contains("expected 'timestamp,g_per_kwh'")
        );
    }
}
