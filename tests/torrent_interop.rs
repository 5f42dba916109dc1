//! Interoperability with standard BitTorrent software: aria2c downloads a NAR from an
//! appliance, and an appliance fetches a NAR seeded by aria2c, found via opentracker
//! (in its whitelist mode).

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

fn need(tool: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(found, "missing tool: {tool} (ci/test.sh installs it)");
}

/// A child process killed when dropped.
/// A child process and the port held for it (see `HeldPort`), kept while it runs.
struct Proc(Child, #[allow(dead_code)] HeldPort);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// opentracker on loopback, in its (Debian) whitelist mode: only `info_hashes` may announce.
async fn opentracker(dir: &Path, info_hashes: &[String]) -> (Proc, String) {
    need("opentracker");
    let list = dir.join("whitelist");
    std::fs::write(&list, info_hashes.join("\n") + "\n").unwrap();
    let held = hold_port();
    let port = held.port;
    let child = Command::new("opentracker")
        .args([
            "-i",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-P",
            &port.to_string(),
        ])
        .arg("-w")
        .arg(&list)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("opentracker starts");
    let tracker = Proc(child, held);
    wait_until(Duration::from_secs(5), "opentracker to listen", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    (tracker, format!("http://127.0.0.1:{port}/announce"))
}

fn aria2c(args: &[&str], dir: &Path, log: &Path) -> Proc {
    need("aria2c");
    let held = hold_port();
    let child = Command::new("aria2c")
        .args([
            "--enable-dht=false",
            "--enable-dht6=false",
            "--bt-enable-lpd=false",
            "--enable-peer-exchange=false",
            "--disable-ipv6=true",
            "--bt-external-ip=127.0.0.1",
            "--summary-interval=0",
            "--console-log-level=warn",
        ])
        .arg(format!("--listen-port={}", held.port))
        .arg(format!("--dir={}", dir.display()))
        .arg(format!("--log={}", log.display()))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("aria2c starts");
    Proc(child, held)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn aria2c_downloads_a_nar_from_an_appliance() {
    let f = fixture().await;
    let work = tempfile::tempdir().unwrap();
    let (fh, file) = nar_of(f, &f.big);
    let expected = torrent_of_file(&file);
    let (_tracker, announce) = opentracker(work.path(), &[expected.info_hash_hex()]).await;
    let (_up, a) = holding_seeder(f, work.path(), &[&f.big], std::slice::from_ref(&announce)).await;

    let got = get(&format!("{}/_p2p/v1/torrent/{fh}", a.url()), &[]).await;
    assert_eq!(got.status, 200);
    let torrent_file = work.path().join("nar.torrent");
    std::fs::write(&torrent_file, &got.bytes).unwrap();
    let out = work.path().join("aria2c");
    let log = work.path().join("aria2c.log");
    let mut aria = aria2c(
        &["--seed-time=0", torrent_file.to_str().unwrap()],
        &out,
        &log,
    );
    let mut status = None;
    let what = format!("aria2c to finish (log {})", log.display());
    wait_until(Duration::from_secs(60), &what, || {
        let s = aria.0.try_wait().unwrap();
        status = status.or(s);
        async move { s.is_some() }
    })
    .await;
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        status.is_some_and(|s| s.success()),
        "aria2c did not finish within 60 s: {status:?}\n{}",
        &log_text[log_text.len().saturating_sub(3000)..]
    );
    let downloaded = std::fs::read(out.join(format!("{fh}.nar.xz"))).unwrap();
    assert!(
        downloaded == std::fs::read(&file).unwrap(),
        "byte-identical NAR"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_appliance_fetches_a_nar_from_aria2c_via_opentracker() {
    let f = fixture().await;
    let work = tempfile::tempdir().unwrap();
    let (fh, file) = nar_of(f, &f.big);
    let torrent = torrent_of_file(&file);
    let (_tracker, announce) = opentracker(work.path(), &[torrent.info_hash_hex()]).await;

    // aria2c seeds the NAR (checked against the torrent first), announced on the tracker.
    let seed_dir = work.path().join("seed");
    std::fs::create_dir_all(&seed_dir).unwrap();
    std::fs::copy(&file, seed_dir.join(&torrent.name)).unwrap();
    let torrent_file = work.path().join("nar.torrent");
    std::fs::write(
        &torrent_file,
        torrent.to_file(std::slice::from_ref(&announce)),
    )
    .unwrap();
    let _seeder = aria2c(
        &[
            "--seed-ratio=0.0",
            "--check-integrity=true",
            "--bt-seed-unverified=false",
            torrent_file.to_str().unwrap(),
        ],
        &seed_dir,
        &work.path().join("aria2c.log"),
    );

    // A peer that only describes the NAR: the signed narinfo and the .torrent, but no
    // torrent port of its own and no NAR bytes (so the bytes can only come from aria2c).
    let describer = Upstream::start(&f.cache).await;
    describer.overrides.lock().unwrap().insert(
        format!("_p2p/v1/torrent/{fh}"),
        bytes::Bytes::from(torrent.to_file(&[])),
    );
    describer.overrides.lock().unwrap().insert(
        f.nar_url(&f.big),
        bytes::Bytes::from_static(b"not the NAR: bytes must come from the swarm"),
    );

    let down = failing_upstream(f).await;
    let peer = describer.url();
    let b = torrent_appliance(
        &work.path().join("b"),
        &down,
        &f.public_key,
        vec![peer],
        &[announce],
        |_| {},
    )
    .await;
    let dest = work.path().join("client");
    assert_ok(&nix_copy(&b.url(), &f.public_key, &f.big, &dest).await);
    assert!(substituted(&dest, &f.big));
    assert_eq!(
        b.metric("nixgate_fetched_bytes_total{source=\"torrent\"}")
            .await,
        std::fs::metadata(&file).unwrap().len()
    );
    // Over HTTP from the peer: only the narinfo (counted as stored, with its URL line).
    let http_from_peer = b
        .metric("nixgate_fetched_bytes_total{source=\"peer\"}")
        .await;
    assert!(http_from_peer < 1024, "{http_from_peer}");
}
