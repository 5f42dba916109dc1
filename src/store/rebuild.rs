//! The start-up scan, in the background: [`Store::open`] returns at once and a thread
//! (`nixgate-index`) rebuilds the index from directory listings and `stat` alone (no file is
//! read), one shard at a time, while requests are served. A lookup for an entry the scan has
//! not reached yet looks at the disk directly (`lookup.rs`). While it runs nothing is evicted
//! and new downloads are streamed uncached (`StoreError::Indexing`): the cap is never exceeded
//! by bytes the index does not know of yet. When it completes, the groups it found are ordered
//! by mtime (oldest coldest, so the write order is the recency), the cache is evicted down to
//! the cap, and the size metric is exact.
//!
//! What the disk holds is checked lazily on first use: a NAR's size against its narinfo's
//! FileSize (`Store::nar_unchecked`), a narinfo's contents when first read (`Store::narinfo`).
//! A shard that cannot be listed is logged and reported by `/readyz`.

use std::fs;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use super::index::NarFile;
use super::layout::Name;
use super::{io_err, Store, StoreError};

/// Whether the start-up scan has completed (waited on by [`Store::wait_indexed`]).
#[derive(Default)]
pub(super) struct Indexed {
    done: Mutex<bool>,
    cond: Condvar,
}

/// A file found in one shard.
struct Found {
    mtime: u64,
    size: u64,
    name: Name,
}

/// Lists one shard: its recognised files (an unrecognised file is removed).
fn list_shard(shard: &Path, parse: fn(&str) -> Option<Name>) -> std::io::Result<Vec<Found>> {
    let mut out = Vec::new();
    for e in fs::read_dir(shard)?.flatten() {
        let file_name = e.file_name();
        let Some(name) = file_name.to_str().and_then(parse) else {
            tracing::warn!(file = %e.path().display(), "removing unrecognised file from the cache");
            let _ = fs::remove_file(e.path());
            continue;
        };
        let Ok(md) = e.metadata() else { continue };
        out.push(Found {
            mtime: mtime_ns(md.modified().unwrap_or(SystemTime::UNIX_EPOCH)),
            size: md.len(),
            name,
        });
    }
    Ok(out)
}

fn mtime_ns(t: SystemTime) -> u64 {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Lists `dir`'s shards one by one, indexing each as it is listed. Stops (false) when the
/// store was dropped.
fn scan(store: &Weak<Store>, dir: &str, parse: fn(&str) -> Option<Name>) -> bool {
    let Some(top) = store.upgrade().map(|s| s.layout.root.join(dir)) else {
        return false;
    };
    let shards = match fs::read_dir(&top) {
        Ok(shards) => shards,
        Err(e) => {
            if let Some(s) = store.upgrade() {
                s.bad_shard(top, &e);
            }
            return true;
        }
    };
    for shard in shards.flatten() {
        let shard = shard.path();
        let found = list_shard(&shard, parse);
        let Some(store) = store.upgrade() else {
            return false;
        };
        match found {
            Ok(found) => store.index_found(found),
            Err(e) => store.bad_shard(shard, &e),
        }
    }
    true
}

impl Store {
    /// Starts the start-up scan in the background.
    pub(super) fn start_scan(self: &Arc<Self>) -> Result<(), StoreError> {
        self.index().start_scan();
        let store = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("nixgate-index".into())
            .spawn(move || {
                let started = Instant::now();
                // The two trees are independent: list them in parallel (the scan is I/O-bound).
                let complete = std::thread::scope(|s| {
                    let nars = s.spawn(|| scan(&store, "nar", Name::nar));
                    let narinfos = scan(&store, "narinfo", Name::narinfo);
                    narinfos & nars.join().unwrap_or(false)
                });
                if let (true, Some(store)) = (complete, store.upgrade()) {
                    store.scan_done(started);
                }
            });
        spawned.map(drop).map_err(io_err(&self.layout.root))
    }

    /// Indexes what the scan found in one shard.
    fn index_found(&self, found: Vec<Found>) {
        let mut ix = self.index();
        for f in found {
            match f.name {
                Name::NarInfo(h, fh) => ix.scanned_narinfo(h, fh, f.size, f.mtime),
                Name::Nar(fh, ext) => ix.scanned_nar(fh, ext, f.size, f.mtime),
                Name::Served(fh, ext) => {
                    let (size, checked) = (f.size, true);
                    ix.scanned_served(fh, NarFile { ext, size, checked }, f.mtime)
                }
            }
        }
        self.metrics.set_cache(ix.bytes(), ix.files());
    }

    /// The scan completed: order by mtime, evict down to the cap, and tell the waiters.
    fn scan_done(&self, started: Instant) {
        let evicted = {
            let mut ix = self.index();
            ix.finish_scan();
            let limit = self.max_bytes.saturating_sub(ix.reserved());
            ix.evict_to(limit, None)
        };
        self.delete_evicted(evicted);
        let ix = self.index();
        tracing::info!(
            files = ix.files(),
            bytes = ix.bytes(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "cache index rebuilt"
        );
        self.metrics.set_cache(ix.bytes(), ix.files());
        drop(ix);
        *self.indexed.done.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.indexed.cond.notify_all();
    }

    /// Waits up to `timeout` for the start-up scan to complete; whether it has. Blocking.
    pub fn wait_indexed(&self, timeout: Duration) -> bool {
        let done = self.indexed.done.lock().unwrap_or_else(|p| p.into_inner());
        let (done, _) = (self.indexed.cond)
            .wait_timeout_while(done, timeout, |d| !*d)
            .unwrap_or_else(|p| p.into_inner());
        *done
    }
}
