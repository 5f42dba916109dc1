//! The `--object-store` URL, parsed and validated before anything is sent:
//!
//! ```text
//! s3://nix-cache/ci?endpoint=http://seaweedfs:8333&region=us-east-1
//! s3://nix-cache?region=eu-west-1                  (AWS: https://s3.eu-west-1.amazonaws.com)
//! s3://nix-cache/ci?endpoint=https://r2.example&style=virtual&part-size=64MiB
//! ```
//!
//! The bucket is the host, the prefix the path (every object lives under `<prefix>/`), and
//! the query names the endpoint, the region (SigV4 signs it) and the addressing style (`path`,
//! the default, works with SeaweedFS, Garage, MinIO and Ceph; `virtual` puts the bucket in
//! the host name) and the multipart part size (`part-size`, 5 MiB to 5 GiB, default 32 MiB:
//! files over twice the part size go up in parts). Credentials are never part of it: a URL with userinfo, or an `endpoint`
//! with userinfo or a query, is refused (credentials come from `AWS_*` or a credentials file,
//! `credentials.rs`), so the flag can be logged and shown by `check-config` as it is.

use thiserror::Error;
use url::Url;

/// Why an `--object-store` URL was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum UrlError {
    #[error("not a URL ({0})")]
    Syntax(#[from] url::ParseError),
    #[error("the scheme must be s3:// (got {0}://)")]
    Scheme(String),
    #[error("bucket name {0:?} is not a valid S3 bucket name (3-63 of a-z 0-9 . -)")]
    Bucket(String),
    #[error("prefix segment {0:?} is not allowed (empty, `.`, `..` or a character outside A-Z a-z 0-9 - _ .)")]
    Prefix(String),
    #[error("credentials must not be in the URL: use AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a credentials file")]
    Userinfo,
    #[error("endpoint {0:?} must be an http:// or https:// URL with a host and no userinfo, path or query")]
    Endpoint(String),
    #[error("region {0:?} is not a region name (a-z 0-9 -)")]
    Region(String),
    #[error("style {0:?} must be `path` or `virtual`")]
    Style(String),
    #[error("part-size {0:?} must be a size from 5MiB to 5GiB")]
    PartSize(String),
    #[error("unknown parameter {0:?} (endpoint, region, style, part-size)")]
    Unknown(String),
}

/// How the bucket is addressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// `https://endpoint/bucket/key`.
    Path,
    /// `https://bucket.endpoint/key`.
    Virtual,
}

/// A validated `--object-store` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectStoreUrl {
    pub bucket: String,
    /// Without leading or trailing `/`; empty for the bucket's root.
    pub prefix: String,
    pub endpoint: Url,
    pub region: String,
    pub style: Style,
    /// Bytes per multipart part; files over twice this go up in parts.
    pub part_size: u64,
}

/// The default part size: 32 MiB parts, multipart above 64 MiB.
pub const DEFAULT_PART_SIZE: u64 = 32 << 20;

impl std::str::FromStr for ObjectStoreUrl {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<Self, UrlError> {
        let u = Url::parse(s)?;
        if u.scheme() != "s3" {
            return Err(UrlError::Scheme(u.scheme().to_owned()));
        }
        if !u.username().is_empty() || u.password().is_some() {
            return Err(UrlError::Userinfo);
        }
        let bucket = u.host_str().unwrap_or_default().to_owned();
        if !valid_bucket(&bucket) {
            return Err(UrlError::Bucket(bucket));
        }
        // The raw path: `Url` resolves `.` and `..`, which must be refused, not resolved.
        let prefix = prefix(raw_path(s))?;
        let (mut endpoint, mut region, mut style) = (None, None, Style::Path);
        let mut part_size = DEFAULT_PART_SIZE;
        for (k, v) in u.query_pairs() {
            match &*k {
                "endpoint" => endpoint = Some(parse_endpoint(&v)?),
                "region" if valid_region(&v) => region = Some(v.into_owned()),
                "region" => return Err(UrlError::Region(v.into_owned())),
                "style" => style = parse_style(&v)?,
                "part-size" => part_size = parse_part_size(&v)?,
                other => return Err(UrlError::Unknown(other.to_owned())),
            }
        }
        let region = region.unwrap_or_else(|| "us-east-1".to_owned());
        let endpoint = match endpoint {
            Some(e) => e,
            None => Url::parse(&format!("https://s3.{region}.amazonaws.com/"))?,
        };
        let url = ObjectStoreUrl {
            bucket,
            prefix,
            endpoint,
            region,
            style,
            part_size,
        };
        // The signer's own checks (a virtual-host name it cannot form, say), at startup.
        url.signer()
            .map_err(|_| UrlError::Endpoint(url.endpoint.to_string()))?;
        Ok(url)
    }
}

impl std::fmt::Display for ObjectStoreUrl {
    /// The URL in its canonical form (it carries no secret).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let style = match self.style {
            Style::Path => "path",
            Style::Virtual => "virtual",
        };
        write!(
            f,
            "s3://{}/{}?endpoint={}&region={}&style={style}&part-size={}",
            self.bucket,
            self.prefix,
            self.endpoint.as_str().trim_end_matches('/'),
            self.region,
            self.part_size
        )
    }
}

/// S3's rules for new buckets: 3-63 characters of lower-case letters, digits, `.` and `-`,
/// starting and ending with a letter or digit.
fn valid_bucket(b: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    (3..=63).contains(&b.len())
        && b.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
        && edge(b.chars().next())
        && edge(b.chars().last())
}

fn valid_region(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= 32
        && r.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// The prefix from the URL's path: segments of safe characters, no `.`/`..`, so a key can
/// never climb out of it or need escaping.
fn prefix(path: &str) -> Result<String, UrlError> {
    let trimmed = path.trim_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    for seg in trimmed.split('/') {
        let safe = seg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if seg.is_empty() || seg == "." || seg == ".." || !safe {
            return Err(UrlError::Prefix(seg.to_owned()));
        }
    }
    Ok(trimmed.to_owned())
}

/// The path of an `s3://host/path?query` text as written.
fn raw_path(s: &str) -> &str {
    let rest = s.split_once("://").map_or(s, |(_, r)| r);
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    rest.find('/').map_or("", |i| &rest[i..])
}

fn parse_endpoint(v: &str) -> Result<Url, UrlError> {
    let bad = || UrlError::Endpoint(crate::redact::redact_text(v));
    let e = Url::parse(v).map_err(|_| bad())?;
    let plain = e.username().is_empty() && e.password().is_none();
    let bare = e.path() == "/" && e.query().is_none() && e.fragment().is_none();
    match e.scheme() {
        "http" | "https" if e.host_str().is_some() && plain && bare => Ok(e),
        _ => Err(bad()),
    }
}

impl ObjectStoreUrl {
    /// The signer of this bucket (`rusty-s3`: pure, no I/O).
    pub fn signer(&self) -> Result<rusty_s3::Bucket, rusty_s3::BucketError> {
        let style = match self.style {
            Style::Path => rusty_s3::UrlStyle::Path,
            Style::Virtual => rusty_s3::UrlStyle::VirtualHost,
        };
        let (name, region) = (self.bucket.clone(), self.region.clone());
        rusty_s3::Bucket::new(self.endpoint.clone(), style, name, region)
    }
}

fn parse_part_size(v: &str) -> Result<u64, UrlError> {
    match crate::units::parse_size(v) {
        Ok(n) if ((5 << 20)..=(5 << 30)).contains(&n) => Ok(n),
        _ => Err(UrlError::PartSize(v.to_owned())),
    }
}

fn parse_style(v: &str) -> Result<Style, UrlError> {
    match v {
        "path" => Ok(Style::Path),
        "virtual" => Ok(Style::Virtual),
        other => Err(UrlError::Style(other.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<ObjectStoreUrl, UrlError> {
        s.parse()
    }

    #[test]
    fn a_full_url_parses_into_its_parts() {
        let u = p("s3://nix-cache/ci/x86?endpoint=http://127.0.0.1:8333&region=eu-west-1").unwrap();
        assert_eq!(u.bucket, "nix-cache");
        assert_eq!(u.prefix, "ci/x86");
        assert_eq!(u.endpoint.as_str(), "http://127.0.0.1:8333/");
        assert_eq!(u.region, "eu-west-1");
        assert_eq!(u.style, Style::Path);
        assert_eq!(u.part_size, DEFAULT_PART_SIZE);
        assert_eq!(u.to_string().parse::<ObjectStoreUrl>().unwrap(), u);
        let u = p("s3://nix-cache?part-size=8MiB").unwrap();
        assert_eq!(u.part_size, 8 << 20);
        assert_eq!(u.to_string().parse::<ObjectStoreUrl>().unwrap(), u);
    }

    #[test]
    fn defaults_are_aws_in_us_east_1_at_the_root() {
        let u = p("s3://nix-cache").unwrap();
        assert_eq!(u.prefix, "");
        assert_eq!(u.endpoint.as_str(), "https://s3.us-east-1.amazonaws.com/");
        let u = p("s3://nix-cache/?region=ap-south-1&style=virtual").unwrap();
        assert_eq!(u.endpoint.as_str(), "https://s3.ap-south-1.amazonaws.com/");
        assert_eq!(u.style, Style::Virtual);
    }

    #[test]
    fn bad_urls_are_refused_with_the_reason() {
        assert!(matches!(p("https://b/x"), Err(UrlError::Scheme(_))));
        assert_eq!(p("s3://AK:SK@bucket/"), Err(UrlError::Userinfo));
        assert!(matches!(p("s3://B_ad/"), Err(UrlError::Bucket(_))));
        assert!(matches!(p("s3://ab/"), Err(UrlError::Bucket(_))));
        assert!(matches!(p("s3://bucket/a/../b"), Err(UrlError::Prefix(_))));
        assert!(matches!(p("s3://bucket/a//b"), Err(UrlError::Prefix(_))));
        assert!(matches!(p("s3://bucket/a%20b"), Err(UrlError::Prefix(_))));
        assert!(matches!(
            p("s3://bucket?region=EU"),
            Err(UrlError::Region(_))
        ));
        assert!(matches!(
            p("s3://bucket?style=dns"),
            Err(UrlError::Style(_))
        ));
        assert!(matches!(
            p("s3://bucket?secret=x"),
            Err(UrlError::Unknown(_))
        ));
        for s in ["1MiB", "6GiB", "big"] {
            let url = format!("s3://bucket?part-size={s}");
            assert!(matches!(p(&url), Err(UrlError::PartSize(_))), "{s}");
        }
        for e in [
            "ftp://h",
            "http://k:s@h:1",
            "http://h/path",
            "http://h/?a=b",
            "x",
        ] {
            let url = format!("s3://bucket?endpoint={e}");
            assert!(matches!(p(&url), Err(UrlError::Endpoint(_))), "{e}");
        }
        let shown = p("s3://bucket?endpoint=http://k:secret@h").unwrap_err();
        assert!(!shown.to_string().contains("secret"), "{shown}");
    }
}
