//! The narinfo source policy, as data: [`NarinfoSource`] is one place a narinfo may come
//! from, [`ORDER`] the list, and [`Fetcher::narinfo_from`] the one step every remote goes
//! through (ask with its deadline, accept, vet, blame, store). The order: the key's fleet
//! owners (`X-Nixgate-Fleet`; an owner's 404 is the answer, not remembered), then the member
//! that owned it before us (only-if-cached); the object store; the upstreams; and, only when
//! an upstream failed, the peers (only-if-cached) and the object store if it was skipped as
//! overdue.
//!
//! Trust rules (docs/PROTOCOL.md §3): every narinfo needs a trusted signature for the path
//! asked (`accept`); an upstream's `URL` is followed within its own origin (`nar_url`),
//! anyone else's is ignored and the NAR refetched from the first upstream's standard
//! location; every narinfo is vetted against what the cache holds for its FileHash
//! (`provenance`); a member or peer that sends one that fails is counted and put on
//! probation; only the upstreams' answer decides 404 against 503 ([`Verdict`]).

use std::sync::Arc;

use bytes::Bytes;
use http::Method;
use url::Url;

use super::super::{Fetcher, Remote, Verdict};
use super::{accept, Accepted, NarAt, Rejected};
use crate::metrics::Untrusted;
use crate::nix::narinfo::MAX_NARINFO_BYTES;
use crate::nix::store_path::StorePathHash;
use crate::upstream::{Answer, Upstream, UpstreamError};

/// A narinfo miss: the path, and the fleet members to ask first (empty for a fleet request
/// or a key we own).
pub(in crate::fetch) struct Miss {
    pub h: StorePathHash,
    pub owners: Vec<Arc<Upstream>>,
}

/// One place a narinfo may come from. Adding one: a unit struct that implements this (in
/// its own file beside this one) and one line in [`ORDER`].
pub(in crate::fetch) trait NarinfoSource: Sync {
    /// The remotes to ask, in order, given what the upstreams answered so far.
    fn remotes(&self, f: &Fetcher, miss: &Miss, upstreams: &Verdict) -> Vec<Remote>;
}

/// The narinfo sources, best first.
pub(in crate::fetch) const ORDER: &[&dyn NarinfoSource] =
    &[&Fleet, &Bucket, &Upstreams, &Peers, &BucketAgain];

/// The key's owners, then the member that owned it before us.
struct Fleet;

impl NarinfoSource for Fleet {
    fn remotes(&self, f: &Fetcher, miss: &Miss, _: &Verdict) -> Vec<Remote> {
        let owners = miss.owners.iter().cloned().map(Remote::Owner);
        let successor = f.peers.successor(&miss.h.to_string());
        owners.chain(successor.map(Remote::Successor)).collect()
    }
}

/// The object store (`--object-store`), if any: untrusted like a peer (its narinfo goes
/// through [`Fetcher::narinfo_from`] like every other: a trusted signature, its `URL` ignored,
/// vetted); its 404 and failures never decide 404 against 503 ([`Verdict`]: upstreams only).
/// Skipped while a read of it is overdue or its circuit is open (`Bucket::is_lagging`).
struct Bucket;

impl NarinfoSource for Bucket {
    fn remotes(&self, f: &Fetcher, _: &Miss, _: &Verdict) -> Vec<Remote> {
        let live = f.bucket.iter().filter(|b| !b.is_lagging());
        live.cloned().map(Remote::Bucket).collect()
    }
}

/// The bucket skipped as overdue, asked after all when an upstream failed: a slow bucket is
/// better than a 503. Never while its circuit is open, and never twice in one walk
/// (`walk.rs`).
struct BucketAgain;

impl NarinfoSource for BucketAgain {
    fn remotes(&self, f: &Fetcher, _: &Miss, upstreams: &Verdict) -> Vec<Remote> {
        if upstreams.failure.is_none() {
            return Vec::new();
        }
        let closed = f.bucket.iter().filter(|b| !b.at.breaker.is_open());
        closed.cloned().map(Remote::Bucket).collect()
    }
}

/// The configured upstreams, in order.
pub(in crate::fetch) struct Upstreams;

impl NarinfoSource for Upstreams {
    fn remotes(&self, f: &Fetcher, _: &Miss, _: &Verdict) -> Vec<Remote> {
        f.upstreams.iter().cloned().map(Remote::Upstream).collect()
    }
}

/// The peers whose digest may hold it, only when an upstream failed.
struct Peers;

impl NarinfoSource for Peers {
    fn remotes(&self, f: &Fetcher, miss: &Miss, upstreams: &Verdict) -> Vec<Remote> {
        if upstreams.failure.is_none() {
            return Vec::new();
        }
        let key = crate::store::digest::narinfo_key(&miss.h.to_string());
        f.peers
            .candidates(&key)
            .into_iter()
            .map(Remote::Peer)
            .collect()
    }
}

/// What asking one remote gave.
pub(in crate::fetch) enum Asked {
    /// A narinfo, accepted, vetted and stored (as stored).
    Taken(Bytes),
    /// An owner's 404: the fleet asked the upstreams, so it is the answer.
    Absent,
    /// Nothing usable: ask the next.
    Next,
}

impl Fetcher {
    /// Asks `remote` for the narinfo of `h` and takes it if it passes every check; a
    /// failure or refusal is noted in `verdict` (when `remote` is an upstream), a refusal
    /// counted and its sender put on probation.
    pub(in crate::fetch) async fn narinfo_from(
        &self,
        remote: &Remote,
        h: StorePathHash,
        verdict: &mut Verdict,
    ) -> Asked {
        let got = self.get_narinfo(remote, h).await;
        self.take_narinfo(remote, h, got, verdict).await
    }

    /// What `remote` sent for `h` (`got`, from [`Fetcher::get_narinfo`]), taken if it
    /// passes every check; a failure or refusal noted in `verdict` as for
    /// [`Fetcher::narinfo_from`].
    pub(super) async fn take_narinfo(
        &self,
        remote: &Remote,
        h: StorePathHash,
        got: Result<Option<Bytes>, UpstreamError>,
        verdict: &mut Verdict,
    ) -> Asked {
        let body = match got {
            Ok(Some(b)) => b,
            Ok(None) if remote.absent_is_final() => return Asked::Absent,
            Ok(None) => return Asked::Next,
            Err(e) => {
                // An open circuit was logged once when it opened; a skip is not news.
                if e.is_skip() {
                    tracing::debug!(%remote, hash = %h, "circuit open; trying the next");
                } else {
                    tracing::info!(%remote, hash = %h, error = %e, "narinfo fetch failed; trying the next");
                }
                verdict.unavailable(remote, e);
                return Asked::Next;
            }
        };
        let accepted = match self.accept_from(remote, &h, &body) {
            Ok(a) => self
                .vet_narinfo(a.fh, &a.stored, remote.is_upstream())
                .await
                .map(|()| a),
            Err(why) => Err(why),
        };
        let Accepted { fh, stored, .. } = match accepted {
            Ok(a) => a,
            Err(why) => {
                remote.refused(&self.metrics);
                remote.refused_object(&format!("{h}.narinfo"));
                verdict.refused(remote);
                tracing::warn!(%remote, hash = %h, reason = %why, "narinfo refused");
                return Asked::Next;
            }
        };
        let saved = self.save(h, fh, stored, remote.source()).await;
        if let (Remote::Peer(peer), Ok(_)) = (remote, &saved) {
            // Replaced by an upstream's as soon as one answers (provenance.rs).
            self.provenance.mark(h, &peer.base);
            tracing::info!(peer = %peer.base, hash = %h, "narinfo from peer");
        }
        match saved {
            Ok(stored) => Asked::Taken(stored),
            Err(_) => Asked::Next,
        }
    }

    /// [`accept`] as `remote`'s role allows: an upstream's `URL` is followed only within its
    /// own origin (a refusal is counted and logged: the NAR then comes from the standard
    /// location under it); anyone else's is ignored, and a refetch after eviction goes to the
    /// first upstream's standard location.
    fn accept_from(
        &self,
        remote: &Remote,
        h: &StorePathHash,
        body: &[u8],
    ) -> Result<Accepted, Rejected> {
        let Remote::Upstream(up) = remote else {
            let member = remote.http().map(|m| &m.base);
            let base = self.upstreams.first().map(|u| &u.base).or(member);
            let base = base.expect("a remote asked over HTTP has a base");
            return accept(h, NarAt::Standard(base), body, &self.keys);
        };
        // On another configured upstream an absolute URL would be fetched with that one's
        // credentials, at a path it never published.
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

    /// The narinfo body from `remote` (`None`: not there), within its deadline; a failure
    /// is counted ([`Remote::failed`]) here, so a request nobody waits for any more (a
    /// hedged bucket's, `walk.rs`) is counted too, and the bucket's answer clears its lag.
    pub(super) async fn get_narinfo(
        &self,
        remote: &Remote,
        h: StorePathHash,
    ) -> Result<Option<Bytes>, UpstreamError> {
        let deadline = remote.narinfo_deadline(self.client.timeouts().narinfo);
        let got = tokio::time::timeout(deadline, self.read_narinfo(remote, h)).await;
        let got = got.unwrap_or_else(|_| {
            // Drip-fed or hung: the next source is asked, and coalesced waiters follow.
            remote.broke();
            self.metrics.untrusted(Untrusted::TooSlow);
            Err(UpstreamError::Deadline(deadline))
        });
        match (&got, remote) {
            (Err(e), _) => remote.failed(&self.metrics, e),
            (Ok(_), Remote::Bucket(b)) => b.answered(),
            (Ok(_), _) => {}
        }
        got
    }

    async fn read_narinfo(
        &self,
        remote: &Remote,
        h: StorePathHash,
    ) -> Result<Option<Bytes>, UpstreamError> {
        let Some(base) = remote.http().map(|r| &r.base) else {
            return Ok(None);
        };
        let url: Url = base
            .join(&format!("{h}.narinfo"))
            .expect("hash is URL-safe");
        let asked = remote.ask(&self.client, &self.metrics, Method::GET, &url, 0);
        match asked.await? {
            Answer::Found(b) => b.read_all(MAX_NARINFO_BYTES).await.map(Some),
            Answer::NotFound => Ok(None),
        }
    }
}
