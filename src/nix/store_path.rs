//! Store paths and their parts, validated before anything touches disk or network.
//!
//! `/nix/store/6dyjazmc27x71a77v1pcbi549rpk5wh6-nixgate-vec-top` has the hash part
//! `6dyjazmc27x71a77v1pcbi549rpk5wh6` (20 bytes as nix32; the key of `<hash>.narinfo`) and the
//! name `nixgate-vec-top`. Names use `[A-Za-z0-9+-._?=]`, do not start with `.`, and are at
//! most 211 characters (`src/libstore/path.cc`), so a valid name can never be `..`.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use super::nix32;

/// The 20-byte hash part of a store path.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StorePathHash(pub [u8; 20]);

/// Why a store path (or part of one) was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StorePathError {
    #[error("store path hash {0:?} is not 32 nix32 characters")]
    Hash(String),
    #[error("store path name {0:?} is invalid")]
    Name(String),
    #[error("{0:?} is not inside the store directory {1:?}")]
    NotInStore(String, String),
}

impl StorePathHash {
    /// Length of the nix32 form.
    pub const NIX32_LEN: usize = 32;
}

impl FromStr for StorePathHash {
    type Err = StorePathError;

    fn from_str(s: &str) -> Result<Self, StorePathError> {
        nix32::decode::<20>(s)
            .map(StorePathHash)
            .map_err(|_| StorePathError::Hash(s.to_owned()))
    }
}

impl fmt::Display for StorePathHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&nix32::encode(&self.0))
    }
}

impl fmt::Debug for StorePathHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// True when `name` is a valid store path name.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 211
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"+-._?=".contains(&c))
}

/// A store path basename `<hash>-<name>`, as in narinfo `References` and `log/<drv>` URLs.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct StorePathBase {
    pub hash: StorePathHash,
    text: String,
}

impl StorePathBase {
    /// The basename as text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Parses a full path `<store_dir>/<hash>-<name>`.
    pub fn from_full(path: &str, store_dir: &str) -> Result<Self, StorePathError> {
        path.strip_prefix(store_dir)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| StorePathError::NotInStore(path.to_owned(), store_dir.to_owned()))?
            .parse()
    }
}

impl FromStr for StorePathBase {
    type Err = StorePathError;

    fn from_str(s: &str) -> Result<Self, StorePathError> {
        let (h, name) = s
            .split_at_checked(StorePathHash::NIX32_LEN)
            .ok_or_else(|| StorePathError::Hash(s.to_owned()))?;
        let hash = h.parse()?;
        name.strip_prefix('-')
            .filter(|n| is_valid_name(n))
            .ok_or_else(|| StorePathError::Name(s.to_owned()))?;
        Ok(StorePathBase {
            hash,
            text: s.to_owned(),
        })
    }
}

impl fmt::Display for StorePathBase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_real_paths() {
        let p = StorePathBase::from_full(
            "/nix/store/6dyjazmc27x71a77v1pcbi549rpk5wh6-nixgate-vec-top",
            "/nix/store",
        )
        .unwrap();
        assert_eq!(p.hash.to_string(), "6dyjazmc27x71a77v1pcbi549rpk5wh6");
        assert_eq!(
            p.as_str(),
            "6dyjazmc27x71a77v1pcbi549rpk5wh6-nixgate-vec-top"
        );
    }

    #[test]
    fn rejects_bad_names_and_hashes() {
        for bad in [
            "6dyjazmc27x71a77v1pcbi549rpk5wh6-..",
            "6dyjazmc27x71a77v1pcbi549rpk5wh6-",
            "6dyjazmc27x71a77v1pcbi549rpk5wh6-a/b",
            "6dyjazmc27x71a77v1pcbi549rpk5wh6",
            "edyjazmc27x71a77v1pcbi549rpk5wh6-x",
            "../etc/passwd",
            "",
        ] {
            assert!(bad.parse::<StorePathBase>().is_err(), "{bad}");
        }
        assert!(
            StorePathBase::from_full("/tmp/6dyjazmc27x71a77v1pcbi549rpk5wh6-x", "/nix/store")
                .is_err()
        );
    }
}
