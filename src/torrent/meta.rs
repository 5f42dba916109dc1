//! Deterministic single-file torrents for NARs (no I/O here).
//!
//! Two appliances that hold the same NAR must compute the same infohash, so every input is
//! fixed: the name is `<FileHash nix32>.nar<ext>` (the cache's own file name), the piece length
//! is [`piece_length`] of the size, and the info dictionary holds exactly `length`, `name`,
//! `piece length` and `pieces` (BEP 3, keys sorted as bencoding requires; no `private`, no
//! creation date). A `.torrent` received from a peer is checked against the signed narinfo
//! with [`Expected::check`] and then rebuilt in this canonical form, so extra keys a peer
//! might add cannot change what is fetched.

use sha1::{Digest, Sha1};
use thiserror::Error;

/// Smallest piece: BitTorrent clients request 16 KiB blocks.
pub const MIN_PIECE: u32 = 16 << 10;
/// Largest piece: bounds the memory a piece check needs.
pub const MAX_PIECE: u32 = 16 << 20;
/// Pieces a NAR is cut into, at most (until pieces reach [`MAX_PIECE`]): ~20 KiB of hashes.
pub const TARGET_PIECES: u64 = 1024;
/// Largest `.torrent` accepted from a peer: a NAR's is ~20 KiB of piece hashes (1024 pieces
/// at most, until 16 MiB pieces), so anything near this is not one of ours.
pub const MAX_TORRENT_FILE: usize = 1 << 20;

/// The piece length for a NAR of `size` bytes: the smallest power of two that cuts it into at
/// most [`TARGET_PIECES`] pieces, within [`MIN_PIECE`]..=[`MAX_PIECE`].
pub fn piece_length(size: u64) -> u32 {
    let want = size.div_ceil(TARGET_PIECES).max(1).next_power_of_two();
    want.clamp(MIN_PIECE as u64, MAX_PIECE as u64) as u32
}

/// Number of pieces of a `size`-byte file.
pub fn piece_count(size: u64, piece_length: u32) -> u64 {
    size.div_ceil(piece_length as u64)
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum TorrentError {
    #[error("not a torrent: {0}")]
    Malformed(String),
    #[error("torrent does not match the narinfo: {0}")]
    Mismatch(String),
}

/// A NAR's torrent: the canonical info dictionary and its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarTorrent {
    pub name: String,
    pub length: u64,
    pub piece_length: u32,
    /// Concatenated SHA-1 piece hashes.
    pub pieces: Vec<u8>,
}

impl NarTorrent {
    /// The bencoded info dictionary.
    pub fn info(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(self.pieces.len() + 128);
        b.push(b'd');
        key(&mut b, "length");
        b.extend_from_slice(format!("i{}e", self.length).as_bytes());
        key(&mut b, "name");
        bytes(&mut b, self.name.as_bytes());
        key(&mut b, "piece length");
        b.extend_from_slice(format!("i{}e", self.piece_length).as_bytes());
        key(&mut b, "pieces");
        bytes(&mut b, &self.pieces);
        b.push(b'e');
        b
    }

    /// SHA-1 of the info dictionary (BEP 3).
    pub fn info_hash(&self) -> [u8; 20] {
        Sha1::digest(self.info()).into()
    }

    pub fn info_hash_hex(&self) -> String {
        self.info_hash()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// A `.torrent` file announcing to `trackers` (none: peers are given directly).
    pub fn to_file(&self, trackers: &[String]) -> Vec<u8> {
        let mut b = vec![b'd'];
        if let Some(first) = trackers.first() {
            key(&mut b, "announce");
            bytes(&mut b, first.as_bytes());
            key(&mut b, "announce-list");
            b.push(b'l');
            for t in trackers {
                b.push(b'l');
                bytes(&mut b, t.as_bytes());
                b.push(b'e');
            }
            b.push(b'e');
        }
        key(&mut b, "info");
        b.extend_from_slice(&self.info());
        b.push(b'e');
        b
    }
}

fn key(b: &mut Vec<u8>, k: &str) {
    bytes(b, k.as_bytes());
}

fn bytes(b: &mut Vec<u8>, v: &[u8]) {
    b.extend_from_slice(v.len().to_string().as_bytes());
    b.push(b':');
    b.extend_from_slice(v);
}

/// Hashes pieces as bytes stream in; [`PieceHasher::finish`] gives the torrent.
pub struct PieceHasher {
    name: String,
    piece_length: u32,
    current: Sha1,
    in_piece: u64,
    length: u64,
    pieces: Vec<u8>,
}

impl PieceHasher {
    /// For a file of `size` bytes (which fixes the piece length).
    pub fn new(name: String, size: u64) -> Self {
        PieceHasher {
            name,
            piece_length: piece_length(size),
            current: Sha1::new(),
            in_piece: 0,
            length: 0,
            pieces: Vec::with_capacity(piece_count(size, piece_length(size)) as usize * 20),
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.length += data.len() as u64;
        while !data.is_empty() {
            let room = (self.piece_length as u64 - self.in_piece) as usize;
            let n = room.min(data.len());
            self.current.update(&data[..n]);
            self.in_piece += n as u64;
            data = &data[n..];
            if self.in_piece == self.piece_length as u64 {
                let done = std::mem::replace(&mut self.current, Sha1::new());
                self.pieces.extend_from_slice(&done.finalize());
                self.in_piece = 0;
            }
        }
    }

    /// `None` when the bytes seen are not the size given to [`PieceHasher::new`].
    pub fn finish(mut self, size: u64) -> Option<NarTorrent> {
        if self.length != size {
            return None;
        }
        if self.in_piece > 0 {
            self.pieces.extend_from_slice(&self.current.finalize());
        }
        Some(NarTorrent {
            name: self.name,
            length: self.length,
            piece_length: self.piece_length,
            pieces: self.pieces,
        })
    }
}

/// What a NAR's torrent must say, from the signed narinfo and the file name.
#[derive(Debug, Clone)]
pub struct Expected {
    pub name: String,
    pub length: u64,
}

impl Expected {
    /// What the torrent of NAR file `<fh>.nar<ext>` of `file_size` bytes must say.
    pub fn for_nar(fh: &crate::nix::hash::Sha256, ext: &str, file_size: u64) -> Self {
        Expected {
            name: format!("{}.nar{ext}", fh.to_nix32()),
            length: file_size,
        }
    }

    /// Checks a peer's `.torrent` and returns it in canonical form: one file, the expected
    /// name and length, the policy's piece length and exactly one hash per piece.
    pub fn check(&self, torrent: &[u8]) -> Result<NarTorrent, TorrentError> {
        // librqbit's bencode reads integers with unchecked arithmetic: a long number panics
        // on overflow where overflow checks are on (debug builds, tests) and wraps elsewhere.
        // Either way the peer's bytes are refused or checked below; never let them panic.
        let t = std::panic::catch_unwind(|| librqbit::torrent_from_bytes(torrent))
            .map_err(|_| TorrentError::Malformed("number out of range".into()))?
            .map_err(|e| TorrentError::Malformed(e.to_string()))?;
        let info = &t.info.data;
        let mismatch = |what: String| Err(TorrentError::Mismatch(what));
        if info.files.is_some() {
            return mismatch("several files".into());
        }
        let name = info
            .name
            .as_ref()
            .map(|n| String::from_utf8_lossy(n.as_ref()).into_owned());
        if name.as_deref() != Some(self.name.as_str()) {
            return mismatch(format!("name {name:?}, want {}", self.name));
        }
        if info.length != Some(self.length) {
            return mismatch(format!(
                "length {:?}, FileSize {}",
                info.length, self.length
            ));
        }
        let want_pl = piece_length(self.length);
        if info.piece_length != want_pl {
            return mismatch(format!(
                "piece length {}, policy {want_pl}",
                info.piece_length
            ));
        }
        let pieces: &[u8] = info.pieces.as_ref();
        let want = piece_count(self.length, want_pl) * 20;
        if pieces.len() as u64 != want {
            return mismatch(format!(
                "{} bytes of piece hashes, want {want}",
                pieces.len()
            ));
        }
        Ok(NarTorrent {
            name: self.name.clone(),
            length: self.length,
            piece_length: want_pl,
            pieces: pieces.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn torrent_of(data: &[u8], name: &str) -> NarTorrent {
        let mut h = PieceHasher::new(name.into(), data.len() as u64);
        for chunk in data.chunks(7000) {
            h.update(chunk);
        }
        h.finish(data.len() as u64).unwrap()
    }

    #[test]
    fn piece_length_policy() {
        assert_eq!(piece_length(0), MIN_PIECE);
        assert_eq!(piece_length(2_000_000), 16 << 10);
        assert_eq!(piece_length(200 << 20), 256 << 10);
        assert_eq!(piece_length(1 << 40), MAX_PIECE);
        for size in [1u64, 1 << 20, 300 << 20, 5 << 30] {
            let pl = piece_length(size);
            assert!(pl.is_power_of_two());
            assert!(piece_count(size, pl) <= TARGET_PIECES || pl == MAX_PIECE);
        }
    }

    #[test]
    fn same_bytes_same_infohash_and_librqbit_agrees() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let a = torrent_of(&data, "x.nar.xz");
        let mut b = PieceHasher::new("x.nar.xz".into(), data.len() as u64);
        b.update(&data);
        let b = b.finish(data.len() as u64).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.pieces.len(), 7 * 20); // 100000 / 16384 -> 7 pieces
        let file = a.to_file(&["http://127.0.0.1:1/announce".into()]);
        let parsed = librqbit::torrent_from_bytes(&file).unwrap();
        assert_eq!(parsed.info_hash.0, a.info_hash());
        let exp = Expected {
            name: "x.nar.xz".into(),
            length: data.len() as u64,
        };
        assert_eq!(exp.check(&file).unwrap(), a);
    }

    #[test]
    fn lying_torrents_are_refused() {
        let data = vec![7u8; 50_000];
        let t = torrent_of(&data, "x.nar.xz");
        let exp = |length| Expected {
            name: "x.nar.xz".into(),
            length,
        };
        assert!(matches!(
            exp(49_999).check(&t.to_file(&[])),
            Err(TorrentError::Mismatch(_))
        ));
        let mut absurd = t.clone();
        absurd.piece_length = 1 << 30;
        absurd.pieces.truncate(20);
        assert!(exp(50_000).check(&absurd.to_file(&[])).is_err());
        let mut renamed = t.clone();
        renamed.name = "y.nar.xz".into();
        assert!(exp(50_000).check(&renamed.to_file(&[])).is_err());
        let multi = b"d4:infod5:filesld6:lengthi50000e4:pathl1:aeee4:name8:x.nar.xz12:piece lengthi16384e6:pieces0:ee";
        assert!(matches!(
            exp(50_000).check(multi),
            Err(TorrentError::Mismatch(_))
        ));
        assert!(matches!(
            exp(50_000).check(b"not bencode"),
            Err(TorrentError::Malformed(_))
        ));
        // Numbers past their type (a usize length prefix, a u32 piece length) are refused.
        let long_len = b"d4:infod4:name99999999999999999999999:xee";
        let long_pl = b"d4:infod6:lengthi50000e4:name8:x.nar.xz12:piece lengthi99999999999ee";
        for bytes in [&long_len[..], &long_pl[..]] {
            assert!(matches!(
                exp(50_000).check(bytes),
                Err(TorrentError::Malformed(_))
            ));
        }
    }
}
