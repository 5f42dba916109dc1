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
        impl LabelValue for $name {
            fn label(&self) -> &'static str { self.as_str() }
        }
    };
}

label_enum!(
    /// The route a request matched.
    Route {
        CacheInfo => "nix-cache-info", NarInfo => "narinfo", Nar => "nar", Listing => "ls",
        Log => "log", Realisation => "realisation", Health => "healthz", Ready => "readyz",
        Metrics => "metrics", Peers => "p2p-peers", Torrent => "p2p-torrent",
        Digest => "p2p-digest", Status => "status", Other => "other",
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
    Source { Upstream => "upstream", Peer => "peer", Torrent => "torrent", Fleet => "fleet" }
);

label_enum!(
    /// The class of an upstream answer.
    UpstreamStatus {
        Ok => "200", NotFound => "404", ClientError => "4xx", ServerError => "5xx",
        ConnectError => "connect_error", Timeout => "timeout", CircuitOpen => "circuit_open",
        Other => "other",
    }
);

label_enum!(
    /// Why the cache could not store a download (it was streamed through instead).
    StoreFailure { NoSpace => "no_space", CapReached => "cap_reached", Io => "io_error" }
);

label_enum!(
    /// The kind of slot a client connection holds (`--max-connections` or the reserve).
    ConnSlot { Regular => "regular", Reserve => "reserve" }
);

label_enum!(
    /// Why a client connection was closed on accept.
    Refusal { PerIp => "per_ip", Global => "global" }
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
    fleet_served: AtomicU64,
    store_failures: [AtomicU64; StoreFailure::COUNT],
    digests_refused: AtomicU64,
    torrent_hashes: AtomicU64,
    connections: [AtomicU64; ConnSlot::COUNT],
    refused: [AtomicU64; Refusal::COUNT],
    send_timeouts: AtomicU64,
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
            fleet_served: AtomicU64::new(0),
            store_failures: counters(),
            digests_refused: AtomicU64::new(0),
            torrent_hashes: AtomicU64::new(0),
            connections: counters(),
            refused: counters(),
            send_timeouts: AtomicU64::new(0),
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

    /// This appliance answered a fleet request (a member asked it as the owner of a key).
    pub fn fleet_served(&self) {
        self.fleet_served.fetch_add(1, Relaxed);
    }

    /// Requests so far with this route and outcome (for the status page).
    pub fn requests_of(&self, route: Route, outcome: Outcome) -> u64 {
        self.requests[route as usize][outcome as usize].load(Relaxed)
    }
    /// Bytes fetched so far from `source`.
    pub fn fetched_bytes(&self, source: Source) -> u64 {
        self.fetched[source as usize].load(Relaxed)
    }
    /// Response body bytes sent so far.
    pub fn served_bytes(&self) -> u64 {
        self.served.load(Relaxed)
    }
    /// Upstream answers so far of this class.
    pub fn upstream_count(&self, status: UpstreamStatus) -> u64 {
        self.upstream[status as usize].load(Relaxed)
    }
    /// Bytes and files held in the disk cache now.
    pub fn cache(&self) -> (u64, u64) {
        (
            self.cache_size.load(Relaxed),
            self.cache_entries.load(Relaxed),
        )
    }
    /// Evictions so far.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Relaxed)
    }
    /// Verification failures so far, all sources.
    pub fn verification_failures(&self) -> u64 {
        self.verification_failures
            .iter()
            .map(|v| v.load(Relaxed))
            .sum()
    }
    /// The cache could not store a download (it was served uncached).
    pub fn store_failure(&self, reason: StoreFailure) {
        self.store_failures[reason as usize].fetch_add(1, Relaxed);
    }
    /// A peer's digest was refused (too large, malformed, or implausibly full).
    pub fn digest_refused(&self) {
        self.digests_refused.fetch_add(1, Relaxed);
    }

    /// A cached NAR was hashed into its torrent.
    pub fn torrent_hashed(&self) {
        self.torrent_hashes.fetch_add(1, Relaxed);
    }
    /// Client connections open now, by slot.
    pub fn set_connections(&self, slot: ConnSlot, n: u64) {
        self.connections[slot as usize].store(n, Relaxed);
    }
    /// A client connection was closed on accept.
    pub fn refused(&self, why: Refusal) {
        self.refused[why as usize].fetch_add(1, Relaxed);
    }
    /// A client connection was dropped for accepting no bytes within `--send-timeout`.
    pub fn send_timeout(&self) {
        self.send_timeouts.fetch_add(1, Relaxed);
    }

    /// Renders the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut o = String::with_capacity(4096);
        for family in self.families() {
            family.write(&mut o);
        }
        o
    }

    /// Every metric family, in exposition order: the one table of names, kinds and help texts.
    fn families(&self) -> Vec<Family> {
        use Kind::{Counter, Gauge};
        let requests = Route::ALL.iter().flat_map(|r| {
            Outcome::ALL.iter().map(move |x| {
                let v = self.requests[*r as usize][*x as usize].load(Relaxed);
                (
                    format!("route=\"{}\",result=\"{}\"", r.as_str(), x.as_str()),
                    v,
                )
            })
        });
        vec![
            Family::new(
                "nixgate_requests_total",
                Counter,
                "HTTP requests by route and outcome.",
            )
            .samples(requests),
            Family::new(
                "nixgate_fetched_bytes_total",
                Counter,
                "Bytes fetched into the cache, by source.",
            )
            .by("source", Source::ALL, |s| &self.fetched[s as usize]),
            Family::new(
                "nixgate_served_bytes_total",
                Counter,
                "Response body bytes sent to clients.",
            )
            .value(&self.served),
            Family::new(
                "nixgate_upstream_requests_total",
                Counter,
                "Requests to upstream caches by answer class.",
            )
            .by("status", UpstreamStatus::ALL, |s| {
                &self.upstream[s as usize]
            }),
            Family::new(
                "nixgate_cache_size_bytes",
                Gauge,
                "Bytes held in the disk cache.",
            )
            .value(&self.cache_size),
            Family::new(
                "nixgate_cache_entries",
                Gauge,
                "Files (narinfos and NARs) in the disk cache.",
            )
            .value(&self.cache_entries),
            Family::new(
                "nixgate_evictions_total",
                Counter,
                "LRU evictions of narinfo+NAR groups.",
            )
            .value(&self.evictions),
            Family::new(
                "nixgate_verification_failures_total",
                Counter,
                "Narinfos or NARs rejected by signature, hash, size or format checks.",
            )
            .by("source", Source::ALL, |s| {
                &self.verification_failures[s as usize]
            }),
            Family::new(
                "nixgate_coalesced_requests_total",
                Counter,
                "Requests that joined a fetch already under way.",
            )
            .value(&self.coalesced),
            Family::new(
                "nixgate_torrents_seeding",
                Gauge,
                "NAR torrents seeded right now (at most --torrent-hot-set).",
            )
            .value(&self.torrents_seeding),
            Family::new(
                "nixgate_fleet_requests_served_total",
                Counter,
                "Requests other fleet members sent to this appliance as the owner of a key.",
            )
            .value(&self.fleet_served),
            Family::new(
                "nixgate_cache_store_failures_total",
                Counter,
                "Downloads the cache could not store (served uncached instead), by reason.",
            )
            .by("reason", StoreFailure::ALL, |r| {
                &self.store_failures[r as usize]
            }),
            Family::new(
                "nixgate_peer_digests_refused_total",
                Counter,
                "Peer digests refused: too large, malformed, or implausibly full.",
            )
            .value(&self.digests_refused),
            Family::new(
                "nixgate_torrent_hashes_total",
                Counter,
                "Cached NARs hashed into torrents (concurrent requests share one).",
            )
            .value(&self.torrent_hashes),
            Family::new(
                "nixgate_client_connections",
                Gauge,
                "Client connections open, by slot.",
            )
            .by("slot", ConnSlot::ALL, |s| &self.connections[s as usize]),
            Family::new(
                "nixgate_connections_refused_total",
                Counter,
                "Client connections closed on accept: over the per-IP or global limit.",
            )
            .by("reason", Refusal::ALL, |r| &self.refused[r as usize]),
            Family::new(
                "nixgate_send_timeouts_total",
                Counter,
                "Client connections dropped for accepting no bytes within --send-timeout.",
            )
            .value(&self.send_timeouts),
        ]
    }
}

/// A Prometheus metric type.
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
}

/// One metric family as rendered: name, type, help and its samples (label set, value).
struct Family {
    name: &'static str,
    kind: Kind,
    help: &'static str,
    samples: Vec<(String, u64)>,
}

impl Family {
    fn new(name: &'static str, kind: Kind, help: &'static str) -> Self {
        Family {
            name,
            kind,
            help,
            samples: Vec::new(),
        }
    }

    /// An unlabelled sample.
    fn value(mut self, v: &AtomicU64) -> Self {
        self.samples.push((String::new(), v.load(Relaxed)));
        self
    }

    /// One sample per value of a label enum.
    fn by<'m, L: LabelValue + Copy>(
        mut self,
        label: &str,
        all: &[L],
        get: impl Fn(L) -> &'m AtomicU64,
    ) -> Self {
        for l in all {
            let v = get(*l).load(Relaxed);
            self.samples.push((format!("{label}=\"{}\"", l.label()), v));
        }
        self
    }

    fn samples(mut self, s: impl Iterator<Item = (String, u64)>) -> Self {
        self.samples.extend(s);
        self
    }

    fn write(&self, o: &mut String) {
        let kind = match self.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let _ = writeln!(
            o,
            "# HELP {} {}\n# TYPE {} {kind}",
            self.name, self.help, self.name
        );
        for (labels, v) in &self.samples {
            if labels.is_empty() {
                let _ = writeln!(o, "{} {v}", self.name);
            } else {
                let _ = writeln!(o, "{}{{{labels}}} {v}", self.name);
            }
        }
    }
}

/// A label enum's value as it appears in the exposition.
trait LabelValue {
    fn label(&self) -> &'static str;
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
