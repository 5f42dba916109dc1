//! A large cache is served from the first moment: with 50,000 narinfo+NAR pairs on disk and
//! the upstream down, a real cached entry is served within a second of start while the index
//! is still being rebuilt, `/readyz` is 200 meanwhile, and once the scan completes the size
//! metric matches the disk.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

const PAIRS: usize = 50_000;
const NIX32: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Fills `root` (a nixgate cache holding one real entry) with `n` fake pairs of small files.
fn fake_pairs(root: &Path, n: usize) {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut name = |len: usize, first: &[u8]| -> String {
        (0..len)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let set = if i == 0 { first } else { NIX32 };
                set[(x % set.len() as u64) as usize] as char
            })
            .collect()
    };
    for _ in 0..n {
        let h = name(32, NIX32);
        let fh = name(52, b"01");
        for (dir, file, len) in [
            ("narinfo", format!("{h}-{fh}.narinfo"), 10),
            ("nar", format!("{fh}.nar.xz"), 100),
        ] {
            let shard = root.join(dir).join(&file[..2]);
            std::fs::create_dir_all(&shard).unwrap();
            std::fs::write(shard.join(file), vec![0u8; len]).unwrap();
        }
    }
}

fn disk_bytes(root: &Path) -> u64 {
    ["nar", "narinfo"]
        .iter()
        .flat_map(|d| files(root, d))
        .map(|p| p.metadata().unwrap().len())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_large_cache_serves_its_entries_while_indexing() {
    let f = fixture().await;
    let up = Upstream::start(&f.cache).await;
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let path = &f.dep;
    let narinfo_url = format!("/{}.narinfo", Fixture::hash(path));
    let nar_url = format!("/{}", f.nar_url(path));

    // An appliance fetches the real entry, then stops; so does the upstream.
    let a = Appliance::start_default(&cache, &up, &f.public_key).await;
    assert_eq!(
        get(&format!("{}{narinfo_url}", a.url()), &[]).await.status,
        200
    );
    let nar = get(&format!("{}{nar_url}", a.url()), &[]).await;
    assert_eq!(nar.status, 200);
    a.stop().await;
    up.stop();
    fake_pairs(&cache, PAIRS);

    let started = Instant::now();
    let b = Appliance::start_default(&cache, &up, &f.public_key).await;
    let ready = get(&format!("{}/readyz", b.url()), &[]).await;
    let ni = get(&format!("{}{narinfo_url}", b.url()), &[]).await;
    let served = get(&format!("{}{nar_url}", b.url()), &[]).await;
    let elapsed = started.elapsed();
    assert_eq!((ni.status, served.status), (200, 200));
    assert_eq!(served.body, nar.body, "the cached NAR, byte for byte");
    assert!(
        elapsed < Duration::from_secs(1),
        "first hits took {elapsed:?}"
    );
    assert_eq!(ready.status, 200, "{}", ready.body);
    eprintln!("served in {elapsed:?}; /readyz said {:?}", ready.body);

    // The scan completes: /readyz says so and the size metric matches the disk.
    let readyz = format!("{}/readyz", b.url());
    wait_until(
        Duration::from_secs(120),
        "the index scan to complete",
        || async { get(&readyz, &[]).await.body == "ready\n" },
    )
    .await;
    eprintln!("indexed {} pairs in {:?}", PAIRS, started.elapsed());
    assert_eq!(
        b.metric("nixgate_cache_size_bytes").await,
        disk_bytes(&cache),
        "index and disk agree once indexed"
    );
    b.stop().await;
}
