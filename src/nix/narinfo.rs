//! The `.narinfo` format (`src/libstore/nar-info.cc`), parsed and printed without I/O.
//!
//! A real one, written by `nix copy --to file://…?secret-key=…` (Nix 2.8):
//!
//! ```text
//! StorePath: /nix/store/6dyjazmc27x71a77v1pcbi549rpk5wh6-nixgate-vec-top
//! URL: nar/1a1bsj6a88svx7w9zf6k8ly3sinibliwr96pmhyqnxvslaid8s5j.nar.xz
//! Compression: xz
//! FileHash: sha256:1a1bsj6a88svx7w9zf6k8ly3sinibliwr96pmhyqnxvslaid8s5j
//! FileSize: 240
//! NarHash: sha256:1hi53fsh0220rwi8755la7a02bwc1j3bjg87aaccc8nnp9hxrm3y
//! NarSize: 536
//! References: 026h72wxqd39cbm2fdqc8zpwg9zm41c8-nixgate-vec-dep
//! Deriver: jaq594wmsn2km90rbrzf4ln22igz2kim-nixgate-vec-top.drv
//! Sig: test-vector-1:GjYKk58x+PG4uxAotLzdFr8Xb2CajSkVcEJk+v002C+7l+PiiWjiMDVq8hV9lNI0fntuyShY1/WCg5yw/tIBAQ==
//! ```
//!
//! The signatures cover only [`NarInfo::fingerprint`]: StorePath, NarHash, NarSize and
//! References. URL, Compression, FileHash and FileSize are *not* signed, which is why nixgate
//! may rewrite `URL` and must verify the file it fetches against `FileHash`/`FileSize` itself.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use super::hash::Sha256;
use super::store_path::{StorePathBase, StorePathError};

/// Narinfos larger than this are refused (real ones are a few KiB even with many references).
pub const MAX_NARINFO_BYTES: usize = 1 << 20;

/// Narinfos with more `Sig:` lines than this are refused as malformed: each one may cost an
/// ed25519 verification on an async worker (10,000 of them took ~400 ms), and real narinfos
/// carry one or two.
pub const MAX_SIGS: usize = 16;

/// A parsed narinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarInfo {
    /// The full store path as written (`/nix/store/<hash>-<name>`).
    pub store_path: String,
    /// The parsed basename of `store_path`.
    pub base: StorePathBase,
    pub url: String,
    /// `None` when the field was absent (which means bzip2).
    pub compression: Option<String>,
    pub file_hash: Option<Sha256>,
    pub file_size: Option<u64>,
    pub nar_hash: Sha256,
    pub nar_size: u64,
    /// Basenames, as written.
    pub references: Vec<StorePathBase>,
    pub deriver: Option<String>,
    /// `keyname:base64sig`, in file order.
    pub sigs: Vec<String>,
    pub ca: Option<String>,
}

/// Why a narinfo was rejected ("NAR info file is corrupt" in Nix's words).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NarInfoError {
    #[error("narinfo is not UTF-8")]
    Utf8,
    #[error("narinfo line {0:?} has no `: ` separator")]
    Line(String),
    #[error("narinfo lacks the required field {0}")]
    Missing(&'static str),
    #[error("narinfo field {0} appears twice")]
    Duplicate(&'static str),
    #[error("narinfo field {field} is malformed: {value:?}")]
    Field { field: &'static str, value: String },
    #[error("narinfo store path: {0}")]
    StorePath(#[from] StorePathError),
}

fn num(field: &'static str, v: &str) -> Result<u64, NarInfoError> {
    v.parse().map_err(|_| NarInfoError::Field {
        field,
        value: v.to_owned(),
    })
}

fn hash(field: &'static str, v: &str) -> Result<Sha256, NarInfoError> {
    v.parse().map_err(|_| NarInfoError::Field {
        field,
        value: v.to_owned(),
    })
}

fn set_once<T>(slot: &mut Option<T>, field: &'static str, v: T) -> Result<(), NarInfoError> {
    if slot.replace(v).is_some() {
        return Err(NarInfoError::Duplicate(field));
    }
    Ok(())
}

#[derive(Default)]
struct Fields {
    store_path: Option<String>,
    url: Option<String>,
    compression: Option<String>,
    file_hash: Option<Sha256>,
    file_size: Option<u64>,
    nar_hash: Option<Sha256>,
    nar_size: Option<u64>,
    references: Option<Vec<StorePathBase>>,
    deriver: Option<String>,
    sigs: Vec<String>,
    ca: Option<String>,
}

impl Fields {
    fn take(&mut self, key: &str, v: &str) -> Result<(), NarInfoError> {
        match key {
            "StorePath" => set_once(&mut self.store_path, "StorePath", v.to_owned()),
            "URL" => set_once(&mut self.url, "URL", v.to_owned()),
            "Compression" => set_once(&mut self.compression, "Compression", v.to_owned()),
            "FileHash" => set_once(&mut self.file_hash, "FileHash", hash("FileHash", v)?),
            "FileSize" => set_once(&mut self.file_size, "FileSize", num("FileSize", v)?),
            "NarHash" => set_once(&mut self.nar_hash, "NarHash", hash("NarHash", v)?),
            "NarSize" => set_once(&mut self.nar_size, "NarSize", num("NarSize", v)?),
            "References" => {
                let refs = v
                    .split(' ')
                    .filter(|r| !r.is_empty())
                    .map(str::parse)
                    .collect::<Result<Vec<_>, _>>()?;
                set_once(&mut self.references, "References", refs)
            }
            "Deriver" if v != "unknown-deriver" => {
                set_once(&mut self.deriver, "Deriver", v.to_owned())
            }
            "Sig" if self.sigs.len() >= MAX_SIGS => Err(NarInfoError::Field {
                field: "Sig",
                value: format!("more than {MAX_SIGS} signatures"),
            }),
            "Sig" => {
                self.sigs.push(v.to_owned());
                Ok(())
            }
            "CA" => set_once(&mut self.ca, "CA", v.to_owned()),
            // Nix ignores fields it does not know; so do we (they are not re-emitted).
            _ => Ok(()),
        }
    }
}

impl NarInfo {
    /// Parses a narinfo whose store paths live under `store_dir` (normally `/nix/store`).
    pub fn parse(text: &str, store_dir: &str) -> Result<Self, NarInfoError> {
        let mut f = Fields::default();
        for line in text.lines().filter(|l| !l.is_empty()) {
            // Nix splits at the first ':' and takes the value from two characters later.
            let (key, rest) = line
                .split_once(':')
                .ok_or_else(|| NarInfoError::Line(line.to_owned()))?;
            f.take(key, rest.strip_prefix(' ').unwrap_or(rest))?;
        }
        let store_path = f.store_path.ok_or(NarInfoError::Missing("StorePath"))?;
        let base = StorePathBase::from_full(&store_path, store_dir)?;
        let nar_size = f.nar_size.ok_or(NarInfoError::Missing("NarSize"))?;
        if nar_size == 0 {
            return Err(NarInfoError::Field {
                field: "NarSize",
                value: "0".into(),
            });
        }
        Ok(NarInfo {
            store_path,
            base,
            url: f.url.ok_or(NarInfoError::Missing("URL"))?,
            compression: f.compression,
            file_hash: f.file_hash,
            file_size: f.file_size,
            nar_hash: f.nar_hash.ok_or(NarInfoError::Missing("NarHash"))?,
            nar_size,
            references: f.references.unwrap_or_default(),
            deriver: f.deriver,
            sigs: f.sigs,
            ca: f.ca,
        })
    }

    /// The bytes the `Sig:` lines sign (`ValidPathInfo::fingerprint`, `path-info.cc`):
    /// `1;<path>;<narHash nix32>;<narSize>;<sorted full reference paths, comma-separated>`.
    pub fn fingerprint(&self, store_dir: &str) -> String {
        let mut refs: Vec<&str> = self.references.iter().map(|r| r.as_str()).collect();
        // StorePathSet is ordered by basename; the shared prefix keeps that order.
        refs.sort_unstable();
        let refs: Vec<String> = refs.iter().map(|r| format!("{store_dir}/{r}")).collect();
        format!(
            "1;{};{};{};{}",
            self.store_path,
            self.nar_hash,
            self.nar_size,
            refs.join(",")
        )
    }
}

impl FromStr for NarInfo {
    type Err = NarInfoError;

    /// Parses with the default store directory `/nix/store`.
    fn from_str(s: &str) -> Result<Self, NarInfoError> {
        Self::parse(s, super::STORE_DIR)
    }
}

impl fmt::Display for NarInfo {
    /// Prints in Nix's own field order (`NarInfo::to_string`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "StorePath: {}", self.store_path)?;
        writeln!(f, "URL: {}", self.url)?;
        if let Some(c) = &self.compression {
            writeln!(f, "Compression: {c}")?;
        }
        if let Some(h) = &self.file_hash {
            writeln!(f, "FileHash: {h}")?;
        }
        if let Some(s) = self.file_size {
            writeln!(f, "FileSize: {s}")?;
        }
        writeln!(f, "NarHash: {}", self.nar_hash)?;
        writeln!(f, "NarSize: {}", self.nar_size)?;
        let refs: Vec<&str> = self.references.iter().map(|r| r.as_str()).collect();
        writeln!(f, "References: {}", refs.join(" "))?;
        if let Some(d) = &self.deriver {
            writeln!(f, "Deriver: {d}")?;
        }
        for s in &self.sigs {
            writeln!(f, "Sig: {s}")?;
        }
        if let Some(ca) = &self.ca {
            writeln!(f, "CA: {ca}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Written by real `nix copy` (Nix 2.8), signed with [`VECTOR_PUBLIC_KEY`].
    pub const VECTOR: &str = "StorePath: /nix/store/6dyjazmc27x71a77v1pcbi549rpk5wh6-nixgate-vec-top
URL: nar/1a1bsj6a88svx7w9zf6k8ly3sinibliwr96pmhyqnxvslaid8s5j.nar.xz
Compression: xz
FileHash: sha256:1a1bsj6a88svx7w9zf6k8ly3sinibliwr96pmhyqnxvslaid8s5j
FileSize: 240
NarHash: sha256:1hi53fsh0220rwi8755la7a02bwc1j3bjg87aaccc8nnp9hxrm3y
NarSize: 536
References: 026h72wxqd39cbm2fdqc8zpwg9zm41c8-nixgate-vec-dep
Deriver: jaq594wmsn2km90rbrzf4ln22igz2kim-nixgate-vec-top.drv
Sig: test-vector-1:GjYKk58x+PG4uxAotLzdFr8Xb2CajSkVcEJk+v002C+7l+PiiWjiMDVq8hV9lNI0fntuyShY1/WCg5yw/tIBAQ==
";
    /// `nix key convert-secret-to-public` of the key that signed [`VECTOR`].
    pub const VECTOR_PUBLIC_KEY: &str =
        "test-vector-1:Zmbm7swbfTGLZ5au734IhNPRtS/9rmoZ0SMykmmtRzM=";
    /// The secret key itself (`nix key generate-secret --key-name test-vector-1`).
    pub const VECTOR_SECRET_KEY: &str = "test-vector-1:SH5eFOxEUkbBjzbRTRnNBQDag7MqerQHPBtd65NIAgpmZubuzBt9MYtnlq7vfgiE09G1L/2uahnRIzKSaa1HMw==";

    #[test]
    fn round_trips_real_narinfo() {
        let ni: NarInfo = VECTOR.parse().unwrap();
        assert_eq!(ni.to_string(), VECTOR);
        assert_eq!(ni.base.hash.to_string(), "6dyjazmc27x71a77v1pcbi549rpk5wh6");
        assert_eq!(ni.file_size, Some(240));
        assert_eq!(ni.references.len(), 1);
    }

    #[test]
    fn fingerprint_matches_nix() {
        let ni: NarInfo = VECTOR.parse().unwrap();
        assert_eq!(
            ni.fingerprint("/nix/store"),
            "1;/nix/store/6dyjazmc27x71a77v1pcbi549rpk5wh6-nixgate-vec-top;\
             sha256:1hi53fsh0220rwi8755la7a02bwc1j3bjg87aaccc8nnp9hxrm3y;536;\
             /nix/store/026h72wxqd39cbm2fdqc8zpwg9zm41c8-nixgate-vec-dep"
        );
    }

    #[test]
    fn empty_references_and_unknown_deriver() {
        let text = VECTOR
            .replace(
                "References: 026h72wxqd39cbm2fdqc8zpwg9zm41c8-nixgate-vec-dep",
                "References: ",
            )
            .replace(
                "Deriver: jaq594wmsn2km90rbrzf4ln22igz2kim-nixgate-vec-top.drv",
                "Deriver: unknown-deriver",
            );
        let ni: NarInfo = text.parse().unwrap();
        assert!(ni.references.is_empty() && ni.deriver.is_none());
        assert!(ni.fingerprint("/nix/store").ends_with(";536;"));
    }

    #[test]
    fn rejects_corrupt() {
        let cases: [(&str, &str); 6] = [
            ("NarSize: 536\n", ""),
            ("NarSize: 536", "NarSize: 0"),
            ("NarSize: 536", "NarSize: x"),
            ("URL: nar", "URL: nar\nURL: nar"),
            ("StorePath: /nix/store/", "StorePath: /etc/"),
            ("References: 026h", "References: ../../026h"),
        ];
        for (from, to) in cases {
            let text = VECTOR.replacen(from, to, 1);
            assert!(
                text.parse::<NarInfo>().is_err(),
                "accepted {from:?} -> {to:?}"
            );
        }
        assert!("no separator".parse::<NarInfo>().is_err());
    }

    #[test]
    fn refuses_more_than_max_sigs() {
        let sig = VECTOR.lines().find(|l| l.starts_with("Sig:")).unwrap();
        let with = |n: usize| format!("{VECTOR}{}", format!("{sig}\n").repeat(n - 1));
        assert_eq!(
            with(MAX_SIGS).parse::<NarInfo>().unwrap().sigs.len(),
            MAX_SIGS
        );
        assert!(matches!(
            with(MAX_SIGS + 1).parse::<NarInfo>(),
            Err(NarInfoError::Field { field: "Sig", .. })
        ));
        // The 1 MiB flood that cost ~400 ms of verification is refused at parse time.
        assert!(with(10_000).parse::<NarInfo>().is_err());
    }
}
