//! Issue 21: a narinfo's `URL` is not signed, so it never leads outside what the operator
//! configured. An upstream, a peer or a fleet member serves a genuinely signed narinfo whose
//! `URL` points at an internal listener (absolute, `//host`, `../..`, with a query), with a
//! netrc whose `default` entry would match any host: the internal listener receives no
//! request (so no credential reaches it) and no byte of it reaches a client. Negative entries
//! come only from the operator's upstream.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

const URL_REFUSED: &str = "nixgate_untrusted_refused_total{reason=\"narinfo_url\"}";

/// `narinfo` with its `URL` and `Compression` replaced.
fn with_url(narinfo: &str, url: &str, compression: &str) -> String {
    narinfo
        .lines()
        .map(|l| match l.split_once(": ") {
            Some(("URL", _)) => format!("URL: {url}"),
            Some(("Compression", _)) => format!("Compression: {compression}"),
            _ => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// An internal service the appliance can reach but must never be made to ask.
async fn internal() -> Hostile {
    let h = Hostile::start(None).await;
    h.serve("secret", "internal secret: hunter2\n", None);
    h
}

/// The URL variants an attacker tries, pointing at `internal`.
fn attacks(internal: &Hostile) -> Vec<String> {
    let host = internal.addr;
    vec![
        format!("http://{host}/secret"),
        format!("//{host}/secret"),
        "../../secret".to_owned(),
        "nar/x.nar?u=http://127.0.0.1/".to_owned(),
    ]
}

/// Makes `server` serve each path's signed narinfo with its `URL` replaced by one attack
/// (xz kept, so the standard location still has the NAR).
fn plant(server: &Upstream, f: &Fixture, paths: &[&String], urls: Vec<String>) {
    for (p, url) in paths.iter().zip(urls) {
        let ni = with_url(&f.narinfo(p), &url, "xz");
        let key = format!("{}.narinfo", Fixture::hash(p));
        server.overrides.lock().unwrap().insert(key, ni.into());
    }
}

fn write_netrc(dir: &Path) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let file = dir.join("netrc");
    std::fs::write(&file, "default login ci password s3cret-default\n").unwrap();
    file
}

fn assert_untouched(internal: &Hostile) {
    let seen = internal.seen.lock().unwrap();
    assert!(
        seen.requests.is_empty(),
        "internal asked: {:?}",
        seen.requests
    );
    assert!(seen.authorizations.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_narinfo_url_never_leaves_the_configured_origins() {
    let f = fixture().await;
    let tmp = tempfile::tempdir().unwrap();
    let inner = internal().await;
    let up = Upstream::start(&f.cache).await;
    let netrc = write_netrc(&tmp.path().join("conf"));
    let a = Appliance::start(&tmp.path().join("a"), &[up.url()], &f.public_key, |s| {
        s.netrc_file = Some(netrc);
    })
    .await;
    // xz: the NAR comes from its standard location instead, so the runner still succeeds.
    let paths: Vec<&String> = f.blobs.iter().take(4).collect();
    plant(&up, f, &paths, attacks(&inner));
    for p in &paths {
        assert_ok(&nix_copy(&a.url(), &f.public_key, p, &tmp.path().join("d")).await);
    }
    assert_eq!(a.metric(URL_REFUSED).await, 4);
    // `Compression: none`: the standard location does not exist; the runner gets an error,
    // and no byte of the internal body.
    let p = &f.blobs[4];
    let ni = with_url(
        &f.narinfo(p),
        &format!("http://{}/secret", inner.addr),
        "none",
    );
    let key = format!("{}.narinfo", Fixture::hash(p));
    up.overrides
        .lock()
        .unwrap()
        .insert(key.clone(), ni.clone().into());
    let got = get(&format!("{}/{key}", a.url()), &[]).await;
    assert_eq!(got.status, 200);
    let nar = got
        .body
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .unwrap()
        .to_owned();
    assert!(
        nar.starts_with("nar/") && !nar.contains("127.0.0.1"),
        "{nar}"
    );
    let body = try_request("GET", &format!("{}/{nar}", a.url()), &[]).await;
    assert!(body.map_or(true, |b| b.status != 200 && !b.body.contains("hunter2")));
    assert_untouched(&inner);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_narinfo_url_is_ignored_and_its_nar_fetched_by_hash() {
    let f = fixture().await;
    let tmp = tempfile::tempdir().unwrap();
    let inner = internal().await;
    // The peer holds the real files but rewrites every narinfo's URL to the internal host.
    let peer = Upstream::start(&f.cache).await;
    let paths: Vec<&String> = f.blobs.iter().take(4).collect();
    plant(&peer, f, &paths, attacks(&inner));
    let down = failing_upstream(f).await;
    let netrc = write_netrc(&tmp.path().join("conf"));
    let a = Appliance::start(&tmp.path().join("a"), &[down.url()], &f.public_key, |s| {
        s.peers = Some(vec![peer.url()]);
        s.no_fleet = true;
        s.netrc_file = Some(netrc);
    })
    .await;
    for p in &paths {
        assert_ok(&nix_copy(&a.url(), &f.public_key, p, &tmp.path().join("d")).await);
        let nar = f.nar_url(p);
        assert_eq!(peer.count(&nar), 1, "{nar} fetched from the peer by hash");
    }
    assert_untouched(&inner);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_member_narinfo_url_is_ignored() {
    let f = fixture().await;
    let tmp = tempfile::tempdir().unwrap();
    let inner = internal().await;
    let p = &f.blobs[0];
    let key = Fixture::hash(p);
    let own = "f".repeat(32);
    let member = Hostile::start(Some(&member_id(&own, &[key], &[]))).await;
    let ni = with_url(
        &f.narinfo(p),
        &format!("http://{}/secret", inner.addr),
        "none",
    );
    member.serve(&format!("{key}.narinfo"), ni, None);
    let up = Upstream::start(&f.cache).await;
    let dir = tmp.path().join("a");
    let a = with_member(&dir, &up.url(), &f.public_key, &member, &own, |_| {}).await;
    let got = get(&format!("{}/{key}.narinfo", a.url()), &[]).await;
    assert_eq!(got.status, 200, "the member's signed narinfo is taken");
    assert_eq!(member.count(&format!("{key}.narinfo")), 1);
    let nar = got
        .body
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .unwrap();
    // Its NAR is asked of the member by hash (as owner, then as a peer; it has none), and of
    // the upstream at the standard location (none there for `none`): never the internal host.
    let _ = try_request("GET", &format!("{}/{nar}", a.url()), &[]).await;
    assert!(member.count(nar) >= 1, "the member is asked by hash");
    assert_untouched(&inner);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_members_404_is_never_remembered() {
    let f = fixture().await;
    let tmp = tempfile::tempdir().unwrap();
    let p = &f.top;
    let key = Fixture::hash(p);
    let own = "f".repeat(32);
    // The owner says "not found" for a path the upstream has.
    let member = Hostile::start(Some(&member_id(&own, &[key], &[]))).await;
    let up = Upstream::start(&f.cache).await;
    let dir = tmp.path().join("a");
    let a = with_member(&dir, &up.url(), &f.public_key, &member, &own, |s| {
        s.negative_ttl = Some("1h".into());
    })
    .await;
    let url = format!("{}/{key}.narinfo", a.url());
    assert_eq!(get(&url, &[]).await.status, 404);
    assert_eq!(get(&url, &[]).await.status, 404);
    assert_eq!(
        member.count(&format!("{key}.narinfo")),
        2,
        "asked again: no negative entry"
    );
    // The member leaves; the upstream's answer is served at once, an hour's TTL or not.
    drop(member);
    wait_until(
        Duration::from_secs(10),
        "the stopped member to own nothing",
        || async { !peer_rows(&a).await.iter().any(|p| p.owner) },
    )
    .await;
    assert_eq!(get(&url, &[]).await.status, 200);
}
