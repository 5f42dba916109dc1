//! The swarm racing a working upstream: a slow upstream hands a large NAR over to the swarm,
//! a late first byte lets the swarm serve it, and `peers-first` takes NARs from the LAN swarm.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_upstream_hands_a_large_nar_over_to_the_swarm() {
    let f = fixture().await;
    let work = tempfile::tempdir().unwrap();
    let (_up, a) = holding_seeder(f, work.path(), &[&f.big], &[]).await;
    let (_, file) = nar_of(f, &f.big);
    let size = std::fs::metadata(&file).unwrap().len();

    // B's upstream works but crawls: 3 MB at 200 KB/s would take 15 s.
    let slow = Upstream::start(&f.cache).await;
    slow.rate.store(200_000, Ordering::SeqCst);
    let a_url = a.url();
    let b = torrent_appliance(
        &work.path().join("b"),
        &slow,
        &f.public_key,
        vec![a_url],
        &[],
        |s| {
            s.accelerate_size = Some("1MiB".into());
            s.accelerate_below = Some("1MiB".into());
        },
    )
    .await;
    wait_for_digests(&b).await;
    let started = std::time::Instant::now();
    assert_ok(&nix_copy(&b.url(), &f.public_key, &f.big, &work.path().join("c")).await);
    let took = started.elapsed();
    assert!(substituted(&work.path().join("c"), &f.big));
    let from_upstream = b
        .metric("nixgate_fetched_bytes_total{source=\"upstream\"}")
        .await;
    let from_swarm = b
        .metric("nixgate_fetched_bytes_total{source=\"torrent\"}")
        .await;
    println!(
        "handover: {from_upstream} bytes from upstream, {from_swarm} from the swarm, {took:?}"
    );
    assert!(from_upstream > 0 && from_swarm > 0, "both sources used");
    let narinfo_bytes = 2_000; // the narinfo came from upstream too
    assert!(
        from_upstream + from_swarm >= size && from_upstream + from_swarm < size + narinfo_bytes
    );
    assert!(
        took < Duration::from_secs(10),
        "{took:?}: the swarm finished it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_first_byte_lets_the_swarm_serve_a_large_nar() {
    let f = fixture().await;
    let work = tempfile::tempdir().unwrap();
    let (_up, a) = holding_seeder(f, work.path(), &[&f.big], &[]).await;
    let (_, file) = nar_of(f, &f.big);

    // B's upstream works, but answers NARs only after 8 s.
    let late = Upstream::start(&f.cache).await;
    late.nar_delay_ms.store(8_000, Ordering::SeqCst);
    let b = torrent_appliance(
        &work.path().join("b"),
        &late,
        &f.public_key,
        vec![a.url()],
        &[],
        |s| {
            s.accelerate_size = Some("1MiB".into());
            s.first_byte_timeout = Some("20s".into());
        },
    )
    .await;
    wait_for_digests(&b).await;
    let started = std::time::Instant::now();
    assert_ok(&nix_copy(&b.url(), &f.public_key, &f.big, &work.path().join("c")).await);
    let took = started.elapsed();
    assert_eq!(
        b.metric("nixgate_fetched_bytes_total{source=\"torrent\"}")
            .await,
        std::fs::metadata(&file).unwrap().len()
    );
    assert!(
        took < Duration::from_secs(6),
        "{took:?}: the swarm answered after the 2 s wait, not the upstream after 8 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peers_first_takes_nars_from_the_lan_swarm() {
    let f = fixture().await;
    let work = tempfile::tempdir().unwrap();
    let (_up, a) = holding_seeder(f, work.path(), &[&f.big], &[]).await;
    let (_, file) = nar_of(f, &f.big);

    let up = Upstream::start(&f.cache).await;
    let a_url = a.url();
    let b = torrent_appliance(
        &work.path().join("b"),
        &up,
        &f.public_key,
        vec![a_url],
        &[],
        |s| {
            s.peer_policy = Some(nixgate::config::PeerPolicy::PeersFirst);
        },
    )
    .await;
    wait_for_digests(&b).await;
    assert_ok(&nix_copy(&b.url(), &f.public_key, &f.big, &work.path().join("c")).await);
    assert_eq!(
        up.count(&f.nar_url(&f.big)),
        0,
        "no NAR bytes from the upstream"
    );
    assert_eq!(
        b.metric("nixgate_fetched_bytes_total{source=\"torrent\"}")
            .await,
        std::fs::metadata(&file).unwrap().len()
    );
}
