//! Narinfo misses: ask each upstream in order, accept only a narinfo whose signature verifies
//! against a trusted key, rewrite its URL to nixgate's own NAR name, store it.
//!
//! What is stored (see `store`): `<absolute upstream NAR URL>\n<narinfo as served>`.

use std::sync::Arc;

use bytes::Bytes;
use http::Method;
use url::Url;

use super::{Ask, FetchError, Fetcher};
use crate::metrics::{Source, Untrusted};
use crate::nix::narinfo::MAX_NARINFO_BYTES;
use crate::nix::store_path::StorePathHash;
use crate::upstream::{Answer, Upstream, UpstreamError};

mod accept;

pub(super) use accept::{accept, Accepted, NarAt};
pub use accept::{parse_stored, served_part, upstream_url, Rejected};

/// How a narinfo is asked for.
#[derive(Clone, Copy)]
pub(super) enum Via {
    Upstream,
    /// Only-if-cached, from a peer (fallback).
    Peer,
    /// From the fleet member that owns it.
    Fleet,
}

impl Fetcher {
    /// [`accept`] for a narinfo from the upstream `up`: its `URL` is followed only within
    /// the configured upstreams' origins; a refusal is counted and logged (the NAR then
    /// comes from the standard location under `up`).
    pub(super) fn accept_upstream(
        &self,
        h: &StorePathHash,
        up: &Upstream,
        body: &[u8],
    ) -> Result<Accepted, Rejected> {
        // An absolute URL only on this upstream's own origin: on another configured upstream
        // it would be fetched with that one's credentials, at a path it never published.
        let origins = [&up.base];
        let at = NarAt::Upstream {
            base: &up.base,
            origins: &origins,
        };
        let accepted = accept(h, at, body, &self.keys).inspect_err(|e| {
            if matches!(e, Rejected::Uncheckable(_)) {
                self.metrics.untrusted(Untrusted::Compression);
            }
        })?;
        if let Some(why) = &accepted.url_refused {
            self.metrics.untrusted(Untrusted::NarinfoUrl);
            tracing::warn!(upstream = %up.base, hash = %h, reason = %why, "narinfo URL not followed; fetching the NAR from its standard location");
        }
        Ok(accepted)
    }

    /// Where a NAR whose narinfo came from `member` is refetched: the first upstream's
    /// standard location (the member's own base only when no upstream is configured).
    fn refetch_base<'a>(&'a self, member: &'a Upstream) -> &'a Url {
        self.upstreams.first().map_or(&member.base, |u| &u.base)
    }

    /// The narinfo for `h` as served, from cache or (unless `only_if_cached`) upstream.
    /// The boolean is true on a cache hit.
    pub async fn narinfo(
        self: &Arc<Self>,
        h: StorePathHash,
        ask: Ask,
    ) -> Result<(Bytes, bool), FetchError> {
        // Uploaded paths are held apart from the cache, and served first (no upstream has them).
        if let Some(b) = self.store.uploads().narinfo(&h).await {
            return Ok((b, true));
        }
        // A narinfo read from disk is checked once: damaged files are dropped and refetched.
        let valid = |stored: &Bytes, fh: &crate::nix::hash::Sha256| {
            parse_stored(stored)
                .is_some_and(|(_, ni)| ni.base.hash == h && ni.file_hash == Some(*fh))
        };
        if let Some((_, stored)) = self.store.narinfo(&h, valid).await {
            // A peer's narinfo gives way to an upstream's once one answers (provenance.rs).
            if let Some(fresh) = self.revalidated(h).await {
                return Ok((served_part(&fresh), false));
            }
            return Ok((served_part(&stored), true));
        }
        if ask.only_if_cached {
            return Err(FetchError::NotFound);
        }
        let key = format!("{h}.narinfo");
        if self.is_negative(&key) {
            return Err(FetchError::NotFound);
        }
        // A fleet request, or a key we own, is fetched by us; such fetches coalesce apart
        // from ours that wait on an owner, so members that briefly disagree on the owner
        // cannot wait on each other.
        let owners = if ask.fleet {
            Vec::new()
        } else {
            self.peers.owners(&h.to_string())
        };
        let this = self.clone();
        let (res, joined) = self
            .narinfos
            .run((h, owners.is_empty()), move || async move {
                this.fetch_narinfo(h, owners).await
            })
            .await;
        if joined {
            self.metrics.coalesced();
        }
        res.map(|stored| (served_part(&stored), false))
    }

    async fn fetch_narinfo(
        self: Arc<Self>,
        h: StorePathHash,
        owners: Vec<Arc<Upstream>>,
    ) -> Result<Bytes, FetchError> {
        let key = h.to_string();
        if let Some(answer) = self.narinfo_from_members(h, owners, Via::Fleet).await {
            return answer;
        }
        // We own it: the member that owned it before us may hold it already.
        let successor = self.peers.successor(&key).into_iter().collect();
        if let Some(answer) = self.narinfo_from_members(h, successor, Via::Peer).await {
            return answer;
        }
        let mut failure = None;
        // A narinfo refused (untrusted, contradicting the cache) is absent, not "not found":
        // only a plain 404 from every upstream is remembered.
        let mut refused = false;
        for up in &self.upstreams {
            let body = match self.get_narinfo(up, h, Via::Upstream).await {
                Ok(Some(b)) => b,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(upstream = %up.base, hash = %h, error = %e, "narinfo fetch failed");
                    failure = Some(FetchError::unavailable(up, &e));
                    continue;
                }
            };
            let vetted = match self.accept_upstream(&h, up, &body) {
                Ok(a) => self.vet_narinfo(a.fh, &a.stored, true).await.map(|()| a),
                Err(why) => Err(why),
            };
            match vetted {
                Ok(a) => return self.save(h, a.fh, a.stored, Source::Upstream).await,
                Err(why) => {
                    refused = true;
                    self.metrics.verification_failure(Source::Upstream);
                    tracing::warn!(upstream = %up.base, hash = %h, reason = %why, "rejected upstream narinfo");
                }
            }
        }
        match failure {
            Some(e) => match self.narinfo_from_peers(h).await {
                Some(stored) => Ok(stored),
                None => Err(e),
            },
            None => {
                if !refused {
                    self.remember_not_found(format!("{h}.narinfo"));
                }
                Err(FetchError::NotFound)
            }
        }
    }

    /// The narinfo body from `src` (`None`: not there), asked as `via` says.
    pub(super) async fn get_narinfo(
        &self,
        src: &Upstream,
        h: StorePathHash,
        via: Via,
    ) -> Result<Option<Bytes>, UpstreamError> {
        let deadline = self.narinfo_deadline(via);
        let got = tokio::time::timeout(deadline, self.read_narinfo(src, h, via)).await;
        got.unwrap_or_else(|_| {
            // Drip-fed or hung: the next source is asked, and coalesced waiters follow.
            src.breaker.failure();
            self.metrics.untrusted(Untrusted::TooSlow);
            Err(UpstreamError::Deadline(deadline))
        })
    }

    /// The whole time a narinfo may take from a source asked as `via`: `--narinfo-timeout`
    /// for upstreams; a peer answers from its disk, a fleet owner after its upstream's
    /// first bytes, so they get less.
    fn narinfo_deadline(&self, via: Via) -> std::time::Duration {
        use crate::upstream::{FLEET_FIRST_BYTE, PEER_FIRST_BYTE};
        let limit = self.client.timeouts().narinfo;
        let second = std::time::Duration::from_secs(1);
        match via {
            Via::Upstream => limit,
            Via::Peer => limit.min(PEER_FIRST_BYTE + second),
            Via::Fleet => limit.min(FLEET_FIRST_BYTE + second),
        }
    }

    async fn read_narinfo(
        &self,
        src: &Upstream,
        h: StorePathHash,
        via: Via,
    ) -> Result<Option<Bytes>, UpstreamError> {
        let url = src
            .base
            .join(&format!("{h}.narinfo"))
            .expect("hash is URL-safe");
        let answer = match via {
            Via::Upstream => {
                self.client
                    .request(src, Method::GET, &url, &self.metrics)
                    .await
            }
            Via::Peer => self.client.peer_request(src, Method::GET, &url).await,
            Via::Fleet => self.client.fleet_request(src, Method::GET, &url).await,
        };
        match answer? {
            Answer::Found(b) => b.read_all(MAX_NARINFO_BYTES).await.map(Some),
            Answer::NotFound => Ok(None),
        }
    }

    /// Asks fleet `members` for `h` in order, as the upstream would be asked: a narinfo is
    /// taken only with a trusted signature for the right path; a member that sends anything
    /// else is counted and put on probation, and the next is asked. An owner's 404 (`via`
    /// fleet) is taken as the upstream's (it asked them) but not remembered: negative entries
    /// come only from our own upstreams; a successor's (`via` peer, only-if-cached) only means
    /// it does not hold it. `None`: nobody had an answer.
    async fn narinfo_from_members(
        &self,
        h: StorePathHash,
        members: Vec<Arc<Upstream>>,
        via: Via,
    ) -> Option<Result<Bytes, FetchError>> {
        for owner in members {
            let body = match self.get_narinfo(&owner, h, via).await {
                Ok(Some(b)) => b,
                Ok(None) if matches!(via, Via::Peer) => continue,
                Ok(None) => return Some(Err(FetchError::NotFound)),
                Err(e) => {
                    tracing::info!(owner = %owner.base, hash = %h, error = %e, "fleet owner failed; trying the next");
                    continue;
                }
            };
            let at = NarAt::Standard(self.refetch_base(&owner));
            match accept(&h, at, &body, &self.keys) {
                // Its FileHash is not under the signature: vetted against what the cache
                // holds, like a peer's (provenance.rs); its NAR is checked against NarHash.
                Ok(Accepted { fh, stored, .. }) => match self.vet_narinfo(fh, &stored, false).await
                {
                    Ok(()) => return Some(self.save(h, fh, stored, Source::Fleet).await),
                    Err(why) => {
                        self.metrics.verification_failure(Source::Fleet);
                        owner.breaker.probation(crate::peers::PROBATION);
                        tracing::warn!(owner = %owner.base, hash = %h, reason = %why, "fleet narinfo contradicts the cache; member on probation");
                    }
                },
                Err(why) => {
                    self.metrics.verification_failure(Source::Fleet);
                    owner.breaker.probation(crate::peers::PROBATION);
                    tracing::warn!(owner = %owner.base, hash = %h, reason = %why, "rejected fleet narinfo; member on probation");
                }
            }
        }
        None
    }

    /// Every upstream failed: ask the peers (only-if-cached). A narinfo is taken only with a
    /// trusted signature; a peer that sends anything else is counted and put on probation.
    async fn narinfo_from_peers(&self, h: StorePathHash) -> Option<Bytes> {
        let key = crate::store::digest::narinfo_key(&h.to_string());
        for peer in self.peers.candidates(&key) {
            let body = match self.get_narinfo(&peer, h, Via::Peer).await {
                Ok(Some(b)) => b,
                Ok(None) => continue,
                Err(e) => {
                    tracing::debug!(peer = %peer.base, hash = %h, error = %e, "peer narinfo fetch failed");
                    continue;
                }
            };
            // Refetches after eviction go to the first upstream's standard location.
            let at = NarAt::Standard(self.refetch_base(&peer));
            match accept(&h, at, &body, &self.keys) {
                // Vetted against the cache, stored and marked as the peer's (provenance.rs).
                Ok(Accepted { fh, stored, .. }) => {
                    match self.keep_peer_narinfo(&peer, h, fh, stored).await {
                        Some(saved) => return saved,
                        None => continue,
                    }
                }
                Err(why) => {
                    self.metrics.verification_failure(Source::Peer);
                    peer.breaker.probation(crate::peers::PROBATION);
                    tracing::warn!(peer = %peer.base, hash = %h, reason = %why, "rejected peer narinfo; peer on probation");
                }
            }
        }
        None
    }

    pub(super) async fn save(
        &self,
        h: StorePathHash,
        fh: crate::nix::hash::Sha256,
        stored: String,
        source: Source,
    ) -> Result<Bytes, FetchError> {
        let stored = Bytes::from(stored);
        let (store, b) = (self.store.clone(), stored.clone());
        let stored_ok = tokio::task::spawn_blocking(move || {
            let mut w = store.begin_narinfo(h, fh)?;
            w.write_all(&b)?;
            w.commit()
        })
        .await
        .map_err(|e| FetchError::Storage(e.to_string()))
        .and_then(|r| r.map_err(|e| FetchError::Storage(e.to_string())));
        // A full or broken disk degrades: the verified narinfo is served, just not cached.
        if let Err(e) = stored_ok {
            tracing::warn!(error = %e, hash = %h, "cannot store narinfo; serving it uncached");
        }
        self.metrics.fetched(source, stored.len() as u64);
        Ok(stored)
    }
}
