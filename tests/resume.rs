//! A NAR source that breaks mid-file (an upstream connection reset, a fleet member killed)
//! does not fail the download: it continues from an upstream at the byte where the first
//! stopped (`Range: bytes=N-`, or the whole file with the head dropped when the server
//! ignores ranges), and the clients already tailing it get the whole, verified file.

mod common;

use std::sync::atomic::Ordering::SeqCst;

use common::*;

const RESUMED: &str = "nixgate_downloads_resumed_total{source=\"upstream\"}";

fn nar_bytes(f: &Fixture, path: &str) -> Vec<u8> {
    std::fs::read(f.cache.join(f.nar_url(path))).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_source_that_breaks_mid_file_is_continued_with_a_range() {
    let f = fixture().await;
    let work = tempfile::tempdir().unwrap();
    let up = Upstream::start(&f.cache).await;
    let a = Appliance::start_default(&work.path().join("cache"), &up, &f.public_key).await;
    // The first NAR body breaks after 1 MB (of ~3 MB); the rest comes at 4 MB/s, so the
    // clients below are all tailing the download when it breaks.
    up.cut_next_nar_at.store(1_000_000, SeqCst);
    up.rate.store(4_000_000, SeqCst);
    let nar = format!("{}/{}", a.url(), f.nar_url(&f.big));
    let (dest, url) = (work.path().join("runner"), a.url());
    let (g1, g2, out) = tokio::join!(
        get(&nar, &[]),
        get(&nar, &[]),
        nix_copy(&url, &f.public_key, &f.big, &dest),
    );
    assert_ok(&out);
    let want = nar_bytes(f, &f.big);
    for g in [g1, g2] {
        assert_eq!((g.status, g.body_error), (200, None));
        assert!(g.bytes[..] == want[..], "a tailing client got other bytes");
    }
    assert_eq!(
        up.count(&f.nar_url(&f.big)),
        2,
        "one broken body, one resume"
    );
    assert_eq!(
        up.ranged.load(SeqCst),
        1,
        "the resume asked for the rest only"
    );
    assert_eq!(a.metric(RESUMED).await, 1);
    // The resumed file was verified and committed: served from the cache now.
    let again = get(&nar, &[]).await;
    assert!(again.bytes[..] == want[..]);
    assert_eq!(up.count(&f.nar_url(&f.big)), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_that_ignores_the_range_resends_the_file_and_the_head_is_dropped() {
    let f = fixture().await;
    let work = tempfile::tempdir().unwrap();
    let up = Upstream::start(&f.cache).await;
    up.ignore_ranges.store(true, SeqCst);
    let a = Appliance::start_default(&work.path().join("cache"), &up, &f.public_key).await;
    up.cut_next_nar_at.store(1_234_567, SeqCst);
    let out = nix_copy(&a.url(), &f.public_key, &f.big, &work.path().join("runner")).await;
    assert_ok(&out);
    assert_eq!(up.ranged.load(SeqCst), 1);
    assert_eq!(a.metric(RESUMED).await, 1);
    let g = get(&format!("{}/{}", a.url(), f.nar_url(&f.big)), &[]).await;
    assert!(g.bytes[..] == nar_bytes(f, &f.big)[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_break_with_no_source_left_fails_the_download_and_stores_nothing() {
    let f = fixture().await;
    let work = tempfile::tempdir().unwrap();
    let up = Upstream::start(&f.cache).await;
    let a = Appliance::start_default(&work.path().join("cache"), &up, &f.public_key).await;
    // The NAR comes at 1 MB/s and breaks after 1 MB; the upstream answers nothing but 500s
    // from 0.3 s on, so the resume finds no source.
    up.cut_next_nar_at.store(1_000_000, SeqCst);
    up.rate.store(1_000_000, SeqCst);
    let ni = get(
        &format!("{}/{}.narinfo", a.url(), Fixture::hash(&f.big)),
        &[],
    )
    .await;
    assert_eq!(ni.status, 200);
    let nar = format!("{}/{}", a.url(), f.nar_url(&f.big));
    let client = tokio::spawn(async move { try_request("GET", &nar, &[]).await });
    let asked = f.nar_url(&f.big);
    wait_until(
        std::time::Duration::from_secs(5),
        "the upstream to be asked for the NAR",
        || async { up.count(&asked) >= 1 },
    )
    .await;
    up.fail_5xx.store(true, SeqCst);
    let g = client.await.unwrap();
    // Either the headers went out and the body was cut short, or the failure came first:
    // never a complete-looking 200.
    if let Ok(g) = g {
        assert!(
            g.status != 200 || g.body_error.is_some(),
            "a broken NAR was served whole"
        );
    }
    assert_eq!(a.metric(RESUMED).await, 0);
    up.fail_5xx.store(false, SeqCst);
    up.rate.store(0, SeqCst);
    let out = nix_copy(&a.url(), &f.public_key, &f.big, &work.path().join("runner")).await;
    assert_ok(&out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_passthrough_that_breaks_mid_file_is_continued_too() {
    let f = fixture().await;
    let work = tempfile::tempdir().unwrap();
    let up = Upstream::start(&f.cache).await;
    // A 1 MiB cache cannot take the ~3 MB NAR: it is streamed through, uncached.
    let a = Appliance::start(
        &work.path().join("cache"),
        &[up.url()],
        &f.public_key,
        |a| a.max_cache_size = Some("1MiB".into()),
    )
    .await;
    up.cut_next_nar_at.store(2_000_000, SeqCst);
    let out = nix_copy(&a.url(), &f.public_key, &f.big, &work.path().join("runner")).await;
    assert_ok(&out);
    assert_eq!(up.ranged.load(SeqCst), 1);
    assert_eq!(a.metric(RESUMED).await, 1);
}
