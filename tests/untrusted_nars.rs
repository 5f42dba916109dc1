//! Issue 21: every stored or served NAR is verified against the signed NarHash, whatever its
//! compression, and a drip-fed source costs a bounded wait.
//!
//! Caches written by real Nix with each compression substitute through the appliance (their
//! NarHash checked); lzip NARs, which nixgate cannot decode, are refused before a byte is
//! fetched. A forged NAR (another path's real file, served under a genuinely signed narinfo
//! whose unsigned FileHash/FileSize name it) from the URL candidate, a peer and a fleet owner
//! is never stored and never completed to a client. Drip-fed narinfos and NARs from a fleet
//! owner or a previous owner give way to the upstream within the deadlines.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

const COMPRESSION_REFUSED: &str = "nixgate_untrusted_refused_total{reason=\"compression\"}";
const TOO_SLOW: &str = "nixgate_untrusted_refused_total{reason=\"too_slow\"}";

/// A cache of `paths` written by real `nix copy` with `compression`, signed with the
/// fixture's key.
fn cache_with(f: &Fixture, dir: &Path, compression: &str, paths: &[&String]) -> PathBuf {
    let cache = dir.join(format!("cache-{compression}"));
    let to = format!(
        "file://{}?secret-key={}&compression={compression}",
        cache.display(),
        f.dir.join("sk").display()
    );
    let out = std::process::Command::new("nix")
        .env("NIX_CONFIG", NIX_CONFIG)
        .args(["copy", "--to", &to])
        .args(paths)
        .output()
        .expect("nix is installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cache
}

fn field<'a>(narinfo: &'a str, name: &str) -> &'a str {
    narinfo
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
        .unwrap_or_else(|| panic!("no {name} in {narinfo}"))
}

/// A forgery: `victim`'s signed narinfo naming `other`'s file (unsigned FileHash, FileSize,
/// URL, Compression), and that file's path and bytes.
fn forge(cache: &Path, victim: &str, other: &str) -> (String, String, Vec<u8>) {
    let read = |p: &str| {
        std::fs::read_to_string(cache.join(format!("{}.narinfo", Fixture::hash(p)))).unwrap()
    };
    let (v, o) = (read(victim), read(other));
    let forged: String = v
        .lines()
        .map(|l| match l.split_once(": ") {
            Some((k @ ("URL" | "Compression" | "FileHash" | "FileSize"), _)) => {
                format!("{k}: {}", field(&o, k))
            }
            _ => l.to_owned(),
        })
        .map(|l| l + "\n")
        .collect();
    let url = field(&o, "URL").to_owned();
    let bytes = std::fs::read(cache.join(&url)).unwrap();
    (forged, url, bytes)
}

/// The appliance answers `nar` without ever completing it, and stores nothing under it.
async fn assert_never_completed(a: &Appliance, nar: &str, size: usize) {
    let got = try_request("GET", &format!("{}/{nar}", a.url()), &[]).await;
    if let Ok(g) = &got {
        assert!(g.status != 200 || g.body.len() < size, "{nar} completed");
    }
    let name = nar.trim_start_matches("nar/");
    let stored = files(&a.cache_dir, "nar");
    assert!(!stored.iter().any(|p| p.ends_with(name)), "{nar} stored");
}

#[tokio::test(flavor = "multi_thread")]
async fn caches_of_every_compression_nix_writes_are_checked_or_refused() {
    let f = fixture().await;
    let tmp = tempfile::tempdir().unwrap();
    for c in ["gzip", "br", "bzip2", "zstd", "lz4", "none", "lzip"] {
        let cache = cache_with(f, tmp.path(), c, &[&f.top]);
        let up = Upstream::start(&cache).await;
        let a =
            Appliance::start_default(&tmp.path().join(format!("a-{c}")), &up, &f.public_key).await;
        let out = nix_copy(&a.url(), &f.public_key, &f.top, &tmp.path().join(c)).await;
        if c == "lzip" {
            assert!(
                !out.status.success(),
                "{c}: nixgate cannot check it, so never serves it"
            );
            assert!(a.metric(COMPRESSION_REFUSED).await >= 1, "{c}");
            let nar = f.nar_url(&f.top).replace(".nar.xz", "");
            let asked: u64 = up
                .requests
                .lock()
                .unwrap()
                .iter()
                .filter(|(p, _)| p.starts_with(&nar))
                .map(|(_, n)| n)
                .sum();
            assert_eq!(asked, 0, "{c}: refused before any byte was fetched");
        } else {
            assert_ok(&out);
            assert_eq!(a.metric(COMPRESSION_REFUSED).await, 0);
        }
        a.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forged_nar_from_the_url_candidate_is_never_stored_or_completed() {
    let f = fixture().await;
    let tmp = tempfile::tempdir().unwrap();
    for c in ["gzip", "br", "bzip2", "lz4", "xz", "zstd", "none"] {
        let cache = cache_with(f, tmp.path(), c, &[&f.blobs[0], &f.blobs[1]]);
        let (narinfo, url, bytes) = forge(&cache, &f.blobs[0], &f.blobs[1]);
        let up = Upstream::start(&cache).await;
        let key = format!("{}.narinfo", Fixture::hash(&f.blobs[0]));
        up.overrides
            .lock()
            .unwrap()
            .insert(key.clone(), narinfo.into());
        let a =
            Appliance::start_default(&tmp.path().join(format!("a-{c}")), &up, &f.public_key).await;
        assert_eq!(get(&format!("{}/{key}", a.url()), &[]).await.status, 200);
        assert_never_completed(&a, &url, bytes.len()).await;
        let failures = "nixgate_verification_failures_total{source=\"upstream\"}";
        assert!(a.metric(failures).await >= 1, "{c}: counted");
        a.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forged_nar_from_a_peer_is_never_stored_or_completed() {
    let f = fixture().await;
    let tmp = tempfile::tempdir().unwrap();
    for c in ["gzip", "br", "lz4"] {
        let cache = cache_with(f, tmp.path(), c, &[&f.blobs[0], &f.blobs[1]]);
        let (narinfo, url, bytes) = forge(&cache, &f.blobs[0], &f.blobs[1]);
        let peer = Upstream::start(&cache).await;
        let key = format!("{}.narinfo", Fixture::hash(&f.blobs[0]));
        peer.overrides
            .lock()
            .unwrap()
            .insert(key.clone(), narinfo.into());
        let down = failing_upstream(f).await;
        let a = with_peers(
            &tmp.path().join(format!("a-{c}")),
            &down,
            &f.public_key,
            vec![peer.url()],
        )
        .await;
        assert_eq!(get(&format!("{}/{key}", a.url()), &[]).await.status, 200);
        assert_never_completed(&a, &url, bytes.len()).await;
        assert_eq!(peer.count(&url), 1, "{c}: the NAR came from the peer");
        let rows = peer_rows(&a).await;
        assert_eq!(rows[0].state, "skipped", "{c}: on probation: {rows:?}");
        a.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forged_nar_from_a_fleet_owner_is_never_stored_and_the_upstream_serves() {
    let f = fixture().await;
    let tmp = tempfile::tempdir().unwrap();
    let victim = &f.blobs[0];
    let cache = cache_with(f, tmp.path(), "gzip", &[victim, &f.blobs[1]]);
    let (narinfo, url, bytes) = forge(&cache, victim, &f.blobs[1]);
    let own = "e".repeat(32);
    let h = Fixture::hash(victim);
    let member = Hostile::start(Some(&member_id(&own, &[h], &[]))).await;
    member.serve(&format!("{h}.narinfo"), narinfo, None);
    member.serve(&url, bytes.clone(), None);
    let up = Upstream::start(&f.cache).await;
    let a = with_member(
        &tmp.path().join("a"),
        &up.url(),
        &f.public_key,
        &member,
        &own,
        |_| {},
    )
    .await;
    assert_eq!(
        get(&format!("{}/{h}.narinfo", a.url()), &[]).await.status,
        200
    );
    assert_never_completed(&a, &url, bytes.len()).await;
    assert_eq!(member.count(&url), 1, "the NAR came from the owner");
    assert_eq!(peer_rows(&a).await[0].state, "skipped", "on probation");
    // The lying owner is out of the rotation: the next runner gets the upstream's.
    assert_ok(&nix_copy(&a.url(), &f.public_key, victim, &tmp.path().join("d")).await);
    assert_eq!(up.count(&format!("{h}.narinfo")), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn drip_fed_narinfos_and_nars_give_way_to_the_upstream() {
    let f = fixture().await;
    let tmp = tempfile::tempdir().unwrap();
    let drip = Some(Duration::from_millis(500));
    // 0: the owner drips the narinfo (6 s deadline); 1: the previous owner, asked
    // only-if-cached like a peer, drips it (3 s); 2: the owner drips the NAR (min rate).
    for (i, p) in f.blobs.iter().take(3).enumerate() {
        let h = Fixture::hash(p);
        let own = "d".repeat(32);
        let id = if i == 1 {
            member_id(&own, &[], &[h])
        } else {
            member_id(&own, &[h], &[])
        };
        let member = Hostile::start(Some(&id)).await;
        let narinfo = f.narinfo(p);
        let nar = f.nar_url(p);
        member.serve(
            &format!("{h}.narinfo"),
            narinfo,
            (i < 2).then_some(drip).flatten(),
        );
        let file = std::fs::read(f.cache.join(&nar)).unwrap();
        member.serve(&nar, file, drip);
        let up = Upstream::start(&f.cache).await;
        let dir = tmp.path().join(format!("a{i}"));
        let a = with_member(&dir, &up.url(), &f.public_key, &member, &own, |_| {}).await;
        let started = Instant::now();
        assert_ok(
            &nix_copy(
                &a.url(),
                &f.public_key,
                p,
                &tmp.path().join(format!("d{i}")),
            )
            .await,
        );
        let took = started.elapsed();
        assert!(took < Duration::from_secs(15), "case {i}: {took:?}");
        assert!(a.metric(TOO_SLOW).await >= 1, "case {i}: counted");
        if i < 2 {
            assert_eq!(
                up.count(&format!("{h}.narinfo")),
                1,
                "case {i}: the upstream's narinfo"
            );
        } else {
            assert!(
                up.count(&nar) >= 1,
                "case {i}: the upstream continued the NAR"
            );
        }
        a.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_planted_narinfo_never_blocks_an_upstreams_genuine_one() {
    let f = fixture().await;
    let tmp = tempfile::tempdir().unwrap();
    let (victim, other) = (&f.blobs[0], &f.blobs[1]);
    let cache = cache_with(f, tmp.path(), "gzip", &[victim, other]);
    let (planted, _, _) = forge(&cache, victim, other);
    let own = "e".repeat(32);
    let (p, q) = (Fixture::hash(victim), Fixture::hash(other));
    // The member owns p only: it plants p's signed narinfo naming q's file.
    let member = Hostile::start(Some(&member_id(&own, &[p], &[q]))).await;
    member.serve(&format!("{p}.narinfo"), planted, None);
    let up = Upstream::start(&cache).await;
    let a = with_member(
        &tmp.path().join("a"),
        &up.url(),
        &f.public_key,
        &member,
        &own,
        |_| {},
    )
    .await;
    assert_eq!(
        get(&format!("{}/{p}.narinfo", a.url()), &[]).await.status,
        200
    );
    // q's genuine narinfo, from the upstream, still wins (the planted one is forgotten), and
    // q substitutes; nothing is remembered as missing.
    assert_eq!(
        get(&format!("{}/{q}.narinfo", a.url()), &[]).await.status,
        200
    );
    assert_ok(&nix_copy(&a.url(), &f.public_key, other, &tmp.path().join("d")).await);
    assert_eq!(up.count(&format!("{q}.narinfo")), 1);
}
