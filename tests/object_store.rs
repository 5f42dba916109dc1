//! The object-store tier (`--object-store`) against a real S3 store (SeaweedFS, SigV4
//! checked): two sites that are not peers share one bucket, so the second gets a whole
//! closure with the upstream stopped; the bucket is itself a Nix binary cache; tampered
//! objects are refused and the runner completes through the upstream (and the bucket is
//! repaired); an upload reaches the other site; a site killed with writes queued loses
//! nothing the next fill does not restore. Outages: `object_store_outage.rs`.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use common::*;

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
    // NAR requests only: a narinfo the bucket is slow to answer (a loaded machine) is hedged
    // with the (stopped) upstream, by design.
    let before = up.nar_requests();
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
        up.nar_requests(),
        before,
        "site B asked the upstream for no NAR"
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

/// Whether the bucket holds `path`'s narinfo and NAR under `prefix`.
async fn in_bucket(sw: &Seaweed, f: &Fixture, prefix: &str, path: &str) -> bool {
    let narinfo = format!("{prefix}/{}.narinfo", Fixture::hash(path));
    let nar = format!("{prefix}/{}", f.nar_url(path));
    sw.get(&narinfo).await.is_some() && sw.get(&nar).await.is_some()
}

/// The real binary SIGKILLed right after its runner finished (writes still queued or under
/// way): whatever it left in the bucket, the next fill (another site) completes it, and the
/// bucket then holds every path of the closure, each narinfo with its NAR.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_site_killed_with_writes_queued_loses_nothing_the_next_fill_does_not_restore() {
    let f = fixture().await;
    let sw = Seaweed::start().await;
    let up = Upstream::start(&f.cache).await;
    let work = tempfile::tempdir().unwrap();
    let log = work.path().join("a.log");
    let flags = site_flags(&up, &f.public_key, sw.url(BUCKET, "k9"));
    let cmd = serve_command(&work.path().join("a"), "info", &flags);
    let (mut child, a) = spawn_serving(cmd, &log).await;
    let paths = all_paths(f);
    assert_ok(&nix_copy_paths(&a, &f.public_key, &paths, &work.path().join("ra")).await);
    child.kill().unwrap();
    child.wait().unwrap();
    let mut closure = paths.clone();
    closure.push(&f.dep);
    let mut left = 0;
    for p in &closure {
        left += usize::from(in_bucket(&sw, f, "k9", p).await);
    }
    eprintln!(
        "the killed site left {left} of {} paths in the bucket",
        closure.len()
    );
    // What a kill can leave, whatever the timing: a NAR without its narinfo (killed between
    // the two), and a path with neither (killed before its turn); and what a lifecycle rule
    // can leave: a narinfo that outlived its NAR (a miss, the NAR fetched and written again).
    let narinfo = |p: &str| format!("k9/{}.narinfo", Fixture::hash(p));
    let nar = |p: &str| format!("k9/{}", f.nar_url(p));
    sw.delete(&narinfo(&f.blobs[0])).await;
    sw.delete(&narinfo(&f.blobs[1])).await;
    sw.delete(&nar(&f.blobs[1])).await;
    sw.delete(&nar(&f.blobs[2])).await;
    assert!(!in_bucket(&sw, f, "k9", &f.blobs[0]).await);

    let b = site(
        &work.path().join("b"),
        &up,
        &f.public_key,
        sw.url(BUCKET, "k9"),
    )
    .await;
    assert_ok(&nix_copy_paths(&b.url(), &f.public_key, &paths, &work.path().join("rb")).await);
    wait_until(
        Duration::from_secs(60),
        "every path in the bucket",
        || async {
            for p in &closure {
                if !in_bucket(&sw, f, "k9", p).await {
                    return false;
                }
            }
            true
        },
    )
    .await;
    b.stop().await;
}

/// A NAR over twice the part size (12 MB with `part-size=5MiB`) goes up as a multipart
/// upload (its ETag says three parts) and is read back whole and verified at another site.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_large_nar_goes_up_in_parts() {
    let f = fixture().await;
    let (cache, path) = big_path_cache(f, "s3-multipart", false).await;
    let sw = Seaweed::start().await;
    let up = Upstream::start(&cache).await;
    let work = tempfile::tempdir().unwrap();
    let url = format!("{}&part-size=5MiB", sw.url(BUCKET, "mp"));
    let a = site(&work.path().join("a"), &up, &f.public_key, url.clone()).await;
    let t = std::time::Instant::now();
    assert_ok(&nix_copy(&a.url(), &f.public_key, &path, &work.path().join("ra")).await);
    let fill = t.elapsed();
    drained(&a, 1).await;
    let written = t.elapsed();
    let narinfo = std::fs::read_to_string(cache.join(format!("{}.narinfo", Fixture::hash(&path))));
    let nar_url = field(&narinfo.unwrap(), "URL").to_owned();
    let etag = sw
        .etag(&format!("mp/{nar_url}"))
        .await
        .expect("the NAR is in the bucket");
    assert!(etag.ends_with("-3"), "not a 3-part upload: ETag {etag}");

    up.down.store(true, Ordering::SeqCst);
    let b = site(&work.path().join("b"), &up, &f.public_key, url).await;
    let t = std::time::Instant::now();
    assert_ok(&nix_copy(&b.url(), &f.public_key, &path, &work.path().join("rb")).await);
    eprintln!("12 MB NAR: runner via the upstream {fill:?}, in the bucket (3 parts) {written:?} after the runner started, via the bucket at the other site {:?}", t.elapsed());
    let read = b
        .metric("nixgate_object_store_bytes_total{direction=\"read\"}")
        .await;
    assert!(read > 12_000_000, "{read}");
    a.stop().await;
    b.stop().await;
}

/// Without credentials anywhere, requests are anonymous (the chart's `existingSecret: ""`):
/// the real binary warns at start, reads a bucket that allows anonymous reads (site A filled
/// it, signed), and gets the closure from it with the upstream down.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_credentials_requests_are_anonymous() {
    let f = fixture().await;
    let sw = Seaweed::start().await;
    let up = Upstream::start(&f.cache).await;
    let work = tempfile::tempdir().unwrap();
    let url = sw.url(BUCKET, "anon");
    fill(f, &up, work.path(), url.clone()).await;
    let paths = all_paths(f);

    up.down.store(true, Ordering::SeqCst);
    let flags = site_flags(&up, &f.public_key, url);
    let mut cmd = serve_command(&work.path().join("b"), "info", &flags);
    cmd.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("HOME", work.path());
    let log = work.path().join("b.log");
    let (mut child, b) = spawn_serving(cmd, &log).await;
    assert_ok(&nix_copy_paths(&b, &f.public_key, &paths, &work.path().join("rb")).await);
    child.kill().unwrap();
    child.wait().unwrap();
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("without credentials"), "{logged}");
}
