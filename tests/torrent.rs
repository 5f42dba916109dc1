//! BitTorrent between appliances: deterministic torrents on `/_p2p/v1/torrent/<FileHash>`,
//! the swarm as the fallback when every upstream fails (real `nix copy`), lying `.torrent`s
//! refused, and interoperability with aria2c and opentracker both ways.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use nixgate::torrent::meta::{NarTorrent, PieceHasher};

/// BitTorrent on, on a fixed free port (with port 0 librqbit would announce 4240).
fn with_torrent(a: &mut nixgate::config::ServeArgs, trackers: &[String]) {
    a.no_torrent = false;
    a.torrent_listen = Some(format!("127.0.0.1:{}", free_port()));
    a.trackers = Some(trackers.to_vec());
}

/// An appliance with BitTorrent on, in front of `up`, with these peers and trackers.
async fn torrent_appliance(
    dir: &Path,
    up: &Upstream,
    key: &str,
    peers: Vec<String>,
    trackers: &[String],
    extra: impl FnOnce(&mut nixgate::config::ServeArgs),
) -> Appliance {
    Appliance::start(dir, &[up.url()], key, move |s| {
        with_torrent(s, trackers);
        s.peers = Some(peers);
        extra(s);
    })
    .await
}

/// The FileHash (nix32) and the NAR file of a fixture path.
fn nar_of(f: &Fixture, path: &str) -> (String, PathBuf) {
    let url = f.nar_url(path);
    let fh = url
        .trim_start_matches("nar/")
        .split('.')
        .next()
        .unwrap()
        .to_owned();
    (fh, f.cache.join(url))
}

/// The torrent computed here, independently of any appliance, from the NAR's bytes.
fn torrent_of_file(file: &Path) -> NarTorrent {
    let data = std::fs::read(file).unwrap();
    let name = file.file_name().unwrap().to_str().unwrap().to_owned();
    let mut h = PieceHasher::new(name, data.len() as u64);
    h.update(&data);
    h.finish(data.len() as u64).unwrap()
}

fn info_hash_of(torrent_file: &[u8]) -> String {
    let t = librqbit::torrent_from_bytes(torrent_file).expect("a valid .torrent");
    t.info_hash.as_string()
}

/// A peer holding `paths` with BitTorrent on.
async fn holding_seeder(
    f: &Fixture,
    dir: &Path,
    paths: &[&String],
    trackers: &[String],
) -> (Upstream, Appliance) {
    holding_appliance(f, dir, paths, |s| with_torrent(s, trackers)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn torrent_route_is_deterministic_and_never_fetches() {
    let f = fixture().await;
    let work = tempfile::tempdir().unwrap();
    let (up, a) = holding_seeder(f, work.path(), &[&f.big], &[]).await;
    let (fh, file) = nar_of(f, &f.big);

    let got = get(&format!("{}/_p2p/v1/torrent/{fh}", a.url()), &[]).await;
    assert_eq!(got.status, 200, "{}", got.body);
    assert_eq!(got.headers["content-type"], "application/x-bittorrent");
    assert!(got.headers["x-nixgate-torrent-port"]
        .to_str()
        .unwrap()
        .parse::<u16>()
        .is_ok());
    let expected = torrent_of_file(&file);
    assert_eq!(info_hash_of(&got.bytes), expected.info_hash_hex());
    assert_eq!(expected.name, format!("{fh}.nar.xz"));

    // A second appliance that fetched the same NAR independently computes the same infohash.
    let b = torrent_appliance(
        &work.path().join("b"),
        &up,
        &f.public_key,
        vec![],
        &[],
        |_| {},
    )
    .await;
    assert_ok(&nix_copy(&b.url(), &f.public_key, &f.big, &work.path().join("c2")).await);
    let got_b = get(&format!("{}/_p2p/v1/torrent/{fh}", b.url()), &[]).await;
    assert_eq!(info_hash_of(&got_b.bytes), expected.info_hash_hex());

    // Not held: 404, and nothing is fetched for it. Malformed: 400.
    let (other_fh, _) = nar_of(f, &f.top);
    let before = up.total.load(Ordering::SeqCst);
    let miss = get(&format!("{}/_p2p/v1/torrent/{other_fh}", b.url()), &[]).await;
    assert_eq!(miss.status, 404);
    assert_eq!(up.total.load(Ordering::SeqCst), before);
    let bad = get(&format!("{}/_p2p/v1/torrent/not-a-hash", b.url()), &[]).await;
    assert_eq!(bad.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upstream_down_closure_comes_from_the_swarm() {
    let f = fixture().await;
    let work = tempfile::tempdir().unwrap();
    let (_up, a) = holding_seeder(f, work.path(), &[&f.top, &f.big], &[]).await;

    let down = failing_upstream(f).await;
    let a_url = a.url();
    let b = torrent_appliance(
        &work.path().join("b"),
        &down,
        &f.public_key,
        vec![a_url],
        &[],
        |_| {},
    )
    .await;
    let dest = work.path().join("client");
    assert_ok(&nix_copy(&b.url(), &f.public_key, &f.top, &dest).await);
    assert_ok(&nix_copy(&b.url(), &f.public_key, &f.big, &dest).await);
    for p in [&f.top, &f.dep, &f.big] {
        assert!(substituted(&dest, p), "{p}");
    }
    let torrent = b
        .metric("nixgate_fetched_bytes_total{source=\"torrent\"}")
        .await;
    assert!(torrent > 3_000_000, "torrent bytes {torrent}");
    let http_from_peer = b
        .metric("nixgate_fetched_bytes_total{source=\"peer\"}")
        .await;
    assert!(
        http_from_peer < 10_000,
        "only narinfos came from the peer over HTTP, every NAR over BitTorrent: {http_from_peer}"
    );
    assert_eq!(
        b.metric("nixgate_verification_failures_total{source=\"torrent\"}")
            .await,
        0
    );
    // The download directory is cleaned up once the NAR is in the cache.
    let bt = b.cache_dir.join("tmp/bt");
    for _ in 0..50 {
        if std::fs::read_dir(&bt).map_or(0, |d| d.count()) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(std::fs::read_dir(&bt).unwrap().count(), 0, "tmp/bt emptied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lying_torrents_are_refused_and_the_honest_swarm_serves() {
    let f = fixture().await;
    let work = tempfile::tempdir().unwrap();
    let (_up, honest) = holding_seeder(f, work.path(), &[&f.big], &[]).await;
    let (fh, file) = nar_of(f, &f.big);

    // Liars serve the real (signed) narinfo, but a .torrent that does not match it.
    let real = torrent_of_file(&file);
    let mut wrong_length = real.clone();
    wrong_length.length += 1;
    let mut absurd_pieces = real.clone();
    absurd_pieces.piece_length = 1 << 30;
    absurd_pieces.pieces.truncate(20);
    let mut liars = Vec::new();
    for forged in [wrong_length, absurd_pieces] {
        let liar = Upstream::start(&f.cache).await;
        liar.overrides.lock().unwrap().insert(
            format!("_p2p/v1/torrent/{fh}"),
            bytes::Bytes::from(forged.to_file(&[])),
        );
        liars.push(liar);
    }
    let multi = Upstream::start(&f.cache).await;
    multi.overrides.lock().unwrap().insert(
        format!("_p2p/v1/torrent/{fh}"),
        bytes::Bytes::from_static(b"d4:infod5:filesld6:lengthi1e4:pathl1:aeee4:name1:x12:piece lengthi16384e6:pieces20:aaaaaaaaaaaaaaaaaaaaee"),
    );
    liars.push(multi);

    let down = failing_upstream(f).await;
    let mut peers: Vec<String> = liars.iter().map(|l| l.url()).collect();
    peers.push(honest.url());
    let b = torrent_appliance(
        &work.path().join("b"),
        &down,
        &f.public_key,
        peers,
        &[],
        |_| {},
    )
    .await;
    let dest = work.path().join("client");
    assert_ok(&nix_copy(&b.url(), &f.public_key, &f.big, &dest).await);
    assert!(substituted(&dest, &f.big));
    assert_eq!(
        b.metric("nixgate_verification_failures_total{source=\"torrent\"}")
            .await,
        3,
        "each lying .torrent counted"
    );
    assert!(
        b.metric("nixgate_fetched_bytes_total{source=\"torrent\"}")
            .await
            > 3_000_000
    );
    let states = peer_rows(&b).await;
    let skipped = states.iter().filter(|p| p.state == "skipped").count();
    assert_eq!(skipped, 3, "the three liars are on probation: {states:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_upstream_hands_a_large_nar_over_to_the_swarm() {
    let f = fixture().await;
    let work = tempfile::tempdir().unwrap();
    let (_up, a) = holding_seeder(f, work.path(), &[&f.big], &[]).await;
    let (_, file) = nar_of(f, &f.big);
    let size = std::fs::metadata(&file).unwrap().len();

    // B's upstream works but crawls: 3 MB at 200 KB/s would take 15 s.
    let slow = Upstream::start(&f.cache).await;
    slow.rate.store(200_000, Ordering::SeqCst);
    let a_url = a.url();
    let b = torrent_appliance(
        &work.path().join("b"),
        &slow,
        &f.public_key,
        vec![a_url],
        &[],
        |s| {
            s.accelerate_size = Some("1MiB".into());
            s.accelerate_below = Some("1MiB".into());
        },
    )
    .await;
    wait_for_digests(&b).await;
    let started = std::time::Instant::now();
    assert_ok(&nix_copy(&b.url(), &f.public_key, &f.big, &work.path().join("c")).await);
    let took = started.elapsed();
    assert!(substituted(&work.path().join("c"), &f.big));
    let from_upstream = b
        .metric("nixgate_fetched_bytes_total{source=\"upstream\"}")
        .await;
    let from_swarm = b
        .metric("nixgate_fetched_bytes_total{source=\"torrent\"}")
        .await;
    println!(
        "handover: {from_upstream} bytes from upstream, {from_swarm} from the swarm, {took:?}"
    );
    assert!(from_upstream > 0 && from_swarm > 0, "both sources used");
    let narinfo_bytes = 2_000; // the narinfo came from upstream too
    assert!(
        from_upstream + from_swarm >= size && from_upstream + from_swarm < size + narinfo_bytes
    );
    assert!(
        took < Duration::from_secs(10),
        "{took:?}: the swarm finished it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_first_byte_lets_the_swarm_serve_a_large_nar() {
    let f = fixture().await;
    let work = tempfile::tempdir().unwrap();
    let (_up, a) = holding_seeder(f, work.path(), &[&f.big], &[]).await;
    let (_, file) = nar_of(f, &f.big);

    // B's upstream works, but answers NARs only after 8 s.
    let late = Upstream::start(&f.cache).await;
    late.nar_delay_ms.store(8_000, Ordering::SeqCst);
    let b = torrent_appliance(
        &work.path().join("b"),
        &late,
        &f.public_key,
        vec![a.url()],
        &[],
        |s| {
            s.accelerate_size = Some("1MiB".into());
            s.first_byte_timeout = Some("20s".into());
        },
    )
    .await;
    wait_for_digests(&b).await;
    let started = std::time::Instant::now();
    assert_ok(&nix_copy(&b.url(), &f.public_key, &f.big, &work.path().join("c")).await);
    let took = started.elapsed();
    assert_eq!(
        b.metric("nixgate_fetched_bytes_total{source=\"torrent\"}")
            .await,
        std::fs::metadata(&file).unwrap().len()
    );
    assert!(
        took < Duration::from_secs(6),
        "{took:?}: the swarm answered after the 2 s wait, not the upstream after 8 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peers_first_takes_nars_from_the_lan_swarm() {
    let f = fixture().await;
    let work = tempfile::tempdir().unwrap();
    let (_up, a) = holding_seeder(f, work.path(), &[&f.big], &[]).await;
    let (_, file) = nar_of(f, &f.big);

    let up = Upstream::start(&f.cache).await;
    let a_url = a.url();
    let b = torrent_appliance(
        &work.path().join("b"),
        &up,
        &f.public_key,
        vec![a_url],
        &[],
        |s| {
            s.peer_policy = Some(nixgate::config::PeerPolicy::PeersFirst);
        },
    )
    .await;
    wait_for_digests(&b).await;
    assert_ok(&nix_copy(&b.url(), &f.public_key, &f.big, &work.path().join("c")).await);
    assert_eq!(
        up.count(&f.nar_url(&f.big)),
        0,
        "no NAR bytes from the upstream"
    );
    assert_eq!(
        b.metric("nixgate_fetched_bytes_total{source=\"torrent\"}")
            .await,
        std::fs::metadata(&file).unwrap().len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_evicted_nar_stops_being_seeded() {
    let f = fixture().await;
    let work = tempfile::tempdir().unwrap();
    let up = Upstream::start(&f.cache).await;
    let a = torrent_appliance(
        &work.path().join("a"),
        &up,
        &f.public_key,
        vec![],
        &[],
        |s| s.max_cache_size = Some("3MiB".into()),
    )
    .await;
    let (fh, _) = nar_of(f, &f.big);
    assert_ok(&nix_copy(&a.url(), &f.public_key, &f.big, &work.path().join("c1")).await);
    let t = get(&format!("{}/_p2p/v1/torrent/{fh}", a.url()), &[]).await;
    assert_eq!(t.status, 200);
    assert_eq!(a.metric("nixgate_torrents_seeding").await, 1);
    // 2 MB of other paths push the 3 MB NAR out of the 3 MiB cache.
    for b in &f.blobs {
        assert_ok(&nix_copy(&a.url(), &f.public_key, b, &work.path().join("c2")).await);
    }
    let mut seeding = 1;
    for _ in 0..50 {
        seeding = a.metric("nixgate_torrents_seeding").await;
        if seeding == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seeding, 0, "the evicted NAR's torrent was dropped");
    let gone = get(&format!("{}/_p2p/v1/torrent/{fh}", a.url()), &[]).await;
    assert_eq!(gone.status, 404);
}

// ---- interoperability with standard BitTorrent software ----

fn need(tool: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(found, "missing tool: {tool} (ci/test.sh installs it)");
}

/// A child process killed when dropped.
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// opentracker on loopback, in its (Debian) whitelist mode: only `info_hashes` may announce.
fn opentracker(dir: &Path, info_hashes: &[String]) -> (Proc, String) {
    need("opentracker");
    let list = dir.join("whitelist");
    std::fs::write(&list, info_hashes.join("\n") + "\n").unwrap();
    let port = free_port();
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
    for _ in 0..50 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    (Proc(child), format!("http://127.0.0.1:{port}/announce"))
}

fn aria2c(args: &[&str], dir: &Path, log: &Path) -> Proc {
    need("aria2c");
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
        .arg(format!("--listen-port={}", free_port()))
        .arg(format!("--dir={}", dir.display()))
        .arg(format!("--log={}", log.display()))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("aria2c starts");
    Proc(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn aria2c_downloads_a_nar_from_an_appliance() {
    let f = fixture().await;
    let work = tempfile::tempdir().unwrap();
    let (fh, file) = nar_of(f, &f.big);
    let expected = torrent_of_file(&file);
    let (_tracker, announce) = opentracker(work.path(), &[expected.info_hash_hex()]);
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
    let status = tokio::task::spawn_blocking(move || {
        for _ in 0..600 {
            if let Some(s) = aria.0.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    })
    .await
    .unwrap();
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
    let (_tracker, announce) = opentracker(work.path(), &[torrent.info_hash_hex()]);

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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_swarm_of_wrong_bytes_is_caught_by_narhash_and_its_peer_put_on_probation() {
    let f = fixture().await;
    let work = tempfile::tempdir().unwrap();
    let (fh, file) = nar_of(f, &f.big);
    // Rotten: holds the NAR, but its copy on disk was damaged after it was verified, so the
    // torrent it makes is self-consistent (pieces match its bytes) and passes every
    // structural check. Only the signed NarHash can tell.
    let up = Upstream::start(&f.cache).await;
    let rotten = torrent_appliance(
        &work.path().join("rotten"),
        &up,
        &f.public_key,
        vec![],
        &[],
        |_| {},
    )
    .await;
    assert_ok(
        &nix_copy(
            &rotten.url(),
            &f.public_key,
            &f.big,
            &work.path().join("w1"),
        )
        .await,
    );
    let on_disk = rotten
        .cache_dir
        .join("nar")
        .join(&fh[..2])
        .join(format!("{fh}.nar.xz"));
    let mut bytes = std::fs::read(&on_disk).unwrap();
    bytes[1_000_000] ^= 0xff;
    std::fs::write(&on_disk, &bytes).unwrap();
    let (_up2, honest) = holding_seeder(f, &work.path().join("h"), &[&f.big], &[]).await;

    let down = failing_upstream(f).await;
    let b = torrent_appliance(
        &work.path().join("b"),
        &down,
        &f.public_key,
        vec![rotten.url(), honest.url()],
        &[],
        |_| {},
    )
    .await;
    // The first copy's NAR comes from the rotten swarm: the transfer is aborted before its
    // last byte and nothing is stored. The next one goes to the honest peer.
    let first = nix_copy(&b.url(), &f.public_key, &f.big, &work.path().join("c1")).await;
    assert!(
        !first.status.success(),
        "the rotten NAR never completes a response"
    );
    assert!(!b
        .cache_dir
        .join("nar")
        .join(&fh[..2])
        .join(format!("{fh}.nar.xz"))
        .exists());
    let dest = work.path().join("client");
    assert_ok(&nix_copy(&b.url(), &f.public_key, &f.big, &dest).await);
    assert!(substituted(&dest, &f.big));
    assert_eq!(
        b.metric("nixgate_verification_failures_total{source=\"torrent\"}")
            .await,
        1,
        "the rotten swarm's NAR failed NarHash once"
    );
    let stored = std::fs::read(
        b.cache_dir
            .join("nar")
            .join(&fh[..2])
            .join(format!("{fh}.nar.xz")),
    )
    .unwrap();
    assert!(
        stored == std::fs::read(&file).unwrap(),
        "the cache holds the real NAR"
    );
    let rows = peer_rows(&b).await;
    let state = |url: &str| {
        rows.iter()
            .find(|p| p.url == format!("{url}/"))
            .map(|p| p.state.as_str())
    };
    assert_eq!(state(&rotten.url()), Some("skipped"), "{rows:?}");
    assert_eq!(state(&honest.url()), Some("ok"), "{rows:?}");
}
