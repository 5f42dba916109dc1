//! The narinfos runners get, rendered once (docs/ZSTD.md): a zstd-capable Nix's narinfo
//! request used to parse the stored narinfo and render the one naming nixgate's file every
//! time, 27-38 % below a curl client's warm rate (BENCHMARKS.md, "Warm narinfo with zstd
//! rendering"). The parse and the rendering depend only on the stored bytes (and
//! `--serve-compression`, fixed for the process), so they are kept by store path hash beside
//! those bytes, and used only for the very same bytes: a narinfo refetched or replaced is
//! parsed again, with no invalidation to forget. Whether the rendering is sent (our file
//! held, or the NAR cold) is still decided per request (`served.rs`): index lookups, no
//! parse.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;

use super::transcode::Signed;
use crate::nix::hash::Sha256;
use crate::nix::narinfo::NarInfo;
use crate::nix::served::{render, Served};
use crate::nix::store_path::StorePathHash;

/// Renderings kept, weighed by the bytes held (the stored narinfo is shared with the store's
/// hot narinfo cache while it is there): as many as the hot cache holds.
const RENDERED_BYTES: u64 = 32 << 20;

/// How often a request for a kept rendering puts its signed facts back in the Fetcher's
/// `signed` cache (whose entries live an hour): a moka read per request was a measurable share
/// of the rate, and the request for our file finds the facts in the store anyway.
const SIGNED_EVERY_S: u64 = 60;

/// What a stored narinfo says that serving it as nixgate's own file needs.
#[derive(Debug)]
pub(super) struct Renderable {
    /// The FileHash of the upstream's file (nixgate's file is named after it).
    pub fh: Sha256,
    pub signed: Signed,
    /// The store path's hash, as the narinfo names it.
    pub hash: StorePathHash,
    /// The upstream's file size (the NAR's when absent).
    pub size: u64,
    /// The narinfo naming nixgate's file.
    pub text: Bytes,
    /// When its signed facts were last recorded ([`Rendered::signed_due`]), in seconds since
    /// the cache was made, plus one (0: never).
    signed_at: AtomicU64,
}

/// A stored narinfo's rendering: `None` when it has none (it does not parse, names no
/// FileHash, is already in the served compression, or is in one nixgate cannot decode).
pub(super) fn renderable(b: &[u8], as_: Served) -> Option<Renderable> {
    let text = std::str::from_utf8(b).ok()?;
    let ni = NarInfo::parse(text, crate::nix::STORE_DIR).ok()?;
    let (fh, signed) = super::served::signed_of(&ni)?;
    // Same file name (gzip and plain NARs both have no suffix), or nothing to gain.
    if signed.compression.extension() == as_.extension()
        || !super::decode::supports(signed.compression)
    {
        return None;
    }
    Some(Renderable {
        fh,
        signed,
        hash: ni.base.hash,
        size: ni.file_size.unwrap_or(ni.nar_size),
        text: render(b, &fh, as_),
        signed_at: AtomicU64::new(0),
    })
}

/// Renderings by store path hash, each beside the stored bytes it was made from.
pub(super) struct Rendered {
    as_: Option<Served>,
    epoch: Instant,
    cache: moka::sync::Cache<StorePathHash, (Bytes, Option<std::sync::Arc<Renderable>>)>,
}

impl Rendered {
    /// For a process serving runners `as_` (`None`: the upstream's files, nothing rendered).
    pub fn new(as_: Option<Served>) -> Self {
        Self::with_capacity(as_, RENDERED_BYTES)
    }

    fn with_capacity(as_: Option<Served>, bytes: u64) -> Self {
        let cache = moka::sync::Cache::builder()
            .weigher(|_, (b, r): &(Bytes, Option<std::sync::Arc<Renderable>>)| {
                let n = b.len() + r.as_ref().map_or(0, |r| r.text.len()) + 128;
                n.try_into().unwrap_or(u32::MAX)
            })
            .max_capacity(bytes)
            .build();
        Rendered {
            as_,
            epoch: Instant::now(),
            cache,
        }
    }

    /// The rendering of `stored`, the narinfo held for `h`: kept from an earlier request when
    /// it was made from these very bytes, else made (and kept).
    pub fn get(&self, h: StorePathHash, stored: &Bytes) -> Option<std::sync::Arc<Renderable>> {
        let as_ = self.as_?;
        if let Some((b, r)) = self.cache.get(&h) {
            // The hot narinfo cache hands out the same allocation: no compare then.
            let same = (b.as_ptr() == stored.as_ptr() && b.len() == stored.len()) || b == *stored;
            if same {
                return r;
            }
        }
        let r = renderable(stored, as_).map(std::sync::Arc::new);
        self.cache.insert(h, (stored.clone(), r.clone()));
        r
    }

    /// Whether `r`'s signed facts are to be recorded now (the first time, then every
    /// [`SIGNED_EVERY_S`]); true once per period however many ask at once.
    pub fn signed_due(&self, r: &Renderable) -> bool {
        let now = self.epoch.elapsed().as_secs() + 1;
        let last = r.signed_at.load(Ordering::Relaxed);
        if last != 0 && now < last + SIGNED_EVERY_S {
            return false;
        }
        r.signed_at
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    #[cfg(test)]
    fn kept(&self, h: &StorePathHash) -> Option<(Bytes, Option<std::sync::Arc<Renderable>>)> {
        self.cache.run_pending_tasks();
        self.cache.get(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nix::compression::Compression;
    use crate::nix::narinfo::tests::VECTOR;

    fn hash_of(text: &str) -> StorePathHash {
        NarInfo::parse(text, "/nix/store").unwrap().base.hash
    }

    #[test]
    fn a_rendering_is_the_one_render_makes_and_is_kept() {
        let r = Rendered::new(Some(Served::Zstd));
        let stored = Bytes::from_static(VECTOR.as_bytes());
        let h = hash_of(VECTOR);
        let first = r.get(h, &stored).unwrap();
        let ni = NarInfo::parse(VECTOR, "/nix/store").unwrap();
        let fh = ni.file_hash.unwrap();
        assert_eq!(first.text, render(VECTOR.as_bytes(), &fh, Served::Zstd));
        assert_eq!((first.fh, first.hash), (fh, h));
        assert_eq!(first.size, ni.file_size.unwrap());
        assert_eq!(
            first.signed,
            Signed {
                compression: Compression::Xz,
                nar_hash: ni.nar_hash,
                nar_size: ni.nar_size
            }
        );
        // Asked again with the same bytes (another allocation): the kept one, not a new one.
        let again = r
            .get(h, &Bytes::copy_from_slice(VECTOR.as_bytes()))
            .unwrap();
        assert!(std::sync::Arc::ptr_eq(&first, &again));
        assert_eq!(r.kept(&h).unwrap().0, stored);
    }

    #[test]
    fn other_stored_bytes_are_rendered_again() {
        let r = Rendered::new(Some(Served::Zstd));
        let h = hash_of(VECTOR);
        let old = r.get(h, &Bytes::from_static(VECTOR.as_bytes())).unwrap();
        // The narinfo refetched from an upstream that now has it as bzip2 (no Compression
        // line), under another FileHash: the rendering follows the stored bytes.
        let fh = "sha256:0000000000000000000000000000000000000000000000000000";
        let changed = VECTOR
            .replace("Compression: xz\n", "")
            .lines()
            .map(|l| match l.starts_with("FileHash:") {
                true => format!("FileHash: {fh}\n"),
                false => format!("{l}\n"),
            })
            .collect::<String>();
        let new = r.get(h, &Bytes::from(changed.clone())).unwrap();
        assert_ne!(old.fh, new.fh);
        assert_eq!(new.signed.compression, Compression::Bzip2);
        assert_eq!(new.text, render(changed.as_bytes(), &new.fh, Served::Zstd));
        assert_eq!(r.kept(&h).unwrap().0, Bytes::from(changed));
        // And back: the first bytes again give the first rendering's text.
        let back = r.get(h, &Bytes::from_static(VECTOR.as_bytes())).unwrap();
        assert_eq!(back.text, old.text);
    }

    #[test]
    fn narinfos_with_no_rendering_are_kept_as_none() {
        let r = Rendered::new(Some(Served::Zstd));
        let h = hash_of(VECTOR);
        let zstd = VECTOR.replace("Compression: xz", "Compression: zstd");
        assert!(r.get(h, &Bytes::from(zstd.clone())).is_none());
        let (kept, none) = r.kept(&h).unwrap();
        assert_eq!(kept, Bytes::from(zstd));
        assert!(none.is_none());
        // Not a narinfo at all, and no FileHash: nothing either.
        assert!(r
            .get(h, &Bytes::from_static(b"StorePath: nonsense\n"))
            .is_none());
        let no_fh = VECTOR
            .lines()
            .filter(|l| !l.starts_with("FileHash:"))
            .map(|l| format!("{l}\n"))
            .collect::<String>();
        assert!(r.get(h, &Bytes::from(no_fh)).is_none());
        // Serving the upstream's files renders nothing and keeps nothing.
        let off = Rendered::new(None);
        assert!(off.get(h, &Bytes::from_static(VECTOR.as_bytes())).is_none());
        assert!(off.kept(&h).is_none());
    }

    #[test]
    fn the_cache_is_bounded_by_bytes() {
        let r = Rendered::with_capacity(Some(Served::Zstd), 64 << 10);
        let text = VECTOR.to_owned();
        for i in 0..2000u32 {
            let mut h = [0u8; 20];
            h[..4].copy_from_slice(&i.to_le_bytes());
            r.get(StorePathHash(h), &Bytes::from(text.clone()));
        }
        r.cache.run_pending_tasks();
        assert!(
            r.cache.weighted_size() <= 64 << 10,
            "{}",
            r.cache.weighted_size()
        );
        assert!(r.cache.entry_count() < 2000);
    }
}
