//! Peer appliances (`--peer`): when every upstream fails, a miss is served from a peer that
//! holds it, verified against the trusted keys (narinfo) and the signed NarHash (NAR); a miss
//! never bounces between appliances; lying peers are rejected, counted and put on probation.

mod common;

use std::io::{Read, Write};
use std::sync::atomic::Ordering;

use common::*;
use sha2::Digest;

/// `(url, origin, state)` of each peer in `/_p2p/v1/peers`.
async fn peer_states(a: &Appliance) -> Vec<(String, String, String)> {
    peer_rows(a)
        .await
        .into_iter()
        .map(|p| (p.url, p.origin, p.state))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upstream_down_closure_is_served_by_a_peer() {
    let f = fixture().await;
    let work = tempfile::tempdir().unwrap();
    let (up, a) = holding_peer(f, work.path(), &[&f.top, &f.big]).await;
    let upstream_requests = up.total.load(Ordering::SeqCst);

    let down = failing_upstream(f).await;
    let b = with_peers(&work.path().join("b"), &down, &f.public_key, vec![a.url()]).await;
    assert_eq!(
        peer_states(&b).await,
        [(format!("{}/", a.url()), "static".into(), "ok".into())]
    );

    let dest = work.path().join("client");
    assert_ok(&nix_copy(&b.url(), &f.public_key, &f.top, &dest).await);
    assert_ok(&nix_copy(&b.url(), &f.public_key, &f.big, &dest).await);
    for p in [&f.top, &f.dep, &f.big] {
        assert!(substituted(&dest, p), "{p}");
    }
    assert!(
        down.total.load(Ordering::SeqCst) > 0,
        "B tried its upstream first"
    );
    assert!(
        b.metric("nixgate_fetched_bytes_total{source=\"peer\"}")
            .await
            > 3_000_000
    );
    assert_eq!(
        b.metric("nixgate_fetched_bytes_total{source=\"upstream\"}")
            .await,
        0
    );
    assert_eq!(
        b.metric("nixgate_verification_failures_total{source=\"peer\"}")
            .await,
        0
    );
    assert_eq!(
        up.total.load(Ordering::SeqCst),
        upstream_requests,
        "A answered from its cache (only-if-cached), it fetched nothing for B"
    );

    // B keeps what it got: with A gone too, a fresh client still gets the closure.
    a.stop().await;
    let again = work.path().join("client2");
    assert_ok(&nix_copy(&b.url(), &f.public_key, &f.top, &again).await);
    assert!(substituted(&again, &f.dep));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_miss_never_bounces_between_peers() {
    let f = fixture().await;
    let work = tempfile::tempdir().unwrap();
    let (up_a, up_b) = (failing_upstream(f).await, failing_upstream(f).await);
    // A lists B, and B lists A: a request that A and B both miss must end, with 503.
    let a_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a_url = format!("http://{}", a_listener.local_addr().unwrap());
    drop(a_listener);
    let b = with_peers(&work.path().join("b"), &up_b, &f.public_key, vec![a_url]).await;
    let a = with_peers(&work.path().join("a"), &up_a, &f.public_key, vec![b.url()]).await;
    let b = {
        // Restart B now that A's real address is known.
        b.stop().await;
        with_peers(&work.path().join("b"), &up_b, &f.public_key, vec![a.url()]).await
    };
    let path = format!("{}.narinfo", Fixture::hash(&f.blobs[3]));
    let got = get(&format!("{}/{path}", b.url()), &[]).await;
    assert_eq!(got.status, 503, "{}", got.body);
    assert!(up_b.count(&path) >= 1, "B asked its own upstream");
    assert_eq!(
        up_a.count(&path),
        0,
        "A was asked only-if-cached: it fetched nothing"
    );
    let direct = get(
        &format!("{}/{path}", a.url()),
        &[("cache-control", "only-if-cached")],
    )
    .await;
    assert_eq!(direct.status, 504);
}

/// xz-compresses `data` as Nix does.
fn xz(data: &[u8]) -> Vec<u8> {
    let mut e = xz2::write::XzEncoder::new(Vec::new(), 6);
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lying_peers_are_rejected_counted_and_put_on_probation() {
    let f = fixture().await;
    let work = tempfile::tempdir().unwrap();
    let target = &f.blobs[4];
    let (_up, honest) = holding_peer(f, work.path(), &[target]).await;

    // The liar serves the real, correctly signed narinfo, but with FileHash, FileSize and URL
    // (not covered by the signature) pointing at a NAR with one byte changed.
    let liar = Upstream::start(&work.path().join("nothing")).await;
    let real_nar = std::fs::read(f.cache.join(f.nar_url(target))).unwrap();
    let mut nar = Vec::new();
    xz2::read::XzDecoder::new(&real_nar[..])
        .read_to_end(&mut nar)
        .unwrap();
    let mid = nar.len() / 2;
    nar[mid] ^= 0xff;
    let forged = xz(&nar);
    let fh = nixgate::nix::hash::Sha256(sha2::Sha256::digest(&forged).into()).to_nix32();
    let narinfo: String = f
        .narinfo(target)
        .lines()
        .map(|l| {
            if l.starts_with("URL: ") {
                format!("URL: nar/{fh}.nar.xz")
            } else if l.starts_with("FileHash: ") {
                format!("FileHash: sha256:{fh}")
            } else if l.starts_with("FileSize: ") {
                format!("FileSize: {}", forged.len())
            } else {
                l.to_owned()
            }
        })
        .map(|l| l + "\n")
        .collect();
    let h = Fixture::hash(target);
    liar.overrides
        .lock()
        .unwrap()
        .insert(format!("{h}.narinfo"), narinfo.into());
    liar.overrides
        .lock()
        .unwrap()
        .insert(format!("nar/{fh}.nar.xz"), forged.into());

    let down = failing_upstream(f).await;
    let b = with_peers(
        &work.path().join("b"),
        &down,
        &f.public_key,
        vec![liar.url(), honest.url()],
    )
    .await;

    // The narinfo verifies (its signature is real); the NAR behind it does not.
    let ni = get(&format!("{}/{h}.narinfo", b.url()), &[]).await;
    assert_eq!(ni.status, 200);
    assert!(ni.body.contains(&fh));
    let got = get(&format!("{}/nar/{fh}.nar.xz", b.url()), &[]).await;
    assert!(
        got.status != 200 || got.body_error.is_some(),
        "a NAR that fails NarHash must never complete a response (status {})",
        got.status
    );
    assert!(
        b.metric("nixgate_verification_failures_total{source=\"peer\"}")
            .await
            >= 1
    );
    assert!(
        files(&b.cache_dir, "nar").is_empty() && files(&b.cache_dir, "narinfo").is_empty(),
        "nothing from the liar stays in the cache: {:?}",
        files(&b.cache_dir, "")
    );
    let peers = peer_states(&b).await;
    assert_eq!(
        peers,
        [
            (
                format!("{}/", liar.url()),
                "static".into(),
                "skipped".into()
            ),
            (format!("{}/", honest.url()), "static".into(), "ok".into())
        ],
        "the liar is on probation"
    );

    // The liar on probation, the next try goes to the honest peer: real Nix gets the path.
    let dest = work.path().join("client");
    assert_ok(&nix_copy(&b.url(), &f.public_key, target, &dest).await);
    assert!(substituted(&dest, target));
    assert!(
        b.metric("nixgate_fetched_bytes_total{source=\"peer\"}")
            .await
            > 400_000
    );

    // A narinfo whose signature does not verify (NarHash changed) is refused outright.
    let other = &f.blobs[2];
    let h2 = Fixture::hash(other);
    let bad = f
        .narinfo(other)
        .replace("NarHash: sha256:", "NarHash: sha256:0");
    let liar2 = Upstream::start(&work.path().join("nothing")).await;
    liar2
        .overrides
        .lock()
        .unwrap()
        .insert(format!("{h2}.narinfo"), bad.into());
    let c = with_peers(
        &work.path().join("c"),
        &down,
        &f.public_key,
        vec![liar2.url()],
    )
    .await;
    let refused = get(&format!("{}/{h2}.narinfo", c.url()), &[]).await;
    assert_eq!(
        refused.status, 503,
        "no trusted narinfo anywhere: upstream-down answer"
    );
    assert_eq!(
        c.metric("nixgate_verification_failures_total{source=\"peer\"}")
            .await,
        1
    );
    assert!(files(&c.cache_dir, "narinfo").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peers_dns_resolves_a_name_into_peers_and_never_itself() {
    let f = fixture().await;
    let work = tempfile::tempdir().unwrap();
    let (_up, a) = holding_peer(f, work.path(), &[&f.blobs[1]]).await;

    // `localhost` (from /etc/hosts: a name we control) on A's port: A is B's peer.
    let down = failing_upstream(f).await;
    let dns = format!("localhost:{}", a.addr.port());
    let b = Appliance::start(
        &work.path().join("b"),
        &[down.url()],
        &f.public_key,
        move |s| s.peers_dns = Some(dns),
    )
    .await;
    wait_until(
        std::time::Duration::from_secs(5),
        "a peer from DNS",
        || async { !peer_states(&b).await.is_empty() },
    )
    .await;
    let states = peer_states(&b).await;
    assert!(
        states.contains(&(
            format!("http://127.0.0.1:{}/", a.addr.port()),
            "dns".into(),
            "ok".into()
        )),
        "{states:?}"
    );
    let dest = work.path().join("client");
    assert_ok(&nix_copy(&b.url(), &f.public_key, &f.blobs[1], &dest).await);
    // A DNS peer becomes a fleet member once its membership probe answers (every 2 s): the
    // bytes count as `peer` before that and `fleet` after, so the two together are A's.
    let from_a = b
        .metric("nixgate_fetched_bytes_total{source=\"peer\"}")
        .await
        + b.metric("nixgate_fetched_bytes_total{source=\"fleet\"}")
            .await;
    assert!(from_a > 400_000, "{from_a} bytes from A");

    // The same name on B's own port resolves to B itself, which is never its own peer.
    let (listener, own_port) = bound_listener();
    let c = Appliance::options(&work.path().join("c"), &f.public_key)
        .upstream(down.url())
        .listener(listener)
        .with(move |s| s.peers_dns = Some(format!("localhost:{own_port}")))
        .start()
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        peer_states(&c).await,
        [],
        "an appliance is never its own peer"
    );
}
