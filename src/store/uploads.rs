//! Uploaded paths, held apart from the LRU cache: their own subtree, their own small index and
//! their own budget (`--upload-max-size`). Nothing here is ever evicted: the LRU does not see
//! these files, and when the budget is full a new upload is refused ([`HeldError::Full`]);
//! only an explicit [`Uploads::remove`] (an authenticated `DELETE`) frees room.
//!
//! ```text
//! uploads/narinfo/<h>.narinfo     the narinfo as served (URL: nar/<FileHash>.nar<ext>)
//! uploads/nar/<fh>.nar<ext>       the compressed NAR, verified before it got here
//! uploads/staging/                NARs waiting for their narinfo; emptied at start-up
//! ```
//!
//! [`Uploads::admit`] is the only way in (the NAR first, then its narinfo, each fsynced and
//! renamed into place), so a crash leaves at worst a NAR no narinfo names, removed at start.
//! A held NAR is handed out as a [`Hit`] (the open file), like a cached one.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use thiserror::Error;

use super::{io_err, Hit, Representation, StoreError, Tier};
use crate::metrics::Metrics;
use crate::nix::compression::Compression;
use crate::nix::hash::Sha256;
use crate::nix::narinfo::NarInfo;
use crate::nix::store_path::StorePathHash;

/// Why an upload could not be held.
#[derive(Debug, Error)]
pub enum HeldError {
    #[error("upload budget full: {want} more bytes do not fit in {free} free")]
    Full { want: u64, free: u64 },
    /// Another upload of the path got in first; a held upload is never replaced.
    #[error("{0} is held already")]
    Exists(StorePathHash),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone, Copy)]
struct Held {
    fh: Sha256,
    size: u64,
}

#[derive(Debug, Clone, Copy)]
struct HeldNar {
    ext: &'static str,
    size: u64,
}

#[derive(Debug, Default)]
struct Index {
    narinfos: HashMap<StorePathHash, Held>,
    nars: HashMap<Sha256, HeldNar>,
    bytes: u64,
}

/// What an upload brings: its narinfo (as served) and the staged NAR it names.
pub struct Admission<'a> {
    pub hash: StorePathHash,
    pub file_hash: Sha256,
    pub ext: &'static str,
    pub narinfo: &'a [u8],
    /// A verified, fsynced file in the staging directory (same file system); `None` when the
    /// NAR is held already.
    pub staged: Option<&'a Path>,
    pub nar_size: u64,
}

/// The held uploads.
pub struct Uploads {
    root: PathBuf,
    max_bytes: AtomicU64,
    index: Mutex<Index>,
    /// Serialises admissions, so the budget check and the writes are one step.
    admitting: Mutex<()>,
    metrics: Arc<Metrics>,
}

fn narinfo_name(name: &str) -> Option<StorePathHash> {
    name.strip_suffix(".narinfo")?.parse().ok()
}

impl Uploads {
    /// Opens `root` (creating it), empties `staging/`, and indexes what it holds.
    pub(super) fn open(root: &Path, metrics: Arc<Metrics>) -> Result<Self, StoreError> {
        let staging = root.join("staging");
        match fs::remove_dir_all(&staging) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_err(&staging)(e)),
            _ => {}
        }
        for d in ["narinfo", "nar", "staging"] {
            fs::create_dir_all(root.join(d)).map_err(io_err(root))?;
        }
        let up = Uploads {
            root: root.to_owned(),
            max_bytes: AtomicU64::new(0),
            index: Mutex::default(),
            admitting: Mutex::default(),
            metrics,
        };
        up.load()?;
        Ok(up)
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads every held narinfo (uploads are few) and the NARs; drops what is incomplete.
    fn load(&self) -> Result<(), StoreError> {
        let dir = self.root.join("narinfo");
        let mut ix = Index::default();
        for e in fs::read_dir(&dir).map_err(io_err(&dir))?.flatten() {
            let parsed = e.file_name().to_str().and_then(narinfo_name).and_then(|h| {
                let text = fs::read_to_string(e.path()).ok()?;
                let ni = NarInfo::parse(&text, crate::nix::STORE_DIR).ok()?;
                let ext = Compression::from_field(ni.compression.as_deref()).extension();
                let nar = fs::metadata(self.nar_path(&ni.file_hash?, ext)).ok()?;
                Some((h, ni.file_hash?, ext, text.len() as u64, nar.len()))
            });
            let Some((h, fh, ext, size, nar_size)) = parsed else {
                tracing::warn!(file = %e.path().display(), "removing an unreadable or incomplete upload");
                let _ = fs::remove_file(e.path());
                continue;
            };
            ix.narinfos.insert(h, Held { fh, size });
            ix.bytes += size;
            if ix
                .nars
                .insert(
                    fh,
                    HeldNar {
                        ext,
                        size: nar_size,
                    },
                )
                .is_none()
            {
                ix.bytes += nar_size;
            }
        }
        self.drop_orphan_nars(&ix);
        *self.index() = ix;
        self.publish_bytes();
        Ok(())
    }

    /// Removes NARs that no narinfo names (a crash between the two renames).
    fn drop_orphan_nars(&self, ix: &Index) {
        let dir = self.root.join("nar");
        for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = e.file_name();
            let held = name
                .to_str()
                .and_then(|n| n.split_once(".nar"))
                .and_then(|(fh, ext)| {
                    let fh = Sha256::from_nix32(fh).ok()?;
                    ix.nars.get(&fh).filter(|n| n.ext == ext).map(|_| ())
                });
            if held.is_none() {
                let _ = fs::remove_file(e.path());
            }
        }
    }

    fn publish_bytes(&self) {
        self.metrics.set_upload_held(self.index().bytes);
    }

    /// Sets the budget (`--upload-max-size`).
    pub fn set_budget(&self, max_bytes: u64) {
        self.max_bytes.store(max_bytes, Relaxed);
    }

    /// Where staged NARs are written (emptied at start-up).
    pub fn staging_dir(&self) -> PathBuf {
        self.root.join("staging")
    }

    fn narinfo_path(&self, h: &StorePathHash) -> PathBuf {
        self.root.join("narinfo").join(format!("{h}.narinfo"))
    }

    fn nar_path(&self, fh: &Sha256, ext: &str) -> PathBuf {
        self.root
            .join("nar")
            .join(format!("{}.nar{ext}", fh.to_nix32()))
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.index().bytes
    }

    /// The FileHash of the held upload of `h`, if any.
    pub fn holds(&self, h: &StorePathHash) -> Option<Sha256> {
        self.index().narinfos.get(h).map(|e| e.fh)
    }

    /// The held narinfo of `h`, as served.
    pub async fn narinfo(&self, h: &StorePathHash) -> Option<Bytes> {
        self.holds(h)?;
        tokio::fs::read(self.narinfo_path(h))
            .await
            .ok()
            .map(Bytes::from)
    }

    /// The held NAR `<fh>.nar<ext>`, opened on the blocking pool. One deleted since the
    /// lookup (an authenticated `DELETE`) is not held.
    pub async fn nar(&self, fh: &Sha256, ext: &str) -> Result<Option<Hit>, StoreError> {
        let Some(nar) = self.index().nars.get(fh).filter(|n| n.ext == ext).copied() else {
            return Ok(None);
        };
        let path = self.nar_path(fh, nar.ext);
        let (p, repr) = (path.clone(), Representation::Published(nar.ext));
        let opened =
            tokio::task::spawn_blocking(move || Hit::open(p, nar.size, repr, Tier::Upload))
                .await
                .map_err(|e| io_err(&path)(std::io::Error::other(e)))?;
        match opened {
            Ok(hit) => Ok(Some(hit)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Every held store path hash and NAR FileHash (for the peer digest).
    pub fn keys(&self) -> (Vec<StorePathHash>, Vec<Sha256>) {
        let ix = self.index();
        (
            ix.narinfos.keys().copied().collect(),
            ix.nars.keys().copied().collect(),
        )
    }

    /// Holds an upload: within the budget, the NAR (unless held already) then the narinfo,
    /// each fsynced and renamed into place. Blocking I/O.
    pub fn admit(&self, a: Admission<'_>) -> Result<(), HeldError> {
        let _one = self.admitting.lock().unwrap_or_else(|p| p.into_inner());
        let (nar_held, bytes) = {
            let ix = self.index();
            if ix.narinfos.contains_key(&a.hash) {
                return Err(HeldError::Exists(a.hash));
            }
            (ix.nars.contains_key(&a.file_hash), ix.bytes)
        };
        let want = a.narinfo.len() as u64 + if nar_held { 0 } else { a.nar_size };
        let max = self.max_bytes.load(Relaxed);
        if bytes + want > max {
            return Err(HeldError::Full {
                want,
                free: max.saturating_sub(bytes),
            });
        }
        if !nar_held {
            let dest = self.nar_path(&a.file_hash, a.ext);
            let staged = a
                .staged
                .ok_or_else(|| io_err(&dest)(std::io::ErrorKind::NotFound.into()))?;
            fs::rename(staged, &dest).map_err(io_err(&dest))?;
            sync_dir(&dest)?;
            let mut ix = self.index();
            ix.nars.insert(
                a.file_hash,
                HeldNar {
                    ext: a.ext,
                    size: a.nar_size,
                },
            );
            ix.bytes += a.nar_size;
        }
        self.write_narinfo(&a)?;
        let mut ix = self.index();
        let held = Held {
            fh: a.file_hash,
            size: a.narinfo.len() as u64,
        };
        ix.narinfos.insert(a.hash, held);
        ix.bytes += held.size;
        drop(ix);
        self.publish_bytes();
        Ok(())
    }

    fn write_narinfo(&self, a: &Admission<'_>) -> Result<(), StoreError> {
        use std::io::Write;
        let tmp = self.staging_dir().join(format!("{}.narinfo.part", a.hash));
        let mut f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(a.narinfo).map_err(io_err(&tmp))?;
        // An upload cannot be refetched: durable, unlike cached narinfos.
        super::write::publish(&f, &tmp, &self.narinfo_path(&a.hash), true).map(drop)
    }

    /// Removes the upload of `h` (and its NAR, when no other held narinfo names it); whether
    /// there was one. Blocking I/O.
    pub fn remove(&self, h: &StorePathHash) -> bool {
        let _one = self.admitting.lock().unwrap_or_else(|p| p.into_inner());
        let mut ix = self.index();
        let Some(held) = ix.narinfos.remove(h) else {
            return false;
        };
        ix.bytes -= held.size;
        let _ = fs::remove_file(self.narinfo_path(h));
        if !ix.narinfos.values().any(|e| e.fh == held.fh) {
            if let Some(nar) = ix.nars.remove(&held.fh) {
                ix.bytes -= nar.size;
                let _ = fs::remove_file(self.nar_path(&held.fh, nar.ext));
            }
        }
        drop(ix);
        self.publish_bytes();
        true
    }
}

fn sync_dir(file: &Path) -> Result<(), StoreError> {
    let dir = file.parent().expect("held files have a parent");
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nix::narinfo::tests::VECTOR;

    fn staged(up: &Uploads, n: usize) -> PathBuf {
        let p = up.staging_dir().join(format!("{n}.part"));
        fs::write(&p, vec![1u8; 536]).unwrap();
        p
    }

    fn admission<'a>(text: &'a [u8], staged: &'a Path) -> Admission<'a> {
        let ni: NarInfo = VECTOR.parse().unwrap();
        Admission {
            hash: ni.base.hash,
            file_hash: ni.file_hash.unwrap(),
            ext: ".xz",
            narinfo: text,
            staged: Some(staged),
            nar_size: 536,
        }
    }

    #[tokio::test]
    async fn budget_first_wins_removal_and_restart() {
        let dir = tempfile::tempdir().unwrap();
        let m = Arc::new(Metrics::default());
        let up = Uploads::open(dir.path(), m.clone()).unwrap();
        let p = staged(&up, 1);
        up.set_budget(500);
        assert!(matches!(
            up.admit(admission(VECTOR.as_bytes(), &p)),
            Err(HeldError::Full { .. })
        ));
        up.set_budget(10_000);
        up.admit(admission(VECTOR.as_bytes(), &p)).unwrap();
        let h = admission(b"", &p).hash;
        assert!(matches!(
            up.admit(admission(VECTOR.as_bytes(), &staged(&up, 2))),
            Err(HeldError::Exists(_))
        ));
        assert_eq!(up.bytes(), 536 + VECTOR.len() as u64);
        // A NAR no narinfo names (a crash between the renames) is dropped at start-up.
        fs::write(up.nar_path(&Sha256([9; 32]), ".xz"), b"orphan").unwrap();
        drop(up);
        let up = Uploads::open(dir.path(), m).unwrap();
        assert_eq!(up.bytes(), 536 + VECTOR.len() as u64);
        let held = up.nar(&admission(b"", &p).file_hash, ".xz").await;
        assert!(held.unwrap().is_some());
        assert!(!up.nar_path(&Sha256([9; 32]), ".xz").exists());
        assert_eq!(fs::read_dir(up.staging_dir()).unwrap().count(), 0);
        assert!(up.remove(&h));
        assert_eq!((up.bytes(), up.holds(&h)), (0, None));
        assert_eq!(fs::read_dir(dir.path().join("nar")).unwrap().count(), 0);
    }
}
