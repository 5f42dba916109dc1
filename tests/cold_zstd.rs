//! The streamed cold transcode (issue 22, docs/ZSTD.md §4): runners asking the zstd file of a
//! path nixgate does not hold join the one upstream download, which decodes once for both the
//! NarHash check and the zstd file; they tail that file, held back until the NAR verified.
//! 20 concurrent cold clients cost one upstream GET and one transcode; a corrupted upstream
//! NAR aborts them and stores nothing, and the retry works once the upstream is fixed; a
//! kill -9 mid-transcode leaves no partial file and the restart completes the path.

mod common;

use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;

/// What a runner does: the narinfo (which must name the zstd file), then that file.
async fn runner(base: &str, path: &str) -> Got {
    let narinfo = get(&format!("{base}/{}.narinfo", Fixture::hash(path)), NIX_UA).await;
    assert_eq!(narinfo_field(&narinfo.body, "Compression"), Some("zstd"));
    let url = narinfo_field(&narinfo.body, "URL").unwrap();
    assert!(url.ends_with(".nar.zst"), "{url}");
    get(&format!("{base}/{url}"), NIX_UA).await
}

fn complete(got: &Got) -> bool {
    got.status == 200 && got.body_error.is_none()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_cold_runners_cost_one_upstream_get_and_one_transcode() {
    let f = fixture().await;
    let up = Upstream::start(&f.cache).await;
    // ~1.5 s for the 3 MB NAR, so the runners overlap the download.
    up.rate.store(2_000_000, Ordering::SeqCst);
    let work = tempfile::tempdir().unwrap();
    let a = Appliance::start_default(&work.path().join("cache"), &up, &f.public_key).await;
    let base = a.url();
    let runners: Vec<_> = (0..20)
        .map(|_| {
            let (base, path) = (base.clone(), f.big.clone());
            tokio::spawn(async move { runner(&base, &path).await })
        })
        .collect();
    let nar = decoded_nar(f, &f.big);
    for r in runners {
        let got = r.await.unwrap();
        assert!(complete(&got), "{:?}", got.body_error);
        assert!(zstd::decode_all(&got.bytes[..]).unwrap() == nar);
    }
    assert_eq!(up.count(&f.nar_url(&f.big)), 1, "one upstream GET");
    let stored = "nixgate_transcodes_total{outcome=\"stored\"}";
    assert_eq!(a.metric(stored).await, 1, "one transcode");
    assert_eq!(
        a.metric("nixgate_transcoded_bytes_total{side=\"nar\"}")
            .await,
        nar.len() as u64,
        "one decode of the NAR for the transcode"
    );
    let as_zstd = "nixgate_narinfos_served_total{as=\"zstd\"}";
    assert_eq!(a.metric(as_zstd).await, 20, "every runner was told zstd");
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupted_upstream_nar_aborts_zstd_readers_and_the_retry_works() {
    let f = fixture().await;
    let up = Upstream::start(&f.cache).await;
    let nar_url = f.nar_url(&f.big);
    let mut bad = std::fs::read(f.cache.join(&nar_url)).unwrap();
    let at = bad.len() * 3 / 4;
    bad[at] ^= 0x55;
    up.overrides
        .lock()
        .unwrap()
        .insert(nar_url.clone(), bad.into());
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let a = Appliance::start_default(&cache, &up, &f.public_key).await;
    let base = a.url();
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (base, path) = (base.clone(), f.big.clone());
            tokio::spawn(async move { runner(&base, &path).await })
        })
        .collect();
    for r in readers {
        let got = r.await.unwrap();
        assert!(!complete(&got), "a zstd body of a bad NAR looked complete");
    }
    wait_until(Duration::from_secs(10), "both temp files gone", || async {
        files(&cache, "tmp").is_empty()
    })
    .await;
    assert!(files(&cache, "nar").is_empty(), "nothing stored");
    let stored = "nixgate_transcodes_total{outcome=\"stored\"}";
    assert_eq!(a.metric(stored).await, 0);
    assert!(
        a.metric("nixgate_transcodes_total{outcome=\"failed\"}")
            .await
            >= 1
    );

    // The upstream is fixed: the next runner gets the path.
    up.overrides.lock().unwrap().clear();
    let got = runner(&base, &f.big).await;
    assert!(complete(&got), "{:?}", got.body_error);
    assert!(zstd::decode_all(&got.bytes[..]).unwrap() == decoded_nar(f, &f.big));
    assert_eq!(a.metric(stored).await, 1);
    a.stop().await;
}

fn spawn(cache: &std::path::Path, up: &str, key: &str) -> (std::process::Child, u16) {
    let mut child = serve_command(cache, "info", &["--upstream", up])
        .args(["--trusted-public-key", key])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    let port = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| serving_port(&l))
        .expect("the serving log line");
    // The rest of the log is read (and dropped), so the appliance never writes to a closed pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (child, port)
}

/// Waits until the appliance answers (it binds its port before it opens the cache).
async fn wait_serving(base: &str) {
    let url = format!("{base}/healthz");
    wait_until(
        Duration::from_secs(20),
        "the appliance to serve",
        || async {
            try_request("GET", &url, &[])
                .await
                .is_ok_and(|g| g.status == 200)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_mid_transcode_leaves_nothing_partial_and_the_restart_completes() {
    let f = fixture().await;
    let up = Upstream::start(&f.cache).await;
    up.rate.store(500_000, Ordering::SeqCst);
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let (mut child, port) = spawn(&cache, &up.url(), &f.public_key);
    let base = format!("http://127.0.0.1:{port}");
    wait_serving(&base).await;
    let b = base.clone();
    let path = f.big.clone();
    let reader = tokio::spawn(async move { runner(&b, &path).await });
    // Both temp files (the upstream's and the zstd one) have bytes: mid-transcode.
    wait_until(
        Duration::from_secs(20),
        "the transcode under way",
        || async {
            let tmp = files(&cache, "tmp");
            tmp.len() == 2 && tmp.iter().all(|p| p.metadata().is_ok_and(|m| m.len() > 0))
        },
    )
    .await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let got = reader.await.unwrap();
    assert!(!complete(&got), "a killed transcode looked complete");
    assert!(
        !files(&cache, "nar")
            .iter()
            .any(|p| p.to_string_lossy().contains(".nar")),
        "no partial NAR or zstd file in the store"
    );

    up.rate.store(0, Ordering::SeqCst);
    let (mut child, port) = spawn(&cache, &up.url(), &f.public_key);
    let base = format!("http://127.0.0.1:{port}");
    wait_serving(&base).await;
    assert!(files(&cache, "tmp").is_empty(), "tmp/ emptied at start");
    let got = runner(&base, &f.big).await;
    assert!(complete(&got), "{:?}", got.body_error);
    assert!(zstd::decode_all(&got.bytes[..]).unwrap() == decoded_nar(f, &f.big));
    sigterm(&child);
    assert!(exit_within(&mut child, Duration::from_secs(20))
        .await
        .is_some());
}
