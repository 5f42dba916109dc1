//! Upstream failures: 404s are remembered (negative cache), a 5xx upstream is a 503 with
//! Retry-After (or a configured 404), never a cached 404, and a dead upstream is skipped
//! for the next one.

mod common;

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
