//! The start-up scan: the index is rebuilt from directory listings and `stat` alone (no file
//! is read), oldest first so the logical clock reproduces the write order as recency. What the
//! disk holds is checked lazily on first use: a NAR's size against its narinfo's FileSize
//! (`Store::nar_unchecked`), a narinfo's contents when first read (`Store::narinfo`). A shard
//! that cannot be listed is logged and reported by `/readyz`.

use std::fs;
use std::time::SystemTime;

use super::index::NarFile;
use super::layout::Name;
use super::{io_err, Store, StoreError};

/// A file found while rebuilding the index.
struct Found {
    mtime: SystemTime,
    size: u64,
    name: Name,
}

impl Store {
    /// Lists `dir`'s shards; an unrecognised file is removed.
    fn scan(&self, dir: &str, parse: fn(&str) -> Option<Name>) -> Result<Vec<Found>, StoreError> {
        let mut out = Vec::new();
        let top = self.layout.root.join(dir);
        for shard in fs::read_dir(&top).map_err(io_err(&top))? {
            let shard = shard.map_err(io_err(&top))?.path();
            let entries = match fs::read_dir(&shard) {
                Ok(entries) => entries,
                Err(e) => {
                    self.bad_shard(shard, &e);
                    continue;
                }
            };
            for e in entries.flatten() {
                let file_name = e.file_name();
                let Some(name) = file_name.to_str().and_then(parse) else {
                    tracing::warn!(file = %e.path().display(), "removing unrecognised file from the cache");
                    let _ = fs::remove_file(e.path());
                    continue;
                };
                let Ok(md) = e.metadata() else { continue };
                let mtime = md.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                out.push(Found {
                    mtime,
                    size: md.len(),
                    name,
                });
            }
        }
        Ok(out)
    }

    /// Fills the index from disk and evicts down to the size cap.
    pub(super) fn rebuild(&self) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        // The two trees are independent: list them in parallel (start-up is I/O-bound).
        let (narinfos, nars) = std::thread::scope(|s| {
            let nars = s.spawn(|| self.scan("nar", Name::nar));
            let narinfos = self.scan("narinfo", Name::narinfo);
            (narinfos, nars.join().expect("scan thread panicked"))
        });
        let mut found = narinfos?;
        found.extend(nars?);
        // Oldest first, so that the logical clock reproduces the write order as recency.
        found.sort_unstable_by_key(|f| f.mtime);
        let evicted = {
            let mut ix = self.index();
            for f in found {
                match f.name {
                    Name::NarInfo(h, fh) => {
                        ix.insert_narinfo(h, fh, f.size);
                    }
                    Name::Nar(fh, ext) => ix.insert_nar(
                        fh,
                        NarFile {
                            ext,
                            size: f.size,
                            checked: false,
                        },
                    ),
                }
            }
            ix.evict_to(self.max_bytes, None)
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
        Ok(())
    }
}
