//! The encoder of nixgate's own file of a NAR (issue 22, docs/ZSTD.md §2): zstd level 3, an
//! 8 MiB window with long-distance matching, checksum, content size pledged (= NarSize),
//! single-threaded; or the decoded NAR itself (`--serve-compression none`). It writes into a
//! store [`WriteHandle`] whose reservation grows with what is written. Shared by the
//! transcode of a committed file (`transcode.rs`) and the tap on a download (`tap.rs`).

use std::io::{self, BufWriter, Write};
use std::time::Duration;

use tokio::sync::watch;

use super::nar::Progress;
use crate::nix::served::Served;
use crate::store::WriteHandle;

/// zstd level (docs/ZSTD.md §2: 7.4 CPU s/GB, 1.31× the xz size).
const LEVEL: i32 = 3;
/// zstd window: 8 MiB, what xz -6 costs a runner's decoder today.
const WINDOW_LOG: u32 = 23;
/// The largest window a zstd file of nixgate's own from another appliance may need (ours,
/// with room for a later version's choice): a lying owner or peer cannot make the check's
/// decoder allocate more than 32 MiB (zstd's default limit is 128 MiB).
pub(super) const PEER_WINDOW_LOG_MAX: u32 = WINDOW_LOG + 2;
/// Write batches into the file.
pub(super) const CHUNK: usize = 1 << 20;

/// The store write, as an `io::Write` (its reservation grows with what is written). With a
/// `progress` sender, every write is published as `Running(written)` for readers tailing
/// the temp file (they hold back its last byte until the file is done).
pub(super) struct Out {
    pub file: WriteHandle,
    pub written: u64,
    pub progress: Option<watch::Sender<Progress>>,
}

impl Out {
    pub fn new(file: WriteHandle, progress: Option<watch::Sender<Progress>>) -> Self {
        Out {
            file,
            written: 0,
            progress,
        }
    }
}

impl Write for Out {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file
            .grow(self.written + buf.len() as u64)
            .map_err(io::Error::other)?;
        let n = self.file.file().write(buf)?;
        self.written += n as u64;
        if let Some(tx) = &self.progress {
            tx.send_replace(Progress::Running(self.written));
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The encoded output: zstd, or the NAR itself; into a store write ([`Out`]) or any other
/// writer (a live stream to one runner, `live.rs`).
pub(super) enum Encoded<W: Write = Out> {
    Zstd(zstd::stream::write::Encoder<'static, BufWriter<W>>),
    Plain(BufWriter<W>),
}

impl<W: Write> Encoded<W> {
    pub fn new(as_: Served, out: W, nar_size: u64) -> io::Result<Self> {
        let out = BufWriter::with_capacity(CHUNK, out);
        Ok(match as_ {
            Served::None => Encoded::Plain(out),
            Served::Zstd => {
                let mut e = zstd::stream::write::Encoder::new(out, LEVEL)?;
                e.window_log(WINDOW_LOG)?;
                e.long_distance_matching(true)?;
                e.include_checksum(true)?;
                e.set_pledged_src_size(Some(nar_size))?;
                Encoded::Zstd(e)
            }
        })
    }

    /// Encodes `buf` (decoded NAR bytes).
    pub fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Encoded::Zstd(e) => e.write_all(buf),
            Encoded::Plain(o) => o.write_all(buf),
        }
    }

    /// Ends the stream (zstd: the last block and the checksum); the write, complete.
    pub fn finish(self) -> io::Result<W> {
        let out = match self {
            Encoded::Zstd(e) => e.finish()?,
            Encoded::Plain(out) => out,
        };
        out.into_inner().map_err(|e| e.into_error())
    }
}

/// The calling thread's CPU time so far.
pub(super) fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Batches in flight to an encoder thread (each up to [`CHUNK`] of decoded NAR).
const STAGE_QUEUE: usize = 2;

/// An encoder on its own thread, fed batches of decoded bytes through a bounded channel, so
/// that a download's decode (and NarHash check) and its encode run on two cores at once
/// (docs/ZSTD.md §4 "Threads"): the encoder then adds no time to the decode's critical path.
pub(super) struct Stage {
    tx: std::sync::mpsc::SyncSender<Vec<u8>>,
    thread: std::thread::JoinHandle<io::Result<(Encoded, Duration)>>,
}

impl Stage {
    /// Starts the thread; it ends when the sender is dropped or a write fails. Dropped
    /// without [`Stage::end`], the thread finishes the batches queued and drops the encoder
    /// (its store write deletes the temp file).
    pub fn spawn(out: Encoded) -> io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(STAGE_QUEUE);
        let thread = std::thread::Builder::new()
            .name("nixgate-encode".into())
            .spawn(move || {
                let started = thread_cpu();
                let mut out = out;
                for batch in rx {
                    out.write_all(&batch)?;
                }
                Ok((out, thread_cpu().saturating_sub(started)))
            })?;
        Ok(Stage { tx, thread })
    }

    /// Queues a batch (waits while the queue is full); `false` when the thread ended (a write
    /// failed: [`Stage::end`] tells why).
    pub fn send(&self, batch: Vec<u8>) -> bool {
        self.tx.send(batch).is_ok()
    }

    /// Waits for the thread to encode every batch queued; the encoder (to finish) and the
    /// thread's CPU time.
    pub fn end(self) -> io::Result<(Encoded, Duration)> {
        drop(self.tx);
        self.thread
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    }
}
