//! nixgate's own file of a NAR made live for one runner, when the cache cannot store it
//! (docs/ZSTD.md §4 "Uncached paths"): a runner holding a zstd narinfo asks `<F>.nar.zst`
//! while the download of the upstream's file is relayed uncached (too large, no room), or
//! the upstream's file is held but no second file fits. Rather than a 503, the upstream's
//! file is decoded, checked against the signed NarHash/NarSize and encoded with the stored
//! files' settings (`transcode.rs` over `decode.rs` and `encode.rs`) into the runner's chunk
//! stream, the shape of a passthrough (`nar/passthrough.rs`); nothing is stored.
//!
//! The rule: the stream's last bytes (zstd's last block and checksum, or the NAR's last
//! byte) go out only once the input ended, decoded to exactly NarSize bytes and matched
//! NarHash; any input, decode or encode error ends the stream with an `Err`, which aborts the
//! HTTP body without its last chunk (`http/body.rs`), so Nix never takes a partial NAR for a
//! whole one. The CPU work runs on the blocking pool, one thread per stream and at most one
//! stream per core at once (`Fetcher::live_slots`: further runners wait); memory is bounded
//! by the input's channel, the encoder's 1 MiB batch and [`OUT_QUEUE`] chunks.

use std::io::{self, Read, Write};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, Semaphore};

use super::nar::{NarSource, Progress, Reader};
use super::transcode::{transcode_to, Signed, TranscodeError};
use super::{FetchError, Fetcher};
use crate::metrics::{Metrics, StageCpu};
use crate::nix::hash::Sha256;
use crate::nix::served::Served;
use crate::store::Hit;

/// One chunk of a NAR stream, or why it ends early.
pub(super) type Chunk = Result<Bytes, FetchError>;

/// Chunks in flight to the runner (each up to the encoder's 1 MiB batch).
const OUT_QUEUE: usize = 2;

/// What a live transcode reads: the upstream's file.
pub(super) enum Input {
    /// A chunk stream whose last chunk comes only once the file verified (a passthrough).
    Chunks(mpsc::Receiver<Chunk>),
    /// A committed (verified) file of the cache.
    Held(Hit),
}

/// The input chunks as a blocking reader; an input error is kept to end the output with.
struct ChunkReader {
    rx: mpsc::Receiver<Chunk>,
    cur: Bytes,
    failed: Option<FetchError>,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.cur = b,
                Some(Err(e)) => {
                    self.failed = Some(e.clone());
                    return Err(io::Error::other(e));
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur.split_to(n));
        Ok(n)
    }
}

/// The runner's channel as a writer: sends what the encoder writes (in its 1 MiB batches)
/// but the last byte, which only the end of [`stream`] sends.
struct ChannelSink {
    tx: mpsc::Sender<Chunk>,
    held: BytesMut,
    sent: u64,
}

impl Write for ChannelSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.held.extend_from_slice(buf);
        if self.held.len() > 1 {
            let out = self.held.split_to(self.held.len() - 1).freeze();
            self.sent += out.len() as u64;
            let gone = |_| io::Error::new(io::ErrorKind::BrokenPipe, "the runner went away");
            self.tx.blocking_send(Ok(out)).map_err(gone)?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Decodes, checks and encodes `input` into `sink`; blocking.
fn run(
    input: Input,
    signed: Signed,
    as_: Served,
    sink: ChannelSink,
) -> Result<(ChannelSink, u64, StageCpu), FetchError> {
    let failed = |e| FetchError::Storage(format!("live transcode: {e}"));
    match input {
        Input::Held(hit) => transcode_to(hit.reader(), signed, as_, sink).map_err(failed),
        Input::Chunks(rx) => {
            let mut src = ChunkReader {
                rx,
                cur: Bytes::new(),
                failed: None,
            };
            let res = transcode_to(&mut src, signed, as_, sink);
            match src.failed {
                Some(e) => Err(e),
                None => res.map_err(failed),
            }
        }
    }
}

/// A live transcode of `input` (the upstream's file, compressed as `signed` says) into
/// `as_`: the runner's chunk stream, ending with an `Err` on any failure and with its last
/// bytes only once everything checked (see the module's comment). Counted as a transcode
/// (`outcome="relayed"`, or `failed`; a runner that went away is neither).
pub(super) fn stream(
    input: Input,
    signed: Signed,
    as_: Served,
    metrics: Arc<Metrics>,
    fh: Sha256,
    slots: Arc<Semaphore>,
) -> mpsc::Receiver<Chunk> {
    let (tx, rx) = mpsc::channel(OUT_QUEUE);
    let sink = ChannelSink {
        tx: tx.clone(),
        held: BytesMut::new(),
        sent: 0,
    };
    tokio::spawn(async move {
        // One blocking thread per slot: further runners wait here (their input waits too).
        let _slot = slots.acquire_owned().await.expect("never closed");
        let job = tokio::task::spawn_blocking(move || run(input, signed, as_, sink));
        let last = match job.await {
            Ok(Ok((sink, nar_bytes, cpu))) => {
                let out_bytes = sink.sent + sink.held.len() as u64;
                metrics.transcode.transcoded(nar_bytes, out_bytes, cpu);
                metrics.transcode.relayed();
                tracing::debug!(file_hash = %fh, nar_bytes, bytes = out_bytes, "NAR transcoded live, uncached");
                Ok(sink.held.freeze())
            }
            Ok(Err(e)) => {
                if !tx.is_closed() {
                    tracing::warn!(file_hash = %fh, error = %e, "live transcode failed; the runner's transfer is aborted");
                    metrics.transcode.ended(false);
                }
                Err(e)
            }
            Err(e) => Err(FetchError::Storage(format!("live transcode: {e}"))),
        };
        let _ = tx.send(last).await;
    });
    rx
}

impl Fetcher {
    /// `<fh>.nar<ext>` of nixgate's own made live from `chunks` (the passthrough of the
    /// upstream's file, which the cache could not take), for one runner.
    pub(super) fn live(
        &self,
        fh: Sha256,
        signed: Signed,
        chunks: mpsc::Receiver<Chunk>,
    ) -> Result<NarSource, FetchError> {
        self.live_from(fh, signed, Input::Chunks(chunks))
    }

    /// nixgate's own file of NAR `fh` made live when the cache holds none and cannot store
    /// one: from the upstream's file when it is held (no second file fits), else from a
    /// passthrough of it (an upstream GET of its own when the download this request joined
    /// was relayed uncached to its readers; joined when one is just starting).
    pub(super) async fn live_uncached(
        self: &Arc<Self>,
        fh: Sha256,
        signed: Signed,
    ) -> Result<NarSource, FetchError> {
        let from = signed.compression.extension();
        if let Some(hit) = self.cached(fh, from).await? {
            return self.live_from(fh, signed, Input::Held(hit));
        }
        let chunks = self.stream_upstream(fh, from).await?;
        self.live(fh, signed, chunks)
    }

    /// After a download of the upstream's file that makes no file of ours: `None` once it
    /// ended stored (the transcode from it follows), a live stream when it is relayed
    /// uncached. Its reader is dropped then: its relay channel, unread, would stall it.
    pub(super) async fn untapped(
        self: &Arc<Self>,
        fh: Sha256,
        signed: Signed,
        r: Reader,
    ) -> Result<Option<NarSource>, FetchError> {
        let mut rx = r.download.progress.clone();
        let end = rx
            .wait_for(|p| !matches!(p, Progress::Running(_)))
            .await
            .map(|p| p.clone());
        match end {
            Ok(Progress::Failed(e)) => Err(e),
            Ok(Progress::Relaying(_)) => {
                drop(r);
                self.live_uncached(fh, signed).await.map(Some)
            }
            _ => Ok(None),
        }
    }

    /// nixgate's own file `<fh>.nar<ext>` transcoded from the held NAR (once however many
    /// ask), or made live when it cannot be stored (no room beside the NAR, or the NAR was
    /// relayed uncached after all).
    pub(super) async fn served_or_live(
        self: &Arc<Self>,
        fh: Sha256,
        signed: Signed,
        ext: &'static str,
    ) -> Result<NarSource, FetchError> {
        if let Err(e) = self.transcode(fh, signed).await {
            if !matches!(*e, TranscodeError::Store(_)) {
                return Err(FetchError::storage(e));
            }
        }
        let hit = self.store.served(&fh, ext).await;
        match hit.map_err(FetchError::storage)? {
            Some(h) => Ok(NarSource::Cached(h)),
            None => self.live_uncached(fh, signed).await,
        }
    }

    fn live_from(&self, fh: Sha256, signed: Signed, input: Input) -> Result<NarSource, FetchError> {
        let Some(as_) = self.serve else {
            return Err(FetchError::Storage("no own files served".into()));
        };
        tracing::info!(file_hash = %fh, "the cache cannot store this NAR; transcoding it live for the runner");
        let slots = self.live_slots.clone();
        let chunks = stream(input, signed, as_, self.metrics.clone(), fh, slots);
        Ok(NarSource::Passthrough { chunks, size: None })
    }
}

#[cfg(test)]
mod tests {
    use sha2::Digest;

    use super::*;
    use crate::fetch::testdata::{text_nar, xz};
    use crate::nix::compression::Compression;

    fn signed(nar: &[u8]) -> Signed {
        Signed {
            compression: Compression::Xz,
            nar_hash: Sha256(sha2::Sha256::digest(nar).into()),
            nar_size: nar.len() as u64,
        }
    }

    /// Runs a live transcode of `input` (sent in 64 KiB chunks, then `end` if any: an input
    /// error instead of the clean end); the chunks out, and how the stream ended.
    async fn live(
        input: &[u8],
        end: Option<FetchError>,
        signed: Signed,
        as_: Served,
        m: &Arc<Metrics>,
    ) -> (Vec<u8>, Option<FetchError>) {
        live_in(input.to_vec(), end, signed, as_, m.clone(), slots(2)).await
    }

    fn slots(n: usize) -> Arc<Semaphore> {
        Arc::new(Semaphore::new(n))
    }

    /// [`live`] with its slots, owned (to run as a task).
    async fn live_in(
        input: Vec<u8>,
        end: Option<FetchError>,
        signed: Signed,
        as_: Served,
        m: Arc<Metrics>,
        slots: Arc<Semaphore>,
    ) -> (Vec<u8>, Option<FetchError>) {
        let (tx, rx) = mpsc::channel(4);
        let mut out = stream(Input::Chunks(rx), signed, as_, m, Sha256([3; 32]), slots);
        let chunks: Vec<Bytes> = input.chunks(64 << 10).map(Bytes::copy_from_slice).collect();
        tokio::spawn(async move {
            for c in chunks {
                tx.send(Ok(c)).await.unwrap();
            }
            if let Some(e) = end {
                tx.send(Err(e)).await.unwrap();
            }
        });
        let mut got = Vec::new();
        while let Some(item) = out.recv().await {
            match item {
                Ok(b) => got.extend_from_slice(&b),
                Err(e) => return (got, Some(e)),
            }
        }
        (got, None)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn xz_becomes_zstd_or_the_nar_and_is_counted_relayed() {
        let nar = text_nar(200_000);
        let m = Arc::new(Metrics::default());
        let (got, end) = live(&xz(&nar), None, signed(&nar), Served::Zstd, &m).await;
        assert!(end.is_none(), "{end:?}");
        assert!(got.len() < nar.len() / 4, "compressed: {}", got.len());
        assert_eq!(zstd::decode_all(&got[..]).unwrap(), nar);
        let (plain, end) = live(&xz(&nar), None, signed(&nar), Served::None, &m).await;
        assert!(end.is_none(), "{end:?}");
        assert_eq!(plain, nar);
        let t = m.transcode.totals();
        assert_eq!((t.relayed, t.failed), (2, 0));
        assert_eq!(t.nar_bytes, 2 * nar.len() as u64);
        assert_eq!(t.out_bytes, (got.len() + plain.len()) as u64);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_input_error_ends_the_output_with_an_error_and_no_final_bytes() {
        let nar = text_nar(200_000);
        let file = xz(&nar);
        let m = Arc::new(Metrics::default());
        // Every byte of the file came, then the input failed (its check refused it).
        let broken = FetchError::Storage("upstream refused".into());
        for as_ in [Served::Zstd, Served::None] {
            let (got, end) = live(&file, Some(broken.clone()), signed(&nar), as_, &m).await;
            assert!(matches!(end, Some(FetchError::Storage(ref s)) if s == "upstream refused"));
            match as_ {
                Served::Zstd => assert!(zstd::decode_all(&got[..]).is_err(), "no epilogue"),
                Served::None => assert!(got.len() < nar.len(), "not the last byte"),
            }
        }
        assert_eq!(m.transcode.totals().failed, 2);
        assert_eq!(m.transcode.totals().relayed, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_nar_that_does_not_match_or_ends_early_ends_with_an_error() {
        let nar = text_nar(200_000);
        let file = xz(&nar);
        let m = Arc::new(Metrics::default());
        let mut wrong = signed(&nar);
        wrong.nar_hash = Sha256([1; 32]);
        let (got, end) = live(&file, None, wrong, Served::Zstd, &m).await;
        assert!(end.is_some());
        assert!(zstd::decode_all(&got[..]).is_err());
        // The input stopped short with a clean end (a passthrough that dropped this reader).
        let short = &file[..file.len() * 2 / 3];
        let (got, end) = live(short, None, signed(&nar), Served::None, &m).await;
        assert!(end.is_some());
        assert!(got.len() < nar.len());
        assert_eq!(m.transcode.totals().relayed, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn live_transcodes_beyond_the_slots_wait_for_one() {
        let nar = text_nar(50_000);
        let file = xz(&nar);
        let m = Arc::new(Metrics::default());
        let one = slots(1);
        let (tx, rx) = mpsc::channel(4);
        let input = Input::Chunks(rx);
        let mut first = stream(
            input,
            signed(&nar),
            Served::Zstd,
            m.clone(),
            Sha256([4; 32]),
            one.clone(),
        );
        tx.send(Ok(Bytes::copy_from_slice(&file[..100])))
            .await
            .unwrap();
        let t0 = std::time::Instant::now();
        while one.available_permits() > 0 {
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(5),
                "the first took the slot"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let second = tokio::spawn(live_in(
            file.clone(),
            None,
            signed(&nar),
            Served::Zstd,
            m.clone(),
            one.clone(),
        ));
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(
            !second.is_finished(),
            "the second waits while the first holds the slot"
        );
        tx.send(Ok(Bytes::copy_from_slice(&file[100..])))
            .await
            .unwrap();
        drop(tx);
        let mut got = Vec::new();
        while let Some(item) = first.recv().await {
            got.extend_from_slice(&item.unwrap());
        }
        assert_eq!(zstd::decode_all(&got[..]).unwrap(), nar);
        let (got, end) = second.await.unwrap();
        assert!(end.is_none(), "{end:?}");
        assert_eq!(zstd::decode_all(&got[..]).unwrap(), nar);
        assert_eq!(one.available_permits(), 1, "both slots given back");
    }
}
