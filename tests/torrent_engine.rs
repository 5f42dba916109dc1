//! BitTorrent between appliances: deterministic torrents on `/_p2p/v1/torrent/<FileHash>`
//! (never fetched for), the swarm as the fallback when every upstream fails (real
//! `nix copy`), and an evicted NAR no longer seeded.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn torrent_route_is_deterministic_and_never_fetches() {
    let f = fixture().await;
    let work = tempfile::tempdir().unwrap();
    let (up, a) = holding_seeder(f, work.path(), &[&f.big], &[]).await;
    let (fh, file) = nar_of(f, &f.big);

    let got = get(&format!("{}/_p2p/v1/torrent/{fh}", a.url()), &[]).await;
    assert_eq!(got.status, 200, "{}", got.body);
    assert_eq!(got.headers["content-type"], "application/x-bittorrent");
    assert!(got.headers["x-nixgate-torrent-port"]
        .to_str()
        .unwrap()
        .parse::<u16>()
        .is_ok());
    let expected = torrent_of_file(&file);
    assert_eq!(info_hash_of(&got.bytes), expected.info_hash_hex());
    assert_eq!(expected.name, format!("{fh}.nar.xz"));

    // A second appliance that fetched the same NAR independently computes the same infohash.
    let b = torrent_appliance(
        &work.path().join("b"),
        &up,
        &f.public_key,
        vec![],
        &[],
        |_| {},
    )
    .await;
    assert_ok(&nix_copy(&b.url(), &f.public_key, &f.big, &work.path().join("c2")).await);
    let got_b = get(&format!("{}/_p2p/v1/torrent/{fh}", b.url()), &[]).await;
    assert_eq!(info_hash_of(&got_b.bytes), expected.info_hash_hex());

    // Not held: 404, and nothing is fetched for it. Malformed: 400.
    let (other_fh, _) = nar_of(f, &f.top);
    let before = up.total.load(Ordering::SeqCst);
    let miss = get(&format!("{}/_p2p/v1/torrent/{other_fh}", b.url()), &[]).await;
    assert_eq!(miss.status, 404);
    assert_eq!(up.total.load(Ordering::SeqCst), before);
    let bad = get(&format!("{}/_p2p/v1/torrent/not-a-hash", b.url()), &[]).await;
    assert_eq!(bad.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upstream_down_closure_comes_from_the_swarm() {
    let f = fixture().await;
    let work = tempfile::tempdir().unwrap();
    let (_up, a) = holding_seeder(f, work.path(), &[&f.top, &f.big], &[]).await;

    let down = failing_upstream(f).await;
    let a_url = a.url();
    let b = torrent_appliance(
        &work.path().join("b"),
        &down,
        &f.public_key,
        vec![a_url],
        &[],
        |_| {},
    )
    .await;
    let dest = work.path().join("client");
    assert_ok(&nix_copy(&b.url(), &f.public_key, &f.top, &dest).await);
    assert_ok(&nix_copy(&b.url(), &f.public_key, &f.big, &dest).await);
    for p in [&f.top, &f.dep, &f.big] {
        assert!(substituted(&dest, p), "{p}");
    }
    let torrent = b
        .metric("nixgate_fetched_bytes_total{source=\"torrent\"}")
        .await;
    assert!(torrent > 3_000_000, "torrent bytes {torrent}");
    let http_from_peer = b
        .metric("nixgate_fetched_bytes_total{source=\"peer\"}")
        .await;
    assert!(
        http_from_peer < 10_000,
        "only narinfos came from the peer over HTTP, every NAR over BitTorrent: {http_from_peer}"
    );
    assert_eq!(
        b.metric("nixgate_verification_failures_total{source=\"torrent\"}")
            .await,
        0
    );
    // The download directory is cleaned up once the NAR is in the cache.
    let bt = b.cache_dir.join("tmp/bt");
    wait_until(Duration::from_secs(5), "tmp/bt to be emptied", || async {
        std::fs::read_dir(&bt).map_or(0, |d| d.count()) == 0
    })
    .await;
    assert_eq!(std::fs::read_dir(&bt).unwrap().count(), 0, "tmp/bt emptied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_evicted_nar_stops_being_seeded() {
    let f = fixture().await;
    let work = tempfile::tempdir().unwrap();
    let up = Upstream::start(&f.cache).await;
    let a = torrent_appliance(
        &work.path().join("a"),
        &up,
        &f.public_key,
        vec![],
        &[],
        |s| s.max_cache_size = Some("3MiB".into()),
    )
    .await;
    let (fh, _) = nar_of(f, &f.big);
    assert_ok(&nix_copy(&a.url(), &f.public_key, &f.big, &work.path().join("c1")).await);
    let t = get(&format!("{}/_p2p/v1/torrent/{fh}", a.url()), &[]).await;
    assert_eq!(t.status, 200);
    assert_eq!(a.metric("nixgate_torrents_seeding").await, 1);
    // 2 MB of other paths push the 3 MB NAR out of the 3 MiB cache.
    for b in &f.blobs {
        assert_ok(&nix_copy(&a.url(), &f.public_key, b, &work.path().join("c2")).await);
    }
    wait_until(
        Duration::from_secs(5),
        "the evicted NAR's torrent to be dropped",
        || async { a.metric("nixgate_torrents_seeding").await == 0 },
    )
    .await;
    let gone = get(&format!("{}/_p2p/v1/torrent/{fh}", a.url()), &[]).await;
    assert_eq!(gone.status, 404);
}
