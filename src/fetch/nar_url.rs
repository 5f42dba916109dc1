//! Where a narinfo's NAR is fetched from. The `URL` field is not covered by the signature
//! (the fingerprint is `1;<StorePath>;<NarHash>;<NarSize>;<References>`,
//! `src/libstore/path-info.cc`), so whoever sent the narinfo chose it. It is followed only
//! when it cannot lead outside what the operator configured:
//!
//! - a relative path under the base of the upstream the narinfo came from, with no scheme,
//!   no `//host`, no `.`/`..` segment, no query or fragment, only the characters Nix's own
//!   writer uses (`nar/<nix32>.nar.xz`);
//! - an absolute `http(s)` URL on the origin of the upstream it came from (no userinfo,
//!   query or fragment): the caller passes that one origin, so a hostile upstream cannot
//!   send the appliance, with another upstream's credentials, to a path that one never
//!   published.
//!
//! Anything else is refused: the NAR is fetched from the standard location
//! `nar/<FileHash>.nar<ext>` under that upstream instead, and the refusal counted. From a
//! peer, a fleet member or the swarm the field is ignored altogether: their NARs come by hash
//! through their own routes, and a refetch goes to the first upstream's standard location.

use thiserror::Error;
use url::Url;

use crate::nix::hash::Sha256;

/// Why a narinfo's `URL` was not followed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UrlRefused {
    #[error("absolute URL on an origin that is not a configured upstream")]
    ForeignOrigin,
    #[error("absolute URL with userinfo, a query or a fragment")]
    Decorated,
    #[error("not an http(s) URL")]
    Scheme,
    #[error("relative URL leaving its base (`/`, `//`, `.` or `..` segments)")]
    Escapes,
    #[error("characters Nix never writes in a NAR URL")]
    Characters,
}

/// The standard location of a NAR under `base`: `nar/<FileHash>.nar<ext>`.
pub fn standard(base: &Url, fh: &Sha256, ext: &str) -> Url {
    base.join(&format!("nar/{}.nar{ext}", fh.to_nix32()))
        .expect("nix32 and extensions are URL-safe")
}

/// The NAR URL named by `field` in a narinfo from the upstream at `base`, when it stays
/// within `origins` (the configured upstreams' bases).
pub fn follow(field: &str, base: &Url, origins: &[&Url]) -> Result<Url, UrlRefused> {
    match Url::parse(field) {
        Ok(abs) => absolute(abs, origins),
        Err(url::ParseError::RelativeUrlWithoutBase) => relative(field, base),
        Err(_) => Err(UrlRefused::Characters),
    }
}

fn absolute(url: Url, origins: &[&Url]) -> Result<Url, UrlRefused> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(UrlRefused::Scheme);
    }
    let decorated = !url.username().is_empty()
        || url.password().is_some()
        || url.query().is_some()
        || url.fragment().is_some();
    if decorated {
        return Err(UrlRefused::Decorated);
    }
    if !origins.iter().any(|o| o.origin() == url.origin()) {
        return Err(UrlRefused::ForeignOrigin);
    }
    Ok(url)
}

fn relative(field: &str, base: &Url) -> Result<Url, UrlRefused> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "._~+-/".contains(c);
    if field.is_empty() || !field.chars().all(allowed) {
        return Err(UrlRefused::Characters);
    }
    let escapes = field
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..");
    if escapes {
        return Err(UrlRefused::Escapes);
    }
    base.join(field).map_err(|_| UrlRefused::Characters)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Url {
        Url::parse("http://127.0.0.1:9/cache/").unwrap()
    }

    #[test]
    fn relative_urls_stay_under_their_base() {
        let b = base();
        let got = follow("nar/1a1b.nar.xz", &b, &[&b]).unwrap();
        assert_eq!(got.as_str(), "http://127.0.0.1:9/cache/nar/1a1b.nar.xz");
        for (field, why) in [
            ("//127.0.0.2/x", UrlRefused::Escapes),
            ("/etc/passwd", UrlRefused::Escapes),
            ("../../x", UrlRefused::Escapes),
            ("nar/../../x", UrlRefused::Escapes),
            ("nar/./x", UrlRefused::Escapes),
            ("nar//x", UrlRefused::Escapes),
            ("nar/x?y=1", UrlRefused::Characters),
            ("nar/x#y", UrlRefused::Characters),
            ("nar/%2e%2e/x", UrlRefused::Characters),
            ("nar\\..\\x", UrlRefused::Characters),
            ("", UrlRefused::Characters),
        ] {
            assert_eq!(follow(field, &b, &[&b]), Err(why), "{field}");
        }
    }

    #[test]
    fn absolute_urls_only_on_a_configured_origin() {
        let b = base();
        let other = Url::parse("https://127.0.0.3/").unwrap();
        let origins = [&b, &other];
        let same = follow("http://127.0.0.1:9/elsewhere/nar/x.nar", &b, &origins).unwrap();
        assert_eq!(same.as_str(), "http://127.0.0.1:9/elsewhere/nar/x.nar");
        assert!(follow("https://127.0.0.3/nar/x.nar", &b, &origins).is_ok());
        for (field, why) in [
            ("http://127.0.0.2/internal", UrlRefused::ForeignOrigin),
            ("http://127.0.0.1:10/x", UrlRefused::ForeignOrigin),
            ("https://127.0.0.1:9/x", UrlRefused::ForeignOrigin),
            ("http://u:p@127.0.0.1:9/x", UrlRefused::Decorated),
            ("http://127.0.0.1:9/x?q", UrlRefused::Decorated),
            ("file:///etc/passwd", UrlRefused::Scheme),
            ("gopher://127.0.0.1:9/x", UrlRefused::Scheme),
        ] {
            assert_eq!(follow(field, &b, &origins), Err(why), "{field}");
        }
    }

    #[test]
    fn the_standard_location() {
        let fh = Sha256([0; 32]);
        let url = standard(&base(), &fh, ".xz");
        assert!(url.as_str().starts_with("http://127.0.0.1:9/cache/nar/"));
        assert!(url.as_str().ends_with(".nar.xz"));
    }
}
