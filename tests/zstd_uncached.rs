//! Runners holding a zstd narinfo when the cache cannot store the NAR (docs/ZSTD.md §4
//! "Uncached paths"): they get the zstd file made live from the upstream's file, checked and
//! uncached, instead of a 500; a corrupted upstream NAR aborts that body and stores nothing.
//! Three ways the cache cannot store: a cap below the NAR (passthrough), a disk that fills
//! mid-download (relayed uncached: the upstream is asked again), no room for a second file
//! beside the held NAR. And a HEAD of a zstd file not held answers from what nixgate would
//! serve, fetching nothing.

mod common;

use std::net::TcpListener;
use std::path::Path;

use common::*;

/// A zstd-capable runner is told the upstream's xz for `path` (no room for the pair).
async fn assert_narinfo_names_xz(a: &Appliance, path: &str) {
    let narinfo = format!("{}/{}.narinfo", a.url(), Fixture::hash(path));
    let body = get(&narinfo, NIX_UA).await.body;
    assert_eq!(narinfo_field(&body, "Compression"), Some("xz"));
}

/// `path`'s `.nar.zst` comes whole and decodes to its NAR.
async fn assert_zst_is_the_nar(a: &Appliance, f: &Fixture, path: &str) {
    let got = get(&format!("{}/{}", a.url(), zst_url(f, path)), NIX_UA).await;
    assert_eq!((got.status, got.body_error.as_deref()), (200, None));
    assert!(zstd::decode_all(&got.bytes[..]).unwrap() == decoded_nar(f, path));
}

/// The URL of nixgate's zstd file of `path`: `nar/<FileHash>.nar.zst`.
fn zst_url(f: &Fixture, path: &str) -> String {
    let narinfo = f.narinfo(path);
    let fh = narinfo_field(&narinfo, "FileHash").unwrap();
    format!("nar/{}.nar.zst", fh.strip_prefix("sha256:").unwrap())
}

/// NAR files (upstream's or nixgate's) and temp files in the cache directory.
fn nars_and_temps(cache: &Path) -> Vec<std::path::PathBuf> {
    let mut all = files(cache, "nar");
    all.retain(|p| p.to_string_lossy().contains(".nar"));
    all.extend(files(cache, "tmp"));
    all
}

/// A cache directory whose appliance is restarted with a 1 MiB cap: below the 3 MB NAR.
async fn small(cache: &Path, up: &Upstream, key: &str, l: Option<TcpListener>) -> Appliance {
    let mut o = Appliance::options(cache, key).upstream(up.url());
    if let Some(l) = l {
        o = o.listener(l);
    }
    o.with(|s| s.max_cache_size = Some("1MiB".into()))
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nix_holding_a_zstd_narinfo_substitutes_it_when_the_cache_cannot_store() {
    let f = fixture().await;
    let up = Upstream::start(&f.cache).await;
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let dest = work.path().join("runner");
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    // While the cache has room, Nix is told zstd and keeps that narinfo (its disk cache,
    // keyed by the cache's URL: the restarted appliance listens on the same port).
    let a = Appliance::options(&cache, &f.public_key)
        .upstream(up.url())
        .listener(l)
        .start()
        .await;
    let info = tokio::process::Command::new("nix")
        .env("NIX_CONFIG", NIX_CONFIG)
        .env("XDG_CACHE_HOME", dest.join("xdg"))
        .args(["path-info", "--store", &a.url(), &f.big])
        .output()
        .await
        .unwrap();
    assert_ok(&info);
    let as_zstd = "nixgate_narinfos_served_total{as=\"zstd\"}";
    assert!(a.metric(as_zstd).await >= 1, "Nix was told zstd");
    a.stop().await;

    // Restarted with a cap below the NAR: Nix asks the zstd file it was told of.
    let b = small(
        &cache,
        &up,
        &f.public_key,
        Some(TcpListener::bind(addr).unwrap()),
    )
    .await;
    assert_ok(&nix_copy(&b.url(), &f.public_key, &f.big, &dest).await);
    assert!(substituted(&dest, &f.big));
    assert_eq!(b.metric("nixgate_narinfos_served_total").await, 0);
    let relayed = "nixgate_transcodes_total{outcome=\"relayed\"}";
    assert_eq!(b.metric(relayed).await, 1);
    assert!(
        b.metric("nixgate_served_nar_bytes_total{compression=\"zstd\"}")
            .await
            > 0
    );
    assert_eq!(up.count(&f.nar_url(&f.big)), 1, "one upstream GET");
    assert_eq!(up.count(&zst_url(f, &f.big)), 0, "never asked for the .zst");
    assert!(nars_and_temps(&cache).is_empty(), "nothing stored");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_live_zstd_body_decodes_to_the_nar_and_a_corrupted_one_is_aborted() {
    let f = fixture().await;
    let up = Upstream::start(&f.cache).await;
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let a = small(&cache, &up, &f.public_key, None).await;
    let narinfo = format!("{}/{}.narinfo", a.url(), Fixture::hash(&f.big));
    // Told the upstream's file (no room), but a runner may hold a zstd narinfo of before.
    let got = get(&narinfo, NIX_UA).await;
    assert_eq!(narinfo_field(&got.body, "Compression"), Some("xz"));
    let zst = format!("{}/{}", a.url(), zst_url(f, &f.big));
    let got = get(&zst, NIX_UA).await;
    assert_eq!((got.status, got.body_error.as_deref()), (200, None));
    assert!(got.headers.get("content-length").is_none(), "chunked");
    assert!(zstd::decode_all(&got.bytes[..]).unwrap() == decoded_nar(f, &f.big));
    let relayed = "nixgate_transcodes_total{outcome=\"relayed\"}";
    assert_eq!(a.metric(relayed).await, 1);
    assert!(nars_and_temps(&cache).is_empty(), "nothing stored");

    // The upstream's file corrupted three quarters in: the zstd body never completes.
    let mut bad = std::fs::read(f.cache.join(f.nar_url(&f.big))).unwrap();
    let at = bad.len() * 3 / 4;
    bad[at] ^= 0x55;
    up.overrides
        .lock()
        .unwrap()
        .insert(f.nar_url(&f.big), bad.into());
    let got = get(&zst, NIX_UA).await;
    assert_eq!(got.status, 200, "the status went out with the first bytes");
    assert!(
        got.body_error.is_some(),
        "a corrupted NAR's body looked complete"
    );
    assert!(nars_and_temps(&cache).is_empty(), "nothing stored");
    assert_eq!(a.metric(relayed).await, 1);
    let failed = "nixgate_transcodes_total{outcome=\"failed\"}";
    assert_eq!(a.metric(failed).await, 1);
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_held_nar_with_no_room_beside_it_is_transcoded_live() {
    let f = fixture().await;
    let up = Upstream::start(&f.cache).await;
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    // The 3 MB file fits, its pair does not fit a quarter of the cap.
    let a = Appliance::options(&cache, &f.public_key)
        .upstream(up.url())
        .with(|s| s.max_cache_size = Some("8MiB".into()))
        .start()
        .await;
    assert_narinfo_names_xz(&a, &f.big).await;
    let xz = get(&format!("{}/{}", a.url(), f.nar_url(&f.big)), NIX_UA).await;
    assert_eq!((xz.status, xz.body_error.as_deref()), (200, None));
    assert_zst_is_the_nar(&a, f, &f.big).await;
    let relayed = "nixgate_transcodes_total{outcome=\"relayed\"}";
    assert_eq!(a.metric(relayed).await, 1);
    assert_eq!(up.count(&f.nar_url(&f.big)), 1, "made from the held file");
    assert!(!files(&cache, "nar")
        .iter()
        .any(|p| p.to_string_lossy().contains(".served.")));
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_download_relayed_uncached_gives_its_zstd_reader_a_live_transcode() {
    let f = fixture().await;
    let up = Upstream::start(&f.cache).await;
    let work = tempfile::tempdir().unwrap();
    let disk = work.path().join("disk");
    let _mount = tmpfs(&disk, "2m");
    // The cap takes the 3 MB file (no tap: its pair would be over a quarter of the cap); the
    // 2 MiB disk does not: the download switches to relaying its readers mid-way.
    let a = Appliance::options(&disk.join("cache"), &f.public_key)
        .upstream(up.url())
        .with(|s| s.max_cache_size = Some("8MiB".into()))
        .start()
        .await;
    assert_narinfo_names_xz(&a, &f.big).await;
    assert_zst_is_the_nar(&a, f, &f.big).await;
    let no_space = "nixgate_cache_store_failures_total{reason=\"no_space\"}";
    assert!(
        a.metric(no_space).await >= 1,
        "the download ran out of room"
    );
    let relayed = "nixgate_transcodes_total{outcome=\"relayed\"}";
    assert_eq!(a.metric(relayed).await, 1);
    // The relayed download, then the passthrough the live transcode reads.
    assert_eq!(up.count(&f.nar_url(&f.big)), 2);
    wait_until(
        std::time::Duration::from_secs(10),
        "the temp file gone",
        || async { files(&a.cache_dir, "tmp").is_empty() },
    )
    .await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn head_of_a_zstd_file_not_held_answers_without_fetching() {
    let f = fixture().await;
    let up = Upstream::start(&f.cache).await;
    let work = tempfile::tempdir().unwrap();
    let a = Appliance::start_default(&work.path().join("cache"), &up, &f.public_key).await;
    let zst = format!("{}/{}", a.url(), zst_url(f, &f.top));
    // Nothing known of the path yet: asked upstream under that name, as before.
    assert_eq!(request("HEAD", &zst, NIX_UA).await.status, 404);
    assert_eq!(up.count(&zst_url(f, &f.top)), 1);
    let narinfo = format!("{}/{}.narinfo", a.url(), Fixture::hash(&f.top));
    let told = get(&narinfo, NIX_UA).await;
    assert_eq!(narinfo_field(&told.body, "URL"), Some(&*zst_url(f, &f.top)));
    let head = request("HEAD", &zst, NIX_UA).await;
    assert_eq!(head.status, 200);
    assert!(head.headers.get("content-length").is_none(), "size unknown");
    assert!(head.bytes.is_empty());
    assert_eq!(up.count(&zst_url(f, &f.top)), 1, "not asked again");
    assert_eq!(up.count(&f.nar_url(&f.top)), 0, "nothing fetched");
    // The GET that follows gets the file.
    let got = get(&zst, NIX_UA).await;
    assert_eq!((got.status, got.body_error.as_deref()), (200, None));
    assert!(zstd::decode_all(&got.bytes[..]).unwrap() == decoded_nar(f, &f.top));
    a.stop().await;
}
