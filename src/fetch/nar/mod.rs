//! NAR misses: one download per FileHash, written to a temp file that every waiting client
//! tails as it grows, verified (`FileSize`, `sha256 == FileHash`, compression magic) before it
//! is renamed into the cache.
//!
//! Clients never see a verification failure as a complete response: while the download runs,
//! readers are held one byte short of what was written, and the last byte is released only
//! after the file verified. A failure aborts their responses, so Nix retries.
//!
//! - [`plan`]: where a NAR may come from and the checks its bytes must pass;
//! - [`policy`]: the source policy as data: the order of the `NarSource`s a miss asks;
//! - [`source`]: what a source is (`NarSource`, `Opened`), the one ask-in-order loop, the
//!   byte streams;
//! - the sources, one file each: [`fleet`] (owners, then the previous owner), [`upstream`]
//!   (the configured upstreams, raced by the swarm when late), [`swarm`] (the holders'
//!   torrent), [`peer`] (one peer over HTTP);
//! - [`copy`]: the download task (copy loop, mid-stream switch to the swarm, commit);
//! - [`resume`]: a source that broke mid-way, continued from another at the same offset;
//! - [`relay`]: a download the cache cannot store, relayed uncached to its readers;
//! - [`tapped`]: nixgate's own file of the NAR, made from the download's decoded bytes
//!   (`fetch/tap.rs`) and tailed by runners as the upstream file is;
//! - [`passthrough`]: NARs the cache cannot take (too large, no room), streamed through.

mod bucket;
mod copy;
mod fleet;
mod owned;
mod passthrough;
mod peer;
mod plan;
mod policy;
mod relay;
mod resume;
mod source;
mod swarm;
mod tapped;
mod unproven;
mod upstream;

pub(super) use passthrough::Hub as PassthroughHub;
pub(super) use plan::Via;

use std::fs::File;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use super::{Ask, FetchError, Fetcher};
use crate::nix::hash::Sha256;
use crate::store::Hit;
pub use relay::Relay;

/// Largest write to the temp file; bigger batches when the upstream is fast.
const WRITE_BATCH: usize = 1 << 20;
/// When an accelerable download's upstream rate is judged.
const ACCELERATE_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

/// How far a download has got.
#[derive(Debug, Clone)]
pub enum Progress {
    /// Bytes written to the temp file so far (not yet verified).
    Running(u64),
    /// The cache gave up at this many bytes (all in the temp file); the rest comes through
    /// each reader's channel ([`Reader::rest`]).
    Relaying(u64),
    /// Verified (and committed, unless it was relayed uncached); the total size.
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
    /// Its readers, should the cache give up on it mid-way.
    pub relay: Arc<relay::Relay>,
    /// nixgate's own file of the NAR, when the download makes it as it goes (`tapped.rs`).
    pub served: Option<tapped::Tail>,
}

/// One client's view of a download: the shared temp file and, should the download switch to
/// uncached streaming, its own channel for the rest.
pub struct Reader {
    pub download: Download,
    pub rest: mpsc::Receiver<Bytes>,
}

/// What to send for a NAR request.
pub enum NarSource {
    /// A verified file in the cache or the held uploads, open.
    Cached(Hit),
    /// A download into the cache, under way or just finished.
    Download(Reader),
    /// Not taken by the cache (too large, no room): streamed through without storing (last chunk held back
    /// until verified).
    Passthrough {
        chunks: mpsc::Receiver<Result<Bytes, FetchError>>,
        size: Option<u64>,
    },
}

impl Fetcher {
    /// Finds the NAR `<fh>.nar<ext>`: cached, joined to a download, or newly fetched. Returns
    /// once the first bytes are there (or the fetch failed), so the status is known.
    pub async fn nar(
        self: &Arc<Self>,
        fh: Sha256,
        ext: &'static str,
        ask: Ask,
    ) -> Result<(NarSource, bool), FetchError> {
        if let Some(hit) = self.cached(fh, ext).await? {
            return Ok((NarSource::Cached(hit), true));
        }
        if ask.only_if_cached {
            return Err(FetchError::NotFound);
        }
        if let Some(source) = self.served_miss(fh, ext, ask).await? {
            return Ok((source, false));
        }
        let key = format!("nar/{}.nar{ext}", fh.to_nix32());
        if self.is_negative(&key) {
            return Err(FetchError::NotFound);
        }
        // A download under way is joined before anything touches the disk: the common case
        // for concurrent clients. Any download serves a client; a fleet request joins only
        // one we do ourselves, never one that waits on an owner (which may be the asker).
        if let Some(reader) = self
            .join((fh, Via::Ourselves))
            .or_else(|| (!ask.fleet).then(|| self.join((fh, Via::Owner))).flatten())
        {
            return self.first_bytes(reader).await;
        }
        // Whether we fetch it ourselves depends on its owner, which the narinfo tells.
        let plan = self.plan(fh, ext, ask.fleet).await;
        self.checkable(&plan)?;
        // Planning waited on the disk: a download may have finished meanwhile (committed,
        // then left the in-flight map). Looking again here, with no wait before joining or
        // starting, keeps one download per NAR.
        if let Some(hit) = self
            .store
            .nar(&fh, ext)
            .await
            .map_err(FetchError::storage)?
        {
            return Ok((NarSource::Cached(hit), true));
        }
        if let Some(hit) = self.from_bucket(&plan).await {
            return Ok((NarSource::Cached(hit), false));
        }
        let reader = match self.join(plan.key()) {
            Some(reader) => reader,
            None => {
                if plan.size.is_some_and(|s| s > self.store.max_bytes()) {
                    return Ok((self.passthrough(plan).await?, false));
                }
                match self.start(plan) {
                    Ok(reader) => reader,
                    // No room in the cache: served all the same, verified and uncached.
                    Err(plan) => return Ok((self.passthrough(*plan).await?, false)),
                }
            }
        };
        self.first_bytes(reader).await
    }

    /// A reader of the download under way for `key`, if one is and still takes readers.
    fn join(&self, key: (Sha256, Via)) -> Option<Reader> {
        let download = self.nars.get(&key)?;
        let rest = download.relay.subscribe()?;
        self.metrics.coalesced();
        Some(Reader { download, rest })
    }

    /// Waits for the download's first bytes (or its failure), so the status is known.
    async fn first_bytes(&self, reader: Reader) -> Result<(NarSource, bool), FetchError> {
        let mut rx = reader.download.progress.clone();
        let first = rx
            .wait_for(|p| !matches!(p, Progress::Running(0)))
            .await
            .map(|p| p.clone())
            .unwrap_or_else(|_| {
                Progress::Failed(FetchError::Storage("download task ended".into()))
            });
        match first {
            Progress::Failed(e) => Err(e),
            _ => Ok((NarSource::Download(reader), false)),
        }
    }

    /// The uploaded or cached NAR, opened, if any. A NAR found on disk at start-up is checked
    /// on first use: its size against its narinfo's FileSize (a truncated file is dropped, and
    /// refetched). An error: the file is there but cannot be opened.
    pub async fn cached(&self, fh: Sha256, ext: &'static str) -> Result<Option<Hit>, FetchError> {
        if let Some(held) = self
            .store
            .uploads()
            .nar(&fh, ext)
            .await
            .map_err(FetchError::storage)?
        {
            return Ok(Some(held));
        }
        let Some(hit) = self
            .store
            .nar(&fh, ext)
            .await
            .map_err(FetchError::storage)?
        else {
            // nixgate's own file of the NAR, when `ext` names it (`served.rs`).
            if self.serve.is_some_and(|s| s.extension() == ext) {
                return self
                    .store
                    .served(&fh, ext)
                    .await
                    .map_err(FetchError::storage);
            }
            return Ok(None);
        };
        if self.store.nar_unchecked(&fh, ext) == Some(true) {
            let size = hit.len();
            let want = self
                .store
                .narinfos_of(&fh)
                .await
                .iter()
                .filter_map(super::narinfo::parse_stored)
                .find_map(|(_, ni)| ni.file_size);
            if want.is_some_and(|w| w != size) {
                tracing::warn!(file_hash = %fh, size, file_size = want, "cached NAR does not match its narinfo's FileSize; dropping it");
                self.store.forget(&fh);
                return Ok(None);
            }
            self.store.nar_checked(&fh);
        }
        Ok(Some(hit))
    }

    /// The size of the NAR if it exists, for HEAD (`None`: exists, size unknown).
    pub async fn nar_head(
        self: &Arc<Self>,
        fh: Sha256,
        ext: &'static str,
        ask: Ask,
    ) -> Result<Option<u64>, FetchError> {
        if let Some(hit) = self.cached(fh, ext).await? {
            return Ok(Some(hit.len()));
        }
        if ask.only_if_cached {
            return Err(FetchError::NotFound);
        }
        if self.serves_unheld(&fh, ext, ask).await {
            return Ok(None); // made on a GET (`served.rs`); its size is not known before
        }
        let plan = self.plan(fh, ext, ask.fleet).await;
        self.checkable(&plan)?;
        if plan.size.is_some() {
            return Ok(plan.size);
        }
        let head = self.open_upstream(&plan, http::Method::HEAD).await?;
        Ok(head.content_length)
    }
}
