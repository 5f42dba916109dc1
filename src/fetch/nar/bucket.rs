//! The object store as a NAR tier below the disk (`--object-store`; ARCHITECTURE.md "Adding
//! a representation or a storage tier"): on a local miss, before any download starts, the
//! object is materialised into the cache (fetched into a temp file, every byte checked, then
//! committed) and served as a hit. Nothing from the bucket reaches a runner before the whole
//! object verified, so a tampered or truncated object costs nothing: it is refused, counted,
//! not stored, and the miss goes on to the usual sources (fleet, upstreams, swarm, peers).
//!
//! Untrusted like a peer: only when the signed NarHash is known and nixgate can decompress
//! the file to check it; fetched by FileHash under the bucket's own prefix
//! (`nar/<FileHash>.nar<ext>`, `Plan::rel`), never by a narinfo's URL; its 404 is never final
//! nor remembered; an object refused lately is not asked for again (`Bucket::is_refused`).
//! In a fleet, the key's owner asks the bucket (a member that waits on an owner does not).
//! Concurrent misses of one NAR share one read (`Fetcher::bucket_reads`).

use std::sync::Arc;

use http::Method;
use tokio::io::AsyncWriteExt;
use url::Url;

use super::super::{Fetcher, Remote};
use super::plan::{Checks, Plan};
use crate::metrics::Source;
use crate::nix::hash::Sha256;
use crate::objstore::Bucket;
use crate::store::Hit;
use crate::upstream::{Answer, UpstreamBody};

/// What one read of the bucket needs besides the fetcher.
struct Read {
    bucket: Arc<Bucket>,
    url: Url,
    key: String,
    fh: Sha256,
    ext: &'static str,
    size: Option<u64>,
    /// The store path whose narinfo told the NAR's hashes.
    narinfo: Option<crate::nix::store_path::StorePathHash>,
}

impl Fetcher {
    /// The NAR of `plan`, materialised from the bucket into the cache, if the bucket holds
    /// it and it verifies.
    pub(super) async fn from_bucket(self: &Arc<Self>, plan: &Plan) -> Option<Hit> {
        let bucket = self.bucket.clone()?;
        if self.skips(&bucket) || !plan.nar_hash_checked() || !plan.owners.is_empty() {
            return None;
        }
        let rel = plan.rel();
        let key = bucket.keys.under(&rel);
        if bucket.is_refused(&key) {
            return None;
        }
        let url = bucket.at.base.join(&rel).ok()?;
        let checks = Checks::new(plan, plan.nar_check().ok()?);
        let (fh, ext, size) = (plan.fh, plan.ext, plan.size);
        let read = Read {
            bucket,
            url,
            key,
            fh,
            ext,
            size,
            narinfo: plan.narinfo,
        };
        let this = self.clone();
        let run = move || async move { this.materialise(read, checks).await };
        self.bucket_reads.run(fh, run).await.0
    }

    /// Whether a NAR read skips the bucket: its circuit is open, or it is overdue with a
    /// narinfo while an upstream is in use (with every upstream's circuit open, a slow
    /// bucket is better than none).
    fn skips(&self, bucket: &Bucket) -> bool {
        let upstream_up = self.upstreams.iter().any(|u| !u.breaker.is_open());
        bucket.at.breaker.is_open() || (bucket.is_overdue() && upstream_up)
    }

    /// Reads the object into a temp file of the cache, checking every byte, and commits it.
    async fn materialise(self: Arc<Self>, read: Read, mut checks: Checks) -> Option<Hit> {
        let remote = Remote::Bucket(read.bucket.clone());
        let body = self.open_object(&remote, &read).await?;
        let mut tmp = self.store.begin_nar(read.fh, read.ext, read.size).ok()?;
        let out = tmp.file().try_clone().ok()?;
        match self
            .copy_object(body, tokio::fs::File::from_std(out), &mut checks)
            .await
        {
            Ok(()) => {}
            Err(Failed::Broke(e)) => {
                remote.broke();
                remote.failed(&self.metrics, &e);
                tracing::info!(%remote, key = %read.key, error = %e, "object store read broke; asking the next source");
                return None;
            }
            Err(Failed::Local(e)) => {
                tracing::warn!(key = %read.key, error = %e, "cannot write the bucket's NAR to the cache");
                return None;
            }
            Err(Failed::Refused(e)) => return self.refuse(&remote, &read, e),
        }
        if let Err(e) = checks.finish() {
            return self.refuse(&remote, &read, e);
        }
        let size = tokio::fs::metadata(tmp.path()).await.ok()?.len();
        tokio::task::spawn_blocking(move || tmp.commit())
            .await
            .ok()?
            .ok()?;
        self.metrics.fetched(Source::Bucket, size);
        tracing::info!(file_hash = %read.fh, bytes = size, "NAR fetched from the object store");
        self.downloaded(read.fh);
        if let Some(h) = read.narinfo {
            // Its narinfo may have come from an upstream: a site killed between writing the
            // NAR and its narinfo left the bucket without it (HEAD finds what is there).
            self.to_bucket(h);
        }
        self.store.nar(&read.fh, read.ext).await.ok()?
    }

    /// The object's body, if the bucket sends one of the right length.
    async fn open_object(&self, remote: &Remote, read: &Read) -> Option<UpstreamBody> {
        let asked = remote.ask(&self.client, &self.metrics, Method::GET, &read.url, 0);
        let body = match asked.await {
            Ok(Answer::Found(body)) => body,
            Ok(Answer::NotFound) => return None,
            Err(e) => {
                remote.failed(&self.metrics, &e);
                tracing::debug!(%remote, key = %read.key, error = %e, "object store unavailable; asking the next source");
                return None;
            }
        };
        let lengths = body.content_length.zip(read.size);
        if let Some((got, want)) = lengths.filter(|(g, w)| g != w) {
            let e = super::super::verify::VerifyError::Length { got, want };
            return self.refuse(remote, read, e).and(None);
        }
        Some(body)
    }

    async fn copy_object(
        &self,
        mut body: UpstreamBody,
        mut out: tokio::fs::File,
        checks: &mut Checks,
    ) -> Result<(), Failed> {
        while let Some(chunk) = body.batch(1 << 20).await.map_err(Failed::Broke)? {
            checks.update(&chunk).map_err(Failed::Refused)?;
            out.write_all(&chunk).await.map_err(Failed::Local)?;
        }
        out.flush().await.map_err(Failed::Local)
    }

    /// The object failed a check: counted, not stored, not read again for a while (and
    /// rewritten by the next write-behind of its path).
    fn refuse(
        &self,
        remote: &Remote,
        read: &Read,
        e: super::super::verify::VerifyError,
    ) -> Option<Hit> {
        remote.refused(&self.metrics);
        read.bucket.refuse(read.key.clone());
        tracing::warn!(%remote, key = %read.key, error = %e, "object store NAR refused; asking the next source");
        None
    }

    /// After a download of `plan`'s NAR from `from` was verified and, when `cached`,
    /// committed: its path is queued for the bucket (never waits; a full queue drops it) when
    /// it came from an upstream. What came from a fleet member was written by the owner that
    /// fetched it; what came from peers or the swarm, by the site that fetched it first.
    pub(super) fn write_behind(&self, plan: &Plan, from: &Remote, cached: bool) {
        if let (true, true, Some(h)) = (cached, from.is_upstream(), plan.narinfo) {
            self.to_bucket(h);
        }
    }
}

/// Why a read of the bucket gave nothing.
enum Failed {
    Broke(crate::upstream::UpstreamError),
    Refused(super::super::verify::VerifyError),
    Local(std::io::Error),
}
