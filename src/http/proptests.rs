//! Property tests of what a client sends: request paths, the `Range` header, and request
//! heads as the front loop frames them. None may panic; an accepted path names exactly what it
//! parsed to, a range served lies in the file, and a request kept off hyper ends exactly where
//! its head ends and has no body by any reading.

use proptest::prelude::*;

use super::body::{parse_range, Range};
use super::head::{classify, Next};
use super::routes::{parse, Target};
use crate::nix::hash::Sha256;
use crate::nix::nix32;
use crate::nix::proptests::{edit, mutate};
use crate::nix::store_path::StorePathHash;

/// Paths near the valid ones: real prefixes and suffixes around random hashes and junk.
fn path() -> impl Strategy<Value = String> {
    let prefix = prop::sample::select(vec![
        "/",
        "/nar/",
        "/log/",
        "/realisations/",
        "/_p2p/v1/torrent/",
        "/_p2p/v1/",
        "//",
        "",
    ]);
    let middle = prop_oneof![
        any::<[u8; 20]>().prop_map(|h| nix32::encode(&h)),
        any::<[u8; 32]>().prop_map(|h| nix32::encode(&h)),
        any::<[u8; 32]>().prop_map(|h| {
            let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
            format!("sha256:{hex}!out")
        }),
        "[0-9a-z./%-]{0,60}",
    ];
    let suffix = prop::sample::select(vec![
        "", ".narinfo", ".ls", ".nar", ".nar.xz", ".nar.zst", ".nar.gz", ".doi", "-name", "/..",
    ]);
    (prefix, middle, suffix, prop::collection::vec(edit(), 0..2)).prop_map(|(p, m, s, e)| {
        let raw = format!("{p}{m}{s}");
        String::from_utf8_lossy(&mutate(raw.as_bytes(), &e)).into_owned()
    })
}

/// An accepted path must be the canonical spelling of what it parsed to.
fn assert_canonical(p: &str, t: &Target) {
    let want = match t {
        Target::NarInfo(h) => format!("/{h}.narinfo"),
        Target::Listing(h) => format!("/{h}.ls"),
        Target::Nar { file_hash, ext } => format!("/nar/{}.nar{ext}", file_hash.to_nix32()),
        Target::Log(b) => format!("/log/{b}"),
        Target::Realisation(r) => format!("/{r}"),
        Target::Torrent(fh) => format!("/_p2p/v1/torrent/{}", fh.to_nix32()),
        _ => return,
    };
    assert_eq!(p, want);
    assert!(
        !p.contains("..") && !p.contains('%') && !p.contains("//"),
        "{p}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn request_paths_never_panic_and_are_canonical(p in path()) {
        assert_canonical(&p, &parse(&p));
    }

    #[test]
    fn arbitrary_request_paths_never_panic(p in "/\\PC{0,80}") {
        assert_canonical(&p, &parse(&p));
    }

    #[test]
    fn valid_paths_parse_to_their_target(h in any::<[u8; 20]>(), fh in any::<[u8; 32]>()) {
        let h = StorePathHash(h);
        let fh = Sha256(fh);
        prop_assert_eq!(parse(&format!("/{h}.narinfo")), Target::NarInfo(h));
        prop_assert_eq!(parse(&format!("/{h}.ls")), Target::Listing(h));
        let nar = format!("/nar/{}.nar.xz", fh.to_nix32());
        prop_assert_eq!(parse(&nar), Target::Nar { file_hash: fh, ext: ".xz" });
        let torrent = format!("/_p2p/v1/torrent/{}", fh.to_nix32());
        prop_assert_eq!(parse(&torrent), Target::Torrent(fh));
    }

    #[test]
    fn any_range_header_is_within_the_file(h in "\\PC{0,40}", size in any::<u64>()) {
        check_range(&h, size);
    }

    #[test]
    fn byte_ranges_are_clamped_to_the_file(
        a in prop::option::of(any::<u64>()),
        b in prop::option::of(any::<u64>()),
        size in prop_oneof![0..1000u64, any::<u64>()],
    ) {
        let show = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
        let h = format!("bytes={}-{}", show(a), show(b));
        let want = match (a, b) {
            (Some(a), Some(b)) if a > b => Range::Full,
            (Some(a), _) if a >= size => Range::Unsatisfiable,
            (Some(a), Some(b)) => Range::Partial(a, b.saturating_add(1).min(size)),
            (Some(a), None) => Range::Partial(a, size),
            (None, Some(0)) | (None, None) => Range::Full,
            (None, Some(_)) if size == 0 => Range::Unsatisfiable,
            (None, Some(n)) => Range::Partial(size.saturating_sub(n), size),
        };
        prop_assert_eq!(check_range(&h, size), want);
    }

    #[test]
    fn mutated_range_headers_never_panic(
        size in 0..1000u64,
        edits in prop::collection::vec(edit(), 1..4),
    ) {
        let h = String::from_utf8_lossy(&mutate(b"bytes=100-199", &edits)).into_owned();
        check_range(&h, size);
    }
}

/// Parses `h` against `size`; a partial range is non-empty and inside the file.
fn check_range(h: &str, size: u64) -> Range {
    let r = parse_range(Some(h), size);
    if let Range::Partial(start, end) = r {
        assert!(
            start < end && end <= size,
            "{h:?} on {size} bytes gave {start}..{end}"
        );
    }
    r
}

/// One request head from header lines near the framing rules (bodies, chunking, `Expect`,
/// odd `Content-Length`s, connection tokens) and odd bytes.
fn request() -> impl Strategy<Value = (String, bool)> {
    let method = prop::sample::select(vec!["GET", "HEAD", "POST", "get", "PUT"]);
    let target = prop::sample::select(vec![
        "/nar/1a1bsj6a88svx7w9zf6k8ly3sinibliwr96pmhyqnxvslaid8s5j.nar.xz",
        "/6dyjazmc27x71a77v1pcbi549rpk5wh6.narinfo",
        "/nix-cache-info",
        "http://x/nar/1a1bsj6a88svx7w9zf6k8ly3sinibliwr96pmhyqnxvslaid8s5j.nar",
    ]);
    let version = prop::sample::select(vec!["HTTP/1.1", "HTTP/1.0", "HTTP/2.0"]);
    let header = prop::sample::select(vec![
        "Host: x",
        "Content-Length: 0",
        "Content-Length: 3",
        "content-length:  0",
        "Content-Length: +0",
        "Transfer-Encoding: chunked",
        "transfer-encoding: identity",
        "Expect: 100-continue",
        "Upgrade: h2c",
        "Connection: close",
        "Connection: keep-alive",
        "Range: bytes=1-2",
        "Cache-Control: only-if-cached",
        "X-Nixgate-Fleet: 1",
        " Folded: x",
        "Bad Header: x",
        "X:\x01",
    ]);
    (method, target, version, prop::collection::vec(header, 0..5)).prop_map(|(m, t, v, hs)| {
        // Bodiless by every reading: no TE, and at most one Content-Length, of 0.
        let lower: Vec<String> = hs.iter().map(|h| h.to_ascii_lowercase()).collect();
        let lengths: Vec<&str> = lower
            .iter()
            .filter_map(|h| h.strip_prefix("content-length:"))
            .map(str::trim)
            .collect();
        let plain = !lower.iter().any(|h| h.starts_with("transfer-encoding"))
            && (lengths.is_empty() || lengths == ["0"]);
        let mut r = format!("{m} {t} {v}\r\n");
        for h in hs {
            r.push_str(h);
            r.push_str("\r\n");
        }
        r.push_str("\r\n");
        (r, plain)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn a_head_kept_off_hyper_ends_where_it_ends_and_has_no_body(
        (first, plain) in request(),
        (second, _) in request(),
        cut in any::<prop::sample::Index>(),
    ) {
        let both = format!("{first}{second}");
        match classify(both.as_bytes()) {
            Next::Nar(n, _) | Next::One(n) => {
                prop_assert_eq!(n, first.len());
                prop_assert!(plain, "kept a request with a body off hyper: {}", first);
            }
            Next::Partial => prop_assert!(false, "a complete head read as partial"),
            Next::Handoff => {}
        }
        // A proper prefix of a head is never taken for a whole request.
        let short = &first.as_bytes()[..cut.index(first.len())];
        prop_assert!(matches!(classify(short), Next::Partial | Next::Handoff));
    }
}
