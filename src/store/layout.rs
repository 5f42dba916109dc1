//! Where files live under the cache dir and what their names say (see the layout in
//! [`super`]): the `VERSION` check, `tmp/` clean-up at start-up, paths and name parsing.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::{io_err, StoreError};
use crate::nix::compression::Compression;
use crate::nix::hash::Sha256;
use crate::nix::store_path::StorePathHash;

const VERSION: &str = "nixgate-store 1\n";

/// The cache dir's layout: paths of narinfos, NARs and temp files.
pub(super) struct Layout {
    pub root: PathBuf,
    pub tmp: PathBuf,
}

/// What a file name in the cache says it is.
pub(super) enum Name {
    NarInfo(StorePathHash, Sha256),
    Nar(Sha256, &'static str),
    /// nixgate's own file of a NAR (see `index/served.rs`), with its extension.
    Served(Sha256, &'static str),
}

/// Whether `root` may be used as a cache dir, changing nothing: `Ok(true)` when it is a
/// nixgate cache (`VERSION` matches), `Ok(false)` when it is absent, empty, or holds just a
/// `peer-id` an operator seeded (a fixed fleet id). Without `VERSION` a directory is not a
/// nixgate cache: adopting it would delete whatever its tmp/, nar/ and narinfo/ hold.
pub fn check(root: &Path) -> Result<bool, StoreError> {
    let version = root.join("VERSION");
    match fs::read_to_string(&version) {
        Ok(v) if v == VERSION => Ok(true),
        Ok(v) => Err(StoreError::Version(root.to_owned(), v)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let foreign = match fs::read_dir(root) {
                Ok(entries) => entries
                    .into_iter()
                    .any(|e| e.map_or(true, |e| e.file_name() != "peer-id")),
                Err(e) if e.kind() == io::ErrorKind::NotFound => false,
                Err(e) => return Err(io_err(root)(e)),
            };
            match foreign {
                true => Err(StoreError::NotEmpty(root.to_owned())),
                false => Ok(false),
            }
        }
        Err(e) => Err(io_err(&version)(e)),
    }
}

impl Layout {
    /// Checks the directory ([`check`]; writes `VERSION` only into an empty one), empties
    /// `tmp/` and creates the top directories.
    pub fn prepare(root: &Path) -> Result<Self, StoreError> {
        if !check(root)? {
            fs::create_dir_all(root).map_err(io_err(root))?;
            let version = root.join("VERSION");
            fs::write(&version, VERSION).map_err(io_err(&version))?;
        }
        let tmp = root.join("tmp");
        // Anything in tmp/ is a download a previous process did not finish.
        match fs::remove_dir_all(&tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(&tmp)(e)),
            _ => {}
        }
        for d in ["tmp", "narinfo", "nar"] {
            fs::create_dir_all(root.join(d)).map_err(io_err(root))?;
        }
        Ok(Layout {
            root: root.to_owned(),
            tmp,
        })
    }

    fn shard(&self, kind: &str, name: &str) -> PathBuf {
        self.root.join(kind).join(&name[..2])
    }

    /// `narinfo/<h[..2]>/<h>-<filehash>.narinfo`.
    pub fn narinfo_path(&self, h: &StorePathHash, fh: &Sha256) -> PathBuf {
        let h = h.to_string();
        self.shard("narinfo", &h)
            .join(format!("{h}-{}.narinfo", fh.to_nix32()))
    }

    /// `nar/<fh[..2]>/<filehash>.nar<ext>`.
    pub fn nar_path(&self, fh: &Sha256, ext: &str) -> PathBuf {
        let f = fh.to_nix32();
        self.shard("nar", &f).join(format!("{f}.nar{ext}"))
    }

    /// `nar/<fh[..2]>/<filehash>.served.nar<ext>`: nixgate's own file of a NAR, named apart
    /// from the upstream's (an upstream may publish `.nar.zst` itself).
    pub fn served_path(&self, fh: &Sha256, ext: &str) -> PathBuf {
        let f = fh.to_nix32();
        self.shard("nar", &f).join(format!("{f}.served.nar{ext}"))
    }
}

impl Layout {
    /// The narinfo of `h` on disk (one listing of its shard): its FileHash and size. Of
    /// several (a crash between a replacement and the old file's removal), the newest.
    pub fn find_narinfo(&self, h: &StorePathHash) -> Option<(Sha256, u64)> {
        let prefix = format!("{h}-");
        let shard = self.shard("narinfo", &prefix);
        let mut best: Option<(std::time::SystemTime, Sha256, u64)> = None;
        for e in fs::read_dir(shard).ok()?.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str().filter(|n| n.starts_with(&prefix)) else {
                continue;
            };
            let (Some(Name::NarInfo(_, fh)), Ok(md)) = (Name::narinfo(name), e.metadata()) else {
                continue;
            };
            let mtime = md.modified().unwrap_or(std::time::SystemTime::UNIX_EPOCH);
            if best.as_ref().is_none_or(|(t, ..)| mtime > *t) {
                best = Some((mtime, fh, md.len()));
            }
        }
        best.map(|(_, fh, size)| (fh, size))
    }
}

impl Name {
    /// A name under `narinfo/`.
    pub fn narinfo(name: &str) -> Option<Name> {
        let (h, fh) = name.strip_suffix(".narinfo")?.split_once('-')?;
        Some(Name::NarInfo(h.parse().ok()?, Sha256::from_nix32(fh).ok()?))
    }

    /// A name under `nar/`.
    pub fn nar(name: &str) -> Option<Name> {
        if let Some((fh, ext)) = name.split_once(".served.nar") {
            return Some(Name::Served(
                Sha256::from_nix32(fh).ok()?,
                Compression::known_extension(ext)?,
            ));
        }
        let (fh, ext) = name.split_once(".nar")?;
        Some(Name::Nar(
            Sha256::from_nix32(fh).ok()?,
            Compression::known_extension(ext)?,
        ))
    }
}
