//! Who is asked: a [`Remote`] names one remote and the role it is asked in (a configured
//! upstream, the key's fleet owner, the member that owned the key before us, a peer, or the
//! swarm of holders). The role decides everything that differs between sources, in one
//! place: the request flavour ([`Remote::asker`]: credentials, only-if-cached or
//! `X-Nixgate-Fleet`), the narinfo deadline, the metrics label ([`Remote::source`]), the
//! error's origin, whose breaker a broken transfer counts against, and who is put on
//! probation when the data does not verify ([`Remote::refused`]).
//!
//! Trust rules (docs/PROTOCOL.md §3) kept here: only an upstream is sent credentials and
//! counted as upstream traffic; only an upstream's answer decides between "not found" and
//! "unavailable" ([`Verdict`], so negative entries come from upstreams only); upstreams are
//! never put on probation, every other remote that sends data that fails a check is.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use url::Url;

use super::error::{FetchError, Origin};
use crate::metrics::{Metrics, ObjectStoreError, Source};
use crate::objstore::Bucket;
use crate::upstream::{
    Answer, Asker, Upstream, UpstreamClient, UpstreamError, BUCKET_FIRST_BYTE, FLEET_FIRST_BYTE,
    PEER_FIRST_BYTE,
};

/// One remote in the role it is asked in.
#[derive(Clone, Debug)]
pub enum Remote {
    /// A configured upstream: trusted for availability (its 404 is believed and remembered),
    /// the only one sent credentials; a narinfo's `URL` from it may be followed.
    Upstream(Arc<Upstream>),
    /// A fleet member asked as the key's owner (`X-Nixgate-Fleet`): it fetches for the fleet,
    /// so its 404 is believed (not remembered).
    Owner(Arc<Upstream>),
    /// The member that owned the key before us, asked only-if-cached; counted as fleet.
    Successor(Arc<Upstream>),
    /// A peer appliance, asked only-if-cached.
    Peer(Arc<Upstream>),
    /// The swarm; the peers whose `.torrent` it was (they vouched for it).
    Swarm(Vec<Arc<Upstream>>),
    /// The object store (`--object-store`): untrusted like a peer (its narinfos need a
    /// trusted signature, its NARs are fetched by FileHash and checked against the signed
    /// NarHash), its 404 never final nor remembered, asked with presigned URLs.
    Bucket(Arc<Bucket>),
}

impl Remote {
    /// The remote asked over HTTP (the swarm is not).
    pub fn http(&self) -> Option<&Arc<Upstream>> {
        match self {
            Remote::Upstream(r) | Remote::Owner(r) | Remote::Successor(r) | Remote::Peer(r) => {
                Some(r)
            }
            Remote::Bucket(b) => Some(&b.at),
            Remote::Swarm(_) => None,
        }
    }

    pub fn is_upstream(&self) -> bool {
        matches!(self, Remote::Upstream(_))
    }

    /// The request flavour; the swarm's holders are asked (for `.torrent`s) as peers.
    pub fn asker<'m>(&self, metrics: &'m Metrics) -> Asker<'m> {
        match self {
            Remote::Upstream(_) => Asker::Upstream(metrics),
            Remote::Owner(_) => Asker::Fleet,
            Remote::Successor(_) | Remote::Peer(_) | Remote::Swarm(_) => Asker::Peer,
            Remote::Bucket(_) => Asker::Bucket,
        }
    }

    /// Asks it for `url` from byte `offset` on (see [`UpstreamClient::request`]). The swarm
    /// has no URLs: nothing is there. The bucket is asked for the key of `url` (a URL under
    /// its prefix) with a presigned URL, which never leaves this function (its signature is
    /// a bearer credential).
    pub async fn ask(
        &self,
        client: &UpstreamClient,
        metrics: &Metrics,
        method: Method,
        url: &Url,
        offset: u64,
    ) -> Result<Answer, UpstreamError> {
        if let Remote::Bucket(b) = self {
            return ask_bucket(b, client, method, url, offset).await;
        }
        let Some(at) = self.http() else {
            return Ok(Answer::NotFound);
        };
        let asker = self.asker(metrics);
        client.request(at, asker, method, url, offset).await
    }

    /// The metrics label of what it sends (`nixgate_*{source}`).
    pub fn source(&self) -> Source {
        match self {
            Remote::Upstream(_) => Source::Upstream,
            Remote::Owner(_) | Remote::Successor(_) => Source::Fleet,
            Remote::Peer(_) => Source::Peer,
            Remote::Swarm(_) => Source::Torrent,
            Remote::Bucket(_) => Source::Bucket,
        }
    }

    /// Who it is, for an error.
    pub fn origin(&self) -> Origin {
        match self {
            Remote::Upstream(u) => Origin::Upstream(u.base.clone()),
            Remote::Owner(m) | Remote::Successor(m) => Origin::Fleet(m.base.clone()),
            Remote::Peer(p) => Origin::Peer(p.base.clone()),
            Remote::Swarm(_) => Origin::Swarm,
            Remote::Bucket(b) => Origin::Bucket(b.at.base.clone()),
        }
    }

    /// The longest a whole narinfo may take from it: `limit` (`--narinfo-timeout`) from an
    /// upstream; a peer answers from its disk, a fleet owner after its upstream's first
    /// bytes, so they get less.
    pub fn narinfo_deadline(&self, limit: Duration) -> Duration {
        let second = Duration::from_secs(1);
        match self {
            Remote::Upstream(_) => limit,
            Remote::Owner(_) => limit.min(FLEET_FIRST_BYTE + second),
            Remote::Successor(_) | Remote::Peer(_) | Remote::Swarm(_) => {
                limit.min(PEER_FIRST_BYTE + second)
            }
            Remote::Bucket(_) => limit.min(BUCKET_FIRST_BYTE + second),
        }
    }

    /// Whether its "not found" is believed: an owner asked the upstreams for the fleet (an
    /// upstream's 404 is believed too, but only after every upstream was asked).
    pub fn absent_is_final(&self) -> bool {
        matches!(self, Remote::Owner(_))
    }

    /// The transfer broke: count it against the server (a stalled swarm is nobody's fault).
    pub fn broke(&self) {
        if let Some(at) = self.http() {
            at.breaker.failure();
        }
    }

    /// The peers and members that vouched for what it sent (an upstream is trusted for
    /// availability only, and never put on probation; nor is the bucket: one tampered
    /// object is refused and counted, it does not take the tier away).
    pub fn liars(&self) -> Vec<Arc<Upstream>> {
        match self {
            Remote::Upstream(_) | Remote::Bucket(_) => Vec::new(),
            Remote::Owner(m) | Remote::Successor(m) | Remote::Peer(m) => vec![m.clone()],
            Remote::Swarm(holders) => holders.clone(),
        }
    }

    /// It could not deliver (`e`, from the request or its body): the bucket's failures are
    /// counted by kind in `nixgate_object_store_errors_total` (a skip is not a failure), and
    /// a body that broke after its headers (which told the breaker "answered") counts
    /// against its breaker: a bucket that hangs after the headers opens its circuit too.
    pub fn failed(&self, metrics: &Metrics, e: &UpstreamError) {
        let Remote::Bucket(b) = self else {
            return;
        };
        if let Some(kind) = bucket_error(e) {
            metrics.object_store.error(kind);
        }
        if matches!(
            e,
            UpstreamError::Stalled(_) | UpstreamError::TooSlow { .. } | UpstreamError::Body(_)
        ) {
            b.at.breaker.failure();
        }
    }

    /// Its object at `rel` (relative to its base) failed a check: the bucket does not
    /// offer it again for a while, and the next write-behind overwrites it. Others: nothing.
    pub fn refused_object(&self, rel: &str) {
        if let Remote::Bucket(b) = self {
            b.refuse(b.keys.under(rel));
        }
    }

    /// What it sent failed a check: counted under its label, and whoever vouched for it put
    /// on probation (`peers::PROBATION`), so it leaves the owner rotation and peer lists.
    pub fn refused(&self, metrics: &Metrics) {
        metrics.verification_failure(self.source());
        if let Remote::Bucket(_) = self {
            metrics.object_store.error(ObjectStoreError::Refused);
        }
        for liar in self.liars() {
            liar.breaker.probation(crate::peers::PROBATION);
        }
    }
}

impl std::fmt::Display for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Remote::Owner(m) => write!(f, "fleet owner {m}"),
            Remote::Successor(m) => write!(f, "previous owner {m}"),
            Remote::Bucket(b) => write!(f, "object store {}", b.at),
            other => other.origin().fmt(f),
        }
    }
}

/// Asks the bucket for the object under `url` (presigned for `method`).
async fn ask_bucket(
    b: &Bucket,
    client: &UpstreamClient,
    method: Method,
    url: &Url,
    offset: u64,
) -> Result<Answer, UpstreamError> {
    let Some(key) = b.key_of(url) else {
        return Ok(Answer::NotFound);
    };
    let signed = b.presign(&method, &key);
    client
        .request(&b.at, Asker::Bucket, method, &signed, offset)
        .await
}

/// The kind of a bucket request's failure (`None`: a skip, the circuit is open).
fn bucket_error(e: &UpstreamError) -> Option<ObjectStoreError> {
    Some(match e {
        UpstreamError::CircuitOpen => return None,
        UpstreamError::Connect(_) => ObjectStoreError::Connect,
        UpstreamError::FirstByteTimeout(_)
        | UpstreamError::Stalled(_)
        | UpstreamError::TooSlow { .. }
        | UpstreamError::Deadline(_) => ObjectStoreError::Timeout,
        UpstreamError::Status(_) => ObjectStoreError::Server,
        UpstreamError::AuthFailed(_) | UpstreamError::Denied(_) => ObjectStoreError::Denied,
        UpstreamError::Body(_) | UpstreamError::TooLarge(_) => ObjectStoreError::Other,
    })
}

/// What the upstreams answered so far: the one answer trusted for availability. A failure
/// of anyone else (an owner, a peer, the swarm) never turns a 404 into a 503, and a refused
/// narinfo is absent but never remembered as not found.
#[derive(Debug, Default)]
pub struct Verdict {
    /// An upstream failed (or sent data that failed a check): 503 (or that check), not 404.
    pub failure: Option<FetchError>,
    /// An upstream's narinfo was refused.
    pub refused: bool,
}

impl Verdict {
    /// `remote` failed with `e`; kept when it is an upstream.
    pub fn failed(&mut self, remote: &Remote, e: impl Into<FetchError>) {
        if remote.is_upstream() {
            self.failure = Some(e.into());
        }
    }

    /// `remote` was asked and could not deliver.
    pub fn unavailable(&mut self, remote: &Remote, e: UpstreamError) {
        if remote.is_upstream() {
            self.failure = Some(FetchError::unavailable(remote.origin(), e));
        }
    }

    /// `remote`'s narinfo was refused.
    pub fn refused(&mut self, remote: &Remote) {
        self.refused |= remote.is_upstream();
    }

    /// The fetch's answer when no source delivered: the upstreams' failure, else not found.
    pub fn into_error(self) -> FetchError {
        self.failure.unwrap_or(FetchError::NotFound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(url: &str) -> Arc<Upstream> {
        Arc::new(Upstream::new(Url::parse(url).unwrap()))
    }

    fn roles() -> [Remote; 5] {
        let m = at("http://10.0.0.2:8080/");
        [
            Remote::Upstream(at("https://cache.example/")),
            Remote::Owner(m.clone()),
            Remote::Successor(m.clone()),
            Remote::Peer(m.clone()),
            Remote::Swarm(vec![m]),
        ]
    }

    #[test]
    fn each_role_has_its_label_flavour_and_blame() {
        let m = Metrics::default();
        let [up, owner, successor, peer, swarm] = roles();
        let labels = roles().map(|r| r.source().as_str());
        assert_eq!(labels, ["upstream", "fleet", "fleet", "peer", "torrent"]);
        assert!(matches!(up.asker(&m), Asker::Upstream(_)));
        assert!(matches!(owner.asker(&m), Asker::Fleet));
        for r in [&successor, &peer, &swarm] {
            assert!(matches!(r.asker(&m), Asker::Peer), "{r}");
        }
        // Upstreams are never put on probation; everyone else who vouched is.
        assert!(up.liars().is_empty());
        assert!(roles()[1..].iter().all(|r| r.liars().len() == 1));
        assert!(owner.absent_is_final() && !successor.absent_is_final());
        assert!(!up.absent_is_final() && !peer.absent_is_final());
        assert!(swarm.http().is_none() && peer.http().is_some());
    }

    #[test]
    fn narinfo_deadlines_follow_the_role() {
        let limit = Duration::from_secs(10);
        let [up, owner, successor, peer, _] = roles();
        assert_eq!(up.narinfo_deadline(limit), limit);
        assert_eq!(owner.narinfo_deadline(limit), Duration::from_secs(6));
        assert_eq!(successor.narinfo_deadline(limit), Duration::from_secs(3));
        assert_eq!(peer.narinfo_deadline(limit), Duration::from_secs(3));
    }

    #[test]
    fn only_the_upstreams_decide_between_not_found_and_unavailable() {
        let [up, owner, successor, peer, swarm] = roles();
        let mut v = Verdict::default();
        for r in [&owner, &successor, &peer, &swarm] {
            v.unavailable(r, UpstreamError::Status(502));
            v.refused(r);
        }
        assert!(!v.refused);
        assert!(matches!(v.into_error(), FetchError::NotFound));
        let mut v = Verdict::default();
        v.unavailable(&up, UpstreamError::Status(502));
        v.refused(&up);
        assert!(v.refused);
        let e = v.into_error();
        assert!(
            matches!(&e, FetchError::Unavailable { from, .. } if matches!(**from, Origin::Upstream(_)))
        );
    }
}
