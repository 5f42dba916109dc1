//! The on-disk cache: the LRU size cap holds (index and disk agree, oldest evicted), NARs
//! larger than the cache stream through unstored, and a full disk fails the download
//! without leaving temp files or losing earlier entries.

mod common;

use common::*;

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
    for (i, blob) in f.blobs.iter().enumerate() {
        let out = nix_copy(
            &a.url(),
            &f.public_key,
            blob,
            &work.path().join(Fixture::hash(blob)),
        )
        .await;
        assert_ok(&out);
        // Nix is served zstd: the NAR's transcode runs after its download; let it end, so
        // that the files listed and the index are of one moment.
        let transcoded = || async { a.metric("nixgate_transcodes_total").await > i as u64 };
        wait_until(
            std::time::Duration::from_secs(20),
            "the transcode",
            transcoded,
        )
        .await;
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
