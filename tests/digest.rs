//! Peer digests (`/_p2p/v1/digest`): an appliance's digest says what it holds, and a peer
//! that does not hold a miss is never asked for it.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn digests_keep_misses_away_from_peers_that_do_not_hold_them() {
    use nixgate::peers::digest::{nar_key, narinfo_key, Holdings};
    let f = fixture().await;
    let work = tempfile::tempdir().unwrap();
    let (_up, a) = holding_peer(f, work.path(), &[&f.top]).await;

    // A's digest says what it holds, and only that (up to Bloom false positives).
    let got = get(&format!("{}/_p2p/v1/digest", a.url()), &[]).await;
    assert_eq!(got.status, 200);
    let d = Holdings::from_bytes(&got.bytes).expect("a digest");
    let top_fh = f.nar_url(&f.top)["nar/".len()..][..52].to_owned();
    assert!(d.contains(&narinfo_key(Fixture::hash(&f.top))));
    assert!(d.contains(&narinfo_key(Fixture::hash(&f.dep))));
    assert!(d.contains(&nar_key(&top_fh)));
    assert!(!d.contains(&narinfo_key(Fixture::hash(&f.big))));

    let down = failing_upstream(f).await;
    let b = with_peers(&work.path().join("b"), &down, &f.public_key, vec![a.url()]).await;
    // B fetched A's digest at start-up.
    wait_for_digests(&b).await;

    let asked = |a: &Appliance| {
        let url = a.url();
        async move {
            let text = get(&format!("{url}/metrics"), &[]).await.body;
            text.lines()
                .filter(|l| l.starts_with("nixgate_requests_total{route=\"narinfo\""))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .sum::<u64>()
        }
    };
    let before = asked(&a).await;
    // A miss A does not hold: B answers 503 without asking A.
    let miss = get(
        &format!("{}/{}.narinfo", b.url(), Fixture::hash(&f.big)),
        &[],
    )
    .await;
    assert_eq!(miss.status, 503);
    assert_eq!(
        asked(&a).await,
        before,
        "A was not asked for what it does not hold"
    );
    // What A holds is still served through B.
    assert_ok(&nix_copy(&b.url(), &f.public_key, &f.top, &work.path().join("c")).await);
    assert!(asked(&a).await > before);
}
