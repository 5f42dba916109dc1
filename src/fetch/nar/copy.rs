//! The download task: copies a source's bytes into a temp file that clients tail, checking
//! them as they pass, switches an accelerable upstream download to the swarm mid-stream when
//! the upstream is slow, and commits the verified file into the cache.

use std::fs::File;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use super::super::{FetchError, Fetcher};
use super::plan::{is_nar_mismatch, Checks, Plan};
use super::source::{Body, BytesFrom};
use super::{storage, Download, Progress, ACCELERATE_AFTER, WRITE_BATCH};
use crate::store::WriteHandle;

/// The source a download is reading from, which may change once (upstream → swarm).
struct Feed<'a> {
    from: BytesFrom<'a>,
    body: Body,
    /// When an accelerable upstream download started; `None` once the switch was decided.
    accelerate: Option<Instant>,
    /// Bytes already counted for an earlier source (after a switch).
    counted: u64,
}

impl Fetcher {
    /// Starts the download of `plan` (or joins the one that another caller just started).
    pub(super) fn start(self: &Arc<Self>, plan: Plan) -> Result<Download, FetchError> {
        let (download, joined) = self.nars.join_or_start(plan.fh, || {
            let tmp = self.store.begin_nar(plan.fh, plan.ext).map_err(storage)?;
            let read = File::open(tmp.path()).map_err(storage)?;
            let (tx, rx) = watch::channel(Progress::Running(0));
            let download = Download {
                file: Arc::new(read),
                progress: rx,
                size: plan.size,
            };
            let this = self.clone();
            let task = async move {
                let res = this.download(&plan, tmp, &tx).await;
                tx.send_replace(this.final_state(&plan, res));
            };
            Ok((download, task))
        })?;
        if joined {
            self.metrics.coalesced();
        }
        Ok(download)
    }

    /// What the download's watchers see last; a 404 is remembered.
    fn final_state(&self, plan: &Plan, res: Result<u64, FetchError>) -> Progress {
        match res {
            Ok(size) => Progress::Done(size),
            Err(e) => {
                if matches!(e, FetchError::NotFound) {
                    self.remember_not_found(plan.rel());
                }
                tracing::warn!(file_hash = %plan.fh, error = %e, "NAR download failed; nothing stored");
                Progress::Failed(e)
            }
        }
    }

    /// Downloads, verifies and commits the NAR; its size.
    async fn download(
        &self,
        plan: &Plan,
        mut tmp: WriteHandle,
        tx: &watch::Sender<Progress>,
    ) -> Result<u64, FetchError> {
        let accelerable = self.accelerable(plan);
        let (from, body, nar_check) = self.open_source(plan, accelerable).await?;
        // NarHash is checked for every source whose compression can be decoded, before
        // commit: a peer's narinfo may name another path's (genuine) NAR.
        let nar_check = nar_check.or_else(|| plan.nar_check());
        // http-first acceleration: a large NAR that a peer holds switches to the swarm if the
        // upstream turns out slow. The swarm's bytes need the NarHash check from byte 0.
        let mut accelerate = None;
        if matches!(from, BytesFrom::Upstream(_)) && accelerable {
            accelerate = nar_check.is_some().then(Instant::now);
        }
        let mut feed = Feed {
            from,
            body,
            accelerate,
            counted: 0,
        };
        let out = tokio::fs::File::from_std(tmp.file().try_clone().map_err(storage)?);
        let checks = Checks::new(plan, nar_check);
        let size = match self.copy(plan, &mut feed, checks, out, tx).await {
            Ok(size) => size,
            Err(e) => return Err(self.rejected(plan, &feed.from, e)),
        };
        tokio::task::spawn_blocking(move || tmp.commit())
            .await
            .map_err(storage)?
            .map_err(storage)?;
        self.metrics
            .fetched(feed.from.source(), size - feed.counted);
        Ok(size)
    }

    /// Copies the feed into `out` to its end, publishing progress; the verified size.
    async fn copy(
        &self,
        plan: &Plan,
        feed: &mut Feed<'_>,
        mut checks: Checks,
        mut out: tokio::fs::File,
        tx: &watch::Sender<Progress>,
    ) -> Result<u64, FetchError> {
        loop {
            let chunk = match feed.body.batch(WRITE_BATCH).await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    feed.from.failed();
                    return Err(FetchError::Unavailable(e));
                }
            };
            checks.update(&chunk)?;
            out.write_all(&chunk).await.map_err(storage)?;
            out.flush().await.map_err(storage)?;
            let written = checks.written();
            tx.send_replace(Progress::Running(written));
            self.maybe_switch(plan, feed, written).await;
        }
        checks.finish()
    }

    /// Once [`ACCELERATE_AFTER`] has passed: if the upstream is slower than the threshold,
    /// continue from the swarm at offset `written` (decided once per download).
    async fn maybe_switch(&self, plan: &Plan, feed: &mut Feed<'_>, written: u64) {
        let Some(start) = feed.accelerate else { return };
        let elapsed = start.elapsed();
        if elapsed < ACCELERATE_AFTER {
            return;
        }
        feed.accelerate = None;
        let rate = written as f64 / elapsed.as_secs_f64();
        if rate >= self.tuning.accelerate_below as f64 {
            return;
        }
        let Some(mut swarm) = self.open_torrent(plan).await else {
            return;
        };
        if let Err(e) = swarm.body.skip_to(written).await {
            tracing::warn!(file_hash = %plan.fh, error = %e, "cannot switch to the swarm");
            return;
        }
        tracing::info!(file_hash = %plan.fh, upstream_bytes_per_s = rate as u64, offset = written, "upstream slow: switching to the swarm");
        self.metrics
            .fetched(feed.from.source(), written - feed.counted);
        feed.counted = written;
        feed.from = BytesFrom::Torrent(swarm.holders);
        feed.body = Body::Torrent(swarm.body);
    }

    /// A failed copy: bytes that did not verify are counted, and the peers that vouched for
    /// them are put on probation (with the narinfo forgotten, so a retry starts afresh).
    fn rejected(&self, plan: &Plan, from: &BytesFrom<'_>, e: FetchError) -> FetchError {
        if !matches!(e, FetchError::Verification(_)) {
            return e;
        }
        self.metrics.verification_failure(from.source());
        if let (true, Some(h)) = (is_nar_mismatch(&e), plan.narinfo) {
            self.narinfo_refuted(h, &e.to_string());
        }
        let liars = from.liars();
        if !liars.is_empty() {
            // The peer may have invented the FileHash its narinfo named: forget the
            // narinfo too, so the retry starts afresh (without these peers).
            self.store.forget(&plan.fh);
        }
        for peer in liars {
            peer.breaker.probation(crate::peers::PROBATION);
            tracing::warn!(peer = %peer.base, source = from.source().as_str(), file_hash = %plan.fh, error = %e, "peer data does not verify; peer on probation");
        }
        e
    }
}
