//! Recompressing a committed NAR for runners (issue 22, docs/ZSTD.md): decode the stored file
//! with the decoders that check every NAR (`decode.rs`), hash the decoded stream against the
//! signed NarHash/NarSize once more, and encode it (`encode.rs`) into a store write.
//! Blocking: runs on the blocking pool, one thread per transcode. For NARs committed without
//! the download's tap (`tap.rs`): caches of the previous version, uploads, downloads that
//! could not tap. The same decode, check and encode, into a channel instead of a store
//! write, make a runner's live stream when the cache cannot store (`live.rs`).
//!
//! The encoder sees exactly the bytes being hashed, and the caller commits the file only when
//! the hash and size matched: a zstd file exists only for bytes that match the signature.

use std::io::{self, Read, Write};
use std::time::Duration;

use sha2::Digest;
use thiserror::Error;

use super::decode::Decoder;
use super::encode::{thread_cpu, Encoded, Out, CHUNK};
use crate::metrics::StageCpu;
use crate::nix::compression::Compression;
use crate::nix::hash::Sha256;
use crate::nix::served::Served;
use crate::store::{StoreError, WriteHandle};

/// What a NAR must decode to: its signed NarHash and NarSize, and how its file is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signed {
    pub compression: Compression,
    pub nar_hash: Sha256,
    pub nar_size: u64,
}

/// Why a transcode produced nothing.
#[derive(Debug, Error)]
pub enum TranscodeError {
    #[error("nixgate cannot decode {0:?}")]
    Uncheckable(Compression),
    #[error("reading or decoding the stored NAR: {0}")]
    Decode(io::Error),
    #[error("the decoded NAR does not match its signed NarHash/NarSize")]
    Mismatch,
    #[error("encoding: {0}")]
    Encode(io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A finished transcode: its file (to commit) and what it cost.
pub struct Transcoded {
    pub file: WriteHandle,
    pub nar_bytes: u64,
    pub out_bytes: u64,
    /// CPU time of the thread: the decode (and NarHash check), and the encode.
    pub cpu: StageCpu,
}

/// Where decoded bytes go: hashed, counted (refusing more than NarSize), then encoded.
struct Tap<W: Write> {
    hasher: sha2::Sha256,
    size: u64,
    limit: u64,
    out: Encoded<W>,
    /// Thread CPU time spent in the encoder.
    encode: Duration,
}

impl<W: Write> Write for Tap<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.size += buf.len() as u64;
        if self.size > self.limit {
            return Err(io::Error::other("longer than NarSize"));
        }
        self.hasher.update(buf);
        let started = thread_cpu();
        let res = self.out.write_all(buf);
        self.encode += thread_cpu().saturating_sub(started);
        res.map(|()| buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Decodes `src` (a file compressed as `signed` says), checks it against `signed`, and writes
/// it as `as_` into `file`; the file is to be committed by the caller. Blocking.
pub fn transcode(
    src: impl Read,
    signed: Signed,
    as_: Served,
    file: WriteHandle,
) -> Result<Transcoded, TranscodeError> {
    let (out, nar_bytes, cpu) = transcode_to(src, signed, as_, Out::new(file, None))?;
    Ok(Transcoded {
        file: out.file,
        nar_bytes,
        out_bytes: out.written,
        cpu,
    })
}

/// [`transcode`] into any writer: the writer once the stream ended (zstd: its last block and
/// checksum are written only after the decoded NAR matched `signed`), the NAR's length, and
/// the thread's CPU time. Blocking.
pub(super) fn transcode_to<W: Write>(
    mut src: impl Read,
    signed: Signed,
    as_: Served,
    out: W,
) -> Result<(W, u64, StageCpu), TranscodeError> {
    let started = thread_cpu();
    let out = Encoded::new(as_, out, signed.nar_size).map_err(TranscodeError::Encode)?;
    let tap = Tap {
        hasher: sha2::Sha256::new(),
        size: 0,
        limit: signed.nar_size,
        out,
        encode: Duration::ZERO,
    };
    let c = signed.compression;
    let mut decoder = Decoder::new(c, tap).ok_or(TranscodeError::Uncheckable(c))?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = src.read(&mut buf).map_err(TranscodeError::Decode)?;
        if n == 0 {
            break;
        }
        decoder
            .write_all(&buf[..n])
            .map_err(TranscodeError::Decode)?;
    }
    let tap = decoder.finish().map_err(TranscodeError::Decode)?;
    let hash = Sha256(tap.hasher.finalize().into());
    if tap.size != signed.nar_size || hash != signed.nar_hash {
        return Err(TranscodeError::Mismatch);
    }
    let (nar_bytes, mut encode) = (tap.size, tap.encode);
    let finishing = thread_cpu();
    let out = tap.out.finish().map_err(TranscodeError::Encode)?;
    let ended = thread_cpu();
    encode += ended.saturating_sub(finishing);
    let decode = ended.saturating_sub(started).saturating_sub(encode);
    Ok((out, nar_bytes, StageCpu { decode, encode }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch::testdata::xz;
    use crate::metrics::Metrics;
    use std::sync::Arc;

    fn nar() -> Vec<u8> {
        crate::fetch::testdata::text_nar(50_000)
    }

    fn signed(b: &[u8]) -> Signed {
        Signed {
            compression: Compression::Xz,
            nar_hash: Sha256(sha2::Sha256::digest(b).into()),
            nar_size: b.len() as u64,
        }
    }

    #[tokio::test]
    async fn xz_becomes_zstd_that_decodes_to_the_same_nar() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            crate::store::Store::open(dir.path(), 1 << 30, Arc::new(Metrics::default()), None)
                .unwrap();
        assert!(store.wait_indexed(Duration::from_secs(10)));
        let (nar, fh) = (nar(), Sha256([9; 32]));
        for as_ in [Served::Zstd, Served::None] {
            let w = store.begin_served(fh, as_.extension(), None).unwrap();
            let t = transcode(&xz(&nar)[..], signed(&nar), as_, w).unwrap();
            assert_eq!(t.nar_bytes, nar.len() as u64);
            let path = t.file.commit().unwrap();
            let bytes = std::fs::read(path).unwrap();
            assert_eq!(bytes.len() as u64, t.out_bytes);
            let decoded = match as_ {
                Served::Zstd => zstd::decode_all(&bytes[..]).unwrap(),
                Served::None => bytes,
            };
            assert_eq!(decoded, nar);
        }
    }

    #[tokio::test]
    async fn a_nar_that_does_not_match_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            crate::store::Store::open(dir.path(), 1 << 30, Arc::new(Metrics::default()), None)
                .unwrap();
        assert!(store.wait_indexed(Duration::from_secs(10)));
        let nar = nar();
        let mut wrong = signed(&nar);
        wrong.nar_hash = Sha256([1; 32]);
        let w = store.begin_served(Sha256([9; 32]), ".zst", None).unwrap();
        let e = transcode(&xz(&nar)[..], wrong, Served::Zstd, w);
        assert!(matches!(e, Err(TranscodeError::Mismatch)));
        let mut short = signed(&nar);
        short.nar_size -= 1;
        let w = store.begin_served(Sha256([9; 32]), ".zst", None).unwrap();
        let e = transcode(&xz(&nar)[..], short, Served::Zstd, w);
        assert!(
            matches!(e, Err(TranscodeError::Decode(_))),
            "longer than NarSize"
        );
        assert!(store
            .served(&Sha256([9; 32]), ".zst")
            .await
            .unwrap()
            .is_none());
        assert_eq!(store.bytes(), 0);
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }
}
