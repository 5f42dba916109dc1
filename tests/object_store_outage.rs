//! The object-store tier when the bucket fails: answering 403 (a wrong secret, the real
//! binary, whose debug log must show neither the secret nor a signature), answering 500,
//! killed, or hanging after its response headers. Every runner completes through the
//! upstream at about its usual speed and `/readyz` stays 200: an outage of the bucket costs
//! only its benefit. (Its circuit closing again: `object_store_recovery.rs`.)

mod common;

use std::time::Duration;

use common::*;

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
    let flags = site_flags(&up, &f.public_key, sw.url(BUCKET, "w"));
    let mut cmd = serve_command(&work.path().join("cache"), "info,nixgate=debug", &flags);
    cmd.env("AWS_SECRET_ACCESS_KEY", wrong);
    let (mut child, base) = spawn_serving(cmd, &log).await;
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

/// An "object store" that answers every request with its response headers (a body of
/// unknown length), then sends nothing, holding the connection open; its URL.
async fn hanging_store() -> String {
    fake_store(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        true,
    )
    .await
}

/// An "object store" that answers every request with `reply` and then, when `hold`, keeps
/// the connection open without a byte more (else closes it); its `--object-store` URL.
async fn fake_store(reply: &'static str, hold: bool) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(reply.as_bytes()).await;
                if hold {
                    std::future::pending::<()>().await;
                }
            });
        }
    });
    format!("s3://{BUCKET}/h?endpoint=http://{addr}&region=us-east-1")
}

/// The bucket hangs after its response headers, for narinfos and NARs alike: the runner
/// pays the narinfo hedge once (the upstream is asked when the bucket has not answered
/// within 250 ms; the bucket is then skipped until the overdue read ends, and its circuit
/// opens when it does), never a stall. Bound: twice the same copy without a bucket,
/// measured here, plus 0.5 s (before the hedge: 6.5-9.7 s against ~0.6 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bucket_hanging_after_headers_costs_at_most_a_hedge() {
    use_test_credentials();
    let f = fixture().await;
    let up = Upstream::start(&f.cache).await;
    let work = tempfile::tempdir().unwrap();
    let paths = all_paths(f);
    let plain = Appliance::options(&work.path().join("p"), &f.public_key)
        .upstream(up.url())
        .with(|s| {
            s.no_mdns = Some(true);
            s.no_fleet = true;
        })
        .start()
        .await;
    let started = std::time::Instant::now();
    assert_ok(&nix_copy_paths(&plain.url(), &f.public_key, &paths, &work.path().join("rp")).await);
    let alone = started.elapsed();
    plain.stop().await;
    let a = site(
        &work.path().join("a"),
        &up,
        &f.public_key,
        hanging_store().await,
    )
    .await;
    let started = std::time::Instant::now();
    assert_ok(&nix_copy_paths(&a.url(), &f.public_key, &paths, &work.path().join("r")).await);
    let took = started.elapsed();
    eprintln!("8 paths through a hanging bucket in {took:?}, without a bucket in {alone:?}");
    let bound = alone * 2 + Duration::from_millis(500);
    assert!(
        took <= bound,
        "a hanging bucket held the runner {took:?} (without one: {alone:?})"
    );
    // The overdue read ends within its deadline, after the runner: counted, circuit open.
    let timeout = "nixgate_object_store_errors_total{kind=\"timeout\"}";
    let counted = || async { a.metric(timeout).await >= 1 };
    wait_until(
        Duration::from_secs(15),
        "the hang counted as a timeout",
        counted,
    )
    .await;
    assert_eq!(a.metric("nixgate_object_store_circuit_state").await, 2);
    assert_eq!(get(&format!("{}/readyz", a.url()), &[]).await.status, 200);
    a.stop().await;
}

/// A bucket answering 500 to everything (its backend down behind a live gateway).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bucket_answering_500_costs_nothing_but_its_benefit() {
    use_test_credentials();
    let f = fixture().await;
    let up = Upstream::start(&f.cache).await;
    let work = tempfile::tempdir().unwrap();
    let reply =
        "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    let a = site(
        &work.path().join("a"),
        &up,
        &f.public_key,
        fake_store(reply, false).await,
    )
    .await;
    let started = std::time::Instant::now();
    let paths = all_paths(f);
    assert_ok(&nix_copy_paths(&a.url(), &f.public_key, &paths, &work.path().join("r")).await);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(30),
        "a failing bucket held the runner {took:?}"
    );
    assert!(
        a.metric("nixgate_object_store_errors_total{kind=\"server\"}")
            .await
            >= 1
    );
    assert_eq!(get(&format!("{}/readyz", a.url()), &[]).await.status, 200);
    eprintln!("8 paths through a bucket answering 500 in {took:?}");
    a.stop().await;
}
