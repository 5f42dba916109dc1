//! Upstream failures: 404s are remembered (negative cache), a 5xx upstream is a 503 with
//! Retry-After (or a configured 404), never a cached 404, and a dead upstream is skipped
//! for the next one.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upstream_404s_are_remembered_and_outages_are_not_404s() {
    let f = fixture().await;
    let up = Upstream::start(&f.cache).await;
    let work = tempfile::tempdir().unwrap();
    let a = Appliance::start_default(&work.path().join("cache"), &up, &f.public_key).await;
    let absent = "/0000000000000000000000000000000z.narinfo";
    assert_eq!(get(&format!("{}{absent}", a.url()), &[]).await.status, 404);
    assert_eq!(get(&format!("{}{absent}", a.url()), &[]).await.status, 404);
    assert_eq!(up.count(absent), 1, "negative cache absorbs the repeat");

    // 5xx upstream: 503 with Retry-After, and nothing cached.
    up.fail_5xx.store(true, std::sync::atomic::Ordering::SeqCst);
    let h = format!("/{}.narinfo", Fixture::hash(&f.top));
    let g = get(&format!("{}{h}", a.url()), &[]).await;
    assert_eq!(g.status, 503);
    assert_eq!(g.headers["retry-after"], "5");
    a.stop().await;

    // Configured to answer 404 instead.
    let b = Appliance::start(
        &work.path().join("cache2"),
        &[up.url()],
        &f.public_key,
        |a| a.upstream_down_status = Some(404),
    )
    .await;
    assert_eq!(get(&format!("{}{h}", b.url()), &[]).await.status, 404);
    b.stop().await;

    // Several upstreams: the first is down (nothing listens), the second answers.
    up.fail_5xx
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let c = Appliance::start(
        &work.path().join("cache3"),
        &[dead_url, up.url()],
        &f.public_key,
        |_| {},
    )
    .await;
    let out = nix_copy(&c.url(), &f.public_key, &f.top, &work.path().join("c")).await;
    assert_ok(&out);
    assert!(
        c.metric("nixgate_upstream_requests_total{status=\"connect_error\"}")
            .await
            >= 1
    );
    c.stop().await;
}

/// The circuit closes by itself: once the upstream answers again, a background probe closes
/// it within seconds, with no runner asking anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_circuit_heals_without_traffic() {
    let f = fixture().await;
    let up = Upstream::start(&f.cache).await;
    let work = tempfile::tempdir().unwrap();
    let a = Appliance::start_default(&work.path().join("cache"), &up, &f.public_key).await;
    let circuit = || async {
        let s = get(&format!("{}/_status/v1", a.url()), &[]).await;
        let v: serde_json::Value = serde_json::from_str(&s.body).unwrap();
        v["upstreams"][0]["circuit"].as_str().unwrap().to_owned()
    };
    up.fail_5xx.store(true, Ordering::SeqCst);
    for i in 0..8 {
        // Distinct keys: each miss asks the upstream until the circuit opens.
        let url = format!("{}/{}.narinfo", a.url(), format!("{i}").repeat(32));
        assert_eq!(get(&url, &[]).await.status, 503);
    }
    assert_eq!(circuit().await, "open");
    let probes_before = up.count("/nix-cache-info");
    up.fail_5xx.store(false, Ordering::SeqCst);
    wait_until(
        Duration::from_secs(20),
        "the circuit to close by itself",
        || async { circuit().await == "closed" },
    )
    .await;
    assert!(
        up.count("/nix-cache-info") > probes_before,
        "the probe asked the upstream"
    );
    // And runners are served at once.
    let info = format!("{}/{}.narinfo", a.url(), Fixture::hash(&f.top));
    assert_eq!(get(&info, &[]).await.status, 200);
    a.stop().await;
}
