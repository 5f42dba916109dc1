//! Fleet ownership: rendezvous (highest-random-weight) hashing gives every key one owner
//! among the healthy members of a deployment, so a fleet fetches each narinfo and NAR from
//! the upstream once between them (as groupcache, Varnish's shard director and Envoy's ring
//! hash do). Pure: no I/O.
//!
//! Every member computes the same order from the same inputs: the key and the members' peer
//! ids (the 32-hex-digit id each appliance keeps in `<cache dir>/peer-id` and sends in the
//! [`ID_HEADER`] of `/nix-cache-info`). Ids, not URLs, because a member does not know the URL
//! others reach it by; and one member reached by two URLs is still one member. A member that
//! joins or leaves moves only the keys it owns (HRW's minimal disruption).

use sha2::{Digest, Sha256};

/// The response header of `/nix-cache-info` that carries an appliance's peer id.
pub const ID_HEADER: &str = "x-nixgate-id";
/// The response header of `/nix-cache-info` that says what an appliance serves runners its
/// NARs as (`zstd`, `none`; absent with `--serve-compression upstream` and before issue 22):
/// members ask an owner that serves as they do for its own file (docs/ZSTD.md §7).
pub const SERVES_HEADER: &str = "x-nixgate-serves";
pub use crate::upstream::FLEET_HEADER;
/// How many members a miss tries before going to the upstream itself: the owner, then the
/// next in rendezvous order (a member that just died, before the fleet noticed).
pub const OWNERS_TRIED: usize = 2;

/// The weight of `member` for `key`: the first 8 bytes of SHA-256(key ‖ 0 ‖ member id).
/// SHA-256 because every build of every version must agree (std's hasher promises no
/// stability), and it mixes well enough that shares are even.
pub fn weight(key: &str, member_id: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(key.as_bytes());
    h.update([0]);
    h.update(member_id.as_bytes());
    let d = h.finalize();
    u64::from_be_bytes(d[..8].try_into().expect("SHA-256 has 32 bytes"))
}

/// The members to ask for `key`, best first, up to the first that is `self_id` (a member
/// ranked below us is never asked: we are a better owner than it). Empty when we own `key`.
/// Ties (equal weights: practically never) break by id so every member agrees.
pub fn owners<'a, T>(key: &str, self_id: &str, members: &'a [(String, T)]) -> Vec<&'a T> {
    let me = (weight(key, self_id), self_id);
    let mut ranked: Vec<(u64, &str, &T)> = members
        .iter()
        .filter(|(id, _)| id != self_id)
        .map(|(id, t)| (weight(key, id), id.as_str(), t))
        .filter(|(w, id, _)| (*w, *id) > me)
        .collect();
    ranked.sort_by(|a, b| (b.0, b.1).cmp(&(a.0, a.1)));
    ranked.into_iter().map(|(_, _, t)| t).collect()
}

/// The members among the top `n` for `key` in rendezvous order (ranked with us), best first,
/// without us: where an upload is replicated so that every member finds it by asking its
/// owners ([`owners`]).
pub fn top<'a, T>(key: &str, self_id: &str, members: &'a [(String, T)], n: usize) -> Vec<&'a T> {
    let mut ranked: Vec<(u64, &str, Option<&T>)> = members
        .iter()
        .filter(|(id, _)| id != self_id)
        .map(|(id, t)| (weight(key, id), id.as_str(), Some(t)))
        .collect();
    ranked.push((weight(key, self_id), self_id, None));
    ranked.sort_by(|a, b| (b.0, b.1).cmp(&(a.0, a.1)));
    ranked
        .into_iter()
        .take(n)
        .filter_map(|(_, _, t)| t)
        .collect()
}

/// The member that would own `key` if we were not in the fleet: the best ranked below us.
/// A new owner asks it (only-if-cached) before the upstream, so a member that joins takes
/// over its share of keys without fetching again what the fleet already holds.
pub fn successor<'a, T>(key: &str, self_id: &str, members: &'a [(String, T)]) -> Option<&'a T> {
    let me = (weight(key, self_id), self_id);
    members
        .iter()
        .filter(|(id, _)| id != self_id)
        .map(|(id, t)| ((weight(key, id), id.as_str()), t))
        .filter(|(w, _)| *w < me)
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, t)| t)
}

/// Whether `s` is a well-formed peer id (32 lowercase hex digits).
pub fn valid_id(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_are_the_top_owners_that_readers_ask() {
        let all = ids(5);
        for k in 0..200 {
            let key = format!("key{k}");
            for me in &all {
                let members: Vec<(String, String)> =
                    all.iter().map(|id| (id.clone(), id.clone())).collect();
                let top: Vec<&String> = top(&key, me, &members, 2);
                let mut ranked = all.clone();
                ranked.sort_by(|a, b| (weight(&key, b), b).cmp(&(weight(&key, a), a)));
                let want: Vec<&String> = ranked[..2].iter().filter(|id| *id != me).collect();
                assert_eq!(top, want);
                // Every other member's owners (those it asks) include a replica or itself.
                for reader in all.iter().filter(|r| *r != me) {
                    let asks = owners(&key, reader, &members);
                    let holds = |id: &String| id == me || top.contains(&id);
                    assert!(holds(reader) || asks.iter().take(OWNERS_TRIED).any(|o| holds(o)));
                }
            }
        }
    }

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{i:032x}")).collect()
    }

    fn owner_of(key: &str, all: &[String]) -> String {
        let mut best = all[0].clone();
        for id in all {
            if (weight(key, id), id) > (weight(key, &best), &best) {
                best = id.clone();
            }
        }
        best
    }

    #[test]
    fn every_member_agrees_on_the_owner() {
        let all = ids(5);
        for k in 0..200 {
            let key = format!("narinfo:{k}");
            let owner = owner_of(&key, &all);
            for me in &all {
                let others: Vec<(String, String)> =
                    all.iter().map(|i| (i.clone(), i.clone())).collect();
                let asked = owners(&key, me, &others);
                if me == &owner {
                    assert!(asked.is_empty(), "the owner asks nobody");
                } else {
                    assert_eq!(asked[0], &owner, "{me} asks the owner first");
                }
            }
        }
    }

    #[test]
    fn shares_are_even_and_a_join_moves_only_its_share() {
        let before = ids(4);
        let mut after = before.clone();
        after.push(format!("{:032x}", 99));
        let (n, mut moved, mut counts) = (4000, 0, [0usize; 4]);
        for k in 0..n {
            let key = format!("nar:{k}");
            let (a, b) = (owner_of(&key, &before), owner_of(&key, &after));
            counts[before.iter().position(|i| *i == a).unwrap()] += 1;
            if a != b {
                assert_eq!(b, after[4], "keys move only to the new member");
                moved += 1;
            }
        }
        for c in counts {
            assert!((800..1200).contains(&c), "share {c} of {n} is near 1/4");
        }
        assert!((600..1000).contains(&moved), "about 1/5 moved: {moved}");
    }

    #[test]
    fn the_successor_owned_the_key_before_we_joined() {
        let all = ids(4);
        let members: Vec<(String, String)> = all.iter().map(|i| (i.clone(), i.clone())).collect();
        for k in 0..200 {
            let key = format!("k{k}");
            let owner = owner_of(&key, &all);
            let without: Vec<String> = all.iter().filter(|i| **i != owner).cloned().collect();
            assert_eq!(
                successor(&key, &owner, &members),
                Some(&owner_of(&key, &without))
            );
        }
    }

    #[test]
    fn id_format() {
        assert!(valid_id("0123456789abcdef0123456789abcdef"));
        assert!(!valid_id("0123456789ABCDEF0123456789abcdef"));
        assert!(!valid_id("0123"));
    }
}
