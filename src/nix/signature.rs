//! ed25519 keys and `Sig:` lines in Nix's format (`src/libutil/signature/local-keys.cc`).
//!
//! Public key: `name:base64(32 bytes)`, e.g.
//! `cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=`.
//! Secret key: `name:base64(64 bytes)` in libsodium's layout, a 32-byte seed followed by the
//! public key. A signature line is `name:base64(64-byte detached signature)` over the narinfo
//! fingerprint ([`super::narinfo::NarInfo::fingerprint`]).

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use thiserror::Error;

/// The key cache.nixos.org signs with; trusted by default.
pub const CACHE_NIXOS_ORG_KEY: &str =
    "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";

/// Why a key was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyError {
    #[error("key {0:?} is not of the form NAME:BASE64")]
    Form(String),
    #[error("key {0:?} is not valid base64")]
    Base64(String),
    #[error("key {name:?} decodes to {got} bytes, expected {expected}")]
    Length {
        name: String,
        got: usize,
        expected: usize,
    },
    #[error("key {0:?} is not a valid ed25519 key")]
    Invalid(String),
}

fn split_named(s: &str) -> Result<(&str, Vec<u8>), KeyError> {
    let (name, b64) = s
        .split_once(':')
        .filter(|(n, b)| !n.is_empty() && !b.is_empty())
        .ok_or_else(|| KeyError::Form(s.to_owned()))?;
    let bytes = B64
        .decode(b64.trim())
        .map_err(|_| KeyError::Base64(s.to_owned()))?;
    Ok((name, bytes))
}

fn exact<const N: usize>(name: &str, bytes: Vec<u8>) -> Result<[u8; N], KeyError> {
    let got = bytes.len();
    bytes.try_into().map_err(|_| KeyError::Length {
        name: name.to_owned(),
        got,
        expected: N,
    })
}

/// A named ed25519 public key.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub name: String,
    key: VerifyingKey,
}

impl FromStr for PublicKey {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, KeyError> {
        let (name, bytes) = split_named(s.trim())?;
        let key = VerifyingKey::from_bytes(&exact::<32>(name, bytes)?)
            .map_err(|_| KeyError::Invalid(name.to_owned()))?;
        Ok(PublicKey {
            name: name.to_owned(),
            key,
        })
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, B64.encode(self.key.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A named ed25519 secret key (used by tests and the benchmark to write signed caches).
pub struct SecretKey {
    pub name: String,
    key: SigningKey,
}

impl FromStr for SecretKey {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, KeyError> {
        let (name, bytes) = split_named(s.trim())?;
        let key = SigningKey::from_keypair_bytes(&exact::<64>(name, bytes)?)
            .map_err(|_| KeyError::Invalid(name.to_owned()))?;
        Ok(SecretKey {
            name: name.to_owned(),
            key,
        })
    }
}

impl SecretKey {
    /// Makes a key from a 32-byte seed.
    pub fn from_seed(name: &str, seed: [u8; 32]) -> Self {
        SecretKey {
            name: name.to_owned(),
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// A `Sig:` value over `fingerprint`.
    pub fn sign(&self, fingerprint: &str) -> String {
        let sig = self.key.sign(fingerprint.as_bytes());
        format!("{}:{}", self.name, B64.encode(sig.to_bytes()))
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }
}

/// The set of keys whose signatures make a narinfo trusted.
#[derive(Clone, Debug, Default)]
pub struct TrustedKeys(Vec<PublicKey>);

impl TrustedKeys {
    pub fn new(keys: Vec<PublicKey>) -> Self {
        TrustedKeys(keys)
    }

    pub fn keys(&self) -> &[PublicKey] {
        &self.0
    }

    /// Adds `key` unless it is already trusted.
    pub fn add(&mut self, key: PublicKey) {
        if !self.0.contains(&key) {
            self.0.push(key);
        }
    }

    /// True when at least one `Sig:` value verifies over `fingerprint` with a trusted key of
    /// the same name. Malformed signatures are ignored, as Nix does.
    pub fn verifies_any<'a>(
        &self,
        fingerprint: &str,
        sigs: impl IntoIterator<Item = &'a String>,
    ) -> bool {
        sigs.into_iter().any(|s| self.verifies(fingerprint, s))
    }

    fn verifies(&self, fingerprint: &str, sig: &str) -> bool {
        let Ok((name, bytes)) = split_named(sig) else {
            return false;
        };
        let Ok(raw) = exact::<64>(name, bytes) else {
            return false;
        };
        let sig = Signature::from_bytes(&raw);
        self.0
            .iter()
            .filter(|k| k.name == name)
            // Strict verification rejects small-order keys and non-canonical S, like libsodium.
            .any(|k| k.key.verify_strict(fingerprint.as_bytes(), &sig).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nix::narinfo::tests::{VECTOR, VECTOR_PUBLIC_KEY, VECTOR_SECRET_KEY};
    use crate::nix::narinfo::NarInfo;

    fn trusted(k: &str) -> TrustedKeys {
        TrustedKeys::new(vec![k.parse().unwrap()])
    }

    #[test]
    fn verifies_real_nix_signature() {
        let ni: NarInfo = VECTOR.parse().unwrap();
        let fp = ni.fingerprint("/nix/store");
        assert!(trusted(VECTOR_PUBLIC_KEY).verifies_any(&fp, &ni.sigs));
        assert!(!trusted(CACHE_NIXOS_ORG_KEY).verifies_any(&fp, &ni.sigs));
        // Any change to a signed field breaks it.
        let forged = fp.replace(";536;", ";537;");
        assert!(!trusted(VECTOR_PUBLIC_KEY).verifies_any(&forged, &ni.sigs));
    }

    #[test]
    fn signing_reproduces_nix() {
        let ni: NarInfo = VECTOR.parse().unwrap();
        let sk: SecretKey = VECTOR_SECRET_KEY.parse().unwrap();
        assert_eq!(sk.public().to_string(), VECTOR_PUBLIC_KEY);
        // ed25519 is deterministic: our signature equals the one real nix wrote.
        assert_eq!(sk.sign(&ni.fingerprint("/nix/store")), ni.sigs[0]);
    }

    #[test]
    fn key_errors_are_specific() {
        assert!(matches!(
            "nocolon".parse::<PublicKey>(),
            Err(KeyError::Form(_))
        ));
        assert!(matches!(
            "k:!!!".parse::<PublicKey>(),
            Err(KeyError::Base64(_))
        ));
        assert!(matches!(
            "k:AAAA".parse::<PublicKey>(),
            Err(KeyError::Length { .. })
        ));
        assert!(CACHE_NIXOS_ORG_KEY.parse::<PublicKey>().is_ok());
        let ni: NarInfo = VECTOR.parse().unwrap();
        let junk = vec!["test-vector-1:short".to_string(), "garbage".to_string()];
        assert!(!trusted(VECTOR_PUBLIC_KEY).verifies_any(&ni.fingerprint("/nix/store"), &junk));
    }
}
