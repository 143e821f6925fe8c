//! The arithmetic of the reports: the median run and value, percentiles of sorted µs, µs since an
//! instant, and the machine's load average printed beside the figures.

use crate::loadgen::Report;
use std::time::Instant;

/// The run of median req/s.
pub(crate) fn median(mut runs: Vec<Report>) -> Report {
    runs.sort_by(|a, b| a.rps().total_cmp(&b.rps()));
    runs.swap_remove(runs.len() / 2)
}

/// The median of `values` (the upper one of an even count); `None` when there are none.
pub(crate) fn median_of(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let mut sorted: Vec<f64> = values.into_iter().collect();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied()
}

/// The machine a run measures on: its cores, and its load average when the run began.
pub(crate) struct Machine {
    cores: usize,
    load_before: String,
}

impl Machine {
    /// The machine now, before the run.
    pub(crate) fn observe() -> Machine {
        Machine {
            cores: cores(),
            load_before: load_average(),
        }
    }

    /// `machine: 2 cores; load average … before, … after (1, 5, 15 min)`, "after" read now.
    pub(crate) fn line(&self) -> String {
        format!(
            "machine: {} cores; load average {} before, {} after (1, 5, 15 min)",
            self.cores,
            self.load_before,
            load_average()
        )
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

pub(crate) fn micros_since(start: Instant) -> u32 {
    u32::try_from(start.elapsed().as_micros()).unwrap_or(u32::MAX)
}

pub(crate) fn percentile_ms(sorted_us: &[u32], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted_us.len() - 1) as f64 * q).round() as usize;
    f64::from(sorted_us[index]) / 1000.0
}

/// The cores this process may run on (1 when unknown).
pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_value_is_the_middle_one_or_the_upper_of_two() {
        assert_eq!(median_of([3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median_of([4.0, 1.0, 3.0, 2.0]), Some(3.0));
        assert_eq!(median_of([]), None);
    }
}
