//! Uploads in a fleet: a path pushed with real `nix copy --to` to one member is replicated to
//! the key's rendezvous owners (held by at least two members), and after a holder is killed
//! with `kill -9` every surviving member still serves it to a runner.

mod common;

use std::path::Path;
use std::process::Child;
use std::time::Duration;

use common::*;

const TOKEN: &str = "fleet-t0ken";

/// A member as a real process taking uploads (so it can be killed with SIGKILL).
fn spawn_uploading(dir: &Path, port: u16, up: &str, key: &str, sk: &Path, peers: &[u16]) -> Child {
    std::fs::create_dir_all(dir).unwrap();
    let token = dir.join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let extra = [
        "--upload-token-file".as_ref(),
        token.as_os_str(),
        "--signing-key-file".as_ref(),
        sk.as_os_str(),
    ];
    spawn_member(&dir.join("cache"), port, up, key, peers, &extra)
}

/// Waits until the member on `port` serves and counts `n` live owners among its peers.
async fn wait_for_owners(port: u16, n: usize) {
    let url = format!("http://127.0.0.1:{port}/_p2p/v1/peers");
    let what = format!("member {port} to see {n} owners");
    wait_until(Duration::from_secs(20), &what, || async {
        let Ok(got) = try_request("GET", &url, &[]).await else {
            return false;
        };
        let v: serde_json::Value = serde_json::from_str(&got.body).unwrap_or_default();
        let owners = v["peers"]
            .as_array()
            .map_or(0, |p| p.iter().filter(|p| p["owner"] == true).count());
        owners == n
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pushed_path_survives_a_killed_holder_and_every_member_serves_it() {
    let f = fixture().await;
    let tmp = tempfile::tempdir().unwrap();
    let up = Upstream::start(&f.cache).await;
    let (sk, public) = key_pair(&tmp.path().join("keys"), "fleet-uploads-1");
    // Held until the end: each member binds its own (SO_REUSEADDR) and nothing else can.
    let held: Vec<HeldPort> = (0..3).map(|_| hold_port()).collect();
    let ports: Vec<u16> = held.iter().map(|h| h.port).collect();
    let dirs: Vec<_> = (0..3).map(|i| tmp.path().join(format!("m{i}"))).collect();
    let mut members: Vec<Option<Child>> = (0..3)
        .map(|i| {
            let peers: Vec<u16> = ports.iter().copied().filter(|p| *p != ports[i]).collect();
            Some(spawn_uploading(
                &dirs[i],
                ports[i],
                &up.url(),
                &f.public_key,
                &sk,
                &peers,
            ))
        })
        .collect();
    for p in &ports {
        wait_for_owners(*p, 2).await;
    }

    let path = build_unique("fleet", 4000);
    let hash = Fixture::hash(&path).to_owned();
    let netrc = netrc(&tmp.path().join("n"), TOKEN);
    let to = format!("http://127.0.0.1:{}", ports[0]);
    assert_ok(&nix_push(&to, Some(&netrc), &path, tmp.path()).await);

    let holds = |i: usize| {
        dirs[i]
            .join("cache/uploads/narinfo")
            .join(format!("{hash}.narinfo"))
            .exists()
    };
    let holders: Vec<usize> = (0..3).filter(|i| holds(*i)).collect();
    assert!(holders.len() >= 2, "held by {holders:?} only");

    // Kill a holder (another than the member pushed to, when there is one).
    let victim = *holders.iter().find(|i| **i != 0).unwrap_or(&0);
    let mut child = members[victim].take().unwrap();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    for i in (0..3).filter(|i| *i != victim) {
        let url = format!("http://127.0.0.1:{}", ports[i]);
        let dest = tmp.path().join(format!("runner{i}"));
        assert_ok(&nix_copy(&url, &public, &path, &dest).await);
        assert!(substituted(&dest, &path), "through member {i}");
    }
    for m in members.iter_mut().flatten() {
        let _ = m.kill();
        let _ = m.wait();
    }
}
