//! Request coalescing: many concurrent cold requests for one NAR make a single upstream
//! request, and every waiter streams the bytes as they arrive.

mod common;

use std::time::Instant;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_cold_requests_make_one_upstream_request_and_stream() {
    let f = fixture().await;
    let up = Upstream::start(&f.cache).await;
    up.rate
        .store(2_000_000, std::sync::atomic::Ordering::SeqCst); // ~1.5 s for the 3 MB NAR
    let work = tempfile::tempdir().unwrap();
    let a = Appliance::start_default(&work.path().join("cache"), &up, &f.public_key).await;
    // The narinfo first, as Nix does, so the NAR's size and upstream URL are known.
    assert_eq!(
        get(
            &format!("{}/{}.narinfo", a.url(), Fixture::hash(&f.big)),
            &[]
        )
        .await
        .status,
        200
    );
    let nar = f.nar_url(&f.big);
    let expected = std::fs::read(f.cache.join(&nar)).unwrap();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let url = format!("{}/{nar}", a.url());
        tasks.push(tokio::spawn(async move {
            let client =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http::<http_body_util::Empty<bytes::Bytes>>();
            let resp = client.get(url.parse().unwrap()).await.unwrap();
            let first_byte = started.elapsed();
            use http_body_util::BodyExt;
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (first_byte, body)
        }));
    }
    let mut ttfb = Vec::new();
    for t in tasks {
        let (first, body) = t.await.unwrap();
        assert_eq!(body.len(), expected.len());
        assert!(body == expected[..], "waiter got different bytes");
        ttfb.push(first);
    }
    let total = started.elapsed();
    assert_eq!(
        up.count(&nar),
        1,
        "exactly one upstream request for 20 concurrent clients"
    );
    assert!(a.metric("nixgate_coalesced_requests_total").await >= 19);
    // Waiters stream as bytes arrive: headers come long before the download ends.
    let slowest = ttfb.iter().max().unwrap();
    assert!(
        *slowest < total / 2,
        "slowest first byte {slowest:?}, download {total:?}"
    );
    a.stop().await;
}
