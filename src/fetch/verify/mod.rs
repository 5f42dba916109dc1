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

mod nar;
#[cfg(test)]
mod tests;

use sha2::Digest;
use thiserror::Error;

use crate::nix::compression::Compression;
use crate::nix::hash::Sha256;
pub use nar::NarCheck;

/// Which check refused the bytes (each says what it saw and what was promised).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum VerifyError {
    #[error("Content-Length {got}, FileSize says {want}")]
    Length { got: u64, want: u64 },
    #[error("longer than FileSize {0}")]
    FileTooLong(u64),
    #[error("longer than {0} bytes, the most a file of its NarSize may take")]
    OverBound(u64),
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
    /// `None` for nixgate's own file of a NAR from a fleet owner: no FileHash names it, and
    /// the signed NarHash decides alone.
    pub file_hash: Option<Sha256>,
    pub file_size: Option<u64>,
    /// The most the file may take when no FileSize says (nixgate's own file from another
    /// appliance: bounded by its NarSize), so a source cannot send on forever.
    pub max_size: Option<u64>,
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
        if let Some(max) = self.expect.max_size.filter(|m| self.written > *m) {
            return Err(VerifyError::OverBound(max));
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
        if let Some(want) = self.expect.file_hash.filter(|w| *w != got) {
            return Err(VerifyError::FileHash { got, want });
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
