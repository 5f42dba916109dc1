//! The HTTP surface: path validation (malformed and traversal paths reach nothing),
//! methods, nix-cache-info, HEAD, Range, `Cache-Control: only-if-cached`, health routes.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_and_traversal_paths_touch_nothing() {
    let f = fixture().await;
    let up = Upstream::start(&f.cache).await;
    let work = tempfile::tempdir().unwrap();
    let a = Appliance::start_default(&work.path().join("cache"), &up, &f.public_key).await;
    for p in [
        "/../../etc/passwd",
        "/nar/../../../etc/passwd",
        "/nar/..%2f..%2f..%2fetc%2fpasswd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/log/..%2f..%2fetc%2fpasswd",
        "/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee.narinfo",
        "/short.narinfo",
        "/nar/zzzz.nar.xz",
        "/nix-cache-info/../VERSION",
        "/VERSION",
        "/tmp",
    ] {
        let g = get(&format!("{}{p}", a.url()), &[]).await;
        assert!(g.status == 400 || g.status == 404, "{p} -> {}", g.status);
        assert!(!g.body.contains("root:"), "{p} leaked a file");
    }
    assert_eq!(
        request("POST", &format!("{}/nix-cache-info", a.url()), &[])
            .await
            .status,
        405
    );
    assert_eq!(
        up.total.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "invalid paths reached the upstream"
    );
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn head_range_only_if_cached_and_cache_info() {
    let f = fixture().await;
    let up = Upstream::start(&f.cache).await;
    let work = tempfile::tempdir().unwrap();
    let a = Appliance::start_default(&work.path().join("cache"), &up, &f.public_key).await;
    let info = get(&format!("{}/nix-cache-info", a.url()), &[]).await;
    assert_eq!(info.status, 200);
    assert!(info.body.contains("StoreDir: /nix/store") && info.body.contains("WantMassQuery: 1"));

    let ni = format!("{}/{}.narinfo", a.url(), Fixture::hash(&f.blobs[1]));
    // only-if-cached: a peer never makes us fetch.
    assert_eq!(
        get(&ni, &[("cache-control", "only-if-cached")])
            .await
            .status,
        504
    );
    assert_eq!(up.total.load(std::sync::atomic::Ordering::SeqCst), 0);

    let head = request("HEAD", &ni, &[]).await;
    assert_eq!(head.status, 200);
    assert!(head.bytes.is_empty(), "HEAD sent a body");
    let body = get(&ni, &[]).await;
    assert_eq!(
        head.headers["content-length"],
        body.bytes.len().to_string().as_str()
    );
    assert_eq!(body.headers["content-type"], "text/x-nix-narinfo");
    assert!(body
        .body
        .contains(&format!("URL: {}", f.nar_url(&f.blobs[1]))));

    let nar_url = format!("{}/{}", a.url(), f.nar_url(&f.blobs[1]));
    let full = get(&nar_url, &[]).await;
    assert_eq!(full.status, 200);
    let expected = std::fs::read(f.cache.join(f.nar_url(&f.blobs[1]))).unwrap();
    assert!(full.bytes == expected[..]);
    assert_eq!(full.headers["content-type"], "application/x-nix-nar");
    let part = get(&nar_url, &[("range", "bytes=100-199")]).await;
    assert_eq!(part.status, 206);
    assert!(part.bytes == expected[100..200]);
    assert_eq!(
        part.headers["content-range"],
        format!("bytes 100-199/{}", expected.len()).as_str()
    );
    let tail = get(&nar_url, &[("range", "bytes=-10")]).await;
    assert!(tail.bytes == expected[expected.len() - 10..]);
    // A last-byte-pos past the end (even u64::MAX) is clamped to the end (RFC 9110).
    let rest = get(&nar_url, &[("range", "bytes=5-18446744073709551615")]).await;
    assert_eq!(rest.status, 206);
    assert!(rest.bytes == expected[5..]);
    assert_eq!(
        rest.headers["content-range"],
        format!("bytes 5-{}/{}", expected.len() - 1, expected.len()).as_str()
    );
    assert_eq!(
        get(&nar_url, &[("range", "bytes=99999999-")]).await.status,
        416
    );
    let nar_head = request("HEAD", &nar_url, &[]).await;
    assert!(nar_head.bytes.is_empty());
    assert_eq!(
        nar_head.headers["content-length"],
        expected.len().to_string().as_str()
    );
    // Cached now, so only-if-cached is answered.
    assert_eq!(
        get(&nar_url, &[("cache-control", "only-if-cached")])
            .await
            .status,
        200
    );
    assert_eq!(get(&format!("{}/healthz", a.url()), &[]).await.status, 200);
    assert_eq!(get(&format!("{}/readyz", a.url()), &[]).await.status, 200);
    a.stop().await;
}
