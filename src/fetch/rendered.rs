//! The narinfos runners get, rendered once (docs/ZSTD.md): a zstd-capable Nix's narinfo
//! request used to parse the stored narinfo and render the one naming nixgate's file every
//! time, 27-38 % below a curl client's warm rate (BENCHMARKS.md, "Warm narinfo with zstd
//! rendering"). The parse and the rendering depend only on the stored bytes (and
//! `--serve-compression`, fixed for the process), so they are kept by store path hash beside
//! those bytes, and used only for the very same bytes: a narinfo refetched or replaced is
//! parsed again, with no invalidation to forget. Whether the rendering is sent (our file
//! held, or the NAR cold) is still decided per request (`served.rs`): index lookups, no
//! parse.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
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
/// `signed` cache (whose entries live an hour): a moka lookup per request was a measurable
/// share of the rate, and the request for our file finds the facts in the store anyway.
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

/// A kept rendering: the stored bytes it was made from, and it (`None`: none).
type Entry = (Bytes, Option<Arc<Renderable>>);

fn weight((b, r): &Entry) -> u64 {
    (b.len() + r.as_ref().map_or(0, |r| r.text.len()) + 128) as u64
}

/// Two generations: lookups look in `new`, then in `old` (moving the entry to `new`); when
/// `new` outgrows half the budget it becomes `old` and the previous `old` is dropped. So what
/// was asked for within the last generation stays, and the whole is bounded by bytes. (A moka
/// cache here cost ~4 % of the warm rate in lookups: a mutex held for one hash lookup does not.)
#[derive(Default)]
struct Generations {
    new: HashMap<StorePathHash, Entry>,
    old: HashMap<StorePathHash, Entry>,
    new_bytes: u64,
    old_bytes: u64,
}

impl Generations {
    fn put(&mut self, h: StorePathHash, e: Entry, half: u64) {
        let w = weight(&e);
        if self.new_bytes + w > half {
            self.old = std::mem::take(&mut self.new);
            self.old_bytes = std::mem::take(&mut self.new_bytes);
        }
        if let Some(prev) = self.new.insert(h, e) {
            self.new_bytes -= weight(&prev);
        }
        self.new_bytes += w;
    }
}

/// Renderings by store path hash, each beside the stored bytes it was made from.
pub(super) struct Rendered {
    as_: Option<Served>,
    epoch: Instant,
    /// Half the byte budget: each generation's.
    half: u64,
    gens: Mutex<Generations>,
}

/// The same narinfo bytes (the hot narinfo cache hands out the same allocation: no compare
/// then).
fn same(a: &Bytes, b: &Bytes) -> bool {
    (a.as_ptr() == b.as_ptr() && a.len() == b.len()) || a == b
}

impl Rendered {
    /// For a process serving runners `as_` (`None`: the upstream's files, nothing rendered).
    pub fn new(as_: Option<Served>) -> Self {
        Self::with_capacity(as_, RENDERED_BYTES)
    }

    fn with_capacity(as_: Option<Served>, bytes: u64) -> Self {
        Rendered {
            as_,
            epoch: Instant::now(),
            half: bytes / 2,
            gens: Mutex::default(),
        }
    }

    fn gens(&self) -> MutexGuard<'_, Generations> {
        self.gens.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The rendering of `stored`, the narinfo held for `h`: kept from an earlier request when
    /// it was made from these very bytes, else made (outside the lock) and kept.
    pub fn get(&self, h: StorePathHash, stored: &Bytes) -> Option<Arc<Renderable>> {
        let as_ = self.as_?;
        {
            let mut g = self.gens();
            if let Some((b, r)) = g.new.get(&h) {
                if same(b, stored) {
                    return r.clone();
                }
            } else if let Some(e) = g.old.remove(&h) {
                g.old_bytes -= weight(&e);
                if same(&e.0, stored) {
                    let r = e.1.clone();
                    g.put(h, e, self.half);
                    return r;
                }
            }
        }
        let r = renderable(stored, as_).map(Arc::new);
        self.gens().put(h, (stored.clone(), r.clone()), self.half);
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
    fn kept(&self, h: &StorePathHash) -> Option<Entry> {
        let g = self.gens();
        g.new.get(h).or_else(|| g.old.get(h)).cloned()
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
        assert!(Arc::ptr_eq(&first, &again));
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
    fn the_cache_is_bounded_by_bytes_and_keeps_what_is_asked_for() {
        let budget = 64 << 10;
        let r = Rendered::with_capacity(Some(Served::Zstd), budget);
        let stored = Bytes::from(VECTOR.to_owned());
        let hash = |i: u32| {
            let mut h = [0u8; 20];
            h[..4].copy_from_slice(&i.to_le_bytes());
            StorePathHash(h)
        };
        let hot = r.get(hash(0), &stored).unwrap();
        for i in 1..2000u32 {
            r.get(hash(i), &stored);
            // One path asked for all along stays kept (the same rendering, not a new one).
            assert!(Arc::ptr_eq(&r.get(hash(0), &stored).unwrap(), &hot));
            let g = r.gens();
            assert!(g.new_bytes + g.old_bytes <= budget);
            let held: u64 = g.new.values().chain(g.old.values()).map(weight).sum();
            assert_eq!(held, g.new_bytes + g.old_bytes);
        }
        let g = r.gens();
        assert!(g.new.len() + g.old.len() < 2000);
        // The first ones asked for once are gone.
        assert!(!g.new.contains_key(&hash(1)) && !g.old.contains_key(&hash(1)));
    }
}
