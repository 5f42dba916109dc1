//! The object-store tier (`--object-store`) against a real S3 store (SeaweedFS, SigV4
//! checked): two sites that are not peers share one bucket, so the second gets a whole
//! closure with the upstream stopped; the bucket is itself a Nix binary cache; tampered
//! objects are refused and the runner completes through the upstream; a killed or refusing
//! (403) bucket costs nothing but its benefit.

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use common::*;

/// Every path of the fixture's closures that the tests copy.
fn all_paths(f: &Fixture) -> Vec<&str> {
    let mut paths = vec![f.top.as_str(), f.big.as_str()];
    paths.extend(f.blobs.iter().map(String::as_str));
    paths
}

/// An appliance in front of `up` with the bucket `url`; never a peer of another.
async fn site(dir: &Path, up: &Upstream, key: &str, url: String) -> Appliance {
    Appliance::options(dir, key)
        .upstream(up.url())
        .with(|s| {
            s.object_store = Some(url);
            s.no_mdns = Some(true);
            s.no_fleet = true;
        })
        .start()
        .await
}

/// Waits until `a` wrote `n` paths to the bucket and its queue is empty.
async fn drained(a: &Appliance, n: u64) {
    wait_until(
        Duration::from_secs(60),
        "the write-behind to drain",
        || async {
            a.metric("nixgate_object_store_uploads_total").await >= n
                && a.metric("nixgate_object_store_queue_depth").await == 0
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_sites_share_one_bucket_and_the_bucket_is_a_binary_cache() {
    let f = fixture().await;
    let sw = Seaweed::start().await;
    let up = Upstream::start(&f.cache).await;
    let work = tempfile::tempdir().unwrap();
    let url = sw.url(BUCKET, "org");
    let a = site(&work.path().join("a"), &up, &f.public_key, url.clone()).await;
    let b = site(&work.path().join("b"), &up, &f.public_key, url).await;
    let paths = all_paths(f);
    let t = std::time::Instant::now();
    let out = nix_copy_paths(&a.url(), &f.public_key, &paths, &work.path().join("ra")).await;
    assert_ok(&out);
    let from_upstream = t.elapsed();
    // top, dep, big and five blobs.
    drained(&a, 8).await;
    assert!(
        a.metric("nixgate_object_store_bytes_total{direction=\"written\"}")
            .await
            > 3_000_000
    );
    assert!(sw.get("org/nix-cache-info").await.is_some());
    let status = get(&format!("{}/_status/v1", a.url()), &[]).await.body;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let row = &status["object_store"];
    assert_eq!(row["circuit"], "closed", "{row}");
    assert!(row["written_bytes"].as_u64().unwrap() > 3_000_000, "{row}");
    assert_eq!(row["url"], format!("{}{BUCKET}/org/", sw.endpoint()));

    up.down.store(true, Ordering::SeqCst);
    let before = up.total.load(Ordering::SeqCst);
    let t = std::time::Instant::now();
    let out = nix_copy_paths(&b.url(), &f.public_key, &paths, &work.path().join("rb")).await;
    assert_ok(&out);
    let from_bucket = t.elapsed();
    let t = std::time::Instant::now();
    let out = nix_copy_paths(&b.url(), &f.public_key, &paths, &work.path().join("rb2")).await;
    assert_ok(&out);
    let from_disk = t.elapsed();
    eprintln!("closure (8 paths, ~5 MB): upstream via A {from_upstream:?}, bucket via B {from_bucket:?}, B's disk {from_disk:?}");
    assert_eq!(
        up.total.load(Ordering::SeqCst),
        before,
        "site B asked the upstream nothing"
    );
    assert_eq!(
        b.metric("nixgate_fetched_bytes_total{source=\"upstream\"}")
            .await,
        0
    );
    let read = b
        .metric("nixgate_object_store_bytes_total{direction=\"read\"}")
        .await;
    assert!(
        read > 3_000_000,
        "site B read the closure from the bucket ({read} bytes)"
    );
    assert_eq!(
        b.metric("nixgate_object_store_errors_total{kind=\"refused\"}")
            .await,
        0
    );
    assert_eq!(get(&format!("{}/readyz", b.url()), &[]).await.status, 200);

    // The bucket is itself a binary cache: Nix verifies every path straight from it.
    let direct = sw.http_cache("org");
    let out = nix_copy_paths(&direct, &f.public_key, &paths, &work.path().join("rd")).await;
    assert_ok(&out);
    a.stop().await;
    b.stop().await;
}

/// Flips a byte in the middle of `bytes` (same length: only the hash checks can tell).
fn tampered(bytes: &Bytes) -> Bytes {
    let mut v = bytes.to_vec();
    let mid = v.len() / 2;
    v[mid] ^= 0xff;
    Bytes::from(v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tampered_objects_are_refused_and_the_runner_completes_through_the_upstream() {
    let f = fixture().await;
    let sw = Seaweed::start().await;
    let up = Upstream::start(&f.cache).await;
    let work = tempfile::tempdir().unwrap();
    let url = sw.url(BUCKET, "t");
    let a = site(&work.path().join("a"), &up, &f.public_key, url.clone()).await;
    let (bad_nar, bad_sig) = (&f.blobs[0], &f.blobs[1]);
    let paths = [bad_nar.as_str(), bad_sig.as_str()];
    assert_ok(&nix_copy_paths(&a.url(), &f.public_key, &paths, &work.path().join("ra")).await);
    drained(&a, 2).await;
    a.stop().await;

    // A NAR object rewritten (same length), and a narinfo whose signature is not valid.
    let nar_key = format!("t/{}", f.nar_url(bad_nar));
    let original = sw.get(&nar_key).await.expect("the NAR was written");
    assert_eq!(sw.put(&nar_key, tampered(&original)).await, 200);
    let ni_key = format!("t/{}.narinfo", Fixture::hash(bad_sig));
    let ni = String::from_utf8(sw.get(&ni_key).await.unwrap().to_vec()).unwrap();
    let sig = field(&ni, "Sig");
    let (name, b64) = sig.split_once(':').unwrap();
    let mut chars: Vec<char> = b64.chars().collect();
    chars[10] = if chars[10] == 'A' { 'B' } else { 'A' };
    let bad = format!("{name}:{}", chars.into_iter().collect::<String>());
    let forged = with_field(&ni, "Sig", &bad);
    assert_ne!(forged, ni);
    assert_eq!(sw.put(&ni_key, Bytes::from(forged)).await, 200);

    let b = site(&work.path().join("b"), &up, &f.public_key, url).await;
    let out = nix_copy_paths(&b.url(), &f.public_key, &paths, &work.path().join("rb")).await;
    assert_ok(&out);
    assert!(
        b.metric("nixgate_object_store_errors_total{kind=\"refused\"}")
            .await
            >= 2
    );
    assert!(
        b.metric("nixgate_fetched_bytes_total{source=\"upstream\"}")
            .await
            > 400_000
    );
    // Site B's write-behind repairs the bucket: the refused objects are written again.
    wait_until(
        Duration::from_secs(60),
        "the tampered NAR to be rewritten",
        || async { sw.get(&nar_key).await.as_ref() == Some(&original) },
    )
    .await;
    b.stop().await;
}

/// The real binary with a wrong secret key: the bucket answers 403 to every request; the
/// runner completes through the upstream, the refusals are counted as `denied`, and neither
/// the secret nor a presigned URL's signature reaches the (debug) log.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bucket_answering_403_costs_nothing_and_no_secret_is_logged() {
    let f = fixture().await;
    let sw = Seaweed::start().await;
    let up = Upstream::start(&f.cache).await;
    let work = tempfile::tempdir().unwrap();
    let log = work.path().join("serve.log");
    let wrong = "wrong-secret-0123456789";
    let flags = [
        "--upstream".into(),
        up.url(),
        "--trusted-public-key".into(),
        f.public_key.clone(),
        "--object-store".into(),
        sw.url(BUCKET, "w"),
    ];
    let mut child = serve_command(&work.path().join("cache"), "info,nixgate=debug", &flags)
        .env("AWS_SECRET_ACCESS_KEY", wrong)
        .stderr(std::process::Stdio::from(
            std::fs::File::create(&log).unwrap(),
        ))
        .spawn()
        .unwrap();
    let mut port = None;
    wait_until(Duration::from_secs(15), "nixgate to serve", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        port = text.lines().find_map(serving_port);
        std::future::ready(port.is_some())
    })
    .await;
    let base = format!("http://127.0.0.1:{}", port.unwrap());
    let paths = all_paths(f);
    assert_ok(&nix_copy_paths(&base, &f.public_key, &paths, &work.path().join("r")).await);
    let m = get(&format!("{base}/metrics"), &[]).await.body;
    let denied = m.lines().find_map(|l| {
        let v = l.strip_prefix("nixgate_object_store_errors_total{kind=\"denied\"} ")?;
        v.parse::<u64>().ok()
    });
    assert!(denied.is_some_and(|d| d >= 1), "{m}");
    assert_eq!(get(&format!("{base}/readyz"), &[]).await.status, 200);
    assert!(
        sw.get("w/nix-cache-info").await.is_none(),
        "nothing written without access"
    );
    sigterm(&child);
    assert!(exit_within(&mut child, Duration::from_secs(20))
        .await
        .is_some());
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("object store"), "{logged}");
    for secret in [wrong, "X-Amz-Signature", "X-Amz-Credential"] {
        assert!(
            !logged.contains(secret),
            "the log shows {secret}:\n{logged}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_bucket_costs_nothing_but_its_benefit() {
    let f = fixture().await;
    let mut sw = Seaweed::start().await;
    let up = Upstream::start(&f.cache).await;
    let work = tempfile::tempdir().unwrap();
    let paths = all_paths(f);
    // Killed (SIGKILL) after the appliance started: connections refused.
    let b = site(
        &work.path().join("b"),
        &up,
        &f.public_key,
        sw.url(BUCKET, "k"),
    )
    .await;
    sw.kill().await;
    let started = std::time::Instant::now();
    assert_ok(&nix_copy_paths(&b.url(), &f.public_key, &paths, &work.path().join("rb")).await);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(30),
        "a dead bucket slowed the runner: {took:?}"
    );
    eprintln!("8 paths through a killed bucket in {took:?}");
    assert!(
        b.metric("nixgate_object_store_errors_total{kind=\"connect\"}")
            .await
            >= 1
    );
    assert_eq!(get(&format!("{}/readyz", b.url()), &[]).await.status, 200);
    b.stop().await;
}

/// An "object store" that answers every request with headers and a few bytes, then hangs
/// (holding the connection open); its URL.
async fn hanging_store() -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let head = "HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\nStoreDir";
                let _ = s.write_all(head.as_bytes()).await;
                tokio::time::sleep(Duration::from_secs(600)).await;
            });
        }
    });
    format!("s3://{BUCKET}/h?endpoint=http://{addr}&region=us-east-1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bucket_hanging_after_headers_costs_seconds_not_the_run() {
    use_test_credentials();
    let f = fixture().await;
    let up = Upstream::start(&f.cache).await;
    let work = tempfile::tempdir().unwrap();
    let a = site(
        &work.path().join("a"),
        &up,
        &f.public_key,
        hanging_store().await,
    )
    .await;
    let started = std::time::Instant::now();
    let paths = all_paths(f);
    assert_ok(&nix_copy_paths(&a.url(), &f.public_key, &paths, &work.path().join("r")).await);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(30),
        "a hanging bucket held the runner {took:?}"
    );
    assert!(
        a.metric("nixgate_object_store_errors_total{kind=\"timeout\"}")
            .await
            >= 1
    );
    assert_eq!(get(&format!("{}/readyz", a.url()), &[]).await.status, 200);
    eprintln!("8 paths through a hanging bucket in {took:?}");
    a.stop().await;
}

/// An upload to site A is written to the bucket and substituted at site B (which trusts A's
/// signing key) with the upstream down; `DELETE` at A removes its narinfo from the bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upload_reaches_the_other_site_and_delete_unpublishes_it() {
    let f = fixture().await;
    let sw = Seaweed::start().await;
    let up = Upstream::start(&f.cache).await;
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let (sk, public) = key_pair(&work.join("keys"), "nixgate-s3-uploads-1");
    let url = sw.url(BUCKET, "u");
    let bucket = url.clone();
    let a = uploading(&work.join("a"), &up, &[&f.public_key], move |s| {
        s.signing_key_file = Some(sk);
        s.object_store = Some(bucket);
        s.no_mdns = Some(true);
        s.no_fleet = true;
    })
    .await;
    let path = build_unique("s3", 300_000);
    let right = netrc(&work.join("n"), TOKEN);
    assert_ok(&nix_push(&a.url(), Some(&right), &path, work).await);
    drained(&a, 1).await;

    up.down.store(true, Ordering::SeqCst);
    let b = Appliance::options(&work.join("b"), &public)
        .upstream(up.url())
        .with(|s| {
            s.object_store = Some(url);
            s.no_mdns = Some(true);
            s.no_fleet = true;
        })
        .start()
        .await;
    assert_ok(&nix_copy(&b.url(), &public, &path, &work.join("rb")).await);
    assert!(
        b.metric("nixgate_object_store_bytes_total{direction=\"read\"}")
            .await
            > 300_000
    );

    let key = format!("u/{}.narinfo", Fixture::hash(&path));
    assert!(sw.get(&key).await.is_some());
    let del = format!("{}/{}.narinfo", a.url(), Fixture::hash(&path));
    assert_eq!(send("DELETE", &del, Some(BEARER), vec![]).await.0, 200);
    assert!(
        sw.get(&key).await.is_none(),
        "the removed upload left the bucket"
    );
    a.stop().await;
    b.stop().await;
}
