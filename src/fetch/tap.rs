//! The one-decode transcode (issue 22, docs/ZSTD.md §4): an encoder fed the decoded bytes of
//! a download as they are checked. `verify.rs`'s NAR sink hands it exactly the bytes it
//! hashes, behind the NAR-header check and the NarSize limit, so the xz stream is decoded
//! once for both the NarHash check and nixgate's own file. The encoder runs on its own thread
//! (`encode::Stage`), fed 1 MiB batches, so the decode and the encode overlap on two cores.
//!
//! Its file is a second temp file of the download, tailed by runners that asked for
//! `<F>.nar.zst` ([`super::nar::Download::served`]): every write is published as
//! `Progress::Running`, readers are held one byte short until the file is committed
//! (`Done`). It is committed only after the download's checks passed ([`Tap::finish`]); a
//! tap dropped unfinished (NarHash mismatch, the download failed or was cancelled) or failing
//! (encoder error, disk full, the cap) publishes `Failed`: its readers are aborted, its temp
//! file deleted, the upstream file goes on unaffected, and the next request retries.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::sync::watch;

use super::encode::{thread_cpu, Encoded, Out, Stage, CHUNK};
use super::nar::Progress;
use super::FetchError;
use crate::metrics::{Metrics, StageCpu};
use crate::nix::served::Served;
use crate::store::{StoreError, WriteHandle};

/// Why a tap stored nothing.
#[derive(Debug, Error)]
pub enum TapError {
    #[error("encoding: {0}")]
    Encode(io::Error),
    #[error("the decoded NAR was {got} bytes, NarSize says {want}")]
    Size { got: u64, want: u64 },
    #[error("the download ended before its NAR verified")]
    Abandoned,
    #[error("it failed earlier")]
    FailedEarlier,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An encoder on a download's decoded bytes, writing nixgate's own file of the NAR.
pub struct Tap {
    /// The encoder's thread; `None` once it failed or finished.
    stage: Option<Stage>,
    /// Decoded bytes not yet handed to the encoder thread (sent by [`CHUNK`]).
    pending: Vec<u8>,
    /// Its readers saw the end (`Done` or `Failed`).
    ended: bool,
    progress: watch::Sender<Progress>,
    nar_size: u64,
    nar_bytes: u64,
    metrics: Arc<Metrics>,
}

impl Tap {
    /// A tap encoding as `as_` into `file`, for a NAR of `nar_size` bytes (signed), publishing
    /// its progress on `progress`.
    pub fn new(
        as_: Served,
        file: WriteHandle,
        nar_size: u64,
        progress: watch::Sender<Progress>,
        metrics: Arc<Metrics>,
    ) -> io::Result<Self> {
        let out = Encoded::new(as_, Out::new(file, Some(progress.clone())), nar_size)?;
        Ok(Tap {
            stage: Some(Stage::spawn(out)?),
            pending: Vec::with_capacity(CHUNK),
            ended: false,
            progress,
            nar_size,
            nar_bytes: 0,
            metrics,
        })
    }

    /// Encodes the next decoded bytes. A failure ends the tap (its readers are aborted, its
    /// temp file deleted), never the download.
    pub fn write(&mut self, buf: &[u8]) {
        let Some(stage) = &self.stage else { return };
        self.nar_bytes += buf.len() as u64;
        self.pending.extend_from_slice(buf);
        if self.pending.len() < CHUNK {
            return;
        }
        let batch = std::mem::replace(&mut self.pending, Vec::with_capacity(CHUNK));
        if !stage.send(batch) {
            let e = match self.stage.take().map(Stage::end) {
                Some(Err(e)) => TapError::Encode(e),
                _ => TapError::FailedEarlier,
            };
            self.fail(&e);
        }
    }

    /// Whether it still writes (no failure so far).
    pub fn alive(&self) -> bool {
        self.stage.is_some()
    }

    fn fail(&mut self, e: &TapError) {
        self.stage = None;
        if !std::mem::replace(&mut self.ended, true) {
            // A download that ended before its first byte transcoded nothing: its own
            // failure is logged and counted where it ended.
            if self.nar_bytes > 0 {
                tracing::warn!(error = %e, "transcode tap failed; its readers are aborted");
                self.metrics.transcode.ended(false);
            }
            let msg = format!("transcode: {e}");
            self.progress
                .send_replace(Progress::Failed(FetchError::Storage(msg)));
        }
    }

    /// The download verified: ends the stream, fsyncs and commits the file, then releases
    /// its readers (`Done`). Blocking: call from `spawn_blocking`.
    pub fn finish(mut self) -> Result<u64, TapError> {
        let res = self.commit();
        match &res {
            Ok(written) => {
                self.ended = true;
                self.progress.send_replace(Progress::Done(written.0));
                let m = &self.metrics.transcode;
                // The decode was the download's own check: no CPU spent on it for this file.
                let cpu = StageCpu {
                    decode: Duration::ZERO,
                    encode: written.1,
                };
                m.transcoded(self.nar_bytes, written.0, cpu);
                m.ended(true);
            }
            Err(e) => self.fail(e),
        }
        res.map(|(written, _)| written)
    }

    /// The file's length, committed, and the encoder's CPU time.
    fn commit(&mut self) -> Result<(u64, Duration), TapError> {
        let Some(stage) = self.stage.take() else {
            return Err(TapError::FailedEarlier);
        };
        let last = std::mem::take(&mut self.pending);
        if !last.is_empty() && !stage.send(last) {
            stage.end().map_err(TapError::Encode)?;
            return Err(TapError::FailedEarlier);
        }
        let (out, mut cpu) = stage.end().map_err(TapError::Encode)?;
        if self.nar_bytes != self.nar_size {
            return Err(TapError::Size {
                got: self.nar_bytes,
                want: self.nar_size,
            });
        }
        let started = thread_cpu();
        let done = out.finish().map_err(TapError::Encode);
        cpu += thread_cpu().saturating_sub(started);
        let done = done?;
        done.file.commit()?;
        Ok((done.written, cpu))
    }
}

impl Drop for Tap {
    /// Dropped unfinished: the download failed or was cancelled.
    fn drop(&mut self) {
        self.fail(&TapError::Abandoned);
    }
}

#[cfg(test)]
mod tests {
    use crate::fetch::testdata::xz;

    use sha2::Digest;

    use super::*;
    use crate::fetch::verify::{NarCheck, VerifyError};
    use crate::nix::compression::Compression;
    use crate::nix::hash::Sha256;
    use crate::store::Store;

    fn nar() -> Vec<u8> {
        crate::fetch::testdata::text_nar(60_000)
    }

    fn store(dir: &std::path::Path) -> Arc<Store> {
        let s = Store::open(dir, 1 << 30, Arc::new(Metrics::default()), None).unwrap();
        assert!(s.wait_indexed(Duration::from_secs(10)));
        s
    }

    /// Feeds `file` (xz) through the NAR check with a tap; the check's result, and the tap's
    /// progress at the end.
    fn run(
        s: &Arc<Store>,
        file: &[u8],
        signed: (Sha256, u64),
    ) -> (Result<Option<u64>, VerifyError>, watch::Receiver<Progress>) {
        let (tx, rx) = watch::channel(Progress::Running(0));
        let w = s.begin_served(Sha256([7; 32]), ".zst", None).unwrap();
        let m = Arc::new(Metrics::default());
        let tap = Tap::new(Served::Zstd, w, signed.1, tx, m).unwrap();
        let mut check = NarCheck::tapped(Compression::Xz, Some(signed), Some(tap)).unwrap();
        let fed = file
            .chunks(64 << 10)
            .try_for_each(|c| check.update(c))
            .and_then(|()| check.finish_tapped());
        let res = fed.map(|tap| tap.map(|t| t.finish().unwrap()));
        (res, rx)
    }

    #[tokio::test]
    async fn one_decode_gives_the_zstd_file_once_the_nar_verified() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let nar = nar();
        let hash = Sha256(sha2::Sha256::digest(&nar).into());
        let (res, rx) = run(&s, &xz(&nar), (hash, nar.len() as u64));
        let written = res.unwrap().expect("the tap comes back");
        assert!(matches!(*rx.borrow(), Progress::Done(n) if n == written));
        let hit = s.served(&Sha256([7; 32]), ".zst").await.unwrap().unwrap();
        let bytes = hit.read(0, hit.len() as usize).await.unwrap();
        assert_eq!(zstd::decode_all(&bytes[..]).unwrap(), nar);
    }

    #[tokio::test]
    async fn a_nar_that_does_not_verify_aborts_the_readers_and_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let nar = nar();
        let (res, rx) = run(&s, &xz(&nar), (Sha256([1; 32]), nar.len() as u64));
        assert!(matches!(res, Err(VerifyError::NarHash { .. })));
        assert!(matches!(*rx.borrow(), Progress::Failed(_)));
        assert!(s.served(&Sha256([7; 32]), ".zst").await.unwrap().is_none());
        assert_eq!(s.bytes(), 0);
        // The encoder's thread drops the temp file once it finished the batches queued.
        let tmp = || std::fs::read_dir(dir.path().join("tmp")).unwrap().count();
        let t0 = std::time::Instant::now();
        while tmp() > 0 && t0.elapsed() < std::time::Duration::from_secs(10) {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(tmp(), 0, "the temp file is deleted");
    }
}
