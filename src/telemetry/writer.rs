//! The log writer: lines go to stderr from one thread of their own, through a queue bounded in
//! bytes. When the reader of stderr is slow or stuck (a full pipe) the queue fills and further
//! lines are dropped and counted; when it is gone (a closed pipe, EPIPE: Rust ignores SIGPIPE)
//! lines are dropped and counted too. No thread that serves, drains or handles a signal ever
//! waits on the log reader, and a write error never panics (tracing-subscriber's own
//! `eprintln!` of a failed write would, on a closed stderr).

use std::io::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use tracing_subscriber::fmt::MakeWriter;

/// Bytes of log lines queued for stderr, at most: a burst of ~1000 typical lines rides out a
/// reader that pauses; beyond it lines are dropped rather than held in memory.
pub const QUEUE_BYTES: usize = 256 * 1024;

/// Lines dropped because the queue was full or stderr refused them (process-wide).
static DROPPED: AtomicU64 = AtomicU64::new(0);
/// Bytes queued and not yet written.
static PENDING: AtomicUsize = AtomicUsize::new(0);

/// Log lines dropped so far (`nixgate_log_lines_dropped_total`).
pub fn dropped_lines() -> u64 {
    DROPPED.load(Relaxed)
}

/// The [`MakeWriter`] that queues each formatted line for the writer thread.
pub struct LossyStderr {
    // A Mutex only to make the Sender Sync on every supported toolchain; held for a send.
    tx: Mutex<Sender<Vec<u8>>>,
}

impl LossyStderr {
    /// Starts the writer thread (once per process; later calls share it).
    pub fn get() -> &'static LossyStderr {
        static ONE: OnceLock<LossyStderr> = OnceLock::new();
        ONE.get_or_init(|| {
            let (tx, rx) = channel::<Vec<u8>>();
            let spawned = std::thread::Builder::new()
                .name("log-writer".into())
                .spawn(move || {
                    let mut err = std::io::stderr();
                    for line in rx {
                        if err.write_all(&line).is_err() {
                            DROPPED.fetch_add(1, Relaxed);
                        }
                        PENDING.fetch_sub(line.len(), Relaxed);
                    }
                });
            // Without the thread every send fails and every line is counted as dropped.
            drop(spawned);
            LossyStderr { tx: Mutex::new(tx) }
        })
    }

    /// Queues one line of our own (not a tracing event), as [`Self::queue`].
    pub fn line(&self, line: &[u8]) {
        self.queue(line);
    }

    /// Queues one line, or drops and counts it when the queue is full or the thread is gone.
    fn queue(&self, line: &[u8]) {
        if PENDING.fetch_add(line.len(), Relaxed) + line.len() > QUEUE_BYTES {
            PENDING.fetch_sub(line.len(), Relaxed);
            DROPPED.fetch_add(1, Relaxed);
            return;
        }
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        if tx.send(line.to_vec()).is_err() {
            PENDING.fetch_sub(line.len(), Relaxed);
            DROPPED.fetch_add(1, Relaxed);
        }
    }
}

/// Waits up to `deadline` for the queued lines to reach stderr (the last lines before exit);
/// a reader that does not take them in time loses them.
pub fn flush(deadline: Duration) {
    let until = Instant::now() + deadline;
    while PENDING.load(Relaxed) > 0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One event's writer: tracing-subscriber formats a whole line, then writes it at once.
pub struct Line(&'static LossyStderr);

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.queue(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for &'static LossyStderr {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line(self)
    }
}
