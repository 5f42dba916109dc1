//! Accepting a narinfo (pure): the checks every narinfo passes whatever its source (it is
//! for the requested path, it carries a trusted signature, it names its file's FileHash and
//! FileSize), the NAR URL its source may choose (`nar_url`), and the stored form:
//! `<NAR URL>\n<narinfo as served>`, the URL rewritten to nixgate's own NAR name.

use bytes::Bytes;
use thiserror::Error;
use url::Url;

use super::super::nar_url::{self, UrlRefused};
use crate::nix::compression::Compression;
use crate::nix::narinfo::{NarInfo, NarInfoError};
use crate::nix::store_path::StorePathHash;
use crate::nix::STORE_DIR;

/// Why an upstream narinfo was refused (it is then treated as absent, and counted).
#[derive(Debug, Error)]
pub enum Rejected {
    #[error("malformed: {0}")]
    Malformed(#[from] NarInfoError),
    #[error("is for store path {0}, not the requested hash")]
    WrongPath(String),
    /// Signed by none of the trusted keys; the key names it does carry (`none` when unsigned).
    #[error("no signature by a trusted key (signed by: {0}; trusted: --trusted-public-key)")]
    Untrusted(String),
    #[error("lacks FileHash/FileSize, so the NAR could not be verified")]
    Unverifiable,
    /// Its NAR could never be checked against NarHash: absent, so Nix moves on cleanly.
    #[error("names Compression {0:?}, which nixgate cannot decompress to check NarHash")]
    Uncheckable(Compression),
    #[error(transparent)]
    Contradicts(#[from] super::super::provenance::Contradiction),
}

/// Where a narinfo came from, which decides what its (unsigned) `URL` field may do.
#[derive(Clone, Copy)]
pub(crate) enum NarAt<'a> {
    /// From the upstream at `base`: the field is followed when it stays within `origins`
    /// (the configured upstreams' bases; see `nar_url`).
    Upstream {
        base: &'a Url,
        origins: &'a [&'a Url],
    },
    /// From a peer or fleet member: the field is ignored, the NAR is refetched from the
    /// standard location under this (the first upstream's) base.
    Standard(&'a Url),
}

/// A narinfo that passed: its FileHash, the file to store, and why its `URL` was not
/// followed, if it was not (the NAR is then refetched from the standard location).
#[derive(Debug)]
pub(crate) struct Accepted {
    pub fh: crate::nix::hash::Sha256,
    pub stored: String,
    pub url_refused: Option<UrlRefused>,
}

/// The served part of a stored narinfo file (after the upstream-URL line).
pub fn served_part(stored: &Bytes) -> Bytes {
    let start = stored.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1);
    stored.slice(start..)
}

/// The upstream NAR URL recorded in a stored narinfo file.
pub fn upstream_url(stored: &[u8]) -> Option<Url> {
    let line = stored.split(|&b| b == b'\n').next()?;
    Url::parse(std::str::from_utf8(line).ok()?).ok()
}

/// Decodes a stored narinfo file into its upstream NAR URL and the narinfo as served.
pub fn parse_stored(stored: &Bytes) -> Option<(Url, NarInfo)> {
    let served = served_part(stored);
    let ni = NarInfo::parse(std::str::from_utf8(&served).ok()?, STORE_DIR).ok()?;
    Some((upstream_url(stored)?, ni))
}

/// The key names of `Sig:` values (`name:base64`), for an operator to compare with their
/// trusted keys; `none` when there is no signature.
fn signers(sigs: &[String]) -> String {
    let names: Vec<&str> = sigs
        .iter()
        .filter_map(|s| s.split_once(':'))
        .map(|(n, _)| n)
        .collect();
    match names.is_empty() {
        true => "none".into(),
        false => names.join(", "),
    }
}

/// Checks a narinfo (from an upstream or a peer) and builds the file to store, with the URL
/// the NAR is fetched (and refetched after eviction) from, as `at` allows.
pub(crate) fn accept(
    h: &StorePathHash,
    at: NarAt<'_>,
    body: &[u8],
    keys: &crate::nix::signature::TrustedKeys,
) -> Result<Accepted, Rejected> {
    let text = std::str::from_utf8(body).map_err(|_| NarInfoError::Utf8)?;
    let mut ni = NarInfo::parse(text, STORE_DIR)?;
    if ni.base.hash != *h {
        return Err(Rejected::WrongPath(ni.store_path));
    }
    if !keys.verifies_any(&ni.fingerprint(STORE_DIR), &ni.sigs) {
        return Err(Rejected::Untrusted(signers(&ni.sigs)));
    }
    let (Some(fh), Some(_)) = (ni.file_hash, ni.file_size) else {
        return Err(Rejected::Unverifiable);
    };
    let compression = Compression::from_field(ni.compression.as_deref());
    if !super::super::decode::supports(compression) {
        return Err(Rejected::Uncheckable(compression));
    }
    let ext = compression.extension();
    let (nar_url, url_refused) = match at {
        NarAt::Upstream { base, origins } => match nar_url::follow(&ni.url, base, origins) {
            Ok(url) => (url, None),
            Err(why) => (nar_url::standard(base, &fh, ext), Some(why)),
        },
        NarAt::Standard(base) => (nar_url::standard(base, &fh, ext), None),
    };
    ni.url = format!("nar/{}.nar{ext}", fh.to_nix32());
    Ok(Accepted {
        fh,
        stored: format!("{nar_url}\n{ni}"),
        url_refused,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nix::narinfo::tests::{VECTOR, VECTOR_PUBLIC_KEY};
    use crate::nix::signature::TrustedKeys;
    use url::Url;

    fn up() -> Url {
        Url::parse("http://127.0.0.1:9/cache/").unwrap()
    }

    fn from_up(base: &Url) -> NarAt<'_> {
        NarAt::Standard(base)
    }

    #[test]
    fn rewrites_url_and_keeps_signature() {
        let keys = TrustedKeys::new(vec![VECTOR_PUBLIC_KEY.parse().unwrap()]);
        let h = "6dyjazmc27x71a77v1pcbi549rpk5wh6".parse().unwrap();
        let base = up();
        let origins = [&base];
        let at = NarAt::Upstream {
            base: &base,
            origins: &origins,
        };
        let Accepted {
            fh,
            stored,
            url_refused,
        } = accept(&h, at, VECTOR.as_bytes(), &keys).unwrap();
        assert_eq!(url_refused, None);
        assert_eq!(
            fh.to_nix32(),
            "1a1bsj6a88svx7w9zf6k8ly3sinibliwr96pmhyqnxvslaid8s5j"
        );
        let stored = Bytes::from(stored);
        assert_eq!(
            upstream_url(&stored).unwrap().as_str(),
            "http://127.0.0.1:9/cache/nar/1a1bsj6a88svx7w9zf6k8ly3sinibliwr96pmhyqnxvslaid8s5j.nar.xz"
        );
        // The served text is the upstream one, byte for byte, but for the relative URL.
        assert_eq!(served_part(&stored), VECTOR.as_bytes());
    }

    #[test]
    fn refuses_untrusted_mismatched_and_unverifiable() {
        let keys = TrustedKeys::new(vec![VECTOR_PUBLIC_KEY.parse().unwrap()]);
        let other = TrustedKeys::new(vec![crate::nix::signature::CACHE_NIXOS_ORG_KEY
            .parse()
            .unwrap()]);
        let h = "6dyjazmc27x71a77v1pcbi549rpk5wh6".parse().unwrap();
        let refused = accept(&h, from_up(&up()), VECTOR.as_bytes(), &other);
        let Err(Rejected::Untrusted(signers)) = refused else {
            panic!("{refused:?}")
        };
        let first = VECTOR
            .lines()
            .find_map(|l| l.strip_prefix("Sig: "))
            .unwrap();
        assert_eq!(
            signers,
            first.split_once(':').unwrap().0,
            "the log names the signer"
        );
        let wrong = "026h72wxqd39cbm2fdqc8zpwg9zm41c8".parse().unwrap();
        assert!(matches!(
            accept(&wrong, from_up(&up()), VECTOR.as_bytes(), &keys),
            Err(Rejected::WrongPath(_))
        ));
        let no_fh = VECTOR.replace(
            "FileHash: sha256:1a1bsj6a88svx7w9zf6k8ly3sinibliwr96pmhyqnxvslaid8s5j\n",
            "",
        );
        assert!(matches!(
            accept(&h, from_up(&up()), no_fh.as_bytes(), &keys),
            Err(Rejected::Unverifiable)
        ));
        let forged = VECTOR.replace("NarSize: 536", "NarSize: 999");
        assert!(matches!(
            accept(&h, from_up(&up()), forged.as_bytes(), &keys),
            Err(Rejected::Untrusted(_))
        ));
    }
}
