//! The swarm as a NAR source: the peers that hold the NAR send their `.torrent`s over HTTP
//! (only-if-cached, [`TORRENT_DEADLINE`] each), which are vetted against the narinfo
//! ([`Expected::check`]), then the torrent engine downloads it. The swarm is anybody's: its
//! bytes are taken only against the signed NarHash (`Plan::nar_hash_checked`), and the
//! holders that vouched for bytes that do not verify are put on probation.

use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use http::Method;
use url::Url;

use super::super::{Fetcher, Remote, Verdict};
use super::plan::Plan;
use super::source::{Body, NarSource, Opened};
use crate::torrent::meta::{Expected, NarTorrent, MAX_TORRENT_FILE};
use crate::torrent::PORT_HEADER;
use crate::upstream::{Answer, Upstream};

/// The longest one holder may take to send its `.torrent` (headers and body, at most 1 MiB).
const TORRENT_DEADLINE: std::time::Duration = std::time::Duration::from_secs(3);
/// The longest asking every holder for its `.torrent` may take.
const TORRENTS_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// The swarm of the peers that hold the NAR.
pub(super) struct Swarm;

impl NarSource for Swarm {
    /// Not asked by URL: its holders are asked for `.torrent`s in [`Fetcher::open_swarm`].
    fn remotes(&self, _: &Fetcher, _: &Plan) -> Vec<(Remote, Url)> {
        Vec::new()
    }

    fn open<'a>(
        &'a self,
        f: &'a Fetcher,
        plan: &'a Plan,
        _: &'a mut Verdict,
    ) -> BoxFuture<'a, Option<Opened>> {
        Box::pin(f.open_swarm(plan, 0))
    }
}

/// The torrent the holders agreed on, who they are and where they listen.
#[derive(Default)]
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
    /// Fetches over BitTorrent from the peers that hold the NAR, from byte `offset` on (the
    /// bytes before it came from elsewhere). Their `.torrent`s must match the narinfo (one
    /// file, name, FileSize, piece-length policy); a peer whose `.torrent` does not is
    /// counted and put on probation.
    pub(super) async fn open_swarm(&self, plan: &Plan, offset: u64) -> Option<Opened> {
        let engine = self.torrent()?.clone();
        if !plan.nar_hash_checked() {
            return None;
        }
        let expected = Expected::for_nar(&plan.fh, plan.ext, plan.size?);
        let agreed = self.torrents_of_holders(plan, &expected).await;
        let torrent = agreed.torrent?;
        let addrs = agreed.addrs;
        let mut body = match engine.fetch(&torrent, addrs.clone()).await {
            Ok(body) => body,
            Err(e) => {
                tracing::warn!(file_hash = %plan.fh, error = %e, "cannot start the torrent fetch");
                return None;
            }
        };
        if offset > 0 {
            if let Err(e) = body.skip_to(offset).await {
                tracing::warn!(file_hash = %plan.fh, offset, error = %e, "cannot continue from the swarm");
                return None;
            }
        }
        tracing::info!(file_hash = %plan.fh, info_hash = %torrent.info_hash_hex(), peers = ?addrs, offset, "NAR from the swarm");
        let from = Remote::Swarm(agreed.holders);
        let body = Body::Torrent(body);
        Some(Opened { from, body })
    }

    /// Asks every probable holder for its `.torrent`; keeps those that match `expected` and
    /// the first accepted one.
    async fn torrents_of_holders(&self, plan: &Plan, expected: &Expected) -> Agreed {
        let rel = format!("_p2p/v1/torrent/{}", plan.fh.to_nix32());
        let mut agreed = Agreed::default();
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
            let Some((port, t)) = self.torrent_of(&peer, &url, expected).await else {
                continue;
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

    /// One holder's vetted `.torrent` and the port it seeds on; `None` when it has none, is
    /// too slow (its breaker counts it) or sends one that does not match (refused: counted,
    /// the peer on probation).
    async fn torrent_of(
        &self,
        peer: &Arc<Upstream>,
        url: &Url,
        expected: &Expected,
    ) -> Option<(Option<u16>, NarTorrent)> {
        let asked = Remote::Peer(peer.clone());
        let fetched = tokio::time::timeout(TORRENT_DEADLINE, async {
            let answer = asked.ask(&self.client, &self.metrics, Method::GET, url, 0);
            let Ok(Answer::Found(body)) = answer.await else {
                return None;
            };
            let port = body.headers.get(PORT_HEADER);
            let port = port.and_then(|v| v.to_str().ok()?.parse::<u16>().ok());
            Some((port, body.read_all(MAX_TORRENT_FILE).await))
        });
        let (port, read) = match fetched.await {
            Ok(got) => got?,
            Err(_) => {
                self.metrics.untrusted(crate::metrics::Untrusted::TooSlow);
                asked.broke();
                return None;
            }
        };
        let why = match read.map(|bytes| expected.check(&bytes)) {
            Ok(Ok(t)) => return Some((port, t)),
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        // The holder vouched for this torrent as the swarm's.
        Remote::Swarm(vec![peer.clone()]).refused(&self.metrics);
        tracing::warn!(peer = %peer.base, error = %why, "peer's .torrent refused; peer on probation");
        None
    }
}
