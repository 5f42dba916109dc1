//! A per-upstream circuit breaker: after [`FAILURE_THRESHOLD`] consecutive failures
//! (connect errors, timeouts, 5xx) the upstream is skipped for [`OPEN_FOR`], then one probe
//! request is let through; its success closes the circuit, its failure re-opens it.
//!
//! This keeps a dead upstream from costing every request a connect timeout, which is what
//! turns an outage into minutes of stalled CI jobs. An open circuit of a configured upstream
//! is also probed in the background (`heal.rs`), so it closes when the upstream is back even
//! without traffic. Opening and closing are logged once each, with the remote's label.

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
pub struct Breaker {
    state: Mutex<State>,
    /// Who this is the breaker of, for the log lines (a redacted URL).
    label: String,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker::labelled(String::new())
    }
}

impl Breaker {
    /// A closed breaker whose transitions are logged as `label`'s.
    pub fn labelled(label: String) -> Self {
        Breaker {
            state: Mutex::new(State::Closed { failures: 0 }),
            label,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the circuit is open and its skip period over: the next request is the probe.
    pub fn due(&self) -> bool {
        matches!(*self.state(), State::Open { until } if Instant::now() >= until)
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
        let was = std::mem::replace(&mut *self.state(), State::Closed { failures: 0 });
        if !matches!(was, State::Closed { .. }) {
            tracing::info!(remote = %self.label, "circuit closed: answering again");
        }
    }

    /// The upstream failed to answer usefully.
    pub fn failure(&self) {
        let mut s = self.state();
        let opens = matches!(*s, State::Closed { .. });
        *s = match *s {
            State::Closed { failures } if failures + 1 < FAILURE_THRESHOLD => State::Closed {
                failures: failures + 1,
            },
            _ => State::Open {
                until: Instant::now() + OPEN_FOR,
            },
        };
        if opens && matches!(*s, State::Open { .. }) {
            drop(s);
            tracing::warn!(
                remote = %self.label,
                failures = FAILURE_THRESHOLD,
                "circuit opened: skipped for {OPEN_FOR:?} at a time and probed until it answers"
            );
        }
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
        assert!(!b.due());
        b.probation(Duration::ZERO);
        assert!(b.due(), "open and its period over");
    }
}
