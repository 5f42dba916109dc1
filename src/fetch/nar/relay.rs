//! A download the cache cannot store goes on uncached. When a write fails mid-way (disk
//! full, the cap taken by other downloads, an I/O error), the temp file is dropped and the
//! rest of the NAR is relayed to the readers that joined the download: each has a bounded
//! channel, subscribed when it joined; from the switch on, every chunk is sent to each of
//! them (the last one only once the whole file verified), after they read the bytes already
//! in the temp file. A reader arriving after the switch cannot join (it streams on its own).

use std::sync::{Mutex, OnceLock};

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};

use super::super::FetchError;
use super::Progress;
use crate::nix::hash::Sha256;
use crate::store::WriteHandle;

/// Chunks in flight per reader after a switch (each at most one write batch).
const READER_QUEUE: usize = 2;

/// The readers of one download, and where its temp file ends once it switched.
#[derive(Default)]
pub struct Relay {
    readers: Mutex<Option<Vec<mpsc::Sender<Bytes>>>>,
    file_end: OnceLock<u64>,
}

impl Relay {
    /// A new relay that readers may still join.
    pub fn new() -> Self {
        Relay {
            readers: Mutex::new(Some(Vec::new())),
            file_end: OnceLock::new(),
        }
    }

    /// Joins as a reader: the channel for the bytes after a switch. `None` once switched.
    pub fn subscribe(&self) -> Option<mpsc::Receiver<Bytes>> {
        let mut readers = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        let (tx, rx) = mpsc::channel(READER_QUEUE);
        readers.as_mut()?.push(tx);
        Some(rx)
    }

    /// Bytes in the temp file once the download switched: the rest comes through the channel.
    pub fn file_end(&self) -> Option<u64> {
        self.file_end.get().copied()
    }

    /// Switches at `file_end`: no one joins from now on; the readers so far.
    fn close(&self, file_end: u64) -> Vec<mpsc::Sender<Bytes>> {
        let _ = self.file_end.set(file_end);
        let mut readers = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        readers.take().unwrap_or_default()
    }
}

/// Where a download's bytes go: the temp file (to be cached), or its readers (uncached).
pub(super) enum Sink {
    File {
        tmp: WriteHandle,
        out: tokio::fs::File,
    },
    Readers {
        readers: Vec<mpsc::Sender<Bytes>>,
        /// The latest chunk, sent only once the next one arrived or the file verified.
        held: Option<Bytes>,
    },
}

impl Sink {
    /// Stores (or relays) the next checked chunk; `written` counts it. A chunk the cache
    /// cannot store switches the download to its readers (the store recorded why).
    pub async fn put(
        &mut self,
        chunk: Bytes,
        written: u64,
        relay: &Relay,
        tx: &watch::Sender<Progress>,
        fh: &Sha256,
    ) -> Result<(), FetchError> {
        match self {
            Sink::File { tmp, out } => {
                let stored = match tmp.grow(written) {
                    Ok(()) => write(out, &chunk).await.map_err(|e| tmp.failed(e)),
                    Err(e) => Err(e),
                };
                if stored.is_ok() {
                    tx.send_replace(Progress::Running(written));
                    return Ok(());
                }
                self.switch(written - chunk.len() as u64, Some(chunk), relay, tx, fh);
                Ok(())
            }
            Sink::Readers { readers, held } => match held.replace(chunk) {
                Some(prev) => send_all(readers, prev).await,
                None => Ok(()),
            },
        }
    }

    /// The length the source announced (when no narinfo told it): reserved up front, so a
    /// NAR the cache cannot hold is relayed from its first byte, evicting nothing.
    pub fn expect(&mut self, len: u64, relay: &Relay, tx: &watch::Sender<Progress>, fh: &Sha256) {
        if let Sink::File { tmp, .. } = self {
            if tmp.grow(len).is_err() {
                self.switch(0, None, relay, tx, fh);
            }
        }
    }

    /// Gives up storing at `file_end` bytes: from now on chunks go to the readers.
    fn switch(
        &mut self,
        file_end: u64,
        held: Option<Bytes>,
        relay: &Relay,
        tx: &watch::Sender<Progress>,
        fh: &Sha256,
    ) {
        tracing::warn!(file_hash = %fh, offset = file_end, "cache cannot store this NAR; relaying it uncached");
        *self = Sink::Readers {
            readers: relay.close(file_end),
            held,
        };
        tx.send_replace(Progress::Relaying(file_end));
    }

    /// The whole file verified: commits it, or sends the last chunk to the readers; whether it
    /// is now in the cache. A failed commit still serves the readers (they hold the file open);
    /// it just is not cached.
    pub async fn finish(self) -> Result<bool, FetchError> {
        match self {
            Sink::File { tmp, out } => {
                drop(out);
                // The store records a failure; readers read the complete file they hold open.
                let committed = tokio::task::spawn_blocking(move || tmp.commit()).await;
                Ok(matches!(committed, Ok(Ok(_))))
            }
            Sink::Readers { mut readers, held } => match held {
                Some(last) => send_all(&mut readers, last).await.map(|()| false),
                None => Ok(false),
            },
        }
    }
}

async fn write(out: &mut tokio::fs::File, chunk: &[u8]) -> std::io::Result<()> {
    out.write_all(chunk).await?;
    out.flush().await
}

/// Sends `chunk` to every reader still there; fails when none is left.
async fn send_all(readers: &mut Vec<mpsc::Sender<Bytes>>, chunk: Bytes) -> Result<(), FetchError> {
    let mut gone = Vec::new();
    for (i, r) in readers.iter().enumerate() {
        if r.send(chunk.clone()).await.is_err() {
            gone.push(i);
        }
    }
    for i in gone.into_iter().rev() {
        readers.swap_remove(i);
    }
    if readers.is_empty() {
        return Err(FetchError::Storage(
            "uncached download: every reader went away".into(),
        ));
    }
    Ok(())
}
