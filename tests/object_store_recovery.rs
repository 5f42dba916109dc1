//! The object store's circuit closes again without runners: a bucket that hung opened it,
//! and once the bucket answers again the background prober (a signed
//! `GET <prefix>/nix-cache-info`) is the first to reach it, closes the circuit, and the
//! runner's next miss reads from the bucket again: nothing from the upstream. No runner
//! request is ever the probe. Outages themselves: `object_store_outage.rs`.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_circuit_closes_in_the_background_and_the_next_miss_reads_the_bucket() {
    let f = fixture().await;
    let sw = Seaweed::start().await;
    let up = Upstream::start(&f.cache).await;
    let work = tempfile::tempdir().unwrap();
    // Site A fills the bucket with every path.
    fill(f, &up, work.path(), sw.url(BUCKET, "rec")).await;
    // Site B reaches the same bucket through the switch, which hangs: its circuit opens.
    let switch = Switch::start(&sw, Mode::Hang).await;
    let via = switch.url("rec");
    let b = site(&work.path().join("b"), &up, &f.public_key, via).await;
    let circuit = "nixgate_object_store_circuit_state";
    assert_eq!(b.metric(circuit).await, 0);
    let first = [f.blobs[0].as_str()];
    assert_ok(&nix_copy_paths(&b.url(), &f.public_key, &first, &work.path().join("r1")).await);
    let open = || async { b.metric(circuit).await == 2 };
    wait_until(Duration::from_secs(20), "the circuit to open", open).await;
    // The bucket is back: only the prober may find out.
    switch.set(Mode::Forward);
    let closed = || async { b.metric(circuit).await == 0 };
    wait_until(Duration::from_secs(30), "the prober to close it", closed).await;
    let forwarded = switch.forwarded();
    let probe = forwarded.first().map(String::as_str).unwrap_or_default();
    assert!(
        probe.starts_with("GET /") && probe.contains("/rec/nix-cache-info?"),
        "the first request to reach the bucket again was not the probe: {forwarded:?}"
    );
    // The runner's next miss reads its NAR from the bucket: the upstream is asked for no NAR
    // (its narinfo may be hedged with the upstream if the bucket is slow to answer it).
    let asked = up.nar_requests();
    let from_upstream = "nixgate_fetched_bytes_total{source=\"upstream\"}";
    let fetched = b.metric(from_upstream).await;
    let read = "nixgate_object_store_bytes_total{direction=\"read\"}";
    let was_read = b.metric(read).await;
    let second = [f.blobs[1].as_str()];
    assert_ok(&nix_copy_paths(&b.url(), &f.public_key, &second, &work.path().join("r2")).await);
    assert_eq!(up.nar_requests(), asked, "the upstream was asked for a NAR");
    let narinfo_at_most = 4096;
    assert!(
        b.metric(from_upstream).await <= fetched + narinfo_at_most,
        "NAR bytes came from the upstream"
    );
    let now_read = b.metric(read).await;
    assert!(
        now_read >= was_read + 400_000,
        "the blob came from the bucket ({was_read} -> {now_read} bytes read)"
    );
    b.stop().await;
}
