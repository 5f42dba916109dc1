//! The download task: copies a source's bytes into a temp file that clients tail, checking
//! them as they pass, switches an accelerable upstream download to the swarm mid-stream when
//! the upstream is slow, and commits the verified file into the cache (or, when the cache
//! cannot store it, relays it to its readers uncached: [`super::relay`]).

use std::fs::File;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

use super::super::tap::Tap;
use super::super::{FetchError, Fetcher, Remote};
use super::plan::{is_nar_mismatch, Checks, Plan};
use super::relay::{Relay, Sink};
use super::source::{Body, Opened};
use super::unproven::Unproven;
use super::{Download, Progress, Reader, ACCELERATE_AFTER, WRITE_BATCH};
use crate::metrics::{Metrics, Untrusted};
use crate::store::WriteHandle;
use crate::upstream::Upstream;

/// The source a download is reading from: it changes when a slow upstream is switched to
/// the swarm, or when a source breaks mid-way and another continues ([`super::resume`]).
pub(super) struct Feed {
    pub from: Remote,
    pub body: Body,
    /// When an accelerable upstream download started; `None` once the switch was decided.
    pub accelerate: Option<Instant>,
    /// Bytes already counted for an earlier source (after a switch).
    pub counted: u64,
    /// The peers and members that sent earlier parts of the file (blamed with the last
    /// source should the whole not verify).
    pub earlier: Vec<Arc<Upstream>>,
    /// How many times the download continued from another source after one broke.
    pub resumes: u32,
}

impl Feed {
    /// Continues from `next` at byte `written`; the bytes so far are counted for the source
    /// that sent them.
    pub fn replace(&mut self, next: Opened, written: u64, m: &Metrics) {
        m.fetched(self.from.source(), written - self.counted);
        self.counted = written;
        self.earlier.extend(self.from.liars());
        self.from = next.from;
        self.body = next.body;
    }
}

impl Fetcher {
    /// Starts the download of `plan` (or joins the one that another caller just started),
    /// with this caller's reader. `Err(plan)`: the cache cannot take it (the cap is held by
    /// downloads under way, or the temp file cannot be created): stream it uncached.
    pub(super) fn start(self: &Arc<Self>, plan: Plan) -> Result<Reader, Box<Plan>> {
        let key = plan.key();
        // Not under the map's lock (taken by `join_or_start` below): a second writer of
        // nixgate's own file is not started beside one streaming it from an owner.
        let other_writer = self.nars.get(&(plan.fh, super::Via::OwnerServed)).is_some();
        // The plan goes to the task when this call starts one; else it comes back.
        let mut slot = Some(plan);
        let mut first = None;
        let started = self.nars.join_or_start(key, || {
            let plan = slot.take().expect("start is called once");
            let (mut tmp, read) = match self.begin(&plan) {
                Some(t) => t,
                None => {
                    slot = Some(plan);
                    return Err(());
                }
            };
            let (tx, rx) = watch::channel(Progress::Running(0));
            let relay = Arc::new(Relay::new());
            first = relay.subscribe();
            let (tap, served) = self.tap(&plan, other_writer).unzip();
            let download = Download {
                file: Arc::new(read),
                progress: rx,
                size: plan.size,
                relay: relay.clone(),
                served,
            };
            let this = self.clone();
            let task = async move {
                let out = tmp.file().try_clone().map(tokio::fs::File::from_std);
                let res = match out {
                    Ok(out) => {
                        let sink = Sink::File { tmp, out };
                        this.download(&plan, tap, sink, &relay, &tx).await
                    }
                    Err(e) => Err(FetchError::storage(e)),
                };
                let done = res.is_ok() && plan.nar.is_some();
                tx.send_replace(this.final_state(&plan, res));
                if done {
                    // Runners get nixgate's own file from now on (`fetch/served.rs`).
                    this.downloaded(plan.fh);
                }
            };
            Ok((download, task))
        });
        let Ok((download, joined)) = started else {
            return Err(Box::new(slot.take().expect("the plan came back")));
        };
        if joined {
            self.metrics.coalesced();
        }
        match first.or_else(|| download.relay.subscribe()) {
            Some(rest) => Ok(Reader { download, rest }),
            // It switched to uncached streaming before this caller could join.
            None => Err(Box::new(slot.take().expect("a joiner keeps its plan"))),
        }
    }

    /// The temp file of a new download and a read handle on it; `None` when the cache cannot
    /// take it (the store recorded why).
    fn begin(self: &Arc<Self>, plan: &Plan) -> Option<(WriteHandle, File)> {
        let tmp = match plan.served {
            true => self.store.begin_served(plan.fh, plan.ext, plan.size),
            false => self.store.begin_nar(plan.fh, plan.ext, plan.size),
        };
        let tmp = tmp.ok()?;
        let read = File::open(tmp.path()).map_err(|e| tmp.failed(e)).ok()?;
        Some((tmp, read))
    }

    /// What the download's watchers see last; a 404 is remembered.
    fn final_state(&self, plan: &Plan, res: Result<u64, FetchError>) -> Progress {
        match res {
            Ok(size) => Progress::Done(size),
            Err(e) => {
                if plan.served {
                    // nixgate's own file from an owner or peer: its 404 says nothing of the
                    // upstream; the caller falls back to the upstream's file (`owned.rs`).
                    self.served_failed.insert(plan.fh, ());
                    tracing::debug!(file_hash = %plan.fh, error = %e, "nixgate's own file of the NAR not had from owners or peers; nothing stored");
                    return Progress::Failed(e);
                }
                if matches!(e, FetchError::NotFound) {
                    self.remember_not_found(plan.rel());
                }
                tracing::warn!(file_hash = %plan.fh, error = %e, "NAR download failed; nothing stored");
                Progress::Failed(e)
            }
        }
    }

    /// Downloads, verifies and commits the NAR (or relays it uncached); its size.
    async fn download(
        &self,
        plan: &Plan,
        tap: Option<Tap>,
        mut sink: Sink,
        relay: &Relay,
        tx: &watch::Sender<Progress>,
    ) -> Result<u64, FetchError> {
        // The NAR header always, and the signed NarHash whenever a narinfo told it, whatever
        // the source: a narinfo's FileHash is unsigned, so it may name another (genuine) file.
        let checks = Checks::new(plan, plan.nar_check_tapped(tap)?);
        let started = Instant::now();
        let accelerable = self.accelerable(plan);
        let Opened { from, body } = self.open_source(plan, accelerable).await?;
        // http-first acceleration: a large NAR that a peer holds switches to the swarm if the
        // upstream turns out slow. The swarm's bytes need the NarHash check from byte 0.
        let mut accelerate = None;
        if from.is_upstream() && accelerable {
            accelerate = checks.nar_checked().then(Instant::now);
        }
        let mut feed = Feed {
            from,
            body,
            accelerate,
            counted: 0,
            earlier: Vec::new(),
            resumes: 0,
        };
        if let (None, Body::Http(b)) = (plan.size, &feed.body) {
            if let Some(len) = b.content_length {
                sink.expect(len, relay, tx, &plan.fh);
            }
        }
        let size = match self
            .copy(plan, &mut feed, checks, &mut sink, relay, tx)
            .await
        {
            Ok(size) => size,
            Err(e) => return Err(self.rejected(plan, &feed, e)),
        };
        let cached = sink.finish().await?;
        self.write_behind(plan, &feed.from, cached);
        self.metrics
            .fetched(feed.from.source(), size - feed.counted);
        tracing::info!(
            path = plan.path.as_deref().unwrap_or("?"),
            file_hash = %plan.fh,
            bytes = size,
            source = feed.from.source().as_str(),
            resumes = feed.resumes,
            ms = started.elapsed().as_millis() as u64,
            cached,
            "NAR fetched"
        );
        Ok(size)
    }

    /// Copies the feed into `sink` to its end, publishing progress; the verified size.
    async fn copy(
        &self,
        plan: &Plan,
        feed: &mut Feed,
        mut checks: Checks,
        sink: &mut Sink,
        relay: &Relay,
        tx: &watch::Sender<Progress>,
    ) -> Result<u64, FetchError> {
        // Chunks read before the decompressed bytes showed a whole NAR header: not released
        // to anyone (not even to the temp file that readers tail) until they do.
        let mut unproven = Unproven::default();
        loop {
            let chunk = match feed.body.batch(WRITE_BATCH).await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    feed.from.broke();
                    if e.too_slow() {
                        self.metrics.untrusted(Untrusted::TooSlow);
                    }
                    let written = checks.written();
                    if self
                        .resume(plan, feed, written, checks.nar_checked(), &e)
                        .await
                    {
                        continue;
                    }
                    return Err(FetchError::unavailable(feed.from.origin(), e));
                }
            };
            let checked;
            (checks, checked) = checks.check(&chunk, &self.tap_slots).await;
            checked.map_err(|e| self.refused(e))?;
            let written = checks.written();
            let released = unproven.release(chunk, written, checks.header_seen());
            for (chunk, written) in released.map_err(|e| self.refused(e))? {
                sink.put(chunk, written, relay, tx, &plan.fh).await?;
            }
            self.maybe_switch(plan, feed, written).await;
        }
        let (size, tap) = checks.finish().map_err(|e| self.refused(e))?;
        if let Some(tap) = tap {
            self.commit_tap(plan, tap).await;
        }
        for (chunk, written) in unproven.release_all() {
            sink.put(chunk, written, relay, tx, &plan.fh).await?;
        }
        Ok(size)
    }

    /// Once [`ACCELERATE_AFTER`] has passed: if the upstream is slower than the threshold,
    /// continue from the swarm at offset `written` (decided once per download).
    async fn maybe_switch(&self, plan: &Plan, feed: &mut Feed, written: u64) {
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
        let Some(swarm) = self.open_swarm(plan, written).await else {
            return;
        };
        tracing::info!(file_hash = %plan.fh, upstream_bytes_per_s = rate as u64, offset = written, "upstream slow: switching to the swarm");
        feed.replace(swarm, written, &self.metrics);
    }

    /// A failed copy: bytes that did not verify are counted, and the peers that vouched for
    /// them are put on probation (with the narinfo forgotten, so a retry starts afresh).
    fn rejected(&self, plan: &Plan, feed: &Feed, e: FetchError) -> FetchError {
        if !matches!(e, FetchError::Verification(_)) {
            return e;
        }
        let from = &feed.from;
        self.metrics.verification_failure(from.source());
        // As for the upstream's file: the FileHash the narinfo named (unsigned; it came from
        // a peer or the bucket perhaps) may be another NAR's, whose own file the owner sent
        // honestly; the narinfo is forgotten, and the retry starts afresh.
        if let (true, Some(h)) = (is_nar_mismatch(&e), plan.narinfo) {
            self.narinfo_refuted(h, &e.to_string());
        }
        let mut liars = from.liars();
        liars.extend(feed.earlier.iter().cloned());
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
