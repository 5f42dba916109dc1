//! Uploads from runners: real `nix copy --to` with the token in a netrc (and a second runner
//! substituting the pushed path through the appliance), wrong and missing tokens, uploads off,
//! forged, unsigned and conflicting uploads, the signing key, and a NAR the cache holds
//! already. Limits are in `upload_limits.rs`, the fleet in `upload_fleet.rs`.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nix_copy_with_the_token_is_served_to_another_runner() {
    let f = fixture().await;
    let tmp = tempfile::tempdir().unwrap();
    let up = Upstream::start(&f.cache).await;
    let (sk, public) = key_pair(&tmp.path().join("keys"), "nixgate-uploads-1");
    let sk2 = sk.clone();
    let a = uploading(&tmp.path().join("a"), &up, &[&f.public_key], move |s| {
        s.signing_key_file = Some(sk2)
    })
    .await;
    let path = build_unique("copy", 5000);
    let work = tmp.path();

    // No netrc, then a wrong token: Nix fails and nothing is stored.
    let out = nix_push(&a.url(), None, &path, work).await;
    assert!(!out.status.success(), "pushed without a token");
    let wrong = netrc(&work.join("n"), "wrong");
    let out = nix_push(&a.url(), Some(&wrong), &path, work).await;
    assert!(!out.status.success(), "pushed with a wrong token");
    assert_eq!((held(&a), staged(&a)), (0, 0), "nothing stored");
    assert!(
        a.metric("nixgate_uploads_total{outcome=\"unauthorized\"}")
            .await
            >= 2
    );

    let right = netrc(&work.join("n"), TOKEN);
    assert_ok(&nix_push(&a.url(), Some(&right), &path, work).await);
    assert_eq!(
        a.metric("nixgate_uploads_total{outcome=\"stored\"}").await,
        1
    );
    assert!(a.metric("nixgate_upload_bytes").await > 5000);

    // Another runner, trusting the appliance's key, substitutes it through the appliance.
    let dest = work.join("runner2");
    assert_ok(&nix_copy(&a.url(), &public, &path, &dest).await);
    assert!(substituted(&dest, &path));

    // `nixgate public-key` prints what runners trust.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nixgate"))
        .args(["public-key", "--signing-key-file"])
        .arg(&sk)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), public);
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn uploads_off_answer_405() {
    let f = fixture().await;
    let tmp = tempfile::tempdir().unwrap();
    let up = Upstream::start(&f.cache).await;
    let a = Appliance::start_default(&tmp.path().join("a"), &up, &f.public_key).await;
    let url = format!("{}/{}.narinfo", a.url(), Fixture::hash(&f.top));
    for auth in [None, Some(BEARER)] {
        let (status, headers, _) = send("PUT", &url, auth, b"StorePath: x\n".to_vec()).await;
        assert_eq!(status, 405);
        assert_eq!(headers["allow"], "GET, HEAD");
    }
    assert_eq!(files(&a.cache_dir, "uploads/narinfo").len(), 0);
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_unsigned_and_conflicting_uploads_are_refused() {
    let f = fixture().await;
    let tmp = tempfile::tempdir().unwrap();
    let up = Upstream::start(&f.cache).await;
    let (ci_sk, ci) = key_pair(&tmp.path().join("keys"), "ci-1");
    let a = uploading(&tmp.path().join("a"), &up, &[&f.public_key, &ci], |_| {}).await;
    let base = a.url();
    let x = as_cache(
        &build_unique("x", 3000),
        &tmp.path().join("x"),
        Some(&ci_sk),
    );
    let y = as_cache(
        &build_unique("y", 3000),
        &tmp.path().join("y"),
        Some(&ci_sk),
    );
    let u = as_cache(&build_unique("u", 3000), &tmp.path().join("u"), None);

    // Wrong token: 401 with a Basic challenge, nothing stored.
    let (s, h, _) = send(
        "PUT",
        &format!("{base}/{}", x.nar_url),
        Some("Bearer nope"),
        x.nar.clone(),
    )
    .await;
    assert_eq!(s, 401);
    assert_eq!(h["www-authenticate"], "Basic realm=\"nixgate\"");
    // A NAR under another NAR's name.
    let (s, _, _) = send(
        "PUT",
        &format!("{base}/{}", y.nar_url),
        Some(BEARER),
        x.nar.clone(),
    )
    .await;
    assert_eq!(s, 400);
    // X's signed narinfo pointing at Y's (well-formed) NAR: NarHash does not match.
    let forged = with_field(&x.narinfo, "FileHash", field(&y.narinfo, "FileHash"));
    let forged = with_field(&forged, "FileSize", field(&y.narinfo, "FileSize"));
    let forged = with_field(&forged, "URL", &y.nar_url);
    let (_, _, _) = send(
        "PUT",
        &format!("{base}/{}", y.nar_url),
        Some(BEARER),
        y.nar.clone(),
    )
    .await;
    let (s, _, body) = send(
        "PUT",
        &format!("{base}/{}.narinfo", x.hash),
        Some(BEARER),
        forged.into_bytes(),
    )
    .await;
    assert_eq!(s, 400, "{body}");
    // Unsigned, and no signing key.
    assert_eq!(upload(&base, BEARER, &u, &u.narinfo).await, (200, 403));
    assert_eq!(held(&a), 0, "nothing held");
    assert!(
        a.metric("nixgate_uploads_total{outcome=\"untrusted\"}")
            .await
            >= 1
    );

    // Signed by the CI key: taken, and served as uploaded.
    assert_eq!(upload(&base, BEARER, &x, &x.narinfo).await, (200, 200));
    let got = get(&format!("{base}/{}.narinfo", x.hash), &[]).await;
    assert_eq!(
        (got.status, field(&got.body, "Sig")),
        (200, field(&x.narinfo, "Sig"))
    );
    assert_eq!(
        get(&format!("{base}/{}", x.nar_url), &[]).await.bytes,
        x.nar
    );
    // The same upload again is fine; another narinfo for the same path is a conflict.
    assert_eq!(upload(&base, BEARER, &x, &x.narinfo).await, (200, 200));

    // A path the cache holds from the upstream is never replaced: the same contents are
    // done (nothing held), other contents are a conflict.
    let top = Fixture::hash(&f.top);
    assert_eq!(get(&format!("{base}/{top}.narinfo"), &[]).await.status, 200);
    let nar = std::fs::read(f.cache.join(f.nar_url(&f.top))).unwrap();
    let top_up = Pushed {
        hash: top.into(),
        narinfo: f.narinfo(&f.top),
        nar_url: f.nar_url(&f.top),
        nar,
    };
    let before = held(&a);
    assert_eq!(upload(&base, BEARER, &top_up, &top_up.narinfo).await.1, 200);
    assert_eq!(
        held(&a),
        before,
        "an upstream path is not held as an upload"
    );
    let other = with_field(&top_up.narinfo, "NarSize", "12345");
    assert_eq!(upload(&base, BEARER, &top_up, &other).await.1, 409);
    a.stop().await;
}

/// A token holder pushes its own contents for a path the upstream signs but the appliance
/// has not fetched yet, hoping the signing key vouches for it: refused (409), and the
/// upstream's narinfo is served. With the upstream down, an unsigned upload is refused
/// (503: it cannot be told apart), and taken once the upstream answers 404 for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upload_never_shadows_a_path_an_upstream_signs() {
    let f = fixture().await;
    let tmp = tempfile::tempdir().unwrap();
    let up = Upstream::start(&f.cache).await;
    let (sk, _) = key_pair(&tmp.path().join("keys"), "appliance-1");
    let a = uploading(&tmp.path().join("a"), &up, &[&f.public_key], move |s| {
        s.signing_key_file = Some(sk)
    })
    .await;
    let u = as_cache(&build_unique("shadow", 2000), &tmp.path().join("u"), None);
    let dep = Fixture::hash(&f.dep);
    let dep_path = field(&f.narinfo(&f.dep), "StorePath").to_owned();
    let forged = Pushed {
        hash: dep.into(),
        narinfo: with_field(&u.narinfo, "StorePath", &dep_path),
        nar_url: u.nar_url.clone(),
        nar: u.nar.clone(),
    };
    let (nar, narinfo) = upload(&a.url(), BEARER, &forged, &forged.narinfo).await;
    assert_eq!((nar, narinfo), (200, 409));
    assert_eq!(held(&a), 0);
    let got = get(&format!("{}/{dep}.narinfo", a.url()), &[]).await;
    assert_eq!(field(&got.body, "Sig"), field(&f.narinfo(&f.dep), "Sig"));

    // Upstream down: an unsigned upload cannot be checked, so it is not signed here.
    up.fail_5xx.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(upload(&a.url(), BEARER, &u, &u.narinfo).await.1, 503);
    assert_eq!(held(&a), 0);
    up.fail_5xx
        .store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(upload(&a.url(), BEARER, &u, &u.narinfo).await.1, 200);
    assert_eq!(held(&a), 2, "its narinfo and NAR");
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_signing_key_signs_unsigned_uploads() {
    let f = fixture().await;
    let tmp = tempfile::tempdir().unwrap();
    let up = Upstream::start(&f.cache).await;
    let (sk, public) = key_pair(&tmp.path().join("keys"), "appliance-1");
    let a = uploading(&tmp.path().join("a"), &up, &[&f.public_key], move |s| {
        s.signing_key_file = Some(sk)
    })
    .await;
    let u = as_cache(&build_unique("signed", 2000), &tmp.path().join("u"), None);
    assert_eq!(upload(&a.url(), BEARER, &u, &u.narinfo).await, (200, 200));
    let got = get(&format!("{}/{}.narinfo", a.url(), u.hash), &[]).await;
    assert!(got.body.contains("Sig: appliance-1:"), "{}", got.body);
    let dest = tmp.path().join("runner");
    let path = format!(
        "/nix/store/{}",
        field(&u.narinfo, "StorePath").trim_start_matches("/nix/store/")
    );
    assert_ok(&nix_copy(&a.url(), &public, &path, &dest).await);
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nar_the_cache_holds_need_not_be_uploaded_again() {
    use nixgate::nix::narinfo::NarInfo;
    use nixgate::nix::signature::SecretKey;
    let f = fixture().await;
    let tmp = tempfile::tempdir().unwrap();
    let up = Upstream::start(&f.cache).await;
    let (ci_sk, ci) = key_pair(&tmp.path().join("keys"), "ci-1");
    let a = uploading(&tmp.path().join("a"), &up, &[&f.public_key, &ci], |_| {}).await;
    // The LRU cache holds top's NAR; Nix's HEAD for it answers 200, so Nix sends no NAR.
    let nar_url = format!("{}/{}", a.url(), f.nar_url(&f.top));
    assert_eq!(get(&nar_url, &[]).await.status, 200);
    assert_eq!(request("HEAD", &nar_url, &[]).await.status, 200);
    // Another path with the same NAR contents, signed by the CI key.
    let mut ni: NarInfo = f.narinfo(&f.top).parse().unwrap();
    ni.store_path = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-same-contents".into();
    ni = ni.to_string().parse().unwrap();
    ni.references.clear();
    let sk: SecretKey = std::fs::read_to_string(&ci_sk).unwrap().parse().unwrap();
    ni.sigs = vec![sk.sign(&ni.fingerprint("/nix/store"))];
    let url = format!("{}/0123456789abcdfghijklmnpqrsvwxyz.narinfo", a.url());
    let (s, _, body) = send("PUT", &url, Some(BEARER), ni.to_string().into_bytes()).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(held(&a), 2, "its narinfo and the NAR linked from the cache");
    assert_eq!(get(&url, &[]).await.status, 200);
    a.stop().await;
}
