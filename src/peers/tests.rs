//! Unit tests of the peer set: replacing, bounding, ids, local addresses.
use super::*;

fn u(s: &str) -> Url {
    Url::parse(s).unwrap()
}

#[test]
fn replace_keeps_state_and_drops_self() {
    let set = PeerSet::new(
        8080,
        "0".repeat(32),
        Membership::default(),
        vec![u("http://10.9.9.1:8080/")],
    );
    set.replace(
        Origin::Dns,
        vec![
            u("http://10.9.9.2:8080/"),
            u("http://127.0.0.1:8080/"), // ourselves
            u("http://127.0.0.1:9090/"), // another appliance on this host
        ],
    );
    let urls: Vec<String> = set.peers().iter().map(|p| p.base.to_string()).collect();
    assert_eq!(
        urls,
        [
            "http://10.9.9.1:8080/",
            "http://10.9.9.2:8080/",
            "http://127.0.0.1:9090/"
        ]
    );
    let before = set.peers()[1].clone();
    before.breaker.probation(PROBATION);
    set.replace(Origin::Dns, vec![u("http://10.9.9.2:8080/")]);
    let after = set.peers();
    assert_eq!(after.len(), 2);
    assert!(Arc::ptr_eq(&before, &after[1]), "state kept");
    assert_eq!(set.status()[1].state, "skipped");
    set.replace(Origin::Dns, vec![]);
    assert_eq!(set.peers().len(), 1, "static peers stay");
}

#[test]
fn the_set_is_bounded() {
    let set = PeerSet::new(
        8080,
        "0".repeat(32),
        Membership::default(),
        vec![u("http://10.9.9.1:8080/")],
    )
    .with_max_peers(3);
    let many = (2..200)
        .map(|i| u(&format!("http://10.9.9.{i}:8080/")))
        .collect();
    set.replace(Origin::Mdns, many);
    assert_eq!(set.peers().len(), 3);
    assert_eq!(set.max_peers(), 3);
}

#[test]
fn peer_id_is_made_once() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("tmp")).unwrap();
    let a = load_or_create_id(dir.path()).unwrap();
    assert_eq!(a.len(), 32);
    assert_eq!(load_or_create_id(dir.path()).unwrap(), a);
    std::fs::write(dir.path().join("peer-id"), "garbage").unwrap();
    assert_ne!(load_or_create_id(dir.path()).unwrap(), a);
}

#[test]
fn local_addresses() {
    assert!(is_local_address("127.0.0.1".parse().unwrap()));
    assert!(!is_local_address("192.0.2.1".parse().unwrap()));
}
