//! A fixed-bucket latency histogram of atomics (Prometheus `histogram`: cumulative `_bucket`
//! series with `le`, `_sum` in seconds, `_count`): recording is a few relaxed adds.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds in seconds: from a cached narinfo (sub-millisecond) to a cold NAR's first
/// byte behind a slow upstream (tens of seconds).
pub const BOUNDS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0,
];

/// One histogram (one label set).
#[derive(Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    buckets: [AtomicU64; BOUNDS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BOUNDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BOUNDS.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros().min(u64::MAX as u128) as u64, Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }

    /// `(le, cumulative count)` per bucket, `+Inf` last; then the sum in seconds and the count.
    pub fn snapshot(&self) -> (Vec<(String, u64)>, f64, u64) {
        let mut acc = 0;
        let mut out = Vec::with_capacity(BOUNDS.len() + 1);
        for (i, b) in self.buckets.iter().enumerate() {
            acc += b.load(Relaxed);
            let le = BOUNDS.get(i).map_or("+Inf".to_owned(), |v| v.to_string());
            out.push((le, acc));
        }
        (out, self.sum_micros.load(Relaxed) as f64 / 1e6, acc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_inf_counts_all() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(7));
        h.observe(Duration::from_secs(60));
        let (b, sum, n) = h.snapshot();
        assert_eq!(b[0], ("0.001".into(), 1));
        assert_eq!(b[2], ("0.01".into(), 2));
        assert_eq!(b[BOUNDS.len() - 1].1, 2);
        assert_eq!(b[BOUNDS.len()], ("+Inf".into(), 3));
        assert_eq!(n, 3);
        assert!((sum - 60.0075).abs() < 1e-6);
    }
}
