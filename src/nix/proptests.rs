//! Property tests of the Nix protocol parsers, which all take outside bytes: nix32, sha256
//! strings, store paths, keys and signatures, and narinfos (arbitrary text and mutations of a
//! real one). None may panic; accepted inputs must be well-formed and round-trip.

use proptest::prelude::*;

use super::hash::Sha256;
use super::narinfo::tests::{VECTOR, VECTOR_PUBLIC_KEY};
use super::narinfo::{NarInfo, MAX_SIGS};
use super::nix32;
use super::signature::{PublicKey, SecretKey, TrustedKeys};
use super::store_path::{is_valid_name, StorePathBase, StorePathHash};
use super::STORE_DIR;

/// One edit of a byte string: how fuzzers mutate a valid input into a nearly valid one.
#[derive(Debug, Clone)]
pub(crate) enum Edit {
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Duplicate(usize, usize),
}

/// Tokens that tend to sit on parsers' edges.
const TOKENS: &[&[u8]] = &[
    b"0",
    b"-1",
    b"18446744073709551615",
    b"99999999999999999999",
    b":",
    b"\n",
    b"\r\n",
    b" ",
    b"e",
    b"i",
    b"l",
    b"d",
    b"4:",
    b"sha256:",
    b"Sig: ",
    b"..",
    b"/",
    b"\xff",
    b"\xc3",
];

/// A random edit at any position (positions are taken modulo the input length).
pub(crate) fn edit() -> impl Strategy<Value = Edit> {
    let token = prop::sample::select(TOKENS).prop_map(<[u8]>::to_vec);
    let bytes = prop::collection::vec(any::<u8>(), 1..8);
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Edit::Flip(p, b)),
        (any::<usize>(), prop_oneof![token, bytes]).prop_map(|(p, v)| Edit::Insert(p, v)),
        (any::<usize>(), 1..64usize).prop_map(|(p, n)| Edit::Delete(p, n)),
        (any::<usize>(), 1..256usize).prop_map(|(p, n)| Edit::Duplicate(p, n)),
    ]
}

/// Applies `edits` to `base` in order.
pub(crate) fn mutate(base: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut v = base.to_vec();
    for e in edits {
        let at = |p: usize| if v.is_empty() { 0 } else { p % (v.len() + 1) };
        match e {
            Edit::Flip(p, b) if !v.is_empty() => {
                let i = p % v.len();
                v[i] ^= b | 1;
            }
            Edit::Flip(..) => {}
            Edit::Insert(p, bytes) => {
                let i = at(*p);
                v.splice(i..i, bytes.iter().copied());
            }
            Edit::Delete(p, n) => {
                let i = at(*p);
                v.drain(i..(i + n).min(v.len()));
            }
            Edit::Duplicate(p, n) => {
                let i = at(*p);
                let piece = v[i..(i + n).min(v.len())].to_vec();
                v.splice(i..i, piece);
            }
        }
    }
    v
}

/// A valid store path name (`[A-Za-z0-9+-._?=]`, not starting with `.`).
fn name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9+_?=-][A-Za-z0-9+._?=-]{0,60}"
}

fn base() -> impl Strategy<Value = StorePathBase> {
    (any::<[u8; 20]>(), name())
        .prop_map(|(h, n)| format!("{}-{n}", nix32::encode(&h)).parse().expect("valid"))
}

/// A narinfo with plausible, printable fields (values never hold a newline).
fn narinfo() -> impl Strategy<Value = NarInfo> {
    let text = "[!-~][ -~]{0,40}[!-~]";
    (
        (base(), text, prop::option::of("[a-z0-9]{1,8}")),
        (
            prop::option::of(any::<[u8; 32]>()),
            prop::option::of(any::<u64>()),
        ),
        (any::<[u8; 32]>(), 1..u64::MAX),
        prop::collection::vec(base(), 0..5),
        (prop::option::of(base()), prop::collection::vec(text, 0..4)),
        prop::option::of(text),
    )
        .prop_map(
            |((b, url, comp), (fh, fs), (nh, ns), refs, (der, sigs), ca)| NarInfo {
                store_path: format!("{STORE_DIR}/{}", b.as_str()),
                base: b,
                url,
                compression: comp,
                file_hash: fh.map(Sha256),
                file_size: fs,
                nar_hash: Sha256(nh),
                nar_size: ns,
                references: refs,
                deriver: der.map(|d| d.to_string()),
                sigs,
                ca,
            },
        )
}

/// What every accepted narinfo satisfies, and printing it then parsing gives it back.
fn assert_well_formed(ni: &NarInfo) {
    assert_eq!(ni.store_path, format!("{STORE_DIR}/{}", ni.base.as_str()));
    assert!(ni.nar_size > 0);
    assert!(ni.sigs.len() <= MAX_SIGS);
    for r in &ni.references {
        assert_eq!(r.as_str().parse::<StorePathBase>().as_ref(), Ok(r));
    }
    assert_eq!(ni.to_string().parse::<NarInfo>().as_ref(), Ok(ni));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn nix32_round_trips(b20 in any::<[u8; 20]>(), b32 in any::<[u8; 32]>()) {
        prop_assert_eq!(nix32::decode::<20>(&nix32::encode(&b20)), Ok(b20));
        prop_assert_eq!(nix32::decode::<32>(&nix32::encode(&b32)), Ok(b32));
    }

    #[test]
    fn nix32_accepts_only_canonical(s in "[0-9a-z]{32}|[0-9a-z]{52}|\\PC{0,60}") {
        if let Ok(b) = nix32::decode::<20>(&s) {
            prop_assert_eq!(nix32::encode(&b), s.clone());
        }
        if let Ok(b) = nix32::decode::<32>(&s) {
            prop_assert_eq!(nix32::encode(&b), s.clone());
        }
        prop_assert_eq!(nix32::is_nix32(&s, 32), nix32::decode::<20>(&s).is_ok());
    }

    #[test]
    fn sha256_round_trips(b in any::<[u8; 32]>()) {
        let h = Sha256(b);
        prop_assert_eq!(h.to_string().parse::<Sha256>(), Ok(h));
        prop_assert_eq!(Sha256::from_nix32(&h.to_nix32()), Ok(h));
        let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
        prop_assert_eq!(format!("sha256:{hex}").parse::<Sha256>(), Ok(h));
        use base64::Engine;
        let sri = base64::engine::general_purpose::STANDARD.encode(b);
        prop_assert_eq!(format!("sha256-{sri}").parse::<Sha256>(), Ok(h));
    }

    #[test]
    fn sha256_parse_never_panics(
        s in "sha256[:-][0-9a-zA-Z+/=]{0,70}|\\PC{0,80}",
        edits in prop::collection::vec(edit(), 0..3),
    ) {
        let s = String::from_utf8_lossy(&mutate(s.as_bytes(), &edits)).into_owned();
        if let Ok(h) = s.parse::<Sha256>() {
            prop_assert_eq!(h.to_string().parse::<Sha256>(), Ok(h));
        }
        let _ = Sha256::from_nix32(&s);
    }

    #[test]
    fn store_paths_accept_only_valid(s in "[0-9a-z]{32}-\\PC{0,20}|\\PC{0,80}") {
        if let Ok(h) = s.parse::<StorePathHash>() {
            prop_assert_eq!(h.to_string(), s.clone());
        }
        if let Ok(b) = s.parse::<StorePathBase>() {
            prop_assert_eq!(b.as_str(), s.as_str());
            let name = &s[StorePathHash::NIX32_LEN + 1..];
            prop_assert!(is_valid_name(name) && !s.contains('/') && name != "..");
            prop_assert_eq!(b.hash.to_string(), &s[..StorePathHash::NIX32_LEN]);
        }
        let full = format!("{STORE_DIR}/{s}");
        prop_assert_eq!(StorePathBase::from_full(&full, STORE_DIR), s.parse());
    }

    #[test]
    fn valid_store_paths_are_accepted(h in any::<[u8; 20]>(), n in name()) {
        let s = format!("{}-{n}", nix32::encode(&h));
        let b: StorePathBase = s.parse().unwrap();
        prop_assert_eq!(b.hash, StorePathHash(h));
    }
}

proptest! {
    // ed25519 in a debug build costs tens of milliseconds: few cases.
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn keys_and_signatures_round_trip(
        seed in any::<[u8; 32]>(),
        key_name in "[a-z0-9.-]{1,20}",
        fp in "\\PC{0,100}",
        flip in any::<(usize, u8)>(),
    ) {
        let sk = SecretKey::from_seed(&key_name, seed);
        let pk = sk.public();
        prop_assert_eq!(pk.to_string().parse::<PublicKey>(), Ok(pk.clone()));
        let keys = TrustedKeys::new(vec![pk]);
        let sig = sk.sign(&fp);
        prop_assert!(keys.verifies_any(&fp, std::slice::from_ref(&sig)));
        let other = format!("{fp}x");
        prop_assert!(!keys.verifies_any(&other, std::slice::from_ref(&sig)));
        // Any changed byte of the base64 signature either fails to decode or to verify.
        let mut bad = sig.clone().into_bytes();
        let i = key_name.len() + 1 + flip.0 % (bad.len() - key_name.len() - 1);
        bad[i] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"[flip.1 as usize % 64];
        let bad = String::from_utf8(bad).unwrap();
        prop_assert!(bad == sig || !keys.verifies_any(&fp, std::slice::from_ref(&bad)));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn key_and_sig_parsing_never_panics(
        s in "[a-z0-9-]{0,10}:[A-Za-z0-9+/=]{0,100}|\\PC{0,120}",
        edits in prop::collection::vec(edit(), 0..3),
    ) {
        let keys = TrustedKeys::new(vec![VECTOR_PUBLIC_KEY.parse().unwrap()]);
        let s = String::from_utf8_lossy(&mutate(s.as_bytes(), &edits)).into_owned();
        if let Ok(k) = s.parse::<PublicKey>() {
            prop_assert_eq!(k.to_string().parse::<PublicKey>(), Ok(k));
        }
        let _ = s.parse::<SecretKey>();
        let with_name = format!("test-vector-1:{}", s.split_once(':').map_or(&*s, |p| p.1));
        prop_assert!(!keys.verifies_any("1;fingerprint", &[s, with_name]));
    }

    #[test]
    fn narinfo_display_parse_round_trips(ni in narinfo()) {
        prop_assert_eq!(ni.to_string().parse::<NarInfo>(), Ok(ni.clone()));
        let head = format!("1;{};", ni.store_path);
        prop_assert!(ni.fingerprint(STORE_DIR).starts_with(&head));
    }

    #[test]
    fn mutated_narinfos_never_panic(edits in prop::collection::vec(edit(), 1..6)) {
        let text = String::from_utf8_lossy(&mutate(VECTOR.as_bytes(), &edits)).into_owned();
        if let Ok(ni) = text.parse::<NarInfo>() {
            assert_well_formed(&ni);
            let _ = TrustedKeys::new(vec![VECTOR_PUBLIC_KEY.parse().unwrap()])
                .verifies_any(&ni.fingerprint(STORE_DIR), &ni.sigs);
        }
    }

    #[test]
    fn arbitrary_narinfo_text_never_panics(
        lines in prop::collection::vec(
            "(StorePath|URL|Compression|FileHash|FileSize|NarHash|NarSize|References|Deriver|Sig|CA|X)(: ?)[ -~é]{0,60}|[ -~é]{0,60}",
            0..20,
        ),
    ) {
        if let Ok(ni) = lines.join("\n").parse::<NarInfo>() {
            assert_well_formed(&ni);
        }
    }
}
