//! The last misses and errors: a small bounded ring the status page shows, so an operator
//! can see why a job missed without reading logs.

use std::collections::VecDeque;

use serde::Serialize;

use crate::metrics::{Outcome, Route};

/// Events kept.
pub const EVENTS_LEN: usize = 50;
/// Longest path kept (longer ones are cut).
const PATH_MAX: usize = 120;

/// One request that was not a plain hit.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Unix time, seconds.
    pub t: u64,
    pub route: &'static str,
    pub outcome: &'static str,
    /// The request path; only for routes whose paths were validated (never a query string).
    pub path: String,
    /// The store path's name (`<hash>-<name>`), when the cache holds its narinfo by the time
    /// the report is made (a 404 has none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Whether a request is worth an event: misses and failures of real routes. Hits, peers'
/// only-if-cached probes (`not_cached`) and unknown paths (`/favicon.ico`) are not.
pub fn worth_recording(route: Route, outcome: Outcome) -> bool {
    let failed = !matches!(outcome, Outcome::Hit | Outcome::NotCached | Outcome::Stored);
    failed && !(route == Route::Other && outcome == Outcome::NotFound)
}

/// The ring.
#[derive(Debug, Default)]
pub struct Events(VecDeque<Event>);

impl Events {
    /// Adds an event, dropping the oldest when full. Paths of unknown routes are not kept
    /// (they are whatever a client sent).
    pub fn record(&mut self, t: u64, route: Route, outcome: Outcome, path: &str) {
        if self.0.len() == EVENTS_LEN {
            self.0.pop_front();
        }
        let path = if route == Route::Other {
            String::new()
        } else {
            path.chars().take(PATH_MAX).collect()
        };
        self.0.push_back(Event {
            t,
            route: route.as_str(),
            outcome: outcome.as_str(),
            path,
            name: None,
        });
    }

    /// The events, newest first.
    pub fn newest_first(&self) -> Vec<Event> {
        self.0.iter().rev().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_filtered() {
        let mut e = Events::default();
        for i in 0..(EVENTS_LEN as u64 + 5) {
            e.record(i, Route::NarInfo, Outcome::Miss, "/x.narinfo");
        }
        let v = e.newest_first();
        assert_eq!(v.len(), EVENTS_LEN);
        assert_eq!(v[0].t, EVENTS_LEN as u64 + 4);
        e.record(0, Route::Other, Outcome::BadRequest, "/secret?token=x");
        assert_eq!(e.newest_first()[0].path, "");
        assert!(!worth_recording(Route::Nar, Outcome::Hit));
        assert!(!worth_recording(Route::Other, Outcome::NotFound));
        assert!(worth_recording(Route::NarInfo, Outcome::NotFound));
        assert!(worth_recording(Route::Nar, Outcome::Unavailable));
    }
}
