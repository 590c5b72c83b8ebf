//! Order statistics of timing samples.

use serde::Serialize;

/// Median and spread of a set of samples (nanoseconds unless said).
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct Summary {
    /// Number of samples.
    pub n: usize,
    pub p10: f64,
    pub median: f64,
    pub p90: f64,
    pub mean: f64,
}

impl Summary {
    /// Summarizes `samples` (any order); all zero when there are none.
    pub fn of(samples: &[f64]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        Self {
            n: sorted.len(),
            p10: quantile(&sorted, 0.10),
            median: quantile(&sorted, 0.50),
            p90: quantile(&sorted, 0.90),
            mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
        }
    }
}

/// The `q` quantile of sorted, non-empty `sorted`, interpolating linearly
/// between the two nearest ranks.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate() {
        let s = Summary::of(&[5.0, 1.0, 3.0, 2.0, 4.0]);
        assert_eq!((s.n, s.median, s.mean), (5, 3.0, 3.0));
        assert!((s.p10 - 1.4).abs() < 1e-9 && (s.p90 - 4.6).abs() < 1e-9);
        assert_eq!(Summary::of(&[]).n, 0);
        assert_eq!(Summary::of(&[7.0]).p90, 7.0);
    }
}
