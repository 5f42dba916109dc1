//! The status page's history: counter samples in two bounded rings, one fine (the last hour)
//! and one coarse (the last day). Samples hold cumulative counters; readers take differences.

use std::collections::VecDeque;

use serde::Serialize;

use crate::metrics::{Metrics, Outcome, Route, Source};

/// Samples kept at the fine interval (the default 10 s makes this the last hour).
pub const FINE_LEN: usize = 360;
/// Samples kept at the coarse interval (every [`COARSE_EVERY`] fine ones: 5 min, the last day).
pub const COARSE_LEN: usize = 288;
/// One coarse sample per this many fine ones.
pub const COARSE_EVERY: u64 = 30;

/// The routes whose hits and misses make the hit ratio (what Nix substitutes from).
const CACHE_ROUTES: [Route; 2] = [Route::NarInfo, Route::Nar];

/// Cumulative counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Sample {
    /// Unix time, milliseconds (sample intervals below a second stay apart).
    pub t_ms: u64,
    /// Narinfo and NAR requests answered from the cache.
    pub hits: u64,
    /// Narinfo and NAR requests that had to be fetched.
    pub misses: u64,
    /// Requests of any route that ended in an error or "upstream unavailable".
    pub errors: u64,
    /// Response body bytes sent to clients.
    pub served: u64,
    /// Bytes fetched from upstreams.
    pub upstream: u64,
    /// Bytes fetched from peers.
    pub peer: u64,
    /// Bytes fetched over BitTorrent.
    pub torrent: u64,
    /// Bytes fetched from the fleet member owning the key.
    pub fleet: u64,
    /// LRU evictions.
    pub evictions: u64,
    /// Bytes held in the disk cache (a gauge, not a counter).
    pub cache_bytes: u64,
}

impl Sample {
    /// Reads the counters now.
    pub fn take(m: &Metrics, t_ms: u64) -> Sample {
        let sum = |o: Outcome| -> u64 { CACHE_ROUTES.iter().map(|r| m.requests_of(*r, o)).sum() };
        let errors = Route::ALL
            .iter()
            .map(|r| m.requests_of(*r, Outcome::Error) + m.requests_of(*r, Outcome::Unavailable))
            .sum();
        Sample {
            t_ms,
            hits: sum(Outcome::Hit),
            misses: sum(Outcome::Miss),
            errors,
            served: m.served_bytes(),
            upstream: m.fetched_bytes(Source::Upstream),
            peer: m.fetched_bytes(Source::Peer),
            torrent: m.fetched_bytes(Source::Torrent),
            fleet: m.fetched_bytes(Source::Fleet),
            evictions: m.evictions(),
            cache_bytes: m.cache().0,
        }
    }
}

/// Both rings. Memory: `(FINE_LEN + COARSE_LEN) * size_of::<Sample>()` = [`History::BYTES`].
#[derive(Debug)]
pub struct History {
    fine: VecDeque<Sample>,
    coarse: VecDeque<Sample>,
    taken: u64,
}

impl Default for History {
    fn default() -> Self {
        History {
            fine: VecDeque::with_capacity(FINE_LEN),
            coarse: VecDeque::with_capacity(COARSE_LEN),
            taken: 0,
        }
    }
}

fn push(ring: &mut VecDeque<Sample>, cap: usize, s: Sample) {
    if ring.len() == cap {
        ring.pop_front();
    }
    ring.push_back(s);
}

impl History {
    /// The rings' size in bytes (allocated once, never grown).
    pub const BYTES: usize = (FINE_LEN + COARSE_LEN) * std::mem::size_of::<Sample>();

    /// Adds a sample: always to the fine ring, every [`COARSE_EVERY`]th to the coarse one too
    /// (the first one included, so the day plot has a start).
    pub fn record(&mut self, s: Sample) {
        push(&mut self.fine, FINE_LEN, s);
        if self.taken.is_multiple_of(COARSE_EVERY) {
            push(&mut self.coarse, COARSE_LEN, s);
        }
        self.taken += 1;
    }

    /// The fine samples, oldest first.
    pub fn fine(&self) -> Vec<Sample> {
        self.fine.iter().copied().collect()
    }

    /// The coarse samples, oldest first, ending with the latest fine one (so the day plot
    /// reaches now).
    pub fn coarse(&self) -> Vec<Sample> {
        let mut v: Vec<Sample> = self.coarse.iter().copied().collect();
        if let Some(last) = self.fine.back() {
            if v.last() != Some(last) {
                v.push(*last);
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rings_are_bounded() {
        let mut h = History::default();
        for t_ms in 0..(FINE_LEN as u64 * 40) {
            h.record(Sample {
                t_ms,
                ..Default::default()
            });
        }
        assert_eq!(h.fine().len(), FINE_LEN);
        assert_eq!(h.fine()[0].t_ms, FINE_LEN as u64 * 39);
        assert!(h.coarse().len() <= COARSE_LEN + 1);
        assert_eq!(h.coarse()[1].t_ms - h.coarse()[0].t_ms, COARSE_EVERY);
        assert_eq!(History::BYTES, 648 * 88);
    }

    #[test]
    fn sample_reads_counters() {
        let m = Metrics::default();
        m.request(Route::Nar, Outcome::Hit);
        m.request(Route::NarInfo, Outcome::Miss);
        m.request(Route::Health, Outcome::Hit);
        m.request(Route::NarInfo, Outcome::Unavailable);
        m.fetched(Source::Upstream, 7);
        let s = Sample::take(&m, 1);
        assert_eq!((s.hits, s.misses, s.errors, s.upstream), (1, 1, 1, 7));
    }
}
