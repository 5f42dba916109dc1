//! Incremental checks of NAR bytes as they arrive, before anything is committed.
//!
//! - [`FileCheck`]: the file as stored (compressed) against the narinfo's `FileSize` and
//!   `FileHash`, and its first bytes against the named compression. None of these is signed:
//!   they name the file (its content address) and filter early, nothing more.
//! - [`NarCheck`]: the decompressed NAR. It always begins with the NAR header
//!   (`nix-archive-1`), so an unrelated body is never taken for a NAR; against the *signed*
//!   `NarHash` and `NarSize` whenever a narinfo told them. A source can choose
//!   `FileHash`/`FileSize`/`URL`/`Compression` freely (the signature does not cover them), but
//!   not the NAR inside.
//!
//! Failures are a [`VerifyError`] that names the check, so callers decide with a `match`.

use std::io::Write;

use sha2::Digest;
use thiserror::Error;

use super::decode::Decoder;
use crate::nix::compression::{Compression, NAR_MAGIC};
use crate::nix::hash::Sha256;

/// Which check refused the bytes (each says what it saw and what was promised).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum VerifyError {
    #[error("Content-Length {got}, FileSize says {want}")]
    Length { got: u64, want: u64 },
    #[error("longer than FileSize {0}")]
    FileTooLong(u64),
    #[error("{got} bytes, FileSize says {want}")]
    FileSize { got: u64, want: u64 },
    #[error("sha256 {got}, FileHash says {want}")]
    FileHash { got: Sha256, want: Sha256 },
    #[error("bytes are not {0:?}-compressed as the narinfo says")]
    Magic(Compression),
    #[error(
        "{0:?}-compressed NARs cannot be decompressed here, so their NarHash cannot be checked"
    )]
    Uncheckable(Compression),
    #[error("NAR does not decompress: {0}")]
    Decode(String),
    #[error("not a NAR: the decompressed bytes do not begin with nix-archive-1")]
    NotANar,
    #[error("decompresses to more than NarSize {0}")]
    NarTooLong(u64),
    #[error("decompresses to {got} bytes, NarSize says {want}")]
    NarSize { got: u64, want: u64 },
    #[error("NAR sha256 {got}, NarHash says {want}")]
    NarHash { got: Sha256, want: Sha256 },
}

impl VerifyError {
    /// Whether the decompressed NAR contradicts the narinfo (NarHash/NarSize, or it is no NAR
    /// at all): the file may be right for its FileHash and the narinfo that named it wrong.
    pub fn refutes_narinfo(&self) -> bool {
        matches!(
            self,
            VerifyError::Decode(_)
                | VerifyError::NotANar
                | VerifyError::NarTooLong(_)
                | VerifyError::NarSize { .. }
                | VerifyError::NarHash { .. }
        )
    }
}

/// What the narinfo promised about the stored file.
#[derive(Debug, Clone, Copy)]
pub struct FileExpect {
    pub file_hash: Sha256,
    pub file_size: Option<u64>,
    pub compression: Option<Compression>,
}

/// Checks of the compressed file.
pub struct FileCheck {
    hasher: sha2::Sha256,
    pub written: u64,
    head: Vec<u8>,
    expect: FileExpect,
}

impl FileCheck {
    pub fn new(expect: FileExpect) -> Self {
        FileCheck {
            hasher: sha2::Sha256::new(),
            written: 0,
            head: Vec::with_capacity(Compression::MAGIC_LEN),
            expect,
        }
    }

    pub fn update(&mut self, chunk: &[u8]) -> Result<(), VerifyError> {
        self.written += chunk.len() as u64;
        if let Some(size) = self.expect.file_size.filter(|s| self.written > *s) {
            return Err(VerifyError::FileTooLong(size));
        }
        let want = Compression::MAGIC_LEN.saturating_sub(self.head.len());
        self.head.extend_from_slice(&chunk[..want.min(chunk.len())]);
        self.hasher.update(chunk);
        Ok(())
    }

    pub fn finish(self) -> Result<u64, VerifyError> {
        if let Some(want) = self.expect.file_size.filter(|s| *s != self.written) {
            return Err(VerifyError::FileSize {
                got: self.written,
                want,
            });
        }
        let got = Sha256(self.hasher.finalize().into());
        if got != self.expect.file_hash {
            return Err(VerifyError::FileHash {
                got,
                want: self.expect.file_hash,
            });
        }
        if let Some(c) = self
            .expect
            .compression
            .filter(|c| !c.matches_magic(&self.head))
        {
            return Err(VerifyError::Magic(c));
        }
        Ok(self.written)
    }
}

/// Where decompressed bytes go: their first bytes are compared with the NAR header, and they
/// are hashed and counted, refusing more than the signed NarSize.
struct NarSink {
    hasher: sha2::Sha256,
    size: u64,
    limit: u64,
    /// How many leading bytes matched [`NAR_MAGIC`] so far.
    header: usize,
    /// Why the sink refused a write (read back after the decoder returns an error).
    refused: Option<VerifyError>,
}

impl NarSink {
    fn header_seen(&self) -> bool {
        self.header == NAR_MAGIC.len()
    }
}

impl Write for NarSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if !self.header_seen() {
            let n = (NAR_MAGIC.len() - self.header).min(buf.len());
            if buf[..n] != NAR_MAGIC[self.header..self.header + n] {
                self.refused = Some(VerifyError::NotANar);
                return Err(std::io::Error::other("not a NAR"));
            }
            self.header += n;
        }
        self.size += buf.len() as u64;
        if self.size > self.limit {
            self.refused = Some(VerifyError::NarTooLong(self.limit));
            return Err(std::io::Error::other("longer than NarSize"));
        }
        self.hasher.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Checks of the decompressed NAR: its header always, the signed `NarHash`/`NarSize` when
/// known.
pub struct NarCheck {
    decoder: Decoder<NarSink>,
    /// The signed NarHash and NarSize, when a narinfo told them.
    signed: Option<(Sha256, u64)>,
}

impl NarCheck {
    /// The checks of a NAR compressed with `compression`, against `signed` (NarHash, NarSize)
    /// when known; [`VerifyError::Uncheckable`] when nixgate cannot decompress it.
    pub fn new(
        compression: Compression,
        signed: Option<(Sha256, u64)>,
    ) -> Result<Self, VerifyError> {
        let sink = NarSink {
            hasher: sha2::Sha256::new(),
            size: 0,
            limit: signed.map_or(u64::MAX, |(_, size)| size),
            header: 0,
            refused: None,
        };
        let decoder =
            Decoder::new(compression, sink).ok_or(VerifyError::Uncheckable(compression))?;
        Ok(NarCheck { decoder, signed })
    }

    /// The checks against a signed `nar_hash` and `nar_size`.
    pub fn signed(c: Compression, nar_hash: Sha256, nar_size: u64) -> Result<Self, VerifyError> {
        Self::new(c, Some((nar_hash, nar_size)))
    }

    /// Whether the signed NarHash is checked (so bytes from peers may make up the file).
    pub fn checks_nar_hash(&self) -> bool {
        self.signed.is_some()
    }

    /// Whether the decompressed bytes so far began with the whole NAR header.
    pub fn header_seen(&self) -> bool {
        self.decoder.sink().header_seen()
    }

    pub fn update(&mut self, chunk: &[u8]) -> Result<(), VerifyError> {
        // Without a NarHash to check, decoding past the header buys nothing.
        if self.signed.is_none() && self.header_seen() {
            return Ok(());
        }
        self.decoder.write_all(chunk).map_err(|e| {
            let refused = self.decoder.sink().refused.clone();
            refused.unwrap_or_else(|| VerifyError::Decode(e.to_string()))
        })
    }

    pub fn finish(self) -> Result<(), VerifyError> {
        let signed = self.signed;
        if signed.is_none() {
            // Only the header was checked (decoding stopped there).
            return match self.header_seen() {
                true => Ok(()),
                false => Err(VerifyError::NotANar),
            };
        }
        let sink = self
            .decoder
            .finish()
            .map_err(|e| VerifyError::Decode(e.to_string()))?;
        if let Some(refused) = sink.refused {
            return Err(refused);
        }
        if !sink.header_seen() {
            return Err(VerifyError::NotANar);
        }
        let (want_hash, want_size) = signed.expect("checked above");
        if sink.size != want_size {
            return Err(VerifyError::NarSize {
                got: sink.size,
                want: want_size,
            });
        }
        let got = Sha256(sink.hasher.finalize().into());
        if got != want_hash {
            return Err(VerifyError::NarHash {
                got,
                want: want_hash,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nar_bytes() -> Vec<u8> {
        // A NAR header, then any bytes, long enough to span chunks.
        let mut nar = NAR_MAGIC.to_vec();
        nar.extend((0..200_000u32).flat_map(|i| i.to_le_bytes()));
        nar
    }

    fn compress(c: Compression, data: &[u8]) -> Vec<u8> {
        match c {
            Compression::None => data.to_vec(),
            Compression::Xz => {
                let mut e = xz2::write::XzEncoder::new(Vec::new(), 6);
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::Zstd => zstd::encode_all(data, 3).unwrap(),
            Compression::Bzip2 => {
                let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::Lz4 => {
                let mut e = lz4_flex::frame::FrameEncoder::new(Vec::new());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            _ => unreachable!(),
        }
    }

    const DECODABLE: [Compression; 6] = [
        Compression::Lz4,
        Compression::None,
        Compression::Xz,
        Compression::Zstd,
        Compression::Bzip2,
        Compression::Gzip,
    ];

    fn check(c: Compression, file: &[u8], hash: Sha256, size: u64) -> Result<(), VerifyError> {
        check_with(c, file, Some((hash, size)))
    }

    fn check_with(
        c: Compression,
        file: &[u8],
        signed: Option<(Sha256, u64)>,
    ) -> Result<(), VerifyError> {
        let mut n = NarCheck::new(c, signed).unwrap();
        for chunk in file.chunks(7_777) {
            n.update(chunk)?;
        }
        n.finish()
    }

    #[test]
    fn nar_hash_after_decompression() {
        let nar = nar_bytes();
        let hash = Sha256(sha2::Sha256::digest(&nar).into());
        let size = nar.len() as u64;
        for c in DECODABLE {
            let file = compress(c, &nar);
            check(c, &file, hash, size).unwrap_or_else(|e| panic!("{c:?}: {e}"));

            let mut other = nar.clone();
            other[12_345] ^= 1;
            let forged = compress(c, &other);
            assert!(check(c, &forged, hash, size).is_err(), "{c:?} forged");

            let mut longer = nar.clone();
            longer.push(0);
            assert!(
                check(c, &compress(c, &longer), hash, size).is_err(),
                "{c:?} longer"
            );
            assert!(
                check(c, &file[..file.len() / 2], hash, size).is_err(),
                "{c:?} truncated"
            );
        }
        for c in [Compression::Lzip, Compression::Other] {
            assert_eq!(
                NarCheck::signed(c, hash, size).err(),
                Some(VerifyError::Uncheckable(c))
            );
        }
    }

    #[test]
    fn every_nar_begins_with_its_header() {
        let nar = nar_bytes();
        let hash = Sha256(sha2::Sha256::digest(&nar).into());
        let mut html = b"<html>internal page</html>".to_vec();
        html.resize(nar.len(), b' ');
        let html_hash = Sha256(sha2::Sha256::digest(&html).into());
        for c in DECODABLE {
            // Signed or not, a body that is no NAR is refused, as soon as its start decodes.
            let file = compress(c, &html);
            let signed = Some((html_hash, html.len() as u64));
            assert_eq!(
                check_with(c, &file, signed),
                Err(VerifyError::NotANar),
                "{c:?}"
            );
            let mut n = NarCheck::new(c, None).unwrap();
            let first = n.update(&file);
            assert!(first.is_err() || n.finish().is_err(), "{c:?} unsigned");
            // One chunk is enough to see the header (decoders must not sit on their output).
            let mut n = NarCheck::new(c, None).unwrap();
            n.update(&compress(c, &nar)).unwrap();
            assert!(n.header_seen(), "{c:?} after one chunk");
            // A real NAR passes the header check without a narinfo, and with one.
            let file = compress(c, &nar);
            check_with(c, &file, None).unwrap_or_else(|e| panic!("{c:?}: {e}"));
            let mut whole = NarCheck::new(c, None).unwrap();
            whole.update(&file).unwrap();
            whole
                .finish()
                .unwrap_or_else(|e| panic!("{c:?} in one chunk: {e}"));
            check(c, &file, hash, nar.len() as u64).unwrap();
        }
        let mut n = NarCheck::new(Compression::None, None).unwrap();
        n.update(&NAR_MAGIC[..20]).unwrap();
        assert!(!n.header_seen());
        n.update(&NAR_MAGIC[20..]).unwrap();
        assert!(n.header_seen());
    }

    #[test]
    fn file_hash_size_and_magic() {
        let data = compress(Compression::Xz, &nar_bytes());
        let fh = Sha256(sha2::Sha256::digest(&data).into());
        let expect = FileExpect {
            file_hash: fh,
            file_size: Some(data.len() as u64),
            compression: Some(Compression::Xz),
        };
        let mut f = FileCheck::new(expect);
        f.update(&data).unwrap();
        assert_eq!(f.finish().unwrap(), data.len() as u64);

        let mut f = FileCheck::new(FileExpect {
            compression: Some(Compression::Zstd),
            ..expect
        });
        f.update(&data).unwrap();
        assert_eq!(f.finish(), Err(VerifyError::Magic(Compression::Zstd)));

        let mut f = FileCheck::new(FileExpect {
            file_size: Some(10),
            ..expect
        });
        assert_eq!(f.update(&data), Err(VerifyError::FileTooLong(10)));
    }
}
