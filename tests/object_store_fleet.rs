//! The object-store tier in a fleet: the key's owner asks the bucket, a member that waits on
//! an owner does not, so a fleet reads each object from the bucket once between its members
//! (as it fetches each from the upstream once).

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;

/// Two configured members of one fleet (fixed ids, so the ring is the same every run), both
/// with the bucket `url`; returned once each sees the other as an owner.
async fn members(dir: &std::path::Path, up: &Upstream, key: &str, url: &str) -> Vec<Appliance> {
    let listeners: Vec<_> = (0..2).map(|_| bound_listener()).collect();
    let ports: Vec<u16> = listeners.iter().map(|(_, p)| *p).collect();
    let mut all = Vec::new();
    for (i, (listener, port)) in listeners.into_iter().enumerate() {
        let other = ports.iter().find(|p| **p != port).unwrap();
        let peers = vec![format!("http://127.0.0.1:{other}")];
        let url = url.to_owned();
        let a = Appliance::options(&dir.join(format!("m{i}")), key)
            .upstream(up.url())
            .listener(listener)
            .peer_id(&format!("{:032x}", 0x5e_0000 + i))
            .with(move |s| {
                s.peers = Some(peers);
                s.object_store = Some(url);
                s.no_mdns = Some(true);
            })
            .start()
            .await;
        all.push(a);
    }
    for m in &all {
        wait_until(
            Duration::from_secs(10),
            "the other member as owner",
            || async { peer_rows(m).await.iter().filter(|p| p.owner).count() == 1 },
        )
        .await;
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fleet_reads_each_object_from_the_bucket_once_through_its_owner() {
    let f = fixture().await;
    let sw = Seaweed::start().await;
    let up = Upstream::start(&f.cache).await;
    let work = tempfile::tempdir().unwrap();
    let url = sw.url(BUCKET, "fleet");
    let paths = all_paths(f);

    // Another site fills the bucket.
    let c = site(&work.path().join("c"), &up, &f.public_key, url.clone()).await;
    assert_ok(&nix_copy_paths(&c.url(), &f.public_key, &paths, &work.path().join("rc")).await);
    drained(&c, 8).await;
    let written = c
        .metric("nixgate_object_store_bytes_total{direction=\"written\"}")
        .await;
    c.stop().await;

    up.down.store(true, Ordering::SeqCst);
    let m = members(work.path(), &up, &f.public_key, &url).await;
    assert_ok(&nix_copy_paths(&m[0].url(), &f.public_key, &paths, &work.path().join("r")).await);
    let read = "nixgate_object_store_bytes_total{direction=\"read\"}";
    let (r0, r1) = (m[0].metric(read).await, m[1].metric(read).await);
    let via_owner = m[0]
        .metric("nixgate_fetched_bytes_total{source=\"fleet\"}")
        .await;
    eprintln!("bucket bytes read: member 0 {r0}, member 1 {r1}; written by the filling site {written}; member 0 got {via_owner} from its owner");
    assert!(
        r1 > 0 && via_owner > 0,
        "the owner (member 1) asked the bucket for its keys"
    );
    // Read narinfos count as stored (with their NAR URL line, ~100 bytes each): a
    // NAR read twice would add 400 KB or more here.
    let once = written + 9 * 200;
    assert!(
        r0 + r1 <= once,
        "each object read once: {r0} + {r1} > {once}"
    );
    for a in m {
        a.stop().await;
    }
}
