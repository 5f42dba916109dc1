//! The source policy for a NAR's bytes: upstreams in order, the swarm and then a peer over
//! HTTP when every upstream failed; with `peers-first`, the swarm first; with `http-first`, a
//! late upstream raced by the swarm.

use std::sync::Arc;

use bytes::Bytes;
use http::Method;

use super::super::verify::VerifyError;
use super::super::{Broke, FetchError, Fetcher, Origin};
use super::plan::Plan;
use super::swarm::Swarm;
use super::ACCELERATE_AFTER;
use crate::fetch::PeerPolicy;
use crate::metrics::Source;
use crate::torrent::TorrentBody;
use crate::upstream::{Answer, Upstream, UpstreamBody};

/// Where the bytes of a download come from.
pub(super) enum BytesFrom<'a> {
    Upstream(&'a Upstream),
    Peer(Arc<Upstream>),
    /// The fleet member that owns the NAR (trusted for routing, never for content).
    Fleet(Arc<Upstream>),
    /// The swarm; the peers whose `.torrent` it was.
    Torrent(Vec<Arc<Upstream>>),
}

impl BytesFrom<'_> {
    /// Who this is, for an error.
    pub fn origin(&self) -> Origin {
        match self {
            BytesFrom::Upstream(u) => Origin::Upstream(u.base.clone()),
            BytesFrom::Peer(p) => Origin::Peer(p.base.clone()),
            BytesFrom::Fleet(p) => Origin::Fleet(p.base.clone()),
            BytesFrom::Torrent(_) => Origin::Swarm,
        }
    }

    pub fn source(&self) -> Source {
        match self {
            BytesFrom::Upstream(_) => Source::Upstream,
            BytesFrom::Peer(_) => Source::Peer,
            BytesFrom::Fleet(_) => Source::Fleet,
            BytesFrom::Torrent(_) => Source::Torrent,
        }
    }

    /// The transfer broke: count it against the server (a stalled swarm is nobody's fault).
    pub fn failed(&self) {
        match self {
            BytesFrom::Upstream(u) => u.breaker.failure(),
            BytesFrom::Peer(p) | BytesFrom::Fleet(p) => p.breaker.failure(),
            BytesFrom::Torrent(_) => {}
        }
    }

    /// The peers that vouched for bytes that did not verify.
    pub fn liars(&self) -> Vec<Arc<Upstream>> {
        match self {
            BytesFrom::Upstream(_) => Vec::new(),
            BytesFrom::Peer(p) | BytesFrom::Fleet(p) => vec![p.clone()],
            BytesFrom::Torrent(holders) => holders.clone(),
        }
    }
}

/// A download's byte stream: an HTTP body or a torrent read back in order.
pub(super) enum Body {
    Http(UpstreamBody),
    Torrent(TorrentBody),
}

impl Body {
    pub async fn batch(&mut self, max: usize) -> Result<Option<Bytes>, Broke> {
        match self {
            Body::Http(b) => Ok(b.batch(max).await?),
            Body::Torrent(t) => t.batch(max).await.map_err(Broke::Swarm),
        }
    }
}

/// An opened source: who sends, and the stream.
pub(super) type Opened<'a> = (BytesFrom<'a>, Body);

/// A swarm download as a download's source.
fn from_swarm<'a>(swarm: Swarm) -> Opened<'a> {
    (BytesFrom::Torrent(swarm.holders), Body::Torrent(swarm.body))
}

impl Fetcher {
    /// Where a NAR's bytes come from. The fleet member that owns it first (unless this is a
    /// fleet request or we own it), then upstreams, and when all fail, the swarm of peers
    /// that hold it, then a peer over HTTP; with `peers-first`, the swarm first when a peer's
    /// digest says it holds the NAR. Bytes from members and peers are checked against the
    /// signed NarHash. `accelerable`: see [`Fetcher::accelerable`].
    pub(super) async fn open_source(
        &self,
        plan: &Plan,
        accelerable: bool,
    ) -> Result<Opened<'_>, FetchError> {
        if let Some(opened) = self.open_owner(plan).await {
            return Ok(opened);
        }
        if self.tuning.policy == PeerPolicy::PeersFirst
            && self.peers.probable_holders(&plan.digest_key()) > 0
        {
            if let Some(swarm) = self.open_torrent(plan).await {
                return Ok(from_swarm(swarm));
            }
        }
        // http-first: an upstream whose first byte is late for a large NAR a peer holds is
        // raced by the swarm; whichever answers first is used (the other request is dropped).
        let first = self.open_first(plan);
        tokio::pin!(first);
        if accelerable {
            tokio::select! {
                r = &mut first => return self.after_upstream(plan, r).await,
                _ = tokio::time::sleep(ACCELERATE_AFTER) => {}
            }
            tracing::info!(file_hash = %plan.fh, "upstream first byte late: asking the swarm too");
            tokio::select! {
                r = &mut first => return self.after_upstream(plan, r).await,
                Some(swarm) = self.open_torrent(plan) => return Ok(from_swarm(swarm)),
            }
        }
        let r = first.await;
        self.after_upstream(plan, r).await
    }

    /// The upstream's answer, or when every upstream failed: the swarm, then a peer over HTTP.
    async fn after_upstream<'a>(
        &'a self,
        plan: &Plan,
        upstream: Result<(&'a Upstream, UpstreamBody), FetchError>,
    ) -> Result<Opened<'a>, FetchError> {
        match upstream {
            Ok((up, body)) => Ok((BytesFrom::Upstream(up), Body::Http(body))),
            Err(e) => {
                if let Some(swarm) = self.open_torrent(plan).await {
                    return Ok(from_swarm(swarm));
                }
                match self.open_peer(plan).await {
                    Some((peer, body)) => Ok((BytesFrom::Peer(peer), Body::Http(body))),
                    None => Err(e),
                }
            }
        }
    }

    /// The first candidate that answers 200 with a plausible length.
    pub(super) async fn open_first(
        &self,
        plan: &Plan,
    ) -> Result<(&Upstream, UpstreamBody), FetchError> {
        let mut failure = None;
        for (i, url) in &plan.candidates {
            let up = &self.upstreams[*i];
            match self
                .client
                .request(up, Method::GET, url, &self.metrics)
                .await
            {
                Ok(Answer::Found(b)) => {
                    if let (Some(got), Some(want)) = (b.content_length, plan.size) {
                        if got != want {
                            self.metrics.verification_failure(Source::Upstream);
                            tracing::warn!(url = %url, got, want, "upstream NAR length differs from FileSize");
                            failure = Some(VerifyError::Length { got, want }.into());
                            continue;
                        }
                    }
                    return Ok((up, b));
                }
                Ok(Answer::NotFound) => {}
                Err(e) => {
                    tracing::warn!(url = %url, error = %e, "NAR fetch failed");
                    failure = Some(FetchError::unavailable(up, &e));
                }
            }
        }
        Err(failure.unwrap_or(FetchError::NotFound))
    }
}
