//! Incremental checks of NAR bytes as they arrive, before anything is committed.
//!
//! - [`FileCheck`]: the file as stored (compressed) against the narinfo's `FileSize` and
//!   `FileHash`, and its first bytes against the named compression. Enough for bytes from an
//!   upstream whose narinfo we fetched from it.
//! - [`NarCheck`]: the decompressed NAR against the *signed* `NarHash` and `NarSize`. Required
//!   for bytes from a peer: a peer can choose `FileHash`/`FileSize`/`URL` freely (the
//!   signature does not cover them), but not the NAR inside.

use std::io::Write;

use sha2::Digest;

use super::FetchError;
use crate::nix::compression::Compression;
use crate::nix::hash::Sha256;

fn rejected(msg: String) -> FetchError {
    FetchError::Verification(msg)
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

    pub fn update(&mut self, chunk: &[u8]) -> Result<(), FetchError> {
        self.written += chunk.len() as u64;
        if let Some(size) = self.expect.file_size.filter(|s| self.written > *s) {
            return Err(rejected(format!("longer than FileSize {size}")));
        }
        let want = Compression::MAGIC_LEN.saturating_sub(self.head.len());
        self.head.extend_from_slice(&chunk[..want.min(chunk.len())]);
        self.hasher.update(chunk);
        Ok(())
    }

    pub fn finish(self) -> Result<u64, FetchError> {
        if let Some(size) = self.expect.file_size.filter(|s| *s != self.written) {
            return Err(rejected(format!(
                "{} bytes, FileSize says {size}",
                self.written
            )));
        }
        let got = Sha256(self.hasher.finalize().into());
        if got != self.expect.file_hash {
            return Err(rejected(format!(
                "sha256 {got}, FileHash says {}",
                self.expect.file_hash
            )));
        }
        if let Some(c) = self
            .expect
            .compression
            .filter(|c| !c.matches_magic(&self.head))
        {
            return Err(rejected(format!(
                "bytes are not {c:?}-compressed as the narinfo says"
            )));
        }
        Ok(self.written)
    }
}

/// Hashes and counts decompressed bytes, refusing more than the signed NarSize.
struct NarSink {
    hasher: sha2::Sha256,
    size: u64,
    limit: u64,
}

impl Write for NarSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.size += buf.len() as u64;
        if self.size > self.limit {
            return Err(std::io::Error::other(format!(
                "decompresses to more than NarSize {}",
                self.limit
            )));
        }
        self.hasher.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

enum Decoder {
    None(NarSink),
    Xz(xz2::write::XzDecoder<NarSink>),
    Zstd(zstd::stream::write::Decoder<'static, NarSink>),
    Bzip2(bzip2::write::BzDecoder<NarSink>),
}

/// Checks of the decompressed NAR against the signed `NarHash`/`NarSize`.
pub struct NarCheck {
    decoder: Decoder,
    nar_hash: Sha256,
    nar_size: u64,
}

impl NarCheck {
    /// `None` when nixgate cannot decompress `compression` (then peer bytes are not usable).
    pub fn new(compression: Compression, nar_hash: Sha256, nar_size: u64) -> Option<Self> {
        let sink = NarSink {
            hasher: sha2::Sha256::new(),
            size: 0,
            limit: nar_size,
        };
        let decoder = match compression {
            Compression::None => Decoder::None(sink),
            Compression::Xz => Decoder::Xz(xz2::write::XzDecoder::new_multi_decoder(sink)),
            Compression::Zstd => Decoder::Zstd(zstd::stream::write::Decoder::new(sink).ok()?),
            Compression::Bzip2 => Decoder::Bzip2(bzip2::write::BzDecoder::new(sink)),
            _ => return None,
        };
        Some(NarCheck {
            decoder,
            nar_hash,
            nar_size,
        })
    }

    pub fn update(&mut self, chunk: &[u8]) -> Result<(), FetchError> {
        let r = match &mut self.decoder {
            Decoder::None(s) => s.write_all(chunk),
            Decoder::Xz(d) => d.write_all(chunk),
            Decoder::Zstd(d) => d.write_all(chunk),
            Decoder::Bzip2(d) => d.write_all(chunk),
        };
        r.map_err(|e| rejected(format!("NAR does not decompress: {e}")))
    }

    pub fn finish(self) -> Result<(), FetchError> {
        let sink = match self.decoder {
            Decoder::None(s) => Ok(s),
            Decoder::Xz(mut d) => d.finish(),
            Decoder::Zstd(mut d) => d.flush().map(|()| d.into_inner()),
            Decoder::Bzip2(mut d) => d.finish(),
        }
        .map_err(|e| rejected(format!("NAR does not decompress: {e}")))?;
        if sink.size != self.nar_size {
            return Err(rejected(format!(
                "decompresses to {} bytes, NarSize says {}",
                sink.size, self.nar_size
            )));
        }
        let got = Sha256(sink.hasher.finalize().into());
        if got != self.nar_hash {
            return Err(rejected(format!(
                "NAR sha256 {got}, NarHash says {}",
                self.nar_hash
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nar_bytes() -> Vec<u8> {
        // Any bytes will do for the hash check; make them long enough to span chunks.
        (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect()
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
            _ => unreachable!(),
        }
    }

    fn check(c: Compression, file: &[u8], hash: Sha256, size: u64) -> Result<(), FetchError> {
        let mut n = NarCheck::new(c, hash, size).unwrap();
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
        for c in [
            Compression::None,
            Compression::Xz,
            Compression::Zstd,
            Compression::Bzip2,
        ] {
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
        assert!(NarCheck::new(Compression::Brotli, hash, size).is_none());
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
        assert!(f.finish().is_err(), "wrong magic");

        let mut f = FileCheck::new(FileExpect {
            file_size: Some(10),
            ..expect
        });
        assert!(f.update(&data).is_err(), "longer than FileSize");
    }
}
