//! The one way a URL is displayed: with its userinfo replaced by `***` (`https://***@host/`)
//! and its query by `?***`, so that credentials an operator wrote into `--upstream` or `--peer`
//! (`https://user:pass@host/`) never reach a log line, a config error, `check-config`, a status
//! page or a metric label. Nix accepts userinfo in substituter URLs, so operators copy such
//! URLs here; the password is theirs, not the log reader's.

use std::fmt;

use url::Url;

/// Displays a URL with its secrets redacted: `tracing::info!(url = %Redacted(&u))`.
#[derive(Debug, Clone, Copy)]
pub struct Redacted<'a>(pub &'a Url);

impl fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let u = self.0;
        let secret = !u.username().is_empty() || u.password().is_some();
        if !secret && u.query().is_none() && u.fragment().is_none() {
            return f.write_str(u.as_str());
        }
        let mut shown = without_userinfo(u);
        shown.set_query(None);
        shown.set_fragment(None);
        let text = shown.as_str();
        match text.split_once("://") {
            Some((scheme, rest)) if secret => write!(f, "{scheme}://***@{rest}")?,
            _ => f.write_str(text)?,
        }
        if u.query().is_some() {
            f.write_str("?***")?;
        }
        Ok(())
    }
}

/// `u` without its userinfo (the rest as is).
pub fn without_userinfo(u: &Url) -> Url {
    let mut bare = u.clone();
    // Cannot fail for the http(s) URLs that carry userinfo (they have a host).
    let _ = bare.set_password(None);
    let _ = bare.set_username("");
    bare
}

/// `u` as text, its secrets redacted (see [`Redacted`]).
pub fn redact(u: &Url) -> String {
    Redacted(u).to_string()
}

/// A URL as the operator typed it, redacted for an error message: parsed and shown as
/// [`Redacted`] when it parses; otherwise everything between `://` and the last `@` of the
/// authority is replaced, so that even a malformed URL (`ftp://u:p@[bad/`) loses its secret.
pub fn redact_text(s: &str) -> String {
    if let Ok(u) = Url::parse(s) {
        return redact(&u);
    }
    let Some((scheme, rest)) = s.split_once("://") else {
        return s.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***{}", &rest[at..]),
        None => s.to_owned(),
    }
}

/// Hides the userinfo of every `scheme://user:pass@host` in free text (a parser's message
/// that quotes a value, say): each becomes `scheme://***@host`.
pub fn redact_all(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| "/?#\"' ".contains(c) || c.is_whitespace())
            .unwrap_or(tail.len());
        match tail[..end].rfind('@') {
            Some(at) => {
                out.push_str("***");
                rest = &tail[at..];
            }
            None => rest = tail,
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> String {
        redact(&Url::parse(s).unwrap())
    }

    #[test]
    fn userinfo_and_query_are_hidden() {
        assert_eq!(
            r("https://ci:s3cret@cache.example/nix/"),
            "https://***@cache.example/nix/"
        );
        assert_eq!(
            r("http://tokenonly@10.0.0.7:8080/"),
            "http://***@10.0.0.7:8080/"
        );
        assert_eq!(r("http://:pw@h/"), "http://***@h/");
        assert_eq!(r("https://h/nar/x?sig=abc#f"), "https://h/nar/x?***");
        assert_eq!(r("https://cache.nixos.org/"), "https://cache.nixos.org/");
    }

    #[test]
    fn unparseable_text_loses_its_userinfo_too() {
        assert_eq!(redact_text("ftp://u:p@host/x"), "ftp://***@host/x");
        assert_eq!(redact_text("http://u:p@[bad/x@y"), "http://***@[bad/x@y");
        assert_eq!(redact_text("not a url"), "not a url");
        assert_eq!(redact_text("http://h:notaport/"), "http://h:notaport/");
    }

    #[test]
    fn every_url_in_a_text_is_redacted() {
        assert_eq!(
            redact_all(r#"invalid type: string "https://ci:s3cret@h/x", and ftp://a@b c://d"#),
            r#"invalid type: string "https://***@h/x", and ftp://***@b c://d"#
        );
        assert_eq!(redact_all("no url"), "no url");
    }
}
