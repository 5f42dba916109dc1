//! What a runner is served instead of the upstream's compression (issue 22, docs/ZSTD.md):
//! which clients can decode zstd, and the narinfo that points them at nixgate's own file.
//!
//! A narinfo as an upstream signed it, and as a Nix ≥ 2.4 runner gets it once nixgate holds
//! the zstd file (only `URL` and `Compression` changed in place, `FileHash`/`FileSize` gone):
//!
//! ```text
//! StorePath: /nix/store/6dyjazmc27x71a77v1pcbi549rpk5wh6-nixgate-vec-top
//! URL: nar/1a1bsj6a88svx7w9zf6k8ly3sinibliwr96pmhyqnxvslaid8s5j.nar.zst
//! Compression: zstd
//! NarHash: sha256:1hi53fsh0220rwi8755la7a02bwc1j3bjg87aaccc8nnp9hxrm3y
//! NarSize: 536
//! References: 026h72wxqd39cbm2fdqc8zpwg9zm41c8-nixgate-vec-dep
//! Deriver: jaq594wmsn2km90rbrzf4ln22igz2kim-nixgate-vec-top.drv
//! Sig: test-vector-1:GjYKk58x+PG4uxAotLzdFr8Xb2CajSkVcEJk+v002C+7l+PiiWjiMDVq8hV9lNI0fntuyShY1/WCg5yw/tIBAQ==
//! ```
//!
//! The signature covers StorePath, NarHash, NarSize and References ([`super::narinfo`]); the
//! lines changed here are unsigned, and Nix requires only StorePath, URL, NarHash and NarSize
//! (`src/libstore/nar-info.cc`). Nix checks NarHash after decompressing whatever it got.

use bytes::Bytes;

use super::compression::Compression;
use super::hash::Sha256;

/// The compression nixgate serves its own files in (`--serve-compression`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// zstd level 3, 8 MiB window with long-distance matching (docs/ZSTD.md §2).
    Zstd,
    /// The decoded NAR itself, for LANs faster than a runner's zstd decoder.
    None,
}

impl Served {
    /// The compression it names in a narinfo.
    pub fn compression(self) -> Compression {
        match self {
            Served::Zstd => Compression::Zstd,
            Served::None => Compression::None,
        }
    }

    /// Its `Compression:` value.
    pub fn field(self) -> &'static str {
        match self {
            Served::Zstd => "zstd",
            Served::None => "none",
        }
    }

    /// The extension of its URL (`nar/<FileHash>.nar<ext>`).
    pub fn extension(self) -> &'static str {
        self.compression().extension()
    }
}

/// Whether a client with this `User-Agent` decodes zstd NARs. Nix sends
/// `curl/<v> Nix/<version>` (`src/libstore/filetransfer.cc`); zstd came with Nix 2.4 and was
/// backported to 2.3.17; 2.4 pre-releases decode it from 2019-12-10 on. Anything without
/// `Nix/` (curl, other tools, nixgate's own peers) gets the upstream's compression.
pub fn accepts_zstd(user_agent: Option<&str>) -> bool {
    let Some(v) = user_agent
        .and_then(|ua| ua.split_once("Nix/"))
        .map(|(_, v)| v)
    else {
        return false;
    };
    let v = v.split_whitespace().next().unwrap_or("");
    let (release, pre) = match v.split_once("pre") {
        Some((r, p)) => (r, Some(p)),
        None => (v, None),
    };
    let mut parts = release.split('.').map(|p| p.parse::<u64>().ok());
    let (Some(Some(major)), Some(Some(minor))) = (parts.next(), parts.next()) else {
        return false;
    };
    let patch = parts.next().flatten().unwrap_or(0);
    match (major, minor, pre) {
        (0..=1, ..) => false,
        (2, 0..=2, _) => false,
        (2, 3, _) => patch >= 17,
        (2, 4, Some(pre)) => pre.get(..8).and_then(|d| d.parse::<u64>().ok()) >= Some(20191210),
        _ => true,
    }
}

/// The FileHash and compression a served narinfo names (`None` when it does not parse).
pub fn file_of(served: &[u8]) -> Option<(Sha256, Compression)> {
    let text = std::str::from_utf8(served).ok()?;
    let ni = super::narinfo::NarInfo::parse(text, super::STORE_DIR).ok()?;
    Some((
        ni.file_hash?,
        Compression::from_field(ni.compression.as_deref()),
    ))
}

/// The narinfo `served` with its NAR named as nixgate's `as_` file of FileHash `fh`: `URL`
/// and `Compression` replaced in place (`Compression` inserted after `URL` when absent, since
/// absent means bzip2), `FileHash` and `FileSize` dropped, every other line (all the signed
/// ones and every `Sig:`) the same bytes in the same order.
pub fn render(served: &[u8], fh: &Sha256, as_: Served) -> Bytes {
    let has_compression = served
        .split(|&b| b == b'\n')
        .any(|l| l.starts_with(b"Compression:"));
    let mut out = Vec::with_capacity(served.len());
    for line in served.split_inclusive(|&b| b == b'\n') {
        let field = line.split(|&b| b == b':').next().unwrap_or(b"");
        match field {
            b"URL" => {
                let url = format!("URL: nar/{}.nar{}\n", fh.to_nix32(), as_.extension());
                out.extend_from_slice(url.as_bytes());
                if !has_compression {
                    out.extend_from_slice(format!("Compression: {}\n", as_.field()).as_bytes());
                }
            }
            b"Compression" => {
                out.extend_from_slice(format!("Compression: {}\n", as_.field()).as_bytes())
            }
            b"FileHash" | b"FileSize" => {}
            _ => out.extend_from_slice(line),
        }
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nix::narinfo::NarInfo;

    /// A narinfo real Nix wrote (the narinfo parser's test vector), with xz.
    const UPSTREAM: &str = crate::nix::narinfo::tests::VECTOR;

    #[test]
    fn only_url_and_compression_change_and_the_signature_still_verifies() {
        let (fh, c) = file_of(UPSTREAM.as_bytes()).unwrap();
        assert_eq!(c, Compression::Xz);
        let out = render(UPSTREAM.as_bytes(), &fh, Served::Zstd);
        let text = std::str::from_utf8(&out).unwrap();
        let kept: Vec<&str> = UPSTREAM
            .lines()
            .filter(|l| !l.starts_with("File"))
            .map(|l| match l.split_once(':').unwrap().0 {
                "URL" => "URL: nar/1a1bsj6a88svx7w9zf6k8ly3sinibliwr96pmhyqnxvslaid8s5j.nar.zst",
                "Compression" => "Compression: zstd",
                _ => l,
            })
            .collect();
        assert_eq!(text.lines().collect::<Vec<_>>(), kept);
        let (a, b) = (
            NarInfo::parse(UPSTREAM, "/nix/store").unwrap(),
            NarInfo::parse(text, "/nix/store").unwrap(),
        );
        assert_eq!(a.fingerprint("/nix/store"), b.fingerprint("/nix/store"));
        assert_eq!(a.sigs, b.sigs);
        assert_eq!((b.file_hash, b.file_size), (None, None));
        let key = "test-vector-1:Zmbm7swbfTGLZ5au734IhNPRtS/9rmoZ0SMykmmtRzM=";
        let keys = crate::nix::signature::TrustedKeys::new(vec![key.parse().unwrap()]);
        assert!(keys.verifies_any(&b.fingerprint("/nix/store"), &b.sigs));
    }

    #[test]
    fn compression_is_inserted_when_absent_and_none_names_the_plain_nar() {
        let bzip2 = UPSTREAM.replace("Compression: xz\n", "");
        let (fh, c) = file_of(bzip2.as_bytes()).unwrap();
        assert_eq!(c, Compression::Bzip2);
        let out = render(bzip2.as_bytes(), &fh, Served::None);
        let text = std::str::from_utf8(&out).unwrap();
        let mut lines = text.lines().skip(1);
        assert_eq!(
            lines.next(),
            Some("URL: nar/1a1bsj6a88svx7w9zf6k8ly3sinibliwr96pmhyqnxvslaid8s5j.nar")
        );
        assert_eq!(lines.next(), Some("Compression: none"));
        assert!(text.ends_with("Sig: test-vector-1:GjYKk58x+PG4uxAotLzdFr8Xb2CajSkVcEJk+v002C+7l+PiiWjiMDVq8hV9lNI0fntuyShY1/WCg5yw/tIBAQ==\n"));
    }

    #[test]
    fn which_clients_get_zstd() {
        for (ua, want) in [
            (Some("curl/7.88.1 Nix/2.3.16"), false),
            (Some("curl/7.88.1 Nix/2.3.17"), true),
            (Some("curl/7.88.1 Nix/2.4"), true),
            (Some("curl/7.64.0 Nix/2.4pre20191001_abcdef0"), false),
            (Some("curl/7.64.0 Nix/2.4pre20200101_abcdef0"), true),
            (Some("curl/8.7.1 Nix/2.26.3 my-suffix"), true),
            (Some("curl/8.7.1Nix/2.91.0"), true),
            (Some("curl/8.0 Nix/3.0"), true),
            (Some("curl/7.0 Nix/2.2"), false),
            (Some("nixgate/0.1.0"), false),
            (Some("curl/8.5.0"), false),
            (None, false),
        ] {
            assert_eq!(accepts_zstd(ua), want, "{ua:?}");
        }
    }
}
