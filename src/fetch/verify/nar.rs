//! The check of the decompressed NAR ([`NarCheck`]): its header always, the signed
//! `NarHash`/`NarSize` when known; and, for a download that also makes nixgate's own file,
//! the tap that encodes exactly the bytes hashed (`fetch/tap.rs`).

use std::io::Write;

use sha2::Digest;

use super::VerifyError;
use crate::fetch::decode::Decoder;
use crate::fetch::tap::Tap;
use crate::nix::compression::{Compression, NAR_MAGIC};
use crate::nix::hash::Sha256;

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
    /// The encoder of nixgate's own file, fed every byte hashed (`fetch/tap.rs`).
    tap: Option<Tap>,
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
        if let Some(tap) = &mut self.tap {
            tap.write(buf);
        }
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
        Self::tapped(compression, signed, None)
    }

    /// [`Self::new`], with `tap` encoding the decoded bytes as they are hashed (it is given
    /// back by [`Self::finish_tapped`] once they verified). Only with a signed NarHash:
    /// without one, decoding stops after the header.
    pub fn tapped(
        compression: Compression,
        signed: Option<(Sha256, u64)>,
        tap: Option<Tap>,
    ) -> Result<Self, VerifyError> {
        let sink = NarSink {
            hasher: sha2::Sha256::new(),
            size: 0,
            limit: signed.map_or(u64::MAX, |(_, size)| size),
            header: 0,
            refused: None,
            tap: tap.filter(|_| signed.is_some()),
        };
        let decoder =
            Decoder::new(compression, sink).ok_or(VerifyError::Uncheckable(compression))?;
        Ok(NarCheck { decoder, signed })
    }

    /// Limits a zstd decoder's window to `2^log` bytes (see [`Decoder::limit_window`]).
    pub fn limit_window(mut self, log: u32) -> Result<Self, VerifyError> {
        let limited = self.decoder.limit_window(log);
        limited.map_err(|e| VerifyError::Decode(e.to_string()))?;
        Ok(self)
    }

    /// The checks against a signed `nar_hash` and `nar_size`.
    pub fn signed(c: Compression, nar_hash: Sha256, nar_size: u64) -> Result<Self, VerifyError> {
        Self::new(c, Some((nar_hash, nar_size)))
    }

    /// Whether the signed NarHash is checked (so bytes from peers may make up the file).
    pub fn checks_nar_hash(&self) -> bool {
        self.signed.is_some()
    }

    /// Whether a tap is fed (and still writes).
    pub fn has_tap(&self) -> bool {
        self.decoder.sink().tap.as_ref().is_some_and(Tap::alive)
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
        self.finish_tapped().map(drop)
    }

    /// [`Self::finish`], giving back the tap (if any) once the bytes it was fed verified;
    /// on a failure it is dropped (its readers aborted, its file deleted).
    pub fn finish_tapped(self) -> Result<Option<Tap>, VerifyError> {
        let signed = self.signed;
        if signed.is_none() {
            // Only the header was checked (decoding stopped there).
            return match self.header_seen() {
                true => Ok(None),
                false => Err(VerifyError::NotANar),
            };
        }
        let mut sink = self
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
        Ok(sink.tap.take())
    }
}
