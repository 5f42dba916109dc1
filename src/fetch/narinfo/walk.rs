//! Walking the narinfo sources ([`ORDER`]) for a miss, with the object store hedged: the
//! bucket is asked first (it saves the upstream's egress), but when it has not answered
//! within [`HEDGE`] the rest of the walk (the upstreams, then the peers) starts too, and
//! whichever trusted answer comes first is taken. A bucket that hangs thus costs a miss
//! [`HEDGE`], not its timeouts (docs/OBJECT_STORE.md, "An outage costs nothing but its
//! benefit").
//!
//! The trust rules do not change: the bucket's narinfo goes through
//! [`Fetcher::take_narinfo`] like any other (a trusted signature, vetted), its 404 and its
//! failures decide nothing ([`Verdict`] is the upstreams'). When the rest found nothing, the
//! bucket's answer is still awaited (within its deadline): it may hold what an upstream
//! lost. A bucket skipped as overdue is asked after all when an upstream failed
//! (`BucketAgain` in [`ORDER`]), at most once per walk. A bucket request that lost the race is not cancelled: it ends within its deadline,
//! and a hang is then counted against the bucket's breaker (`Fetcher::get_narinfo`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::super::{FetchError, Fetcher, Remote, Verdict};
use super::source::{Asked, Miss, NarinfoSource, ORDER};
use crate::nix::store_path::StorePathHash;
use crate::objstore::Bucket;
use crate::upstream::{Upstream, UpstreamError};

/// How long the bucket has to answer a narinfo before the upstreams are asked too: a bucket
/// nearby answers a small object well within it.
pub(in crate::fetch) const HEDGE: Duration = Duration::from_millis(250);

/// What a walk found: a narinfo taken, an owner's 404, or nothing (`None`).
type Found = Option<Result<Bytes, FetchError>>;

impl Fetcher {
    /// Walks [`ORDER`] for a narinfo miss: the first narinfo taken, an owner's 404, or the
    /// upstreams' answer (a plain 404 from every upstream is remembered unless the bucket is
    /// skipped as overdue; a refused narinfo is absent, not "not found").
    pub(super) async fn fetch_narinfo(
        self: Arc<Self>,
        h: StorePathHash,
        owners: Vec<Arc<Upstream>>,
    ) -> Result<Bytes, FetchError> {
        let miss = Miss { h, owners };
        let mut verdict = Verdict::default();
        if let Some(found) = self.walk(&miss, ORDER, &mut verdict, false).await {
            return found;
        }
        // Not while the bucket is skipped as overdue (a moment, not an outage): it may hold
        // what no upstream has (an upload).
        let skipped = self.bucket.as_ref().is_some_and(|b| b.is_overdue());
        if verdict.failure.is_none() && !verdict.refused && !skipped {
            self.remember_not_found(format!("{h}.narinfo"));
        }
        Err(verdict.into_error())
    }

    /// Asks `sources` in order; the bucket, if among them and not `bucket_asked` already in
    /// this walk, hedged with the sources after it.
    async fn walk(
        self: &Arc<Self>,
        miss: &Miss,
        sources: &[&dyn NarinfoSource],
        verdict: &mut Verdict,
        bucket_asked: bool,
    ) -> Found {
        for (i, source) in sources.iter().enumerate() {
            for remote in source.remotes(self, miss, verdict) {
                let asked = match remote {
                    Remote::Bucket(_) if bucket_asked => continue,
                    Remote::Bucket(b) => {
                        let rest = &sources[i + 1..];
                        return Box::pin(self.hedged(b, miss, rest, verdict)).await;
                    }
                    _ => self.narinfo_from(&remote, miss.h, verdict).await,
                };
                match asked {
                    Asked::Taken(stored) => return Some(Ok(stored)),
                    Asked::Absent => return Some(Err(FetchError::NotFound)),
                    Asked::Next => {}
                }
            }
        }
        None
    }

    /// Asks the bucket and, when it has not answered within [`HEDGE`], walks `rest` at the
    /// same time; the first narinfo taken wins.
    async fn hedged(
        self: &Arc<Self>,
        bucket: Arc<Bucket>,
        miss: &Miss,
        rest: &[&dyn NarinfoSource],
        verdict: &mut Verdict,
    ) -> Found {
        let remote = Remote::Bucket(bucket.clone());
        let (this, asked, h) = (self.clone(), remote.clone(), miss.h);
        // Spawned rather than raced in place, so that losing the race does not cancel it:
        // it ends within its narinfo deadline, and a hang is counted against the breaker.
        let mut asking = tokio::spawn(async move { this.get_narinfo(&asked, h).await });
        if let Ok(got) = tokio::time::timeout(HEDGE, &mut asking).await {
            if let Some(found) = self.take_bucket(&remote, h, got).await {
                return Some(found);
            }
            return self.walk(miss, rest, verdict, true).await;
        }
        bucket.lagged();
        tracing::debug!(hash = %h, "object store slow to answer; asking the upstreams too");
        let walking = self.walk(miss, rest, verdict, true);
        tokio::pin!(walking);
        tokio::select! {
            got = &mut asking => match self.take_bucket(&remote, h, got).await {
                Some(found) => Some(found),
                None => walking.await,
            },
            found = &mut walking => match found {
                Some(found) => Some(found),
                None => self.take_bucket(&remote, h, asking.await).await,
            },
        }
    }

    /// The bucket's narinfo, if it sent one that passes every check (its failures and
    /// refusals never reach the upstreams' [`Verdict`]).
    async fn take_bucket(
        &self,
        remote: &Remote,
        h: StorePathHash,
        got: Result<Result<Option<Bytes>, UpstreamError>, tokio::task::JoinError>,
    ) -> Found {
        let got = got.unwrap_or_else(|e| Err(UpstreamError::Body(format!("bucket read: {e}"))));
        match self
            .take_narinfo(remote, h, got, &mut Verdict::default())
            .await
        {
            Asked::Taken(stored) => Some(Ok(stored)),
            Asked::Absent | Asked::Next => None,
        }
    }
}
