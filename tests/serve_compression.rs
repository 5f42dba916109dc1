//! `--serve-compression` (issue 22): real Nix gets zstd from a cold and a warm appliance, with
//! the upstream's signatures; other clients and `upstream` mode get today's bytes; a `.zst` URL
//! whose file was evicted is fetched again and served; a NAR that does not verify never
//! becomes a zstd file.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

/// The lines of a narinfo that the signature covers, and every `Sig:`.
fn signed_lines(narinfo: &str) -> Vec<&str> {
    let signed = [
        "StorePath:",
        "NarHash:",
        "NarSize:",
        "References:",
        "Deriver:",
        "Sig:",
    ];
    narinfo
        .lines()
        .filter(|l| signed.iter().any(|s| l.starts_with(s)))
        .collect()
}

/// Every file under a store path of the store at `dest`, with its contents.
fn tree(dest: &Path, path: &str) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let root = dest.join("root").join(path.trim_start_matches('/'));
    let mut all: Vec<_> = match root.is_file() {
        true => vec![root.clone()],
        false => files(&root, ""),
    };
    all.sort();
    all.into_iter()
        .map(|p| {
            (
                p.strip_prefix(&root).unwrap().to_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

/// Waits until a Nix client is handed the zstd narinfo of `path`; returns it.
async fn zstd_narinfo(a: &Appliance, path: &str) -> String {
    let url = format!("{}/{}.narinfo", a.url(), Fixture::hash(path));
    wait_until(
        Duration::from_secs(20),
        "the zstd file of the NAR",
        || async { narinfo_field(&get(&url, NIX_UA).await.body, "Compression") == Some("zstd") },
    )
    .await;
    get(&url, NIX_UA).await.body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cold_then_warm_nix_copy_gets_zstd_with_the_upstream_signatures() {
    let f = fixture().await;
    let up = Upstream::start(&f.cache).await;
    let work = tempfile::tempdir().unwrap();
    let a = Appliance::start_default(&work.path().join("cache"), &up, &f.public_key).await;
    let (c1, c2) = (work.path().join("c1"), work.path().join("c2"));
    let narinfo_url = format!("{}/{}.narinfo", a.url(), Fixture::hash(&f.top));

    // Cold: a Nix client is told zstd at once (the download makes the file as it goes), and
    // the first `nix copy` gets zstd.
    let cold = get(&narinfo_url, NIX_UA).await;
    assert_eq!(narinfo_field(&cold.body, "Compression"), Some("zstd"));
    assert_eq!(signed_lines(&cold.body), signed_lines(&f.narinfo(&f.top)));
    assert_eq!(cold.headers["vary"], "User-Agent");
    assert_ok(&nix_copy(&a.url(), &f.public_key, &f.top, &c1).await);
    assert!(substituted(&c1, &f.top) && substituted(&c1, &f.dep));
    assert!(
        a.metric("nixgate_served_nar_bytes_total{compression=\"zstd\"}")
            .await
            > 0,
        "the first, cold copy got zstd"
    );
    assert_eq!(
        a.metric("nixgate_served_nar_bytes_total{compression=\"xz\"}")
            .await,
        0,
        "and no xz"
    );

    // Warm: a Nix client is told zstd; every signed line and Sig: is the upstream's.
    for path in [&f.top, &f.dep] {
        let served = zstd_narinfo(&a, path).await;
        let upstream = f.narinfo(path);
        assert_eq!(signed_lines(&served), signed_lines(&upstream));
        let fh = narinfo_field(&upstream, "FileHash")
            .unwrap()
            .strip_prefix("sha256:")
            .unwrap();
        assert_eq!(
            narinfo_field(&served, "URL"),
            Some(&*format!("nar/{fh}.nar.zst"))
        );
        assert_eq!(
            (
                narinfo_field(&served, "FileHash"),
                narinfo_field(&served, "FileSize")
            ),
            (None, None)
        );
    }
    // Clients that are not a zstd-capable Nix get the upstream's narinfo, byte for byte.
    for ua in [
        &[][..],
        &[("user-agent", "curl/8.5.0")],
        &[("user-agent", "curl/7.6 Nix/2.3.16")],
    ] {
        assert_eq!(
            get(&narinfo_url, ua).await.body,
            f.narinfo(&f.top),
            "{ua:?}"
        );
    }

    let zstd_before = a
        .metric("nixgate_served_nar_bytes_total{compression=\"zstd\"}")
        .await;
    assert_ok(&nix_copy(&a.url(), &f.public_key, &f.top, &c2).await);
    assert!(substituted(&c2, &f.top) && substituted(&c2, &f.dep));
    for path in [&f.top, &f.dep] {
        assert_eq!(tree(&c1, path), tree(&c2, path), "{path} differs");
    }
    assert!(
        a.metric("nixgate_served_nar_bytes_total{compression=\"zstd\"}")
            .await
            > zstd_before,
        "the warm copy got the zstd files"
    );
    assert_eq!(up.count(&f.nar_url(&f.top)), 1, "one upstream GET per NAR");
    assert_eq!(
        a.metric("nixgate_transcodes_total{outcome=\"stored\"}")
            .await,
        2
    );
    assert!(
        a.metric("nixgate_transcoded_bytes_total{side=\"nar\"}")
            .await
            > 0
    );
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upstream_mode_serves_todays_bytes() {
    let f = fixture().await;
    let up = Upstream::start(&f.cache).await;
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let a = Appliance::options(&cache, &f.public_key)
        .upstream(up.url())
        .with(|s| s.serve_compression = Some(nixgate::fetch::ServeCompression::Upstream))
        .start()
        .await;
    assert_ok(&nix_copy(&a.url(), &f.public_key, &f.top, &work.path().join("c1")).await);
    let narinfo_url = format!("{}/{}.narinfo", a.url(), Fixture::hash(&f.top));
    let nar = get(&format!("{}/{}", a.url(), f.nar_url(&f.top)), NIX_UA).await;
    assert_eq!(
        nar.bytes,
        std::fs::read(f.cache.join(f.nar_url(&f.top))).unwrap()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get(&narinfo_url, NIX_UA).await.body, f.narinfo(&f.top));
    assert_eq!(
        a.metric("nixgate_transcodes_total{outcome=\"stored\"}")
            .await,
        0
    );
    assert!(!files(&cache, "nar")
        .iter()
        .any(|p| p.to_string_lossy().contains(".served.")));
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_evicted_zstd_file_is_fetched_again_and_served() {
    let f = fixture().await;
    let up = Upstream::start(&f.cache).await;
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let a = Appliance::options(&cache, &f.public_key)
        .upstream(up.url())
        .with(|s| s.max_cache_size = Some("1500KiB".into()))
        .start()
        .await;
    let top_nar = format!("{}/{}", a.url(), f.nar_url(&f.top));
    get(
        &format!("{}/{}.narinfo", a.url(), Fixture::hash(&f.top)),
        NIX_UA,
    )
    .await;
    assert_eq!(get(&top_nar, NIX_UA).await.status, 200);
    let served = zstd_narinfo(&a, &f.top).await;
    let zst_url = format!("{}/{}", a.url(), narinfo_field(&served, "URL").unwrap());
    let first = get(&zst_url, NIX_UA).await;
    assert_eq!(first.status, 200);

    // Incompressible blobs push the path's group (narinfo, xz and zstd files) out.
    for blob in &f.blobs {
        get(
            &format!("{}/{}.narinfo", a.url(), Fixture::hash(blob)),
            NIX_UA,
        )
        .await;
        let got = get(&format!("{}/{}", a.url(), f.nar_url(blob)), NIX_UA).await;
        assert_eq!(got.status, 200);
    }
    wait_until(
        Duration::from_secs(10),
        "the path's zstd file evicted",
        || async {
            !files(&cache, "nar").iter().any(|p| {
                zst_url.contains(
                    &*p.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .replace(".served", ""),
                )
            })
        },
    )
    .await;

    // A runner holding the zstd narinfo: the NAR is fetched again, transcoded, served.
    let again = get(&zst_url, NIX_UA).await;
    assert_eq!(again.status, 200);
    assert_eq!(
        again.bytes, first.bytes,
        "the same encoder gives the same bytes"
    );
    assert_eq!(up.count(&f.nar_url(&f.top)), 2);
    // And the old xz URL keeps working.
    assert_eq!(get(&top_nar, NIX_UA).await.status, 200);
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nar_that_does_not_verify_never_becomes_a_zstd_file() {
    let f = fixture().await;
    let work = tempfile::tempdir().unwrap();
    let bad = work.path().join("bad");
    std::fs::create_dir_all(bad.join("nar")).unwrap();
    for e in std::fs::read_dir(&f.cache).unwrap().flatten() {
        if e.path().is_file() {
            std::fs::copy(e.path(), bad.join(e.file_name())).unwrap();
        }
    }
    for e in std::fs::read_dir(f.cache.join("nar")).unwrap().flatten() {
        std::fs::copy(e.path(), bad.join("nar").join(e.file_name())).unwrap();
    }
    let nar = bad.join(f.nar_url(&f.top));
    let mut bytes = std::fs::read(&nar).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&nar, bytes).unwrap();
    let up = Upstream::start(&bad).await;
    let cache = work.path().join("cache");
    let a = Appliance::start_default(&cache, &up, &f.public_key).await;
    let narinfo_url = format!("{}/{}.narinfo", a.url(), Fixture::hash(&f.top));
    get(&narinfo_url, NIX_UA).await;
    let got = get(&format!("{}/{}", a.url(), f.nar_url(&f.top)), NIX_UA).await;
    assert!(
        got.status != 200 || got.body_error.is_some(),
        "no complete body"
    );
    wait_until(
        Duration::from_secs(10),
        "the download's temp files gone",
        || async { files(&cache, "tmp").is_empty() },
    )
    .await;
    assert!(!files(&cache, "nar")
        .iter()
        .any(|p| p.to_string_lossy().contains(".served.")));
    // A cold path: the narinfo names the zstd file, which is made from the same download
    // and is aborted with it.
    let after = get(&narinfo_url, NIX_UA).await;
    let zst = format!("{}/{}", a.url(), narinfo_field(&after.body, "URL").unwrap());
    let got = get(&zst, NIX_UA).await;
    assert!(
        got.status != 200 || got.body_error.is_some(),
        "no complete zstd body"
    );
    assert_eq!(
        a.metric("nixgate_transcodes_total{outcome=\"stored\"}")
            .await,
        0
    );
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upload_pushed_as_xz_is_served_as_zstd() {
    let f = fixture().await;
    let tmp = tempfile::tempdir().unwrap();
    let up = Upstream::start(&f.cache).await;
    let (sk, public) = key_pair(&tmp.path().join("keys"), "nixgate-zstd-upload-1");
    let a = uploading(&tmp.path().join("a"), &up, &[&f.public_key], move |s| {
        s.signing_key_file = Some(sk)
    })
    .await;
    let path = build_unique("zstd-upload", 200_000);
    let token = netrc(&tmp.path().join("n"), TOKEN);
    assert_ok(&nix_push(&a.url(), Some(&token), &path, tmp.path()).await);
    let pushed = get(
        &format!("{}/{}.narinfo", a.url(), Fixture::hash(&path)),
        &[],
    )
    .await;
    assert_eq!(narinfo_field(&pushed.body, "Compression"), Some("xz"));

    // A runner's narinfo request starts the transcode from the held upload.
    let served = zstd_narinfo(&a, &path).await;
    assert_eq!(signed_lines(&served), signed_lines(&pushed.body));
    let dest = tmp.path().join("runner");
    assert_ok(&nix_copy(&a.url(), &public, &path, &dest).await);
    assert!(substituted(&dest, &path));
    assert!(
        a.metric("nixgate_served_nar_bytes_total{compression=\"zstd\"}")
            .await
            > 0
    );
    a.stop().await;
}
