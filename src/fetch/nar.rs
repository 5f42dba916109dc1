//! NAR misses: one upstream download per FileHash, written to a temp file that every waiting
//! client tails as it grows, verified (`FileSize`, `sha256 == FileHash`, compression magic)
//! before it is renamed into the cache.
//!
//! Clients never see a verification failure as a complete response: while the download runs,
//! readers are held one byte short of what was written, and the last byte is released only
//! after the file verified. A failure aborts their responses, so Nix retries.

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::Method;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};
use url::Url;

use super::narinfo::parse_stored;
use super::verify::{FileCheck, FileExpect, NarCheck};
use super::PeerPolicy;
use super::{FetchError, Fetcher};
use crate::metrics::Source;
use crate::nix::compression::Compression;
use crate::nix::hash::Sha256;
use crate::peers::digest::nar_key;
use crate::store::TempFile;
use crate::torrent::meta::{Expected, NarTorrent};
use crate::torrent::{TorrentBody, PORT_HEADER};
use crate::upstream::{Answer, Upstream, UpstreamBody};

/// Largest write to the temp file; bigger batches when the upstream is fast.
const WRITE_BATCH: usize = 1 << 20;
/// When an accelerable download's upstream rate is judged.
const ACCELERATE_AFTER: std::time::Duration = std::time::Duration::from_secs(2);
/// A NAR's `.torrent` is ~20 KiB of piece hashes (1024 pieces at most, until 16 MiB pieces).
const MAX_TORRENT_FILE: usize = 1 << 20;

/// The torrent addresses of a peer: its host's addresses with the port it announced.
async fn peer_addrs(base: &Url, port: u16) -> Vec<std::net::SocketAddr> {
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

/// How far a download has got.
#[derive(Debug, Clone)]
pub enum Progress {
    /// Bytes written to the temp file so far (not yet verified).
    Running(u64),
    /// Verified and committed; the total size.
    Done(u64),
    Failed(FetchError),
}

/// A download into the cache that clients can tail.
#[derive(Clone)]
pub struct Download {
    /// A read handle on the temp file; it stays valid after the rename into the cache.
    pub file: Arc<File>,
    pub progress: watch::Receiver<Progress>,
    /// The expected size (`FileSize`), when a narinfo told it.
    pub size: Option<u64>,
}

/// Downloads under way, by FileHash.
#[derive(Default)]
pub struct Inflights(Mutex<HashMap<Sha256, Download>>);

impl Inflights {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Sha256, Download>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What to send for a NAR request.
pub enum NarSource {
    /// A verified file in the cache.
    Cached { path: PathBuf, size: u64 },
    /// A download into the cache, under way or just finished.
    Download(Download),
    /// Too large for the cache: streamed through without storing (last chunk held back
    /// until verified).
    Passthrough {
        chunks: mpsc::Receiver<Result<Bytes, FetchError>>,
        size: Option<u64>,
    },
}

/// Where to fetch a NAR from and what it must look like.
struct Plan {
    candidates: Vec<(usize, Url)>,
    size: Option<u64>,
    compression: Option<Compression>,
    /// The signed NarHash and NarSize, when a narinfo told them (needed for peer bytes).
    nar: Option<(Sha256, u64)>,
}

impl Plan {
    /// The check of the decompressed NAR against the signed NarHash/NarSize, when the narinfo
    /// gave them and nixgate can decompress this compression (needed for bytes from peers).
    fn nar_check(&self) -> Option<NarCheck> {
        let (nar_hash, nar_size) = self.nar?;
        NarCheck::new(self.compression?, nar_hash, nar_size)
    }
}

/// The checks for one source: the file always; the decompressed NAR for peer bytes.
struct Checks {
    file: FileCheck,
    nar: Option<NarCheck>,
}

impl Checks {
    fn new(fh: Sha256, plan: &Plan, nar: Option<NarCheck>) -> Self {
        Checks {
            file: FileCheck::new(FileExpect {
                file_hash: fh,
                file_size: plan.size,
                compression: plan.compression,
            }),
            nar,
        }
    }

    fn written(&self) -> u64 {
        self.file.written
    }

    fn update(&mut self, chunk: &[u8]) -> Result<(), FetchError> {
        self.file.update(chunk)?;
        match &mut self.nar {
            Some(n) => n.update(chunk),
            None => Ok(()),
        }
    }

    fn finish(self) -> Result<u64, FetchError> {
        let n = self.file.finish()?;
        if let Some(nar) = self.nar {
            nar.finish()?;
        }
        Ok(n)
    }
}

/// Where the bytes of a download come from.
enum BytesFrom<'a> {
    Upstream(&'a Upstream),
    Peer(Arc<Upstream>),
    /// The swarm; the peers whose `.torrent` it was.
    Torrent(Vec<Arc<Upstream>>),
}

impl BytesFrom<'_> {
    fn source(&self) -> Source {
        match self {
            BytesFrom::Upstream(_) => Source::Upstream,
            BytesFrom::Peer(_) => Source::Peer,
            BytesFrom::Torrent(_) => Source::Torrent,
        }
    }

    /// The transfer broke: count it against the server (a stalled swarm is nobody's fault).
    fn failed(&self) {
        match self {
            BytesFrom::Upstream(u) => u.breaker.failure(),
            BytesFrom::Peer(p) => p.breaker.failure(),
            BytesFrom::Torrent(_) => {}
        }
    }

    /// The peers that vouched for bytes that did not verify.
    fn liars(&self) -> Vec<Arc<Upstream>> {
        match self {
            BytesFrom::Upstream(_) => Vec::new(),
            BytesFrom::Peer(p) => vec![p.clone()],
            BytesFrom::Torrent(holders) => holders.clone(),
        }
    }
}

/// A swarm download as a download's source.
fn from_swarm<'a>(
    (holders, body, check): (Vec<Arc<Upstream>>, TorrentBody, NarCheck),
) -> (BytesFrom<'a>, Body, Option<NarCheck>) {
    (
        BytesFrom::Torrent(holders),
        Body::Torrent(body),
        Some(check),
    )
}

/// A download's byte stream: an HTTP body or a torrent read back in order.
enum Body {
    Http(UpstreamBody),
    Torrent(TorrentBody),
}

impl Body {
    async fn batch(&mut self, max: usize) -> Result<Option<Bytes>, String> {
        match self {
            Body::Http(b) => b.batch(max).await.map_err(|e| e.to_string()),
            Body::Torrent(t) => t.batch(max).await,
        }
    }
}

fn storage(e: impl std::fmt::Display) -> FetchError {
    FetchError::Storage(e.to_string())
}

impl Fetcher {
    /// Finds the NAR `<fh>.nar<ext>`: cached, joined to a download, or newly fetched. Returns
    /// once the first bytes are there (or the fetch failed), so the status is known.
    pub async fn nar(
        self: &Arc<Self>,
        fh: Sha256,
        ext: &'static str,
        only_if_cached: bool,
    ) -> Result<(NarSource, bool), FetchError> {
        if let Some((path, size)) = self.store.nar(&fh, ext) {
            return Ok((NarSource::Cached { path, size }, true));
        }
        if only_if_cached {
            return Err(FetchError::NotFound);
        }
        let key = format!("nar/{}.nar{ext}", fh.to_nix32());
        if self.is_negative(&key) {
            return Err(FetchError::NotFound);
        }
        let existing = self.nars.lock().get(&fh).cloned();
        let download = match existing {
            Some(d) => {
                self.metrics.coalesced();
                d
            }
            None => {
                let plan = self.plan(&fh, ext).await;
                if plan.size.is_some_and(|s| s > self.store.max_bytes()) {
                    return Ok((self.passthrough(fh, plan).await?, false));
                }
                self.start(fh, ext, plan)?
            }
        };
        let mut rx = download.progress.clone();
        let first = rx
            .wait_for(|p| !matches!(p, Progress::Running(0)))
            .await
            .map(|p| p.clone())
            .unwrap_or_else(|_| {
                Progress::Failed(FetchError::Storage("download task ended".into()))
            });
        match first {
            Progress::Failed(e) => Err(e),
            _ => Ok((NarSource::Download(download), false)),
        }
    }

    /// The size of the NAR if it exists, for HEAD (`None`: exists, size unknown).
    pub async fn nar_head(
        self: &Arc<Self>,
        fh: Sha256,
        ext: &'static str,
        only_if_cached: bool,
    ) -> Result<Option<u64>, FetchError> {
        if let Some((_, size)) = self.store.nar(&fh, ext) {
            return Ok(Some(size));
        }
        if only_if_cached {
            return Err(FetchError::NotFound);
        }
        let plan = self.plan(&fh, ext).await;
        if plan.size.is_some() {
            return Ok(plan.size);
        }
        let mut failure = None;
        for (i, url) in &plan.candidates {
            match self
                .client
                .request(&self.upstreams[*i], Method::HEAD, url, &self.metrics)
                .await
            {
                Ok(Answer::Found(b)) => return Ok(b.content_length),
                Ok(Answer::NotFound) => {}
                Err(e) => failure = Some(FetchError::unavailable(&self.upstreams[*i], &e)),
            }
        }
        Err(failure.unwrap_or(FetchError::NotFound))
    }

    /// Candidate URLs: the one a cached narinfo recorded, then each upstream's standard
    /// `nar/<FileHash>.nar<ext>` (any of them will do: the bytes are checked against the hash).
    async fn plan(&self, fh: &Sha256, ext: &'static str) -> Plan {
        let mut plan = Plan {
            candidates: Vec::new(),
            size: None,
            compression: Compression::from_extension(ext),
            nar: None,
        };
        for stored in self.store.narinfos_of(fh).await {
            let Some((url, ni)) = parse_stored(&stored) else {
                continue;
            };
            let c = Compression::from_field(ni.compression.as_deref());
            if c.extension() != ext {
                continue;
            }
            // Breaker accounting goes to the upstream with the same origin (else the first).
            let i = self
                .upstreams
                .iter()
                .position(|u| u.base.origin() == url.origin())
                .unwrap_or(0);
            plan.candidates.push((i, url));
            plan.size = ni.file_size;
            plan.compression = Some(c);
            plan.nar = Some((ni.nar_hash, ni.nar_size));
            break;
        }
        let rel = format!("nar/{}.nar{ext}", fh.to_nix32());
        for (i, up) in self.upstreams.iter().enumerate() {
            let url = up
                .base
                .join(&rel)
                .expect("nix32 and extensions are URL-safe");
            if !plan.candidates.iter().any(|(_, c)| *c == url) {
                plan.candidates.push((i, url));
            }
        }
        plan
    }

    /// The first candidate that answers 200 with a plausible length.
    async fn open_first(&self, plan: &Plan) -> Result<(&Upstream, UpstreamBody), FetchError> {
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
                            failure = Some(FetchError::Verification(format!(
                                "Content-Length {got}, FileSize {want}"
                            )));
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

    fn start(
        self: &Arc<Self>,
        fh: Sha256,
        ext: &'static str,
        plan: Plan,
    ) -> Result<Download, FetchError> {
        let mut map = self.nars.lock();
        if let Some(d) = map.get(&fh) {
            self.metrics.coalesced();
            return Ok(d.clone());
        }
        let tmp = self.store.temp_file().map_err(storage)?;
        let read = File::open(tmp.path()).map_err(storage)?;
        let (tx, rx) = watch::channel(Progress::Running(0));
        let download = Download {
            file: Arc::new(read),
            progress: rx,
            size: plan.size,
        };
        map.insert(fh, download.clone());
        let this = self.clone();
        tokio::spawn(async move {
            let res = this.download(fh, ext, &plan, tmp, &tx).await;
            let final_state = match res {
                Ok(size) => Progress::Done(size),
                Err(e) => {
                    if matches!(e, FetchError::NotFound) {
                        this.remember_not_found(format!("nar/{}.nar{ext}", fh.to_nix32()));
                    }
                    tracing::warn!(file_hash = %fh, error = %e, "NAR download failed; nothing stored");
                    Progress::Failed(e)
                }
            };
            tx.send_replace(final_state);
            this.nars.lock().remove(&fh);
        });
        Ok(download)
    }

    async fn download(
        &self,
        fh: Sha256,
        ext: &'static str,
        plan: &Plan,
        mut tmp: TempFile,
        tx: &watch::Sender<Progress>,
    ) -> Result<u64, FetchError> {
        let accelerable = self.accelerable(&fh, plan);
        let (mut from, mut body, mut nar_check) =
            self.open_source(fh, ext, plan, accelerable).await?;
        // http-first acceleration: a large NAR that a peer holds switches to the swarm if the
        // upstream turns out slow. The swarm's bytes need the NarHash check from byte 0.
        let mut accelerate = None;
        if matches!(from, BytesFrom::Upstream(_)) && accelerable {
            nar_check = plan.nar_check();
            accelerate = nar_check.is_some().then(std::time::Instant::now);
        }
        let mut out = tokio::fs::File::from_std(tmp.file().try_clone().map_err(storage)?);
        let mut checks = Checks::new(fh, plan, nar_check);
        // Bytes already counted for an earlier source (after a switch).
        let mut counted = 0;
        let res = async {
            loop {
                let chunk = match body.batch(WRITE_BATCH).await {
                    Ok(Some(c)) => c,
                    Ok(None) => break,
                    Err(e) => {
                        from.failed();
                        return Err(FetchError::Unavailable(e));
                    }
                };
                checks.update(&chunk)?;
                out.write_all(&chunk).await.map_err(storage)?;
                out.flush().await.map_err(storage)?;
                let written = checks.written();
                tx.send_replace(Progress::Running(written));
                let Some(start) = accelerate else { continue };
                let elapsed = start.elapsed();
                if elapsed < ACCELERATE_AFTER {
                    continue;
                }
                accelerate = None; // decided once
                let rate = written as f64 / elapsed.as_secs_f64();
                if rate >= self.tuning.accelerate_below as f64 {
                    continue;
                }
                let Some((holders, mut swarm, _)) = self.open_torrent(fh, ext, plan).await else {
                    continue;
                };
                if let Err(e) = swarm.skip_to(written).await {
                    tracing::warn!(file_hash = %fh, error = %e, "cannot switch to the swarm");
                    continue;
                }
                tracing::info!(file_hash = %fh, upstream_bytes_per_s = rate as u64, offset = written, "upstream slow: switching to the swarm");
                self.metrics.fetched(from.source(), written - counted);
                counted = written;
                from = BytesFrom::Torrent(holders);
                body = Body::Torrent(swarm);
            }
            checks.finish()
        }
        .await;
        let size = match res {
            Ok(size) => size,
            Err(e @ FetchError::Verification(_)) => {
                self.metrics.verification_failure(from.source());
                let liars = from.liars();
                if !liars.is_empty() {
                    // The peer may have invented the FileHash its narinfo named: forget the
                    // narinfo too, so the retry starts afresh (without these peers).
                    self.store.forget(&fh);
                }
                for peer in liars {
                    peer.breaker.probation(crate::peers::PROBATION);
                    tracing::warn!(peer = %peer.base, source = from.source().as_str(), file_hash = %fh, error = %e, "peer data does not verify; peer on probation");
                }
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.commit_nar(tmp, &fh, ext, size))
            .await
            .map_err(storage)?
            .map_err(storage)?;
        self.metrics.fetched(from.source(), size - counted);
        Ok(size)
    }

    /// Where a NAR's bytes come from. Upstreams first, and when all fail, the swarm of peers
    /// that hold it, then a peer over HTTP; with `peers-first`, the swarm first when a peer's
    /// digest says it holds the NAR. Bytes from peers are checked against the signed NarHash.
    /// `accelerable`: see [`Fetcher::accelerable`].
    async fn open_source(
        &self,
        fh: Sha256,
        ext: &'static str,
        plan: &Plan,
        accelerable: bool,
    ) -> Result<(BytesFrom<'_>, Body, Option<NarCheck>), FetchError> {
        let key = nar_key(&fh.to_nix32());
        if self.tuning.policy == PeerPolicy::PeersFirst && self.peers.probable_holders(&key) > 0 {
            if let Some(swarm) = self.open_torrent(fh, ext, plan).await {
                return Ok(from_swarm(swarm));
            }
        }
        // http-first: an upstream whose first byte is late for a large NAR a peer holds is
        // raced by the swarm; whichever answers first is used (the other request is dropped).
        let first = self.open_first(plan);
        tokio::pin!(first);
        if accelerable {
            tokio::select! {
                r = &mut first => return self.after_upstream(fh, ext, plan, r).await,
                _ = tokio::time::sleep(ACCELERATE_AFTER) => {}
            }
            tracing::info!(file_hash = %fh, "upstream first byte late: asking the swarm too");
            tokio::select! {
                r = &mut first => return self.after_upstream(fh, ext, plan, r).await,
                Some(swarm) = self.open_torrent(fh, ext, plan) => return Ok(from_swarm(swarm)),
            }
        }
        let r = first.await;
        self.after_upstream(fh, ext, plan, r).await
    }

    /// The upstream's answer, or when every upstream failed: the swarm, then a peer over HTTP.
    async fn after_upstream<'a>(
        &'a self,
        fh: Sha256,
        ext: &'static str,
        plan: &Plan,
        upstream: Result<(&'a Upstream, UpstreamBody), FetchError>,
    ) -> Result<(BytesFrom<'a>, Body, Option<NarCheck>), FetchError> {
        match upstream {
            Ok((up, body)) => Ok((BytesFrom::Upstream(up), Body::Http(body), None)),
            Err(e) => {
                if let Some(swarm) = self.open_torrent(fh, ext, plan).await {
                    return Ok(from_swarm(swarm));
                }
                match self.open_peer(fh, ext, plan).await {
                    Some((peer, body, check)) => {
                        Ok((BytesFrom::Peer(peer), Body::Http(body), Some(check)))
                    }
                    None => Err(e),
                }
            }
        }
    }

    /// Whether an upstream download may switch to the swarm: http-first, BitTorrent on, a
    /// large NAR (by the narinfo) that a peer's digest says it holds.
    fn accelerable(&self, fh: &Sha256, plan: &Plan) -> bool {
        self.tuning.policy == PeerPolicy::HttpFirst
            && self.torrent().is_some()
            && plan.size.is_some_and(|s| s >= self.tuning.accelerate_size)
            && self.peers.probable_holders(&nar_key(&fh.to_nix32())) > 0
    }

    /// Every upstream failed: the first peer that holds the NAR (only-if-cached). Only when the
    /// signed NarHash is known and nixgate can decompress the file to check it.
    async fn open_peer(
        &self,
        fh: Sha256,
        ext: &'static str,
        plan: &Plan,
    ) -> Option<(Arc<Upstream>, UpstreamBody, NarCheck)> {
        let check = plan.nar_check()?;
        let rel = format!("nar/{}.nar{ext}", fh.to_nix32());
        for peer in self.peers.candidates(&nar_key(&fh.to_nix32())) {
            let Ok(url) = peer.base.join(&rel) else {
                continue;
            };
            match self.client.peer_request(&peer, Method::GET, &url).await {
                Ok(Answer::Found(body)) => {
                    if let (Some(got), Some(want)) = (body.content_length, plan.size) {
                        if got != want {
                            self.metrics.verification_failure(Source::Peer);
                            peer.breaker.probation(crate::peers::PROBATION);
                            tracing::warn!(peer = %peer.base, got, want, "peer NAR length differs from FileSize; peer on probation");
                            continue;
                        }
                    }
                    tracing::info!(peer = %peer.base, file_hash = %fh, "NAR from peer");
                    return Some((peer, body, check));
                }
                Ok(Answer::NotFound) => {}
                Err(e) => {
                    tracing::debug!(peer = %peer.base, error = %e, "peer NAR fetch failed")
                }
            }
        }
        None
    }

    /// Every upstream failed: fetch over BitTorrent from the peers that hold the NAR. Their
    /// `.torrent`s must match the narinfo (one file, name, FileSize, piece-length policy); a
    /// peer whose `.torrent` does not is counted and put on probation.
    async fn open_torrent(
        &self,
        fh: Sha256,
        ext: &'static str,
        plan: &Plan,
    ) -> Option<(Vec<Arc<Upstream>>, TorrentBody, NarCheck)> {
        let engine = self.torrent()?.clone();
        let check = plan.nar_check()?;
        let expected = Expected {
            name: format!("{}.nar{ext}", fh.to_nix32()),
            length: plan.size?,
        };
        let rel = format!("_p2p/v1/torrent/{}", fh.to_nix32());
        let mut chosen: Option<NarTorrent> = None;
        let (mut holders, mut addrs) = (Vec::new(), Vec::new());
        for peer in self.peers.candidates(&nar_key(&fh.to_nix32())) {
            let Ok(url) = peer.base.join(&rel) else {
                continue;
            };
            let Ok(Answer::Found(body)) = self.client.peer_request(&peer, Method::GET, &url).await
            else {
                continue;
            };
            let port = body
                .headers
                .get(PORT_HEADER)
                .and_then(|v| v.to_str().ok()?.parse::<u16>().ok());
            let checked = body
                .read_all(MAX_TORRENT_FILE)
                .await
                .map_err(|e| e.to_string())
                .and_then(|b| expected.check(&b).map_err(|e| e.to_string()));
            let t = match checked {
                Ok(t) => t,
                Err(e) => {
                    self.metrics.verification_failure(Source::Torrent);
                    peer.breaker.probation(crate::peers::PROBATION);
                    tracing::warn!(peer = %peer.base, file_hash = %fh, error = %e, "peer's .torrent refused; peer on probation");
                    continue;
                }
            };
            if chosen.as_ref().is_some_and(|c| *c != t) {
                tracing::warn!(peer = %peer.base, file_hash = %fh, "peers disagree on the torrent; using the first");
                continue;
            }
            chosen = Some(t);
            if let Some(port) = port {
                addrs.extend(peer_addrs(&peer.base, port).await);
            }
            holders.push(peer);
        }
        let torrent = chosen?;
        match engine.fetch(&torrent, addrs.clone()).await {
            Ok(body) => {
                tracing::info!(file_hash = %fh, info_hash = %torrent.info_hash_hex(), peers = ?addrs, "NAR from the swarm");
                Some((holders, body, check))
            }
            Err(e) => {
                tracing::warn!(file_hash = %fh, error = %e, "cannot start the torrent fetch");
                None
            }
        }
    }

    fn count_rejected<T>(&self, r: Result<T, FetchError>) -> Result<T, FetchError> {
        if r.is_err() {
            self.metrics.verification_failure(Source::Upstream);
        }
        r
    }

    async fn passthrough(
        self: &Arc<Self>,
        fh: Sha256,
        plan: Plan,
    ) -> Result<NarSource, FetchError> {
        let (_, mut body) = self.open_first(&plan).await?;
        let (tx, rx) = mpsc::channel(4);
        let size = plan.size;
        let this = self.clone();
        tokio::spawn(async move {
            let mut verifier = Checks::new(fh, &plan, None);
            let mut held: Option<Bytes> = None;
            let end = loop {
                match body.batch(WRITE_BATCH).await {
                    Ok(Some(c)) => {
                        if let Err(e) = this.count_rejected(verifier.update(&c)) {
                            break Err(e);
                        }
                        if let Some(prev) = held.replace(c) {
                            if tx.send(Ok(prev)).await.is_err() {
                                return; // the client went away; nobody else wants it
                            }
                        }
                    }
                    Ok(None) => break this.count_rejected(verifier.finish()),
                    Err(e) => break Err(FetchError::Unavailable(e.to_string())),
                }
            };
            let last = match end {
                Ok(n) => {
                    this.metrics.fetched(Source::Upstream, n);
                    held.map(Ok)
                }
                Err(e) => Some(Err(e)),
            };
            if let Some(last) = last {
                let _ = tx.send(last).await;
            }
        });
        Ok(NarSource::Passthrough { chunks: rx, size })
    }
}
