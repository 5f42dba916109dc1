//! The object store's credentials, from where the AWS tools look (never from a flag, so they
//! are never in a process list, a config dump or a log): `AWS_ACCESS_KEY_ID` and
//! `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`), else the profile `AWS_PROFILE`
//! (default `default`) of the shared credentials file (`AWS_SHARED_CREDENTIALS_FILE`,
//! default `~/.aws/credentials`):
//!
//! ```text
//! [default]
//! aws_access_key_id = AKIA...
//! aws_secret_access_key = ...
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Why no credentials could be found. Never names a secret.
#[derive(Debug, Error)]
pub enum CredentialsError {
    #[error("no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or profile [{profile}] in {}", file.display())]
    Missing { profile: String, file: PathBuf },
    #[error("{}: {source}", file.display())]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: profile [{profile}] lacks aws_access_key_id or aws_secret_access_key", file.display())]
    Incomplete { profile: String, file: PathBuf },
}

/// Reads the credentials from `env` (a lookup, `std::env::var` in the appliance).
pub fn load(
    env: impl Fn(&str) -> Option<String>,
) -> Result<rusty_s3::Credentials, CredentialsError> {
    let var = |k: &str| env(k).filter(|v| !v.is_empty());
    if let (Some(key), Some(secret)) = (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
        return Ok(with_token(key, secret, var("AWS_SESSION_TOKEN")));
    }
    let profile = var("AWS_PROFILE").unwrap_or_else(|| "default".to_owned());
    let file = match var("AWS_SHARED_CREDENTIALS_FILE") {
        Some(f) => PathBuf::from(f),
        None => PathBuf::from(var("HOME").unwrap_or_default()).join(".aws/credentials"),
    };
    from_file(&file, &profile)
}

fn with_token(key: String, secret: String, token: Option<String>) -> rusty_s3::Credentials {
    match token {
        Some(t) => rusty_s3::Credentials::new_with_token(key, secret, t),
        None => rusty_s3::Credentials::new(key, secret),
    }
}

fn from_file(file: &Path, profile: &str) -> Result<rusty_s3::Credentials, CredentialsError> {
    let missing = || CredentialsError::Missing {
        profile: profile.to_owned(),
        file: file.to_owned(),
    };
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(missing()),
        Err(source) => {
            let file = file.to_owned();
            return Err(CredentialsError::Read { file, source });
        }
    };
    let mut section = parse(&text).remove(profile).ok_or_else(missing)?;
    let key = section.remove("aws_access_key_id");
    let secret = section.remove("aws_secret_access_key");
    let (Some(key), Some(secret)) = (key, secret) else {
        return Err(CredentialsError::Incomplete {
            profile: profile.to_owned(),
            file: file.to_owned(),
        });
    };
    Ok(with_token(key, secret, section.remove("aws_session_token")))
}

/// The INI sections of a credentials file: `[name]` then `key = value` lines; `#`/`;`
/// comments.
fn parse(text: &str) -> HashMap<String, HashMap<String, String>> {
    let mut all: HashMap<String, HashMap<String, String>> = HashMap::new();
    let mut current = None;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = Some(name.trim().to_owned());
            continue;
        }
        if let (Some(sec), Some((k, v))) = (&current, line.split_once('=')) {
            let entry = all.entry(sec.clone()).or_default();
            entry.insert(k.trim().to_owned(), v.trim().to_owned());
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn the_environment_wins() {
        let c = load(env(&[
            ("AWS_ACCESS_KEY_ID", "AK"),
            ("AWS_SECRET_ACCESS_KEY", "SK"),
            ("AWS_SESSION_TOKEN", "T"),
        ]))
        .unwrap();
        assert_eq!((c.key(), c.secret(), c.token()), ("AK", "SK", Some("T")));
        assert!(!format!("{c:?}").contains("SK"));
    }

    #[test]
    fn the_profile_of_the_credentials_file_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("credentials");
        let text = "[default]\naws_access_key_id=D\naws_secret_access_key=DS\n\n# c\n[ci]\naws_access_key_id = C\naws_secret_access_key = CS\n[bad]\naws_access_key_id = B\n";
        std::fs::write(&f, text).unwrap();
        let path = f.to_str().unwrap();
        let file = ("AWS_SHARED_CREDENTIALS_FILE", path);
        let c = load(env(&[file])).unwrap();
        assert_eq!((c.key(), c.secret()), ("D", "DS"));
        let c = load(env(&[file, ("AWS_PROFILE", "ci")])).unwrap();
        assert_eq!((c.key(), c.token()), ("C", None));
        let e = load(env(&[file, ("AWS_PROFILE", "bad")])).unwrap_err();
        assert!(matches!(e, CredentialsError::Incomplete { .. }), "{e}");
        let e = load(env(&[file, ("AWS_PROFILE", "none")])).unwrap_err();
        assert!(matches!(e, CredentialsError::Missing { .. }), "{e}");
        let home = dir.path().to_str().unwrap();
        let e = load(env(&[("HOME", home)])).unwrap_err();
        assert!(matches!(e, CredentialsError::Missing { .. }), "{e}");
    }
}
