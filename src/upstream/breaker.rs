//! A per-upstream circuit breaker: after [`FAILURE_THRESHOLD`] consecutive failures
//! (connect errors, timeouts, 5xx) the upstream is skipped for [`OPEN_FOR`], then one probe
//! request is let through; its success closes the circuit, its failure re-opens it.
//!
//! This keeps a dead upstream from costing every request a connect timeout, which is what
//! turns an outage into minutes of stalled CI jobs. An open circuit of a configured upstream
//! is also probed in the background (`heal.rs`), so it closes when the upstream is back even
//! without traffic. Opening and closing are logged once each, with the remote's label.
//!
//! A breaker made with [`Breaker::background`] (the object store's) has its own threshold and
//! open period, and is never half-opened by a request: only its background prober closes it
//! (`objstore/probe.rs`), so no runner ever waits on a source whose circuit is not closed.

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
    /// Consecutive failures that open it.
    threshold: u32,
    /// How long it stays open before it is due for a probe.
    open_for: Duration,
    /// Only a background prober closes it: [`Breaker::allow`] never lets a probe through.
    background: bool,
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
            threshold: FAILURE_THRESHOLD,
            open_for: OPEN_FOR,
            background: false,
        }
    }

    /// A closed breaker that opens after `threshold` consecutive failures, for `open_for` at
    /// a time, and that requests never probe: while it is open they are skipped, and only
    /// [`Breaker::success`] from a background prober (which looks at [`Breaker::due`]) closes it.
    pub fn background(label: String, threshold: u32, open_for: Duration) -> Self {
        Breaker {
            threshold: threshold.max(1),
            open_for,
            background: true,
            ..Breaker::labelled(label)
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
            State::Open { until } if !self.background && Instant::now() >= until => {
                *s = State::HalfOpen;
                true
            }
            State::Open { .. } | State::HalfOpen => false,
        }
    }

    /// The upstream answered (any status below 500). An open [`Breaker::background`] one
    /// stays open: a request that was sent before it opened proves nothing (its headers may
    /// come before a hang); only [`Breaker::probe_answered`] closes it.
    pub fn success(&self) {
        self.close(!self.background);
    }

    /// The background prober's probe was answered: the circuit closes.
    pub fn probe_answered(&self) {
        self.close(true);
    }

    /// Resets the failure count, and closes the circuit when `reopen` allows.
    fn close(&self, reopen: bool) {
        let mut s = self.state();
        if !reopen && !matches!(*s, State::Closed { .. }) {
            return;
        }
        let was = std::mem::replace(&mut *s, State::Closed { failures: 0 });
        drop(s);
        if !matches!(was, State::Closed { .. }) {
            tracing::info!(remote = %self.label, "circuit closed: answering again");
        }
    }

    /// The upstream failed to answer usefully.
    pub fn failure(&self) {
        let mut s = self.state();
        let opens = matches!(*s, State::Closed { .. });
        *s = match *s {
            State::Closed { failures } if failures + 1 < self.threshold => State::Closed {
                failures: failures + 1,
            },
            _ => State::Open {
                until: Instant::now() + self.open_for,
            },
        };
        if opens && matches!(*s, State::Open { .. }) {
            drop(s);
            tracing::warn!(
                remote = %self.label,
                failures = self.threshold,
                "circuit opened: skipped for {:?} at a time and probed until it answers",
                self.open_for
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

    #[test]
    fn a_background_breaker_opens_at_its_threshold_and_no_request_probes_it() {
        let b = Breaker::background(String::new(), 1, Duration::ZERO);
        assert!(b.allow());
        b.failure();
        assert!(b.is_open() && b.due(), "one failure opens it; due at once");
        assert!(!b.allow(), "a request never takes the probe");
        assert_eq!(b.state_name(), "open");
        b.failure();
        assert!(!b.allow() && b.is_open(), "a failed probe keeps it open");
        b.success();
        assert!(b.is_open(), "a request's late answer does not close it");
        b.probe_answered();
        assert!(b.allow() && !b.is_open(), "the prober's answer closes it");
    }
}
