//! The `/_status/v1` document: totals since start, the two history rings, cache fill against
//! the cap, peers, upstreams and recent events. URLs lose any user, password or query string,
//! so no credential configured in an upstream or peer URL ever shows.

use serde::Serialize;
use url::Url;

use super::events::Event;
use super::history::{History, Sample};
use super::{unix, unix_ms};
use crate::peers::PeerStatus;

/// The whole document.
#[derive(Debug, Serialize)]
pub struct Report {
    pub version: &'static str,
    pub now: u64,
    pub started: u64,
    /// Seconds between hour samples (day samples are [`super::history::COARSE_EVERY`] apart).
    pub sample_interval_secs: f64,
    /// Memory the history rings take.
    pub history_bytes: usize,
    pub totals: Totals,
    pub cache: Cache,
    pub hour: Vec<Sample>,
    pub day: Vec<Sample>,
    pub peers: Vec<PeerStatus>,
    pub upstreams: Vec<UpstreamRow>,
    /// The object store (`--object-store`), when one is configured.
    pub object_store: Option<ObjectStoreRow>,
    /// What runners were sent NARs as, and what recompressing them cost.
    pub compression: super::compression::CompressionRow,
    pub events: Vec<Event>,
}

/// The object store: its circuit, traffic and write-behind queue.
#[derive(Debug, Serialize)]
pub struct ObjectStoreRow {
    #[serde(flatten)]
    pub remote: UpstreamRow,
    pub read_bytes: u64,
    pub written_bytes: u64,
    pub queue_depth: u64,
    pub writes_dropped: u64,
}

/// Counters since start.
#[derive(Debug, Serialize)]
pub struct Totals {
    pub hits: u64,
    pub misses: u64,
    pub errors: u64,
    /// hits / (hits + misses) over narinfo and NAR requests; `null` before any.
    pub hit_ratio: Option<f64>,
    pub served_bytes: u64,
    /// Bytes fetched by source: upstream, peer, torrent, fleet.
    pub fetched: Fetched,
    /// Bytes served that did not have to come from an upstream (served − upstream).
    pub egress_saved_bytes: u64,
    pub evictions: u64,
    pub verification_failures: u64,
}

/// Bytes fetched by source.
#[derive(Debug, Serialize)]
pub struct Fetched {
    pub upstream: u64,
    pub peer: u64,
    pub torrent: u64,
    pub fleet: u64,
}

/// The disk cache.
#[derive(Debug, Serialize)]
pub struct Cache {
    pub bytes: u64,
    pub entries: u64,
    pub max_bytes: u64,
    /// bytes / max_bytes.
    pub fill: f64,
}

/// One upstream.
#[derive(Debug, Serialize)]
pub struct UpstreamRow {
    pub url: String,
    /// `closed` (in use), `open` (skipped after failures) or `half-open` (probing).
    pub circuit: &'static str,
    pub last_error: Option<String>,
    pub last_error_unix: Option<u64>,
}

/// A URL without user, password, query or fragment.
pub fn public_url(u: &Url) -> String {
    let mut u = u.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.set_fragment(None);
    u.to_string()
}

/// What a report is made from (the running appliance's parts, without the HTTP state).
pub struct Parts<'a> {
    pub metrics: &'a crate::metrics::Metrics,
    pub status: &'a super::Status,
    pub store: &'a crate::store::Store,
    pub fetcher: &'a crate::fetch::Fetcher,
    pub peers: &'a crate::peers::PeerSet,
}

fn totals(now: &Sample, app: &Parts<'_>) -> Totals {
    let looked = now.hits + now.misses;
    Totals {
        hits: now.hits,
        misses: now.misses,
        errors: now.errors,
        hit_ratio: (looked > 0).then(|| now.hits as f64 / looked as f64),
        served_bytes: now.served,
        fetched: Fetched {
            upstream: now.upstream,
            peer: now.peer,
            torrent: now.torrent,
            fleet: now.fleet,
        },
        egress_saved_bytes: now.served.saturating_sub(now.upstream),
        evictions: now.evictions,
        verification_failures: app.metrics.verification_failures(),
    }
}

fn upstreams(app: &Parts<'_>) -> Vec<UpstreamRow> {
    let rows = app.fetcher.upstreams.iter().map(|u| upstream_row(u));
    rows.collect()
}

fn upstream_row(u: &crate::upstream::Upstream) -> UpstreamRow {
    let last = u.last_error();
    UpstreamRow {
        url: public_url(&u.base),
        circuit: u.breaker.state_name(),
        last_error_unix: last.as_ref().map(|(t, _)| unix(*t)),
        last_error: last.map(|(_, e)| e),
    }
}

fn object_store(app: &Parts<'_>) -> Option<ObjectStoreRow> {
    let bucket = app.fetcher.bucket.as_ref()?;
    let counters = &app.metrics.object_store;
    let (written_bytes, writes_dropped) = counters.totals();
    Some(ObjectStoreRow {
        remote: upstream_row(&bucket.at),
        read_bytes: app.metrics.fetched_bytes(crate::metrics::Source::Bucket),
        written_bytes,
        queue_depth: counters.queue_depth(),
        writes_dropped,
    })
}

fn peers(app: &Parts<'_>) -> Vec<PeerStatus> {
    let mut rows = app.peers.status();
    for p in &mut rows {
        if let Ok(u) = Url::parse(&p.url) {
            p.url = public_url(&u);
        }
    }
    rows
}

impl Report {
    /// Assembles the document from the running appliance.
    pub fn build(app: &Parts<'_>) -> Report {
        let now = Sample::take(app.metrics, unix_ms(std::time::SystemTime::now()));
        let (hour, day) = app.status.history();
        let (bytes, entries) = app.metrics.cache();
        let max_bytes = app.store.max_bytes();
        Report {
            version: env!("CARGO_PKG_VERSION"),
            now: now.t_ms / 1000,
            started: unix(app.status.started),
            sample_interval_secs: app.status.interval.as_secs_f64(),
            history_bytes: History::BYTES,
            totals: totals(&now, app),
            cache: Cache {
                bytes,
                entries,
                max_bytes,
                fill: if max_bytes > 0 {
                    bytes as f64 / max_bytes as f64
                } else {
                    0.0
                },
            },
            hour,
            day,
            peers: peers(app),
            upstreams: upstreams(app),
            object_store: object_store(app),
            compression: super::compression::CompressionRow::new(
                app.fetcher.serving(),
                app.metrics.transcode.totals(),
            ),
            events: app.status.events(),
        }
    }
}

impl Report {
    /// Names the store path of each narinfo or NAR event whose narinfo the cache holds, so
    /// the page lists misses by name, not by hash alone.
    pub async fn name_events(&mut self, store: &std::sync::Arc<crate::store::Store>) {
        for e in &mut self.events {
            e.name = match e.route {
                "narinfo" => {
                    let hash = e.path.trim_start_matches('/').trim_end_matches(".narinfo");
                    let Ok(h) = hash.parse() else { continue };
                    let held = store.narinfo(&h, |_, _| true).await;
                    held.and_then(|(_, b)| store_path_name(&b))
                }
                "nar" => {
                    let file = e.path.trim_start_matches("/nar/");
                    let nix32 = file.split('.').next().unwrap_or_default();
                    let Ok(fh) = crate::nix::hash::Sha256::from_nix32(nix32) else {
                        continue;
                    };
                    let held = store.narinfos_of(&fh).await;
                    held.first().and_then(|b| store_path_name(b))
                }
                _ => None,
            };
        }
    }
}

/// `<hash>-<name>` from the `StorePath:` line of a stored narinfo file.
fn store_path_name(stored: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(stored).ok()?;
    let path = text.lines().find_map(|l| l.strip_prefix("StorePath: "))?;
    Some(path.rsplit('/').next()?.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_credentials() {
        let u = Url::parse("https://user:s3cret@cache.example/nix/?token=abc#x").unwrap();
        assert_eq!(public_url(&u), "https://cache.example/nix/");
    }
}
