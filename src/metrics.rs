//! Prometheus metrics with a small fixed label set (names are part of the interface contract
//! in DESIGN.md). Counters are plain atomics indexed by label enums, so recording costs one
//! relaxed add on the hot path and rendering needs no registry.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! label_enum {
    ($(#[$m:meta])* $name:ident { $($v:ident => $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($v),+ }
        impl $name {
            /// Every value, in label order.
            pub const ALL: &'static [$name] = &[$($name::$v),+];
            /// How many values there are (array sizes).
            pub const COUNT: usize = Self::ALL.len();
            /// The label value.
            pub fn as_str(self) -> &'static str { match self { $($name::$v => $s),+ } }
        }
    };
}

label_enum!(
    /// The route a request matched.
    Route {
        CacheInfo => "nix-cache-info", NarInfo => "narinfo", Nar => "nar", Listing => "ls",
        Log => "log", Realisation => "realisation", Health => "healthz", Ready => "readyz",
        Metrics => "metrics", Peers => "p2p-peers", Torrent => "p2p-torrent",
        Digest => "p2p-digest", Other => "other",
    }
);

label_enum!(
    /// How a request ended.
    Outcome {
        Hit => "hit", Miss => "miss", NotFound => "not_found", NotCached => "not_cached",
        Unavailable => "unavailable", BadRequest => "bad_request", Error => "error",
    }
);

label_enum!(
    /// Where fetched bytes came from.
    Source { Upstream => "upstream", Peer => "peer", Torrent => "torrent" }
);

label_enum!(
    /// The class of an upstream answer.
    UpstreamStatus {
        Ok => "200", NotFound => "404", ClientError => "4xx", ServerError => "5xx",
        ConnectError => "connect_error", Timeout => "timeout", CircuitOpen => "circuit_open",
        Other => "other",
    }
);

fn counters<const N: usize>() -> [AtomicU64; N] {
    std::array::from_fn(|_| AtomicU64::new(0))
}

/// All of nixgate's metrics.
pub struct Metrics {
    requests: [[AtomicU64; Outcome::COUNT]; Route::COUNT],
    fetched: [AtomicU64; Source::COUNT],
    served: AtomicU64,
    upstream: [AtomicU64; UpstreamStatus::COUNT],
    cache_size: AtomicU64,
    cache_entries: AtomicU64,
    evictions: AtomicU64,
    verification_failures: [AtomicU64; Source::COUNT],
    coalesced: AtomicU64,
    torrents_seeding: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: std::array::from_fn(|_| counters()),
            fetched: counters(),
            served: AtomicU64::new(0),
            upstream: counters(),
            cache_size: AtomicU64::new(0),
            cache_entries: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            verification_failures: counters(),
            coalesced: AtomicU64::new(0),
            torrents_seeding: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    pub fn request(&self, route: Route, outcome: Outcome) {
        self.requests[route as usize][outcome as usize].fetch_add(1, Relaxed);
    }
    pub fn fetched(&self, source: Source, bytes: u64) {
        self.fetched[source as usize].fetch_add(bytes, Relaxed);
    }
    pub fn served(&self, bytes: u64) {
        self.served.fetch_add(bytes, Relaxed);
    }
    pub fn upstream(&self, status: UpstreamStatus) {
        self.upstream[status as usize].fetch_add(1, Relaxed);
    }
    pub fn set_torrents_seeding(&self, n: u64) {
        self.torrents_seeding.store(n, Relaxed);
    }
    pub fn set_cache(&self, bytes: u64, entries: u64) {
        self.cache_size.store(bytes, Relaxed);
        self.cache_entries.store(entries, Relaxed);
    }
    pub fn evicted(&self, n: u64) {
        self.evictions.fetch_add(n, Relaxed);
    }
    pub fn verification_failure(&self, source: Source) {
        self.verification_failures[source as usize].fetch_add(1, Relaxed);
    }
    /// A request joined a fetch already under way instead of starting one.
    pub fn coalesced(&self) {
        self.coalesced.fetch_add(1, Relaxed);
    }

    /// Renders the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut o = String::with_capacity(4096);
        let head = |o: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        head(
            &mut o,
            "nixgate_requests_total",
            "counter",
            "HTTP requests by route and outcome.",
        );
        for r in Route::ALL {
            for x in Outcome::ALL {
                let v = self.requests[*r as usize][*x as usize].load(Relaxed);
                let _ = writeln!(
                    o,
                    "nixgate_requests_total{{route=\"{}\",result=\"{}\"}} {v}",
                    r.as_str(),
                    x.as_str()
                );
            }
        }
        head(
            &mut o,
            "nixgate_fetched_bytes_total",
            "counter",
            "Bytes fetched into the cache, by source.",
        );
        for s in Source::ALL {
            let _ = writeln!(
                o,
                "nixgate_fetched_bytes_total{{source=\"{}\"}} {}",
                s.as_str(),
                self.fetched[*s as usize].load(Relaxed)
            );
        }
        head(
            &mut o,
            "nixgate_served_bytes_total",
            "counter",
            "Response body bytes sent to clients.",
        );
        let _ = writeln!(
            o,
            "nixgate_served_bytes_total {}",
            self.served.load(Relaxed)
        );
        head(
            &mut o,
            "nixgate_upstream_requests_total",
            "counter",
            "Requests to upstream caches by answer class.",
        );
        for s in UpstreamStatus::ALL {
            let _ = writeln!(
                o,
                "nixgate_upstream_requests_total{{status=\"{}\"}} {}",
                s.as_str(),
                self.upstream[*s as usize].load(Relaxed)
            );
        }
        head(
            &mut o,
            "nixgate_cache_size_bytes",
            "gauge",
            "Bytes held in the disk cache.",
        );
        let _ = writeln!(
            o,
            "nixgate_cache_size_bytes {}",
            self.cache_size.load(Relaxed)
        );
        head(
            &mut o,
            "nixgate_cache_entries",
            "gauge",
            "Files (narinfos and NARs) in the disk cache.",
        );
        let _ = writeln!(
            o,
            "nixgate_cache_entries {}",
            self.cache_entries.load(Relaxed)
        );
        head(
            &mut o,
            "nixgate_evictions_total",
            "counter",
            "LRU evictions of narinfo+NAR groups.",
        );
        let _ = writeln!(
            o,
            "nixgate_evictions_total {}",
            self.evictions.load(Relaxed)
        );
        head(
            &mut o,
            "nixgate_verification_failures_total",
            "counter",
            "Narinfos or NARs rejected by signature, hash, size or format checks.",
        );
        for s in Source::ALL {
            let _ = writeln!(
                o,
                "nixgate_verification_failures_total{{source=\"{}\"}} {}",
                s.as_str(),
                self.verification_failures[*s as usize].load(Relaxed)
            );
        }
        head(
            &mut o,
            "nixgate_coalesced_requests_total",
            "counter",
            "Requests that joined a fetch already under way.",
        );
        let _ = writeln!(
            o,
            "nixgate_coalesced_requests_total {}",
            self.coalesced.load(Relaxed)
        );
        head(
            &mut o,
            "nixgate_torrents_seeding",
            "gauge",
            "NAR torrents seeded right now (at most --torrent-hot-set).",
        );
        let _ = writeln!(
            o,
            "nixgate_torrents_seeding {}",
            self.torrents_seeding.load(Relaxed)
        );
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_contract_names() {
        let m = Metrics::default();
        m.request(Route::Nar, Outcome::Hit);
        m.fetched(Source::Upstream, 42);
        m.verification_failure(Source::Upstream);
        let t = m.render();
        assert!(t.contains("nixgate_requests_total{route=\"nar\",result=\"hit\"} 1"));
        assert!(t.contains("nixgate_fetched_bytes_total{source=\"upstream\"} 42"));
        assert!(t.contains("nixgate_verification_failures_total{source=\"upstream\"} 1"));
        for name in [
            "nixgate_served_bytes_total",
            "nixgate_upstream_requests_total",
            "nixgate_cache_size_bytes",
            "nixgate_cache_entries",
            "nixgate_evictions_total",
        ] {
            assert!(t.contains(name), "{name}");
        }
    }
}
