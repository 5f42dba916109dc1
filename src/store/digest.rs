//! What an appliance holds, as a Bloom filter (Squid's "cache digest" idea), so a fetcher
//! asks only the peers that probably hold a narinfo or NAR instead of every peer every time.
//! The store builds it from its index ([`Store::holdings`]); `peers::digest` fetches peers'.
//!
//! Keys are `narinfo/<store path hash>`, `nar/<FileHash nix32>` and, for nixgate's own file of
//! a NAR (`--serve-compression`), `served.zst/<FileHash nix32>` ([`served_key`]; dropped first
//! when the digest would exceed [`MAX_BYTES`]). Bit positions come from
//! SHA-256 of the key (double hashing, k = 7), with 10 bits per key: about 1% false positives,
//! 250 KB for 100k cached paths. A false positive costs one `only-if-cached` request that
//! answers 504. Wire format: `NGD1`, k (one byte), then the bit array. Pure: no I/O here.

use sha2::{Digest as _, Sha256};
use thiserror::Error;

use super::Store;

/// Digests larger than this are refused: 4 MiB is 3.3M keys at 10 bits per key (1.6M cached
/// paths, 1.1M with nixgate's own files listed too; far beyond a 10 GiB cache), and ten peers' digests then cost at most 40 MiB.
pub const MAX_BYTES: usize = 4 << 20;
/// A filter with more bits set than this is refused. A real digest sized at 10 bits per key
/// with k = 7 is at most about half full (1 - e^-0.7 = 0.50); a fuller one is a liar's (an
/// all-ones filter would claim every key) and would make its peer look like it holds all.
pub const MAX_FILL: f64 = 0.6;
const MAGIC: &[u8; 4] = b"NGD1";
const K: u8 = 7;
const BITS_PER_KEY: usize = 10;
const MIN_BITS: usize = 8 * 1024;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("not a nixgate digest")]
    Format,
    #[error("digest larger than {MAX_BYTES} bytes")]
    TooLarge,
    /// The percentage of bits set.
    #[error("implausible digest: {0}% of its bits are set")]
    Implausible(u8),
}

/// A Bloom filter over the keys an appliance holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holdings {
    bits: Vec<u8>,
    k: u8,
}

/// The key of a narinfo.
pub fn narinfo_key(store_path_hash: &str) -> String {
    format!("narinfo/{store_path_hash}")
}

/// The key of a NAR.
pub fn nar_key(file_hash_nix32: &str) -> String {
    format!("nar/{file_hash_nix32}")
}

/// The key of nixgate's own file of a NAR (`<F>.nar<ext>` served to runners,
/// `--serve-compression`): `served.zst/<F>`, or `served/<F>` for the plain NAR. Previous
/// versions never ask it.
pub fn served_key(file_hash_nix32: &str, ext: &str) -> String {
    format!("served{ext}/{file_hash_nix32}")
}

impl Holdings {
    /// An empty filter sized for `keys` keys.
    pub fn with_capacity(keys: usize) -> Self {
        let bits = (keys * BITS_PER_KEY).max(MIN_BITS).div_ceil(8);
        Holdings {
            bits: vec![0; bits],
            k: K,
        }
    }

    fn positions(&self, key: &str) -> impl Iterator<Item = usize> {
        let d = Sha256::digest(key.as_bytes());
        let h1 = u64::from_le_bytes(d[0..8].try_into().expect("8 bytes"));
        let h2 = u64::from_le_bytes(d[8..16].try_into().expect("8 bytes")) | 1;
        let m = (self.bits.len() * 8) as u64;
        (0..self.k as u64).map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) % m) as usize)
    }

    pub fn insert(&mut self, key: &str) {
        let pos: Vec<usize> = self.positions(key).collect();
        for p in pos {
            self.bits[p / 8] |= 1 << (p % 8);
        }
    }

    /// False: certainly not held. True: probably held.
    pub fn contains(&self, key: &str) -> bool {
        self.positions(key)
            .all(|p| self.bits[p / 8] & (1 << (p % 8)) != 0)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(5 + self.bits.len());
        b.extend_from_slice(MAGIC);
        b.push(self.k);
        b.extend_from_slice(&self.bits);
        b
    }

    pub fn from_bytes(b: &[u8]) -> Result<Self, DigestError> {
        let rest = b.strip_prefix(MAGIC).ok_or(DigestError::Format)?;
        let (&k, bits) = rest.split_first().ok_or(DigestError::Format)?;
        if bits.len() > MAX_BYTES {
            return Err(DigestError::TooLarge);
        }
        if k == 0 || k > 32 || bits.is_empty() {
            return Err(DigestError::Format);
        }
        let set: u64 = bits.iter().map(|b| u64::from(b.count_ones())).sum();
        let fill = set as f64 / (bits.len() as f64 * 8.0);
        if fill > MAX_FILL {
            return Err(DigestError::Implausible((fill * 100.0) as u8));
        }
        Ok(Holdings {
            bits: bits.to_vec(),
            k,
        })
    }
}

impl Store {
    /// A digest of what the cache holds, for peers (`/_p2p/v1/digest`).
    pub fn holdings(&self) -> Holdings {
        let (mut narinfos, mut nars) = self.index().keys();
        let mut served = self.index().served_keys();
        let (up_narinfos, up_nars) = self.uploads.keys();
        narinfos.extend(up_narinfos);
        nars.extend(up_nars);
        // Within what peers accept: served keys go first (older peers never ask them).
        let room = (MAX_BYTES * 8 / BITS_PER_KEY).saturating_sub(narinfos.len() + nars.len());
        served.truncate(room);
        let mut h = Holdings::with_capacity(narinfos.len() + nars.len() + served.len());
        for n in narinfos {
            h.insert(&narinfo_key(&n.to_string()));
        }
        for fh in nars {
            h.insert(&nar_key(&fh.to_nix32()));
        }
        for (fh, ext) in served {
            h.insert(&served_key(&fh.to_nix32(), ext));
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_what_was_inserted_and_few_others() {
        let mut h = Holdings::with_capacity(10_000);
        for i in 0..10_000 {
            h.insert(&nar_key(&format!("{i:052}")));
        }
        let h = Holdings::from_bytes(&h.to_bytes()).unwrap();
        assert!((0..10_000).all(|i| h.contains(&nar_key(&format!("{i:052}")))));
        let false_hits = (10_000..20_000)
            .filter(|i| h.contains(&nar_key(&format!("{i:052}"))))
            .count();
        assert!(false_hits < 200, "{false_hits} false positives in 10000");
        assert!(!Holdings::with_capacity(1).contains(&narinfo_key("x")));
    }

    #[test]
    fn refuses_garbage() {
        assert_eq!(Holdings::from_bytes(b"nope"), Err(DigestError::Format));
        assert_eq!(Holdings::from_bytes(b"NGD1"), Err(DigestError::Format));
        assert_eq!(
            Holdings::from_bytes(b"NGD1\x00\xff"),
            Err(DigestError::Format)
        );
    }

    #[test]
    fn refuses_oversized_and_implausible() {
        let mut big = b"NGD1\x07".to_vec();
        big.resize(5 + MAX_BYTES + 1, 0);
        assert_eq!(Holdings::from_bytes(&big), Err(DigestError::TooLarge));
        let mut ones = b"NGD1\x07".to_vec();
        ones.resize(5 + 1024, 0xff);
        assert!(matches!(
            Holdings::from_bytes(&ones),
            Err(DigestError::Implausible(_))
        ));
        // A digest filled to its design load (10 bits per key) is accepted.
        let mut full = Holdings::with_capacity(100_000);
        for i in 0..100_000 {
            full.insert(&nar_key(&format!("{i:052}")));
        }
        assert!(Holdings::from_bytes(&full.to_bytes()).is_ok());
    }
}
