//! `nixgate warm` (the real binary) against an appliance: a closure is walked and every NAR
//! ends up in the appliance's cache; a missing path makes it fail and be listed; on a pipe it
//! prints one JSON object per line.

mod common;

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_nixgate");

/// Runs `nixgate warm` with stdout piped; returns exit success, the JSON events and stderr.
async fn warm(args: &[&str]) -> (bool, Vec<serde_json::Value>, String) {
    let out = tokio::process::Command::new(BIN)
        .arg("warm")
        .args(args)
        .output()
        .await
        .unwrap();
    let events = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    (
        out.status.success(),
        events,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn of<'a>(events: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    events.iter().filter(|e| e["event"] == kind).collect()
}

/// True when the appliance holds `path`'s narinfo and NAR (asked only-if-cached).
async fn cached(a: &Appliance, f: &Fixture, path: &str) -> bool {
    let oic = [("cache-control", "only-if-cached")];
    let narinfo = get(
        &format!("{}/{}.narinfo", a.url(), Fixture::hash(path)),
        &oic,
    )
    .await;
    let nar = get(&format!("{}/{}", a.url(), f.nar_url(path)), &oic).await;
    narinfo.status == 200 && nar.status == 200
}

#[tokio::test(flavor = "multi_thread")]
async fn warming_a_closure_caches_every_nar() {
    let f = fixture().await;
    let tmp = tempfile::tempdir().unwrap();
    let up = Upstream::start(&f.cache).await;
    let a = Appliance::start_default(tmp.path(), &up, &f.public_key).await;
    assert!(!cached(&a, f, &f.top).await);
    let list = tmp.path().join("paths");
    std::fs::write(&list, format!("# tomorrow's toolchain\n{}\n\n", f.blobs[0])).unwrap();
    let (ok, events, stderr) = warm(&[
        "--appliance",
        &a.url(),
        "--from-file",
        list.to_str().unwrap(),
        // dep is a root and a reference of top: found twice, warmed once.
        &f.dep,
        &f.top,
    ])
    .await;
    assert!(ok, "{stderr}");
    for p in [&f.top, &f.dep, &f.blobs[0]] {
        assert!(cached(&a, f, p).await, "{p} not cached");
        assert!(
            of(&events, "nar").iter().any(|e| e["path"] == p.as_str()),
            "{p}: {events:?}"
        );
        assert_eq!(up.count(&f.nar_url(p)), 1, "{p} fetched once");
    }
    assert_eq!(of(&events, "start").len(), 1);
    let done = of(&events, "done");
    assert_eq!(done[0]["paths"], 3);
    assert_eq!(done[0]["cached"], 3);
    assert_eq!(done[0]["missing"], serde_json::json!([]));
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_path_fails_and_is_listed() {
    let f = fixture().await;
    let tmp = tempfile::tempdir().unwrap();
    let up = Upstream::start(&f.cache).await;
    let a = Appliance::start_default(tmp.path(), &up, &f.public_key).await;
    let nope = "/nix/store/00000000000000000000000000000000-nixgate-test-nope";
    let (ok, events, stderr) = warm(&["--appliance", &a.url(), &f.dep, nope]).await;
    assert!(!ok);
    assert!(stderr.contains(nope), "{stderr}");
    assert!(!stderr.contains(&f.dep), "{stderr}");
    assert_eq!(of(&events, "missing").len(), 1);
    assert_eq!(of(&events, "missing")[0]["why"], "not found upstream (404)");
    assert_eq!(of(&events, "done")[0]["missing"], serde_json::json!([nope]));
    assert!(
        stderr.contains(&format!("{nope}: not found upstream (404)")),
        "{stderr}"
    );
    assert!(cached(&a, f, &f.dep).await);
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn no_paths_or_a_bad_path_is_an_error() {
    let (ok, _, stderr) = warm(&["--appliance", "http://127.0.0.1:1"]).await;
    assert!(!ok && stderr.contains("no store paths"), "{stderr}");
    let (ok, _, stderr) = warm(&["--appliance", "http://127.0.0.1:1", "not-a-path"]).await;
    assert!(!ok && stderr.contains("not a store path"), "{stderr}");
}

/// An upstream outage during a warm-up: the appliance answers 503 until its circuit heals
/// (its background probe), and `warm` waits it out instead of failing.
#[tokio::test(flavor = "multi_thread")]
async fn warm_waits_out_an_upstream_outage() {
    use std::sync::atomic::Ordering;
    let f = fixture().await;
    let tmp = tempfile::tempdir().unwrap();
    let up = Upstream::start(&f.cache).await;
    let a = Appliance::start_default(tmp.path(), &up, &f.public_key).await;
    up.fail_5xx.store(true, Ordering::SeqCst);
    // Open the circuit first, as a burst of runners would.
    for i in 0..6 {
        let url = format!("{}/{}.narinfo", a.url(), format!("{i}").repeat(32));
        assert_eq!(get(&url, &[]).await.status, 503);
    }
    let warming = {
        let url = a.url();
        let top = f.top.clone();
        tokio::spawn(async move { warm(&["--url", &url, &top]).await })
    };
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    up.fail_5xx.store(false, Ordering::SeqCst);
    let (ok, events, stderr) = warming.await.unwrap();
    assert!(ok, "{stderr}");
    assert_eq!(of(&events, "done")[0]["missing"], serde_json::json!([]));
    assert!(cached(&a, f, &f.top).await);
    a.stop().await;
}
