//! The operator's view: what the status page (`/`), its JSON (`/_status/v1`) and
//! `nixgate status` show. A background task samples the counters into bounded rings
//! ([`history`]); the server notes misses and errors ([`events`]); [`report`] assembles the
//! JSON only when someone asks, so the page costs nothing while nobody looks.

pub mod cli;
pub mod compression;
pub mod events;
pub mod history;
pub mod report;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::metrics::{Metrics, Outcome, Route};
use events::Events;
use history::{History, Sample};

/// Unix time in seconds.
pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Unix time in milliseconds.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The rings behind the status page.
#[derive(Debug)]
pub struct Status {
    history: Mutex<History>,
    events: Mutex<Events>,
    /// The sample interval (the fine ring's step).
    pub interval: Duration,
    /// When the appliance started.
    pub started: SystemTime,
}

impl Status {
    /// Empty rings, sampled every `interval`.
    pub fn new(interval: Duration) -> Self {
        Status {
            history: Default::default(),
            events: Default::default(),
            interval,
            started: SystemTime::now(),
        }
    }

    /// Notes a request for the recent-events list, when it is a miss or a failure.
    pub fn request(&self, route: Route, outcome: Outcome, path: &str) {
        if events::worth_recording(route, outcome) {
            let now = unix(SystemTime::now());
            let mut e = self.events.lock().unwrap_or_else(|p| p.into_inner());
            e.record(now, route, outcome, path);
        }
    }

    /// Takes one sample of `m` now.
    pub fn sample(&self, m: &Metrics) {
        let s = Sample::take(m, unix_ms(SystemTime::now()));
        self.history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(s);
    }

    /// The hour ring and the day ring, oldest first.
    pub fn history(&self) -> (Vec<Sample>, Vec<Sample>) {
        let h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        (h.fine(), h.coarse())
    }

    /// The recent events, newest first.
    pub fn events(&self) -> Vec<events::Event> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .newest_first()
    }
}

/// The sampling task: one sample at start, then one per interval, until `shutdown`.
pub async fn run(status: Arc<Status>, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(status.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => status.sample(&metrics),
        }
    }
}
