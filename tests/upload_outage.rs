//! Pushes during an upstream outage: a CI-signed path pushed with Debian's Nix 2.8 and with a
//! current Nix (2.26, whose `nix copy --to` aborts on a 5xx to its narinfo existence check)
//! while the upstream is stopped, then substituted by another runner; and pulling runners,
//! which still get 503 for a path the appliance cannot ask about, with no negative entry: the
//! upstream's path is served once it is back.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;

/// `path`'s store hash (the narinfo's name).
fn hash_of(path: &str) -> &str {
    &path["/nix/store/".len()..][..32]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ci_signed_pushes_with_nix_2_8_and_2_26_succeed_while_the_upstream_is_down() {
    let f = fixture().await;
    let tmp = tempfile::tempdir().unwrap();
    let current = tokio::task::spawn_blocking(trixie).await.unwrap();
    let version = current.version().await;
    assert!(version.starts_with("2.2"), "a current Nix: {version}");
    let up = Upstream::start(&f.cache).await;
    let (ci_sk, ci) = key_pair(&tmp.path().join("keys"), "ci-outage-1");
    // No --signing-key-file: only CI-signed uploads can be taken while no upstream answers.
    let a = uploading(&tmp.path().join("a"), &up, &[&f.public_key, &ci], |_| {}).await;
    let work = tmp.path();
    let right = netrc(&work.join("n"), TOKEN);
    up.stop();

    // Debian's Nix 2.8 on the host.
    let old = build_unique("outage-28", 4000);
    sign(&old, &ci_sk);
    let o = nix_push(&a.url(), Some(&right), &old, work).await;
    eprintln!("2.8 push without fix: {:?}", o.status);

    // Nix 2.26 in the chroot, with its own store, key file and netrc.
    let (host, inside) = current.workdir("push");
    std::fs::copy(&ci_sk, host.join("ci.sk")).unwrap();
    std::fs::copy(&right, host.join("netrc")).unwrap();
    let expr = unique_expr("outage-226", 4000);
    let new = current
        .ok("nix-build", &["--no-out-link", "-E", &expr])
        .await;
    let key_file = format!("{inside}/ci.sk");
    current
        .ok("nix", &["store", "sign", "--key-file", &key_file, &new])
        .await;
    let netrc_file = format!("{inside}/netrc");
    let pushed = current
        .run(
            "nix",
            &[
                "copy",
                "--to",
                &a.url(),
                "--option",
                "netrc-file",
                &netrc_file,
                &new,
            ],
        )
        .await;
    assert_ok(&pushed);
    assert_eq!(
        a.metric("nixgate_uploads_total{outcome=\"stored\"}").await,
        2
    );

    // Another runner substitutes each, still during the outage: the host's Nix the path
    // built in the chroot (its store never had it), the chroot's Nix the host's.
    let dest = work.join("runner2");
    assert_ok(&nix_copy(&a.url(), &ci, &new, &dest).await);
    assert!(substituted(&dest, &new));
    let root = format!("{inside}/runner2");
    let pulled = current
        .run(
            "nix",
            &[
                "copy",
                "--from",
                &a.url(),
                "--to",
                &root,
                "--option",
                "trusted-public-keys",
                &ci,
                &old,
            ],
        )
        .await;
    assert_ok(&pulled);
    current
        .ok("nix", &["path-info", "--store", &root, &old])
        .await;

    // The outage rule stays: an unsigned upload needs an upstream's word (503).
    let unsigned = as_cache(&build_unique("outage-u", 3000), &work.join("u"), None);
    let (nar, info) = upload(&a.url(), BEARER, &unsigned, &unsigned.narinfo).await;
    assert_eq!((nar, info), (200, 503), "unsigned upload during the outage");
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pullers_get_503_and_no_negative_entry_while_uploaders_get_404() {
    let f = fixture().await;
    let tmp = tempfile::tempdir().unwrap();
    let up = Upstream::start(&f.cache).await;
    let a = uploading(&tmp.path().join("a"), &up, &[&f.public_key], |_| {}).await;
    up.down.store(true, Ordering::SeqCst);
    // The upstream holds `top`; the appliance does not, and cannot ask.
    let url = format!("{}/{}.narinfo", a.url(), hash_of(&f.top));
    let basic = format!("Basic {}", base64_of(&format!("ci:{TOKEN}")));

    for auth in [BEARER, basic.as_str()] {
        for method in ["GET", "HEAD"] {
            let got = request(method, &url, &[("authorization", auth)]).await;
            assert_eq!(got.status, 404, "{method} with the upload token");
        }
    }
    for headers in [vec![], vec![("authorization", "Bearer wrong")]] {
        for method in ["GET", "HEAD"] {
            let got = request(method, &url, &headers).await;
            assert_eq!(got.status, 503, "{method} without the upload token");
            assert!(got.headers.contains_key("retry-after"));
        }
    }
    let asked = format!("{}.narinfo", hash_of(&f.top));
    assert_eq!(up.count(&asked), 0, "no request reached the upstream");

    // Back: no 404 was remembered, for the uploader's checks or anyone's.
    up.down.store(false, Ordering::SeqCst);
    wait_until(
        Duration::from_secs(30),
        "the upstream to be asked again",
        || {
            let url = url.clone();
            async move { get(&url, &[]).await.status != 503 }
        },
    )
    .await;
    let got = get(&url, &[]).await;
    assert_eq!(
        got.status, 200,
        "the upstream's narinfo, not a remembered 404"
    );
    let got = request("GET", &url, &[("authorization", BEARER)]).await;
    assert_eq!(got.status, 200);
    let dest = tmp.path().join("runner");
    assert_ok(&nix_copy(&a.url(), &f.public_key, &f.top, &dest).await);
    assert!(substituted(&dest, &f.top));
    a.stop().await;
}

fn base64_of(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}
