//! The upload token check: the token as the Basic password (any user name: Nix sends its
//! netrc's `login` and `password`) or as `Authorization: Bearer TOKEN`, compared in constant
//! time (both sides hashed first, so neither the content nor the length leaks through timing).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use http::{header, HeaderMap};
use sha2::{Digest, Sha256};

use super::settings::UploadToken;

/// The secret a request presents, if any.
fn presented(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.to_owned());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = String::from_utf8(B64.decode(rest).ok()?).ok()?;
        return decoded.split_once(':').map(|(_, pass)| pass.to_owned());
    }
    None
}

/// Equality of two secrets in time independent of their contents and lengths.
fn same(a: &str, b: &str) -> bool {
    let (x, y) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    x.iter()
        .zip(y.iter())
        .fold(0u8, |acc, (p, q)| acc | (p ^ q))
        == 0
}

/// Whether `headers` carry `token`.
pub(super) fn authorized(token: &UploadToken, headers: &HeaderMap) -> bool {
    presented(headers).is_some_and(|p| same(&p, &token.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, v.parse().unwrap());
        h
    }

    #[test]
    fn basic_password_or_bearer() {
        let t = UploadToken("s3cret".into());
        let basic = |s: &str| headers(&format!("Basic {}", B64.encode(s)));
        assert!(authorized(&t, &basic("ci:s3cret")));
        assert!(authorized(&t, &basic("anyone:s3cret")));
        assert!(authorized(&t, &headers("Bearer s3cret")));
        assert!(authorized(&t, &headers("bearer  s3cret ")));
        assert!(!authorized(&t, &basic("ci:wrong")));
        assert!(!authorized(&t, &basic("s3cret:")));
        assert!(!authorized(&t, &basic("s3cret")));
        assert!(!authorized(&t, &headers("Bearer s3cre")));
        assert!(!authorized(&t, &headers("Bearer s3cretx")));
        assert!(!authorized(&t, &headers("Digest s3cret")));
        assert!(!authorized(&t, &HeaderMap::new()));
    }
}
