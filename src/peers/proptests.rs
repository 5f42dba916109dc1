//! Property tests of the peer digest decoder ([`Holdings::from_bytes`]), which reads bytes a
//! peer sends: arbitrary, near-valid and mutated digests. None may panic, and an accepted
//! digest encodes back to the same bytes.

use proptest::prelude::*;

use super::digest::{nar_key, narinfo_key, Holdings};
use crate::nix::proptests::{edit, mutate};

/// Bytes that start like a digest: the magic, any k, a few bits.
fn near_digest() -> impl Strategy<Value = Vec<u8>> {
    (any::<u8>(), prop::collection::vec(any::<u8>(), 0..64)).prop_map(|(k, bits)| {
        let mut b = b"NGD1".to_vec();
        b.push(k);
        b.extend(bits);
        b
    })
}

/// Decodes `bytes`; whatever is accepted answers lookups and re-encodes identically.
fn decode(bytes: &[u8], keys: &[String]) {
    if let Ok(h) = Holdings::from_bytes(bytes) {
        assert_eq!(h.to_bytes(), bytes);
        for k in keys {
            let _ = h.contains(k);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_digests_never_panic(
        bytes in prop_oneof![prop::collection::vec(any::<u8>(), 0..80), near_digest()],
        keys in prop::collection::vec("\\PC{0,60}", 0..4),
    ) {
        decode(&bytes, &keys);
    }

    #[test]
    fn inserted_keys_survive_encoding_and_mutation_never_panics(
        keys in prop::collection::vec("[0-9a-z]{32}", 1..20),
        edits in prop::collection::vec(edit(), 1..4),
    ) {
        let mut h = Holdings::with_capacity(keys.len());
        for k in &keys {
            h.insert(&narinfo_key(k));
            h.insert(&nar_key(k));
        }
        let bytes = h.to_bytes();
        let back = Holdings::from_bytes(&bytes).unwrap();
        prop_assert!(keys.iter().all(|k| back.contains(&narinfo_key(k)) && back.contains(&nar_key(k))));
        let probes: Vec<String> = keys.iter().map(|k| nar_key(k)).collect();
        decode(&mutate(&bytes, &edits), &probes);
    }
}
