//! A NAR from the swarm of peers that hold it: their `.torrent`s are fetched over HTTP and
//! vetted against the narinfo ([`Expected::check`]), then the torrent engine downloads it.

use std::net::SocketAddr;
use std::sync::Arc;

use http::Method;
use url::Url;

use super::super::Fetcher;
use super::plan::Plan;
use crate::metrics::Source;
use crate::torrent::meta::{Expected, NarTorrent, MAX_TORRENT_FILE};
use crate::torrent::{TorrentBody, PORT_HEADER};
use crate::upstream::{Answer, Upstream};

/// The longest one holder may take to send its `.torrent` (headers and body, at most 1 MiB).
const TORRENT_DEADLINE: std::time::Duration = std::time::Duration::from_secs(3);
/// The longest asking every holder for its `.torrent` may take.
const TORRENTS_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// A swarm download under way.
pub(super) struct Swarm {
    /// The peers whose `.torrent` it was (put on probation if the bytes do not verify).
    pub holders: Vec<Arc<Upstream>>,
    pub body: TorrentBody,
}

/// The torrent the holders agreed on, who they are and where they listen.
struct Agreed {
    torrent: Option<NarTorrent>,
    holders: Vec<Arc<Upstream>>,
    addrs: Vec<SocketAddr>,
}

/// The torrent addresses of a peer: its host's addresses with the port it announced.
async fn peer_addrs(base: &Url, port: u16) -> Vec<SocketAddr> {
    match base.host() {
        Some(url::Host::Ipv4(a)) => vec![(a, port).into()],
        Some(url::Host::Ipv6(a)) => vec![(a, port).into()],
        Some(url::Host::Domain(d)) => tokio::net::lookup_host((d, port))
            .await
            .map(|a| a.collect())
            .unwrap_or_default(),
        None => Vec::new(),
    }
}

impl Fetcher {
    /// Fetch over BitTorrent from the peers that hold the NAR. Their `.torrent`s must match
    /// the narinfo (one file, name, FileSize, piece-length policy); a peer whose `.torrent`
    /// does not is counted and put on probation.
    pub(super) async fn open_torrent(&self, plan: &Plan) -> Option<Swarm> {
        let engine = self.torrent()?.clone();
        // The swarm is anybody's: its bytes are taken only against the signed NarHash.
        if !plan.nar_hash_checked() {
            return None;
        }
        let expected = Expected::for_nar(&plan.fh, plan.ext, plan.size?);
        let agreed = self.torrents_of_holders(plan, &expected).await;
        let torrent = agreed.torrent?;
        let addrs = agreed.addrs;
        match engine.fetch(&torrent, addrs.clone()).await {
            Ok(body) => {
                tracing::info!(file_hash = %plan.fh, info_hash = %torrent.info_hash_hex(), peers = ?addrs, "NAR from the swarm");
                Some(Swarm {
                    holders: agreed.holders,
                    body,
                })
            }
            Err(e) => {
                tracing::warn!(file_hash = %plan.fh, error = %e, "cannot start the torrent fetch");
                None
            }
        }
    }

    /// Asks every probable holder for its `.torrent`; keeps those that match `expected` and
    /// the first accepted one.
    async fn torrents_of_holders(&self, plan: &Plan, expected: &Expected) -> Agreed {
        let rel = format!("_p2p/v1/torrent/{}", plan.fh.to_nix32());
        let mut agreed = Agreed {
            torrent: None,
            holders: Vec::new(),
            addrs: Vec::new(),
        };
        let asked = std::time::Instant::now();
        for peer in self.peers.candidates(&plan.digest_key()) {
            // Drip-fed `.torrent`s must not hold the miss (and its coalesced runners).
            if asked.elapsed() >= TORRENTS_DEADLINE {
                tracing::info!(file_hash = %plan.fh, "no time left to ask more holders for the torrent");
                break;
            }
            let Ok(url) = peer.base.join(&rel) else {
                continue;
            };
            let fetched = tokio::time::timeout(TORRENT_DEADLINE, async {
                match self.client.peer_request(&peer, Method::GET, &url).await {
                    Ok(Answer::Found(body)) => {
                        let port = body
                            .headers
                            .get(PORT_HEADER)
                            .and_then(|v| v.to_str().ok()?.parse::<u16>().ok());
                        Some((port, body.read_all(MAX_TORRENT_FILE).await))
                    }
                    _ => None,
                }
            })
            .await;
            let (port, read) = match fetched {
                Ok(Some(got)) => got,
                Ok(None) => continue,
                Err(_) => {
                    self.metrics.untrusted(crate::metrics::Untrusted::TooSlow);
                    peer.breaker.failure();
                    continue;
                }
            };
            let checked = read
                .map_err(|e| e.to_string())
                .and_then(|b| expected.check(&b).map_err(|e| e.to_string()));
            let t = match checked {
                Ok(t) => t,
                Err(e) => {
                    self.metrics.verification_failure(Source::Torrent);
                    peer.breaker.probation(crate::peers::PROBATION);
                    tracing::warn!(peer = %peer.base, file_hash = %plan.fh, error = %e, "peer's .torrent refused; peer on probation");
                    continue;
                }
            };
            if agreed.torrent.as_ref().is_some_and(|c| *c != t) {
                tracing::warn!(peer = %peer.base, file_hash = %plan.fh, "peers disagree on the torrent; using the first");
                continue;
            }
            agreed.torrent = Some(t);
            if let Some(port) = port {
                agreed.addrs.extend(peer_addrs(&peer.base, port).await);
            }
            agreed.holders.push(peer);
        }
        agreed
    }
}
