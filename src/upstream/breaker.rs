//! A per-upstream circuit breaker: after [`FAILURE_THRESHOLD`] consecutive failures
//! (connect errors, timeouts, 5xx) the upstream is skipped for [`OPEN_FOR`], then one probe
//! request is let through; its success closes the circuit, its failure re-opens it.
//!
//! This keeps a dead upstream from costing every request a connect timeout, which is what
//! turns an outage into minutes of stalled CI jobs.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Consecutive failures that open the circuit.
pub const FAILURE_THRESHOLD: u32 = 5;
/// How long an open circuit skips the upstream before probing it again.
pub const OPEN_FOR: Duration = Duration::from_secs(10);

#[derive(Debug)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe is under way; others are still skipped.
    HalfOpen,
}

/// The breaker of one upstream.
#[derive(Debug)]
pub struct Breaker(Mutex<State>);

impl Default for Breaker {
    fn default() -> Self {
        Breaker(Mutex::new(State::Closed { failures: 0 }))
    }
}

impl Breaker {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// May a request go to this upstream now?
    pub fn allow(&self) -> bool {
        let mut s = self.state();
        match *s {
            State::Closed { .. } => true,
            State::Open { until } if Instant::now() >= until => {
                *s = State::HalfOpen;
                true
            }
            State::Open { .. } | State::HalfOpen => false,
        }
    }

    /// The upstream answered (any status below 500).
    pub fn success(&self) {
        *self.state() = State::Closed { failures: 0 };
    }

    /// The upstream failed to answer usefully.
    pub fn failure(&self) {
        let mut s = self.state();
        *s = match *s {
            State::Closed { failures } if failures + 1 < FAILURE_THRESHOLD => State::Closed {
                failures: failures + 1,
            },
            _ => State::Open {
                until: Instant::now() + OPEN_FOR,
            },
        };
    }

    /// Skips this source for `period` (a peer that sent data that failed verification).
    pub fn probation(&self, period: Duration) {
        *self.state() = State::Open {
            until: Instant::now() + period,
        };
    }

    /// The circuit's state as a word: `closed`, `open` or `half-open`.
    pub fn state_name(&self) -> &'static str {
        match *self.state() {
            State::Closed { .. } => "closed",
            State::Open { .. } => "open",
            State::HalfOpen => "half-open",
        }
    }

    /// True while requests are being skipped.
    pub fn is_open(&self) -> bool {
        !matches!(*self.state(), State::Closed { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_probes_once() {
        let b = Breaker::default();
        for _ in 0..FAILURE_THRESHOLD - 1 {
            b.failure();
            assert!(b.allow());
        }
        b.failure();
        assert!(!b.allow());
        // Pretend the open period is over.
        *b.state() = State::Open {
            until: Instant::now(),
        };
        assert!(b.allow(), "one probe");
        assert!(!b.allow(), "only one");
        b.success();
        assert!(b.allow() && !b.is_open());
    }
}
