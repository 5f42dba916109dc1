//! A slow object store (every request answered 600 ms late, beyond the 250 ms narinfo
//! hedge) with the upstream down: the hedge asks the upstream too, which fails, and the
//! bucket's late answers are still taken: the runner completes from the bucket, as it did
//! before the hedge. Outages of the bucket: `object_store_outage.rs`.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_bucket_still_serves_when_the_upstream_is_down() {
    let f = fixture().await;
    let sw = Seaweed::start().await;
    let up = Upstream::start(&f.cache).await;
    let work = tempfile::tempdir().unwrap();
    // Site A fills the bucket with every path.
    fill(f, &up, work.path(), sw.url(BUCKET, "slow")).await;
    let paths = all_paths(f);
    let switch = Switch::start(&sw, Mode::Delay(Duration::from_millis(600))).await;
    let b = site(
        &work.path().join("b"),
        &up,
        &f.public_key,
        switch.url("slow"),
    )
    .await;
    up.down.store(true, Ordering::SeqCst);
    let started = std::time::Instant::now();
    assert_ok(&nix_copy_paths(&b.url(), &f.public_key, &paths, &work.path().join("rb")).await);
    eprintln!(
        "8 paths from a slow bucket, upstream down, in {:?}",
        started.elapsed()
    );
    let read = b
        .metric("nixgate_object_store_bytes_total{direction=\"read\"}")
        .await;
    assert!(
        read > 3_000_000,
        "the closure came from the bucket ({read} bytes)"
    );
    assert_eq!(b.metric("nixgate_object_store_circuit_state").await, 0);
    b.stop().await;
}
