//! sha256 digests as Nix writes them: `sha256:<nix32>` (e.g.
//! `sha256:1hi53fsh0220rwi8755la7a02bwc1j3bjg87aaccc8nnp9hxrm3y`).
//!
//! Nix parses `NarHash`/`FileHash` with `Hash::parseAnyPrefixed`, which also accepts base16
//! (`sha256:<64 hex>`) and SRI (`sha256-<base64>`); we accept the same and always print nix32,
//! the form the signature fingerprint uses (`src/libstore/path-info.cc`).

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use thiserror::Error;

use super::nix32;

/// A sha256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256(pub [u8; 32]);

/// Why a hash string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HashError {
    #[error("hash {0:?} is not sha256 (expected sha256:<nix32>, sha256:<hex> or sha256-<base64>)")]
    Algorithm(String),
    #[error("hash {0:?} has a malformed digest")]
    Digest(String),
}

impl Sha256 {
    /// The 52-character nix32 form without prefix (used in NAR file names).
    pub fn to_nix32(&self) -> String {
        nix32::encode(&self.0)
    }

    /// Parses the bare 52-character nix32 form.
    pub fn from_nix32(s: &str) -> Result<Self, HashError> {
        nix32::decode::<32>(s)
            .map(Sha256)
            .map_err(|_| HashError::Digest(s.to_owned()))
    }

    /// Digest of a byte slice.
    pub fn digest(data: &[u8]) -> Self {
        use sha2::Digest;
        Sha256(sha2::Sha256::digest(data).into())
    }
}

fn from_hex(s: &str) -> Option<[u8; 32]> {
    // `from_str_radix` alone would also take a `+` sign.
    if s.len() != 64 || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl FromStr for Sha256 {
    type Err = HashError;

    fn from_str(s: &str) -> Result<Self, HashError> {
        let bad = || HashError::Digest(s.to_owned());
        if let Some(rest) = s.strip_prefix("sha256:") {
            if rest.len() == 64 {
                return from_hex(rest).map(Sha256).ok_or_else(bad);
            }
            return nix32::decode::<32>(rest).map(Sha256).map_err(|_| bad());
        }
        if let Some(rest) = s.strip_prefix("sha256-") {
            let v = base64::engine::general_purpose::STANDARD
                .decode(rest)
                .map_err(|_| bad())?;
            return v.try_into().map(Sha256).map_err(|_| bad());
        }
        Err(HashError::Algorithm(s.to_owned()))
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.to_nix32())
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_prefixed_form() {
        let nix = "sha256:1a1bsj6a88svx7w9zf6k8ly3sinibliwr96pmhyqnxvslaid8s5j";
        let hex = "sha256:b268d4a2a27a778b3dacd7a4cc235dd1463d3c45d3b89ff8e95b23a48cd42ba8";
        let a: Sha256 = nix.parse().unwrap();
        let b: Sha256 = hex.parse().unwrap();
        assert_eq!(a, b);
        let sri = format!(
            "sha256-{}",
            base64::engine::general_purpose::STANDARD.encode(a.0)
        );
        assert_eq!(sri.parse::<Sha256>().unwrap(), a);
        assert_eq!(a.to_string(), nix);
        assert!(matches!(
            "md5:abc".parse::<Sha256>(),
            Err(HashError::Algorithm(_))
        ));
        assert!("sha256:zz".parse::<Sha256>().is_err());
        let signed = format!("sha256:+f{}", &hex[9..]);
        assert!(signed.parse::<Sha256>().is_err(), "{signed}");
    }
}
