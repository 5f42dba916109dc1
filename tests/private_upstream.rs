//! Private upstreams (`--netrc-file`) against a real nginx with `auth_basic`: the right
//! credentials let real `nix copy` through; wrong or missing ones are an auth failure
//! (metric), not "not found"; credentials never reach a peer nor a redirect's host.

mod common;

use std::path::Path;

use common::*;

const AUTH_FAILED: &str = "nixgate_upstream_requests_total{status=\"auth_failed\"}";

/// An appliance in front of `upstream` reading `netrc`, with `peer` as a fallback peer.
async fn appliance(
    dir: &Path,
    f: &Fixture,
    upstream: String,
    netrc: &str,
    peer: String,
) -> Appliance {
    std::fs::create_dir_all(dir).unwrap();
    let file = dir.join("netrc");
    std::fs::write(&file, netrc).unwrap();
    Appliance::start(&dir.join("cache"), &[upstream], &f.public_key, move |a| {
        a.netrc_file = Some(file);
        a.peers = Some(vec![peer]);
        a.no_fleet = true;
    })
    .await
}

/// nginx asking for `ci`/`s3cret` (redirects go to the peer), a recording fallback peer,
/// and an appliance in front of nginx reading `netrc`.
async fn behind_auth(tmp: &Path, f: &Fixture, netrc: &str) -> (Recorder, Nginx, Appliance) {
    let peer = Recorder::start().await;
    let nginx = Nginx::start(&tmp.join("nginx"), &f.cache, "ci", "s3cret", &peer.url()).await;
    let a = appliance(&tmp.join("a"), f, nginx.url(), netrc, peer.url()).await;
    (peer, nginx, a)
}

fn assert_no_credentials(r: &Recorder) {
    for head in r.heads() {
        assert!(
            !head.to_ascii_lowercase().contains("authorization"),
            "{head}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn right_credentials_let_nix_copy_through() {
    let f = fixture().await;
    let tmp = tempfile::tempdir().unwrap();
    // The peer is on the same host as the upstream: the netrc entry matches it by host, so
    // only the kind of request keeps credentials from it.
    let netrc = "machine 127.0.0.1 login ci password s3cret\n";
    let (peer, nginx, a) = behind_auth(tmp.path(), f, netrc).await;
    assert_ok(&nix_copy(&a.url(), &f.public_key, &f.top, &tmp.path().join("dest")).await);
    assert!(substituted(&tmp.path().join("dest"), &f.dep));
    assert_eq!(a.metric(AUTH_FAILED).await, 0);
    let log = std::fs::read_to_string(tmp.path().join("nginx/access.log")).unwrap();
    assert!(log.contains(" - ci ["), "nginx saw the user: {log}");
    // An upstream failure makes the appliance ask its peer: without credentials.
    nginx_down(nginx);
    let got = get(
        &format!("{}/{}.narinfo", a.url(), Fixture::hash(&f.blobs[0])),
        &[],
    )
    .await;
    assert_ne!(got.status, 200);
    assert!(!peer.heads().is_empty(), "the peer was asked");
    assert_no_credentials(&peer);
    a.stop().await;
}

fn nginx_down(n: Nginx) {
    drop(n);
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_credentials_are_an_auth_failure_and_never_reach_the_peer() {
    let f = fixture().await;
    let tmp = tempfile::tempdir().unwrap();
    let netrc = "default login ci password wrong\n";
    let (peer, _nginx, a) = behind_auth(tmp.path(), f, netrc).await;
    let got = get(
        &format!("{}/{}.narinfo", a.url(), Fixture::hash(&f.top)),
        &[],
    )
    .await;
    assert_eq!(got.status, 503, "unavailable, not a cached 404");
    assert!(a.metric(AUTH_FAILED).await >= 1);
    assert_eq!(
        a.metric("nixgate_upstream_requests_total{status=\"404\"}")
            .await,
        0
    );
    assert!(
        !peer.heads().is_empty(),
        "the peer was asked after the upstream failed"
    );
    assert_no_credentials(&peer);
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_credentials_are_an_auth_failure() {
    let f = fixture().await;
    let tmp = tempfile::tempdir().unwrap();
    let netrc = "machine 127.0.0.2 login ci password s3cret\n";
    let (_peer, _nginx, a) = behind_auth(tmp.path(), f, netrc).await;
    let got = get(
        &format!("{}/{}.narinfo", a.url(), Fixture::hash(&f.top)),
        &[],
    )
    .await;
    assert_eq!(got.status, 503);
    assert!(a.metric(AUTH_FAILED).await >= 1);
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redirect_to_another_host_is_not_followed() {
    let f = fixture().await;
    let tmp = tempfile::tempdir().unwrap();
    let elsewhere = Recorder::start().await;
    let peer = Recorder::start().await;
    let target = format!("http://localhost:{}", elsewhere.port);
    let nginx = Nginx::start(&tmp.path().join("nginx"), &f.cache, "ci", "s3cret", &target).await;
    // Credentials for every host: only not following redirects keeps them from `elsewhere`.
    let netrc = "default login ci password s3cret\n";
    let up = format!("{}/redir/", nginx.url());
    let a = appliance(&tmp.path().join("a"), f, up, netrc, peer.url()).await;
    let got = get(
        &format!("{}/{}.narinfo", a.url(), Fixture::hash(&f.top)),
        &[],
    )
    .await;
    assert_ne!(got.status, 200);
    let other = "nixgate_upstream_requests_total{status=\"other\"}";
    assert!(a.metric(other).await >= 1, "the upstream answered the 302");
    assert!(elsewhere.heads().is_empty(), "the redirect was followed");
    assert_no_credentials(&peer);
    a.stop().await;
}
