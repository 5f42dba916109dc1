//! The Prometheus text exposition of [`Metrics`]: one table of families (name, type, help,
//! samples), rendered in order.

use std::sync::atomic::Ordering::Relaxed;

use super::family::{Family, Kind};
use super::*;

impl Metrics {
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
        let mut all = self.traffic_families();
        all.extend(self.more_families());
        all.extend(self.peer_families());
        all.extend(self.upload_families());
        all.extend(self.transcode.families());
        let read = self.fetched[Source::Bucket as usize].load(Relaxed);
        all.extend(self.object_store.families(read));
        all.push(log_family());
        all.push(build_info());
        all.extend(process_families(&super::process::ProcessStats::read()));
        all
    }

    /// Requests, bytes and upstream answers.
    fn traffic_families(&self) -> Vec<Family> {
        use Kind::Counter;
        // Only the combinations a route can end in, and any other that did happen.
        let requests = Route::ALL.iter().flat_map(|r| {
            Outcome::ALL.iter().filter_map(move |x| {
                let v = self.requests[*r as usize][*x as usize].load(Relaxed);
                (v > 0 || r.can_end(*x)).then(|| {
                    (
                        "",
                        format!("route=\"{}\",result=\"{}\"", r.as_str(), x.as_str()),
                        v as f64,
                    )
                })
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
            self.upstream_family(),
            self.upstream_latency_family(),
            self.duration_family(),
        ]
    }

    /// Upstream answers by upstream (its origin, never credentials) and class.
    fn upstream_family(&self) -> Family {
        let mut f = Family::new(
            "nixgate_upstream_requests_total",
            Kind::Counter,
            "Requests to upstream caches by upstream and answer class (auth_failed: a 401, \
             or a 403 to a request with --netrc-file credentials).",
        );
        for (origin, c) in self.read_upstreams().iter() {
            for s in UpstreamStatus::ALL {
                let v = c.answers[*s as usize].load(Relaxed) as f64;
                let labels = format!("upstream=\"{origin}\",status=\"{}\"", s.as_str());
                f.samples.push(("", labels, v));
            }
        }
        f
    }

    /// Upstreams' time to response headers.
    fn upstream_latency_family(&self) -> Family {
        let mut f = Family::new(
            "nixgate_upstream_response_seconds",
            Kind::Histogram,
            "Time from sending a request to an upstream to its response headers, by upstream.",
        );
        for (origin, c) in self.read_upstreams().iter() {
            f.histogram(&format!("upstream=\"{origin}\""), &c.headers);
        }
        f
    }

    /// Runners' (and operators') requests: time from the request head to the response head.
    fn duration_family(&self) -> Family {
        let mut f = Family::new(
            "nixgate_request_duration_seconds",
            Kind::Histogram,
            "Time from a request's head to its response's head (a streamed NAR's first byte), \
             by route and result.",
        );
        for r in Route::ALL {
            for x in Outcome::ALL {
                let h = &self.durations[*r as usize][*x as usize];
                if r.can_end(*x) || h.count() > 0 {
                    let labels = format!("route=\"{}\",result=\"{}\"", r.as_str(), x.as_str());
                    f.histogram(&labels, h);
                }
            }
        }
        f
    }

    /// The cache and verification families.
    fn more_families(&self) -> Vec<Family> {
        use Kind::{Counter, Gauge};
        vec![
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
                "nixgate_untrusted_refused_total",
                Counter,
                "Data refused before its content could verify: a narinfo URL outside the \
                 configured origins (the URL is ignored), a compression nixgate cannot check \
                 against NarHash, a body that is no NAR, a source below the minimum progress.",
            )
            .by("reason", Untrusted::ALL, |r| &self.untrusted[r as usize]),
            Family::new(
                "nixgate_coalesced_requests_total",
                Counter,
                "Requests that joined a fetch already under way.",
            )
            .value(&self.coalesced),
            Family::new(
                "nixgate_downloads_resumed_total",
                Counter,
                "Downloads whose source broke mid-way, continued from another source at the \
                 same byte, by the source that continued.",
            )
            .by("source", Source::ALL, |s| &self.resumed[s as usize]),
        ]
    }

    /// The torrent, fleet, peer and connection families.
    fn peer_families(&self) -> Vec<Family> {
        use Kind::{Counter, Gauge};
        vec![
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
            Family::new(
                "nixgate_zero_copy_responses_total",
                Counter,
                "Cached NAR responses (GET or HEAD) sent on the zero-copy path (sendfile).",
            )
            .value(&self.zero_copy),
        ]
    }
}

impl Metrics {
    /// The upload families (`PUT` from runners, see `upload/`).
    fn upload_families(&self) -> Vec<Family> {
        use Kind::{Counter, Gauge};
        vec![
            Family::new(
                "nixgate_uploads_total",
                Counter,
                "Upload requests (PUT of a NAR or narinfo, and DELETE), by outcome.",
            )
            .by("outcome", UploadOutcome::ALL, |o| &self.uploads[o as usize]),
            Family::new(
                "nixgate_upload_bytes",
                Gauge,
                "Bytes held by uploaded paths (within --upload-max-size; never evicted by the LRU).",
            )
            .value(&self.upload_bytes),
            Family::new(
                "nixgate_upload_staging_bytes",
                Gauge,
                "Bytes of uploaded NARs waiting for their narinfo (within --upload-staging-size).",
            )
            .value(&self.upload_staging_bytes),
        ]
    }
}

/// Lines the log writer dropped (process-wide, kept by `telemetry`, not by [`Metrics`]).
fn log_family() -> Family {
    Family::new(
        "nixgate_log_lines_dropped_total",
        Kind::Counter,
        "Log lines dropped because stderr's reader was slow (queue full) or gone.",
    )
    .samples(std::iter::once((
        "",
        String::new(),
        crate::telemetry::dropped_lines() as f64,
    )))
}

/// `nixgate_build_info{version="…"} 1`, to join on in queries and dashboards.
fn build_info() -> Family {
    Family::new(
        "nixgate_build_info",
        Kind::Gauge,
        "Always 1; the labels say which build is running.",
    )
    .samples(std::iter::once((
        "",
        format!("version=\"{}\"", env!("CARGO_PKG_VERSION")),
        1.0,
    )))
}

/// The standard process families (names and meanings as the Prometheus client libraries').
fn process_families(p: &super::process::ProcessStats) -> Vec<Family> {
    use Kind::{Counter, Gauge};
    let one = |name, kind, help, v: f64| {
        Family::new(name, kind, help).samples(std::iter::once(("", String::new(), v)))
    };
    let mut v = vec![
        one(
            "process_cpu_seconds_total",
            Counter,
            "Total user and system CPU time spent in seconds.",
            p.cpu_seconds,
        ),
        one(
            "process_resident_memory_bytes",
            Gauge,
            "Resident memory size in bytes.",
            p.resident_bytes as f64,
        ),
        one(
            "process_virtual_memory_bytes",
            Gauge,
            "Virtual memory size in bytes.",
            p.virtual_bytes as f64,
        ),
        one(
            "process_open_fds",
            Gauge,
            "Number of open file descriptors.",
            p.open_fds as f64,
        ),
        one(
            "process_start_time_seconds",
            Gauge,
            "Start time of the process since unix epoch in seconds.",
            p.start_time_seconds,
        ),
    ];
    if let Some(max) = p.max_fds {
        v.push(one(
            "process_max_fds",
            Gauge,
            "Maximum number of open file descriptors.",
            max as f64,
        ));
    }
    v
}
