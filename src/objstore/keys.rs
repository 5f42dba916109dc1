//! Object keys, derived from validated hashes only (never from a narinfo's `URL`, a request
//! path or anything a remote said). The layout is the standard binary-cache layout, so the
//! bucket is itself a Nix binary cache (`nix copy --from 's3://bucket/prefix?…'`):
//!
//! ```text
//! <prefix>/nix-cache-info
//! <prefix>/0b8ixjz1k3hq8bv0vyz1n43fkzcd5ka1.narinfo
//! <prefix>/nar/1w1fff338fvdw53sqgamddn1b2xgds473pv6y13gizdbqjv4i5p3.nar.xz
//! ```

use crate::nix::hash::Sha256;
use crate::nix::store_path::StorePathHash;

/// The keys under one prefix (empty: the bucket's root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// `""` or `"<prefix>/"`.
    dir: String,
}

impl Keys {
    /// Keys under `prefix` (validated by `url.rs`: no leading or trailing `/`).
    pub fn new(prefix: &str) -> Self {
        let dir = match prefix {
            "" => String::new(),
            p => format!("{p}/"),
        };
        Keys { dir }
    }

    /// `<prefix>/nix-cache-info`.
    pub fn cache_info(&self) -> String {
        format!("{}nix-cache-info", self.dir)
    }

    /// `<prefix>/<hash>.narinfo`.
    pub fn narinfo(&self, h: &StorePathHash) -> String {
        format!("{}{h}.narinfo", self.dir)
    }

    /// `<prefix>/nar/<FileHash nix32>.nar<ext>`; `ext` is a compression's extension
    /// (`Compression::extension`: `""`, `.xz`, `.zst`, …), never text from a remote.
    pub fn nar(&self, fh: &Sha256, ext: &'static str) -> String {
        format!("{}{}", self.dir, Self::nar_rel(fh, ext))
    }

    /// The NAR's path relative to the cache's root, as a narinfo's `URL` names it.
    pub fn nar_rel(fh: &Sha256, ext: &'static str) -> String {
        format!("nar/{}.nar{ext}", fh.to_nix32())
    }

    /// The key of a path relative to the prefix (`rel` from [`Keys::narinfo`]-like
    /// builders or `Plan::rel`, made of nix32, `.`, `/` and extension letters).
    pub fn under(&self, rel: &str) -> String {
        format!("{}{rel}", self.dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_binary_cache_layout() {
        let h: StorePathHash = "0b8ixjz1k3hq8bv0vyz1n43fkzcd5ka1".parse().unwrap();
        let fh = Sha256([7; 32]);
        let k = Keys::new("ci/x86");
        assert_eq!(k.cache_info(), "ci/x86/nix-cache-info");
        assert_eq!(k.narinfo(&h), format!("ci/x86/{h}.narinfo"));
        let nar = k.nar(&fh, ".xz");
        assert_eq!(nar, format!("ci/x86/nar/{}.nar.xz", fh.to_nix32()));
        let root = Keys::new("");
        assert_eq!(root.narinfo(&h), format!("{h}.narinfo"));
        assert_eq!(root.nar(&fh, ""), format!("nar/{}.nar", fh.to_nix32()));
    }
}
