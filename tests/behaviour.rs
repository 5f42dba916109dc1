//! HTTP-level behaviour: coalescing, the LRU cap, passthrough of NARs larger than the cache,
//! path validation, upstream failure handling, HEAD and Range.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lru_cap_holds_and_oversized_nars_stream_through() {
    let f = fixture().await;
    let up = Upstream::start(&f.cache).await;
    let work = tempfile::tempdir().unwrap();
    let cap: u64 = 1 << 20;
    let a = Appliance::start(
        &work.path().join("cache"),
        &[up.url()],
        &f.public_key,
        |a| a.max_cache_size = Some("1MiB".into()),
    )
    .await;
    for blob in &f.blobs {
        let out = nix_copy(
            &a.url(),
            &f.public_key,
            blob,
            &work.path().join(Fixture::hash(blob)),
        )
        .await;
        assert_ok(&out);
        let size = a.metric("nixgate_cache_size_bytes").await;
        assert!(size <= cap, "cache holds {size} bytes over the {cap} cap");
        let on_disk: u64 = files(&a.cache_dir, "nar")
            .iter()
            .chain(files(&a.cache_dir, "narinfo").iter())
            .map(|p| p.metadata().unwrap().len())
            .sum();
        assert_eq!(on_disk, size, "index and disk agree");
    }
    assert!(a.metric("nixgate_evictions_total").await >= 2);
    // The most recent survives, the oldest is gone.
    let last = f.nar_url(f.blobs.last().unwrap());
    let first = f.nar_url(&f.blobs[0]);
    let names: Vec<String> = files(&a.cache_dir, "nar")
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().any(|n| last.ends_with(n.as_str())));
    assert!(!names.iter().any(|n| first.ends_with(n.as_str())));

    // 3 MB NAR, 1 MiB cache: served correctly, not stored.
    let out = nix_copy(&a.url(), &f.public_key, &f.big, &work.path().join("big")).await;
    assert_ok(&out);
    let big = f.nar_url(&f.big);
    assert!(!files(&a.cache_dir, "nar")
        .iter()
        .any(|p| big.ends_with(&*p.file_name().unwrap().to_string_lossy())));
    assert!(a.metric("nixgate_cache_size_bytes").await <= cap);
    a.stop().await;
}

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
    assert_eq!(
        get(&nar_url, &[("range", "bytes=99999999-")]).await.status,
        416
    );
    // A last-byte-pos past the end (even u64::MAX) is clamped to the end (RFC 9110).
    let rest = get(&nar_url, &[("range", "bytes=5-18446744073709551615")]).await;
    assert_eq!(rest.status, 206);
    assert!(rest.bytes == expected[5..]);
    assert_eq!(
        rest.headers["content-range"],
        format!("bytes 5-{}/{}", expected.len() - 1, expected.len()).as_str()
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

/// Unmounts the tmpfs when the test ends, however it ends.
struct Mount(std::path::PathBuf);
impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_disk_serves_the_download_uncached_and_loses_nothing() {
    let f = fixture().await;
    let up = Upstream::start(&f.cache).await;
    let work = tempfile::tempdir().unwrap();
    let disk = work.path().join("disk");
    std::fs::create_dir_all(&disk).unwrap();
    // A 2 MiB filesystem (needs root, as the rest of the suite does for nix).
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&disk)
        .status()
        .unwrap();
    assert!(st.success(), "cannot mount a tmpfs: the test needs root");
    let _mount = Mount(disk.clone());
    // The cap says 10 MiB, the disk holds 2: the 3 MB NAR runs out of space mid-write and
    // is relayed to the client uncached, still verified (a full disk degrades, issue 11).
    let a = Appliance::start(&disk.join("cache"), &[up.url()], &f.public_key, |a| {
        a.max_cache_size = Some("10MiB".into())
    })
    .await;
    let out = nix_copy(&a.url(), &f.public_key, &f.big, &work.path().join("big")).await;
    assert_ok(&out);
    let g = get(&format!("{}/{}", a.url(), f.nar_url(&f.big)), &[]).await;
    assert_eq!((g.status, g.body_error.as_deref()), (200, None));
    assert!(
        files(&a.cache_dir, "tmp").is_empty(),
        "temp file left on a full disk"
    );
    assert!(files(&a.cache_dir, "nar").is_empty());
    // The space is given back, so smaller paths are still cached, and earlier ones are intact.
    let out = nix_copy(&a.url(), &f.public_key, &f.top, &work.path().join("top")).await;
    assert_ok(&out);
    assert!(!files(&a.cache_dir, "nar").is_empty());
    a.stop().await;
}
