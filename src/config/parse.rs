//! Parsing single setting values into typed targets: upstream, peer and tracker URLs, the
//! `--peers-dns` name, nix.conf-style lists, and sizes/durations with the flag in the error.

use url::Url;

use super::ConfigError;
use crate::peers::dns::DnsPeers;
use crate::redact::redact_text;
use crate::units::UnitError;

/// Names the flag in a size or duration error.
pub(super) fn unit<T>(flag: &'static str, r: Result<T, UnitError>) -> Result<T, ConfigError> {
    r.map_err(|source| ConfigError::Unit { flag, source })
}

/// Splits list values that came as one string (`"a b"` as in nix.conf, or `a,b` in env).
pub(super) fn flatten(list: Vec<String>) -> Vec<String> {
    list.iter()
        .flat_map(|s| s.split([' ', ',', '\n', '\t']))
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Parses every item of a (flattened) list.
pub(super) fn each<T>(
    list: Vec<String>,
    parse: impl Fn(&str) -> Result<T, ConfigError>,
) -> Result<Vec<T>, ConfigError> {
    flatten(list).iter().map(|s| parse(s)).collect()
}

/// An upstream cache's base URL: http(s), no query or fragment, trailing slash.
pub(super) fn parse_upstream(s: &str) -> Result<Url, ConfigError> {
    // The URL as typed may carry a password: errors show it redacted.
    let err = |reason: &str| ConfigError::Upstream {
        url: redact_text(s),
        reason: reason.to_owned(),
    };
    let mut url = Url::parse(s).map_err(|e| err(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(err("only http:// and https:// upstreams are supported"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(err("must not have a query or fragment"));
    }
    // Nix resolves narinfo URLs against the cache URL with a trailing slash.
    if !url.path().ends_with('/') {
        let p = format!("{}/", url.path());
        url.set_path(&p);
    }
    Ok(url)
}

/// A peer appliance's base URL: http(s), no query, trailing slash.
pub(super) fn parse_peer(s: &str) -> Result<Url, ConfigError> {
    parse_upstream(s).map_err(|e| match e {
        ConfigError::Upstream { url, reason } => ConfigError::Peer { url, reason },
        other => other,
    })
}

/// `NAME[:PORT]` with DNS-label rules; the port defaults to 8080.
pub(super) fn parse_peers_dns(s: &str) -> Result<DnsPeers, ConfigError> {
    let bad = || ConfigError::PeersDns(s.to_owned());
    let (name, port) = match s.rsplit_once(':') {
        Some((n, p)) => (n, p.parse::<u16>().map_err(|_| bad())?),
        None => (s, 8080),
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if port == 0 || name.len() > 253 || !name.trim_end_matches('.').split('.').all(label_ok) {
        return Err(bad());
    }
    Ok(DnsPeers {
        name: name.to_owned(),
        port,
    })
}

/// A BitTorrent tracker announce URL: http, https or udp, with a host.
pub(super) fn parse_tracker(s: &str) -> Result<Url, ConfigError> {
    let err = |reason: String| ConfigError::Tracker {
        url: redact_text(s),
        reason,
    };
    let url = Url::parse(s).map_err(|e| err(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https" | "udp") || url.host().is_none() {
        return Err(err(
            "trackers are http://, https:// or udp://HOST:PORT".into()
        ));
    }
    Ok(url)
}
