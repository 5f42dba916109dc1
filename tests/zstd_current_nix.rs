//! `--serve-compression zstd` with a current Nix (2.26, Debian trixie's `nix-bin` in a
//! chroot, tests/common/trixie.rs) beside the suite's Debian 2.8: it is told zstd by its
//! User-Agent, fetches the `.nar.zst` files, checks them against the upstream's signatures and
//! NarHash, and ends with the same store paths the fixture built.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

/// Every file under `root` with its contents, sorted by relative path.
fn tree(root: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut all = match root.is_file() {
        true => vec![root.to_owned()],
        false => files(root, ""),
    };
    all.sort();
    let rel = |p: &Path| p.strip_prefix(root).unwrap().to_owned();
    all.iter()
        .map(|p| (rel(p), std::fs::read(p).unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nix_2_26_substitutes_the_zstd_files_and_gets_identical_paths() {
    let f = fixture().await;
    let current = tokio::task::spawn_blocking(trixie).await.unwrap();
    let version = current.version().await;
    assert!(version.starts_with("2.2"), "a current Nix: {version}");
    let up = Upstream::start(&f.cache).await;
    let work = tempfile::tempdir().unwrap();
    let a = Appliance::start_default(&work.path().join("cache"), &up, &f.public_key).await;
    let copy = |dest: String| {
        let (url, key, top) = (a.url(), f.public_key.clone(), f.top.clone());
        let current = &current;
        async move {
            let args = [
                "copy",
                "--from",
                &url,
                "--to",
                &dest,
                "--option",
                "trusted-public-keys",
                &key,
                &top,
            ];
            current.run("nix", &args).await
        }
    };

    // Cold: whatever the appliance tells a cold Nix, the copy verifies.
    let (_, cold) = current.workdir("cold");
    assert_ok(&copy(cold.clone()).await);
    // Warm, once both zstd files exist: Nix 2.26's User-Agent gets zstd narinfos.
    let ua = format!("curl/8.14.1 Nix/{version}");
    for path in [&f.top, &f.dep] {
        let url = format!("{}/{}.narinfo", a.url(), Fixture::hash(path));
        let headers = [("user-agent", ua.as_str())];
        wait_until(Duration::from_secs(30), "the zstd narinfo", || async {
            get(&url, &headers).await.body.contains("Compression: zstd")
        })
        .await;
    }
    let zstd = "nixgate_served_nar_bytes_total{compression=\"zstd\"}";
    let before = a.metric(zstd).await;
    let (host, warm) = current.workdir("warm");
    assert_ok(&copy(warm).await);
    let sent = a.metric(zstd).await - before;
    assert!(sent > 0, "Nix {version} was sent no zstd bytes");

    // The store paths are byte-for-byte the fixture's, in both of the chroot's stores.
    let cold_host = current.root.join(cold.trim_start_matches('/'));
    for path in [&f.top, &f.dep] {
        let rel = path.trim_start_matches('/');
        let want = tree(Path::new(path));
        assert!(!want.is_empty(), "{path} is in the host's store");
        assert_eq!(tree(&host.join(rel)), want, "warm copy of {path}");
        assert_eq!(tree(&cold_host.join(rel)), want, "cold copy of {path}");
    }
}
