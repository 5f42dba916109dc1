//! The resolved upload settings ([`UploadSettings`]) and the two secrets they hold: the
//! upload token and the signing key, read from files and never printed.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::nix::signature::{KeyError, PublicKey, SecretKey};

/// Why a secret file (`--upload-token-file`, `--signing-key-file`) cannot be used. Never
/// shows the file's content.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    #[error("{0}")]
    Read(#[from] std::io::Error),
    #[error("the file holds no token")]
    Empty,
    #[error("the token must be one word (no spaces or control characters)")]
    NotOneWord,
    #[error("{0}")]
    Key(#[from] KeyError),
}

/// The upload token (`--upload-token-file`); its `Debug` never shows it.
#[derive(Clone)]
pub struct UploadToken(pub(super) Arc<str>);

impl fmt::Debug for UploadToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UploadToken(<redacted>)")
    }
}

impl UploadToken {
    /// Reads the token: the file's content without surrounding whitespace, never empty.
    pub fn read(path: &Path) -> Result<Self, SecretFileError> {
        let text = std::fs::read_to_string(path)?;
        let token = text.trim();
        if token.is_empty() {
            return Err(SecretFileError::Empty);
        }
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(SecretFileError::NotOneWord);
        }
        Ok(UploadToken(token.into()))
    }

    /// The token, to send to fleet members when replicating.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// The signing key (`--signing-key-file`); its `Debug` shows only the public key.
#[derive(Clone)]
pub struct SigningKey(pub Arc<SecretKey>);

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({})", self.0.public())
    }
}

impl SigningKey {
    /// Reads a Nix secret key file (`NAME:BASE64` of 64 bytes).
    pub fn read(path: &Path) -> Result<Self, SecretFileError> {
        let text = std::fs::read_to_string(path)?;
        let key: SecretKey = text.trim().parse()?;
        Ok(SigningKey(Arc::new(key)))
    }

    /// The public key runners trust.
    pub fn public(&self) -> PublicKey {
        self.0.public()
    }
}

/// How uploads are taken: off without a token.
#[derive(Debug, Clone)]
pub struct UploadSettings {
    /// `None`: uploads are off (405).
    pub token: Option<UploadToken>,
    /// Signs unsigned uploads, when given.
    pub signing_key: Option<SigningKey>,
    /// Budget of held uploads, in bytes.
    pub max_bytes: u64,
    /// Bound of the staging area, in bytes.
    pub staging_bytes: u64,
    /// Staged NARs older than this are dropped.
    pub staging_age: Duration,
    /// A request body that delivers nothing for this long is abandoned (408).
    pub body_stall: Duration,
}

impl UploadSettings {
    /// Uploads off.
    pub fn off() -> Self {
        UploadSettings {
            token: None,
            signing_key: None,
            max_bytes: 0,
            staging_bytes: 0,
            staging_age: Duration::from_secs(3600),
            body_stall: Duration::from_secs(30),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_trimmed_and_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        std::fs::write(&p, "  s3cret\n").unwrap();
        let t = UploadToken::read(&p).unwrap();
        assert_eq!(t.expose(), "s3cret");
        assert!(!format!("{t:?}").contains("s3cret"));
        std::fs::write(&p, "\n").unwrap();
        assert!(UploadToken::read(&p).is_err());
        std::fs::write(&p, "two words").unwrap();
        assert!(UploadToken::read(&p).is_err());
    }
}
