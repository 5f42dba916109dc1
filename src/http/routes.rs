//! Request paths, validated before any disk or network access. Only exact shapes are
//! accepted (nix32 hashes, known extensions, valid store-path names), so no path that reaches
//! a handler can name anything outside the cache: `..`, `/`, `%` never survive parsing.

use crate::metrics::Route;
use crate::nix::compression::Compression;
use crate::nix::hash::Sha256;
use crate::nix::store_path::{is_valid_name, StorePathBase, StorePathHash};

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    CacheInfo,
    NarInfo(StorePathHash),
    Nar {
        file_hash: Sha256,
        ext: &'static str,
    },
    Listing(StorePathHash),
    Log(StorePathBase),
    /// `realisations/<sha256:hex>!<output>.doi`, kept as the validated relative path.
    Realisation(String),
    Health,
    Ready,
    Metrics,
    /// `/_p2p/v1/peers`: the current peer set (JSON).
    Peers,
    /// `/_p2p/v1/digest`: a Bloom filter of what this appliance holds.
    Digest,
    /// `/_p2p/v1/torrent/<FileHash nix32>`: the `.torrent` of a held NAR.
    Torrent(Sha256),
    /// `/`: the status page (HTML).
    StatusPage,
    /// `/_status/v1`: the status page's data (JSON).
    StatusJson,
    /// A path of a known kind that is malformed (400).
    Invalid(&'static str),
    NotFound,
}

impl Target {
    /// The metrics label.
    pub fn route(&self) -> Route {
        match self {
            Target::CacheInfo => Route::CacheInfo,
            Target::NarInfo(_) => Route::NarInfo,
            Target::Nar { .. } => Route::Nar,
            Target::Listing(_) => Route::Listing,
            Target::Log(_) => Route::Log,
            Target::Realisation(_) => Route::Realisation,
            Target::Health => Route::Health,
            Target::Ready => Route::Ready,
            Target::Metrics => Route::Metrics,
            Target::Peers => Route::Peers,
            Target::Torrent(_) => Route::Torrent,
            Target::Digest => Route::Digest,
            Target::StatusPage | Target::StatusJson => Route::Status,
            Target::Invalid(_) | Target::NotFound => Route::Other,
        }
    }
}

fn hash_file(name: &str, suffix: &str, make: fn(StorePathHash) -> Target) -> Option<Target> {
    let h = name.strip_suffix(suffix)?;
    Some(h.parse().map(make).unwrap_or(Target::Invalid(
        "store path hash must be 32 nix32 characters",
    )))
}

fn nar(name: &str) -> Target {
    let Some((fh, ext)) = name.split_once(".nar") else {
        return Target::Invalid("NAR file name must be <nix32 sha256>.nar[.ext]");
    };
    match (Sha256::from_nix32(fh), Compression::known_extension(ext)) {
        (Ok(file_hash), Some(ext)) => Target::Nar { file_hash, ext },
        _ => Target::Invalid("NAR file name must be <nix32 sha256>.nar[.ext]"),
    }
}

fn realisation(rest: &str) -> Target {
    let ok = rest
        .strip_suffix(".doi")
        .and_then(|r| r.strip_prefix("sha256:"))
        .and_then(|r| r.split_once('!'))
        .is_some_and(|(hex, out)| {
            hex.len() == 64 && hex.bytes().all(|c| c.is_ascii_hexdigit()) && is_valid_name(out)
        });
    if ok {
        Target::Realisation(format!("realisations/{rest}"))
    } else {
        Target::Invalid("realisation must be sha256:<hex>!<output>.doi")
    }
}

/// Parses the path of a request URI (without query).
pub fn parse(path: &str) -> Target {
    let Some(p) = path.strip_prefix('/') else {
        return Target::NotFound;
    };
    match p {
        "" => return Target::StatusPage,
        "_status/v1" => return Target::StatusJson,
        "nix-cache-info" => return Target::CacheInfo,
        "healthz" => return Target::Health,
        "readyz" => return Target::Ready,
        "metrics" => return Target::Metrics,
        "_p2p/v1/peers" => return Target::Peers,
        "_p2p/v1/digest" => return Target::Digest,
        _ => {}
    }
    if let Some(fh) = p.strip_prefix("_p2p/v1/torrent/") {
        return Sha256::from_nix32(fh)
            .map(Target::Torrent)
            .unwrap_or(Target::Invalid("torrent name must be a nix32 FileHash"));
    }
    if let Some(name) = p.strip_prefix("nar/") {
        return nar(name);
    }
    if let Some(name) = p.strip_prefix("log/") {
        return name
            .parse()
            .map(Target::Log)
            .unwrap_or(Target::Invalid("log name must be a store path basename"));
    }
    if let Some(rest) = p.strip_prefix("realisations/") {
        return realisation(rest);
    }
    if !p.contains('/') && p.len() > StorePathHash::NIX32_LEN {
        if let Some(t) = hash_file(p, ".narinfo", Target::NarInfo)
            .or_else(|| hash_file(p, ".ls", Target::Listing))
        {
            return t;
        }
    }
    Target::NotFound
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_protocol_paths() {
        assert_eq!(parse("/nix-cache-info"), Target::CacheInfo);
        assert!(matches!(
            parse("/6dyjazmc27x71a77v1pcbi549rpk5wh6.narinfo"),
            Target::NarInfo(_)
        ));
        assert!(matches!(
            parse("/6dyjazmc27x71a77v1pcbi549rpk5wh6.ls"),
            Target::Listing(_)
        ));
        assert!(matches!(
            parse("/nar/1a1bsj6a88svx7w9zf6k8ly3sinibliwr96pmhyqnxvslaid8s5j.nar.xz"),
            Target::Nar { ext: ".xz", .. }
        ));
        assert!(matches!(
            parse("/nar/1a1bsj6a88svx7w9zf6k8ly3sinibliwr96pmhyqnxvslaid8s5j.nar"),
            Target::Nar { ext: "", .. }
        ));
        assert!(matches!(
            parse("/log/jaq594wmsn2km90rbrzf4ln22igz2kim-nixgate-vec-top.drv"),
            Target::Log(_)
        ));
        let r = format!("/realisations/sha256:{}!out.doi", "ab".repeat(32));
        assert!(matches!(parse(&r), Target::Realisation(_)));
        assert_eq!(parse("/"), Target::StatusPage);
        assert_eq!(parse("/_status/v1"), Target::StatusJson);
    }

    #[test]
    fn rejects_traversal_and_junk() {
        for p in [
            "/../../etc/passwd",
            "/nar/../../etc/passwd",
            "/nar/..%2f..%2fetc%2fpasswd.nar",
            "/%2e%2e/%2e%2e/etc/passwd",
            "/log/../../etc/passwd",
            "/log/6dyjazmc27x71a77v1pcbi549rpk5wh6-..",
            "/realisations/../../x.doi",
            "/6dyjazmc27x71a77v1pcbi549rpk5wh6.narinfo/..",
            "/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee.narinfo",
            "/nar/1a1bsj6a88svx7w9zf6k8ly3sinibliwr96pmhyqnxvslaid8s5j.nar.gz",
            "",
            "//",
        ] {
            assert!(
                matches!(parse(p), Target::Invalid(_) | Target::NotFound),
                "{p} -> {:?}",
                parse(p)
            );
        }
    }
}
