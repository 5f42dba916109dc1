//! Trust checks on upstream content: a tampered NAR (NarHash mismatch) is never served
//! complete or stored, and a narinfo signed by an untrusted key, or forged, is absent.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tampered_nar_is_never_served_complete_or_stored() {
    let f = fixture().await;
    let up = Upstream::start(&f.cache).await;
    let nar = f.nar_url(&f.blobs[0]);
    let mut bytes = std::fs::read(f.cache.join(&nar)).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff; // same length, different content
    up.overrides
        .lock()
        .unwrap()
        .insert(nar.clone(), bytes.into());
    let work = tempfile::tempdir().unwrap();
    let a = Appliance::start_default(&work.path().join("cache"), &up, &f.public_key).await;

    let out = nix_copy(&a.url(), &f.public_key, &f.blobs[0], &work.path().join("c")).await;
    assert!(!out.status.success(), "nix accepted a tampered NAR");
    assert!(!substituted(&work.path().join("c"), &f.blobs[0]));

    // A direct GET: headers promise the full length, the body is aborted short.
    let g = get(&format!("{}/{nar}", a.url()), &[]).await;
    assert!(
        g.status != 200 || g.body_error.is_some(),
        "tampered NAR completed with status {}",
        g.status
    );
    assert!(
        files(&a.cache_dir, "nar").is_empty(),
        "a tampered NAR reached the cache"
    );
    assert!(
        files(&a.cache_dir, "tmp").is_empty(),
        "temp file left behind"
    );
    assert!(
        a.metric("nixgate_verification_failures_total{source=\"upstream\"}")
            .await
            >= 1
    );
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn narinfo_signed_by_untrusted_key_is_absent() {
    let f = fixture().await;
    let up = Upstream::start(&f.cache).await;
    let work = tempfile::tempdir().unwrap();
    // Trust some other key (the cache.nixos.org one) only.
    let a = Appliance::start(
        &work.path().join("cache"),
        &[up.url()],
        nixgate::nix::signature::CACHE_NIXOS_ORG_KEY,
        |_| {},
    )
    .await;
    let g = get(
        &format!("{}/{}.narinfo", a.url(), Fixture::hash(&f.top)),
        &[],
    )
    .await;
    assert_eq!(g.status, 404);
    assert!(files(&a.cache_dir, "narinfo").is_empty());
    assert_eq!(
        a.metric("nixgate_verification_failures_total{source=\"upstream\"}")
            .await,
        1
    );
    let out = nix_copy(&a.url(), &f.public_key, &f.top, &work.path().join("c")).await;
    assert!(!out.status.success());

    // A forged narinfo (signed fields changed) from an upstream whose key we trust.
    let h = Fixture::hash(&f.dep);
    let forged = f.narinfo(&f.dep).replace("NarSize: ", "NarSize: 1");
    up.overrides
        .lock()
        .unwrap()
        .insert(format!("{h}.narinfo"), forged.into());
    let b = Appliance::start_default(&work.path().join("cache2"), &up, &f.public_key).await;
    assert_eq!(
        get(&format!("{}/{h}.narinfo", b.url()), &[]).await.status,
        404
    );
    assert_eq!(
        b.metric("nixgate_verification_failures_total{source=\"upstream\"}")
            .await,
        1
    );
    a.stop().await;
    b.stop().await;
}
