//! Property tests of [`Expected::check`], which reads `.torrent` files from peers: arbitrary
//! bytes, bencode-shaped junk and mutations of real torrents. None may panic, and an accepted
//! torrent is always the canonical one for the expected name and length.

use proptest::prelude::*;

use super::meta::{piece_count, piece_length, Expected, NarTorrent, PieceHasher};
use crate::nix::proptests::{edit, mutate};

fn torrent_of(data: &[u8], name: &str) -> NarTorrent {
    let mut h = PieceHasher::new(name.into(), data.len() as u64);
    h.update(data);
    h.finish(data.len() as u64).expect("whole file hashed")
}

/// Whatever `check` accepts has the expected name and length and the policy's pieces.
fn check(exp: &Expected, bytes: &[u8]) -> Option<NarTorrent> {
    let t = exp.check(bytes).ok()?;
    assert_eq!((t.name.as_str(), t.length), (exp.name.as_str(), exp.length));
    assert_eq!(t.piece_length, piece_length(exp.length));
    assert_eq!(
        t.pieces.len() as u64,
        piece_count(exp.length, t.piece_length) * 20
    );
    Some(t)
}

/// Bencode-ish tokens, so random sequences often nest and reach librqbit's deeper code.
fn bencode() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        prop::sample::select(vec![
            "d",
            "l",
            "e",
            "i0e",
            "i-1e",
            "i18446744073709551615e",
            "i99999999999999999999e",
            "4:info",
            "6:length",
            "4:name",
            "12:piece length",
            "6:pieces",
            "5:files",
            "4:path",
            "8:x.nar.xz",
            "0:",
            "20:",
            "99999999:",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        (0..40usize).prop_map(|n| format!("{n}:{}", "a".repeat(n)).into_bytes()),
        prop::collection::vec(any::<u8>(), 0..4),
    ];
    prop::collection::vec(token, 0..40).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..300),
        length in any::<u64>(),
    ) {
        check(&Expected { name: "x.nar.xz".into(), length }, &bytes);
    }

    #[test]
    fn bencode_junk_never_panics(bytes in bencode(), length in 0..100_000u64) {
        check(&Expected { name: "x.nar.xz".into(), length }, &bytes);
    }

    #[test]
    fn real_torrents_pass_and_mutations_never_panic(
        // Sizes around the 16 KiB piece; the bytes themselves only feed SHA-1, so they are
        // made from a seed rather than drawn one by one (which is slow in a debug build).
        (len, seed) in (1..70_000usize, any::<u32>()),
        trackers in prop::collection::vec("http://127\\.0\\.0\\.1:[0-9]{1,5}/announce", 0..3),
        edits in prop::collection::vec(edit(), 1..5),
    ) {
        let data: Vec<u8> = (0..len as u32).map(|i| (i.wrapping_mul(seed) >> 7) as u8).collect();
        let t = torrent_of(&data, "x.nar.xz");
        let exp = Expected { name: "x.nar.xz".into(), length: data.len() as u64 };
        let file = t.to_file(&trackers);
        prop_assert_eq!(check(&exp, &file), Some(t.clone()));
        let mutated = mutate(&file, &edits);
        if let Some(got) = check(&exp, &mutated) {
            // Only the piece hashes can differ, and those a download checks piece by piece.
            prop_assert_eq!(got.info().len(), t.info().len());
        }
    }
}

#[test]
fn deep_nesting_does_not_overflow_the_stack() {
    let exp = Expected {
        name: "x.nar.xz".into(),
        length: 1,
    };
    for open in [b'l', b'd'] {
        let bytes = vec![open; 100_000];
        assert!(exp.check(&bytes).is_err());
    }
    let mut nested = b"d4:infod6:lengthi1e4:name8:x.nar.xz4:deep".to_vec();
    nested.extend(std::iter::repeat_n(b'l', 100_000));
    assert!(exp.check(&nested).is_err());
}
