//! Upstream credentials from a netrc file (`--netrc-file`), read as Nix reads its
//! `netrc-file`: Nix hands the file to curl, so these are curl's rules. Tokens are separated
//! by white space (a token may be double-quoted, with `\"` and `\\` escapes); `machine HOST`
//! starts an entry and `default` one that matches any host; `login` and `password` fill it;
//! `account` is ignored and `macdef` skips to the next blank line. The first entry, in file
//! order, whose machine equals the host (case-insensitively; never the port) or which is
//! `default`, gives the credentials.
//!
//! Credentials are secrets: [`Netrc`] and [`Credentials`] print only the machine names, and
//! the header they make is marked sensitive, so neither reaches a log.

use std::fmt;
use std::path::Path;

use base64::Engine;
use http::HeaderValue;

/// A login and password for one machine (or any, for `default`).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    login: String,
    password: String,
}

impl Credentials {
    /// The `Authorization: Basic …` value, marked sensitive (never printed by `http`).
    pub fn header(&self) -> HeaderValue {
        let raw = format!("{}:{}", self.login, self.password);
        let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
        let mut v =
            HeaderValue::from_str(&format!("Basic {b64}")).expect("base64 is a valid header value");
        v.set_sensitive(true);
        v
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credentials(<redacted>)")
    }
}

/// One entry: `None` is `default`.
#[derive(Clone, PartialEq, Eq)]
struct Entry {
    machine: Option<String>,
    creds: Credentials,
}

/// The parsed netrc file (empty when there is none).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Netrc {
    entries: Vec<Entry>,
}

impl fmt::Debug for Netrc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let machines: Vec<&str> = self
            .entries
            .iter()
            .map(|e| e.machine.as_deref().unwrap_or("default"))
            .collect();
        write!(f, "Netrc {{ machines: {machines:?} }}")
    }
}

/// Why a netrc file cannot be used (its secrets are never in the message).
#[derive(Debug, thiserror::Error)]
pub enum NetrcError {
    #[error("{0}")]
    Read(#[from] std::io::Error),
    #[error("`machine` without a host name")]
    NoHost,
    #[error("`{0}` without a value")]
    NoValue(String),
}

impl Netrc {
    /// Reads and parses `path`.
    pub fn read(path: &Path) -> Result<Netrc, NetrcError> {
        let text = std::fs::read_to_string(path)?;
        Netrc::parse(&text)
    }

    /// Parses netrc text (see the module doc for the rules).
    pub fn parse(text: &str) -> Result<Netrc, NetrcError> {
        let mut entries: Vec<Entry> = Vec::new();
        let mut tokens = Tokens::new(text);
        while let Some(tok) = tokens.next() {
            match tok.as_str() {
                "machine" => {
                    let host = tokens.next().ok_or(NetrcError::NoHost)?;
                    entries.push(Entry::new(Some(host.to_ascii_lowercase())));
                }
                "default" => entries.push(Entry::new(None)),
                "login" | "password" | "account" => {
                    let value = tokens
                        .next()
                        .ok_or_else(|| NetrcError::NoValue(tok.clone()))?;
                    // Like curl: a value outside any entry is ignored.
                    let Some(entry) = entries.last_mut() else {
                        continue;
                    };
                    match tok.as_str() {
                        "login" => entry.creds.login = value,
                        "password" => entry.creds.password = value,
                        _ => {}
                    }
                }
                "macdef" => tokens.skip_macro(),
                // Like curl: words it does not know are skipped.
                _ => {}
            }
        }
        Ok(Netrc { entries })
    }

    /// True when there is no entry at all.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The credentials for `host`: the first entry naming it (not its port) or `default`.
    pub fn lookup(&self, host: &str) -> Option<&Credentials> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        self.entries
            .iter()
            .find(|e| {
                e.machine
                    .as_deref()
                    .is_none_or(|m| m.eq_ignore_ascii_case(host))
            })
            .map(|e| &e.creds)
    }
}

impl Entry {
    fn new(machine: Option<String>) -> Entry {
        Entry {
            machine,
            creds: Credentials {
                login: String::new(),
                password: String::new(),
            },
        }
    }
}

/// The tokens of a netrc file, with what `macdef` needs (the rest of the text).
struct Tokens<'a> {
    rest: &'a str,
}

impl<'a> Tokens<'a> {
    fn new(text: &'a str) -> Self {
        Tokens { rest: text }
    }

    /// Skips a macro body: everything up to and including the next blank line.
    fn skip_macro(&mut self) {
        match self.rest.find("\n\n") {
            Some(i) => self.rest = &self.rest[i + 2..],
            None => self.rest = "",
        }
    }

    fn quoted(&mut self) -> String {
        let mut out = String::new();
        let mut chars = self.rest[1..].char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.rest = &self.rest[i + 2..];
                    return out;
                }
                '\\' => match chars.next() {
                    Some((_, 'n')) => out.push('\n'),
                    Some((_, 'r')) => out.push('\r'),
                    Some((_, 't')) => out.push('\t'),
                    Some((_, e)) => out.push(e),
                    None => break,
                },
                c => out.push(c),
            }
        }
        self.rest = "";
        out
    }
}

impl Iterator for Tokens<'_> {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        self.rest = self.rest.trim_start();
        if self.rest.is_empty() {
            return None;
        }
        if self.rest.starts_with('"') {
            return Some(self.quoted());
        }
        let end = self
            .rest
            .find(char::is_whitespace)
            .unwrap_or(self.rest.len());
        let (tok, rest) = self.rest.split_at(end);
        self.rest = rest;
        Some(tok.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(login: &str, password: &str) -> Credentials {
        Credentials {
            login: login.into(),
            password: password.into(),
        }
    }

    #[test]
    fn first_matching_machine_wins_and_default_matches_any_host() {
        let n = Netrc::parse(
            "machine cache.example.com login alice password one\n\
             machine CACHE.example.com login bob password two\n\
             default login anon password three\n",
        )
        .unwrap();
        assert_eq!(n.lookup("cache.example.com"), Some(&creds("alice", "one")));
        assert_eq!(n.lookup("Cache.Example.Com"), Some(&creds("alice", "one")));
        assert_eq!(n.lookup("other.example.com"), Some(&creds("anon", "three")));
    }

    #[test]
    fn a_default_before_a_machine_wins_like_curl() {
        let n = Netrc::parse("default login d password x machine h login m password y").unwrap();
        assert_eq!(n.lookup("h"), Some(&creds("d", "x")));
    }

    #[test]
    fn no_entry_means_no_credentials() {
        let n = Netrc::parse("machine a login l password p").unwrap();
        assert_eq!(n.lookup("b"), None);
        assert!(Netrc::parse("").unwrap().is_empty());
    }

    #[test]
    fn quoted_tokens_macros_and_accounts() {
        let n = Netrc::parse(
            "macdef init\ncd /pub\nmachine evil login x password y\n\n\
             machine h account acct login \"a b\" password \"p\\\"w\\\\d\"\n",
        )
        .unwrap();
        assert_eq!(n.lookup("evil"), None, "macro bodies are skipped");
        assert_eq!(n.lookup("h"), Some(&creds("a b", "p\"w\\d")));
    }

    #[test]
    fn truncated_files_are_refused_and_unknown_words_skipped() {
        assert!(Netrc::parse("machine").is_err());
        assert!(Netrc::parse("machine h password").is_err());
        let n = Netrc::parse("login x machine h frobnicate login l password p").unwrap();
        assert_eq!(n.lookup("h"), Some(&creds("l", "p")));
    }

    #[test]
    fn the_header_is_basic_and_sensitive_and_nothing_prints_secrets() {
        let n = Netrc::parse("machine h login user password s3cret").unwrap();
        let c = n.lookup("h").unwrap();
        let v = c.header();
        assert_eq!(v.to_str().unwrap(), "Basic dXNlcjpzM2NyZXQ=");
        assert!(v.is_sensitive());
        for shown in [format!("{n:?}"), format!("{c:?}"), format!("{v:?}")] {
            assert!(
                !shown.contains("s3cret") && !shown.contains("dXNlcjpz"),
                "{shown}"
            );
        }
    }

    #[test]
    fn ipv6_hosts_match_without_brackets() {
        let n = Netrc::parse("machine ::1 login l password p").unwrap();
        assert!(n.lookup("[::1]").is_some());
    }
}
