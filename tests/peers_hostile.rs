//! Hostile peers (issue 11): a peer that lies in the unsigned narinfo fields, digests that
//! would eat memory or claim everything, torrent requests that would re-hash per request,
//! large NARs that would each cost an upstream GET, and a peer that hangs.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;

/// The resident set of this test process, in KiB.
fn vm_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn huge_and_all_ones_digests_are_refused_and_counted() {
    let f = fixture().await;
    let work = tempfile::tempdir().unwrap();
    // One shared 64 MiB all-ones body (Bytes clones share it), and a 1 MiB one that fits
    // under the size cap but claims every key.
    let huge = {
        let mut d = b"NGD1\x07".to_vec();
        d.resize(5 + (64 << 20), 0xff);
        Bytes::from(d)
    };
    let full = {
        let mut d = b"NGD1\x07".to_vec();
        d.resize(5 + (1 << 20), 0xff);
        Bytes::from(d)
    };
    let mut liars = Vec::new();
    for i in 0..10 {
        let liar = Upstream::start(&work.path().join("nothing")).await;
        let body = if i < 5 { huge.clone() } else { full.clone() };
        liar.overrides
            .lock()
            .unwrap()
            .insert("_p2p/v1/digest".into(), body);
        liars.push(liar);
    }
    let before = vm_rss_kib();
    let up = Upstream::start(&f.cache).await;
    let urls: Vec<String> = liars.iter().map(Upstream::url).collect();
    let a = Appliance::start(&work.path().join("a"), &[up.url()], &f.public_key, |s| {
        s.peers = Some(urls)
    })
    .await;
    wait_until(Duration::from_secs(5), "10 refused digests", || async {
        a.metric("nixgate_peer_digests_refused_total").await >= 10
    })
    .await;
    let refused = a.metric("nixgate_peer_digests_refused_total").await;
    assert_eq!(refused, 10, "every liar's digest refused and counted");
    let rows = peer_rows(&a).await;
    assert_eq!(rows.len(), 10);
    assert!(
        rows.iter().all(|p| !p.digest),
        "no liar looks like a holder: {rows:?}"
    );
    let grown = vm_rss_kib().saturating_sub(before);
    assert!(grown < 100 * 1024, "RSS grew {grown} KiB");
    // The appliance still answers.
    let got = get(&format!("{}/healthz", a.url()), &[]).await;
    assert_eq!(got.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hanging_peer_costs_a_miss_at_most_two_seconds() {
    let f = fixture().await;
    let work = tempfile::tempdir().unwrap();
    // A peer that accepts connections and never answers.
    let hang = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hang_url = format!("http://{}", hang.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hang.accept().await {
            held.push(s);
        }
    });
    let down = failing_upstream(f).await;
    let a = Appliance::start(&work.path().join("a"), &[down.url()], &f.public_key, |s| {
        s.peers = Some(vec![hang_url]);
        // The defaults: 25 s before an upstream is given up.
        s.connect_timeout = Some("5s".into());
        s.first_byte_timeout = Some("20s".into());
    })
    .await;
    let h = Fixture::hash(&f.blobs[0]);
    let start = std::time::Instant::now();
    let got = get(&format!("{}/{h}.narinfo", a.url()), &[]).await;
    let took = start.elapsed();
    assert_eq!(got.status, 503, "upstream down, nobody has it");
    assert!(took < Duration::from_secs(4), "the miss took {took:?}");
    let start = std::time::Instant::now();
    let health = get(&format!("{}/healthz", a.url()), &[]).await;
    assert_eq!(health.status, 200);
    assert!(start.elapsed() < Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_torrent_requests_hash_each_nar_once() {
    let f = fixture().await;
    let work = tempfile::tempdir().unwrap();
    let paths = [&f.blobs[0], &f.blobs[1], &f.big];
    let (_up, a) = holding_appliance(f, work.path(), &paths, |s| {
        s.no_torrent = false;
        s.torrent_listen = Some(format!("127.0.0.1:{}", hold_port().keep()));
        s.hash_concurrency = Some(1);
    })
    .await;
    let before = a.metric("nixgate_torrent_hashes_total").await;
    let fhs: Vec<String> = paths
        .iter()
        .map(|p| f.nar_url(p)["nar/".len()..][..52].to_owned())
        .collect();
    let mut asks = Vec::new();
    for i in 0..60 {
        let url = format!("{}/_p2p/v1/torrent/{}", a.url(), fhs[i % 3]);
        asks.push(tokio::spawn(async move { (i % 3, get(&url, &[]).await) }));
    }
    let mut bodies: [Option<Bytes>; 3] = Default::default();
    for ask in asks {
        let (i, got) = ask.await.unwrap();
        assert_eq!(got.status, 200);
        let first = bodies[i].get_or_insert_with(|| got.bytes.clone());
        assert_eq!(*first, got.bytes, "one torrent per NAR");
    }
    assert_eq!(
        a.metric("nixgate_torrent_hashes_total").await - before,
        3,
        "60 requests for 3 NARs hash each NAR once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_misses_of_a_nar_larger_than_the_cache_share_one_upstream_get() {
    let f = fixture().await;
    let work = tempfile::tempdir().unwrap();
    let up = Upstream::start(&f.cache).await;
    // The NAR (~3 MB) is larger than the whole cache: it is streamed through, never stored.
    let a = Appliance::start(&work.path().join("a"), &[up.url()], &f.public_key, |s| {
        s.max_cache_size = Some("1MiB".into());
    })
    .await;
    let h = Fixture::hash(&f.big);
    assert_eq!(
        get(&format!("{}/{h}.narinfo", a.url()), &[]).await.status,
        200
    );
    let rel = f.nar_url(&f.big);
    let want = Bytes::from(std::fs::read(f.cache.join(&rel)).unwrap());
    up.nar_delay_ms
        .store(300, std::sync::atomic::Ordering::SeqCst);
    let mut asks = Vec::new();
    for _ in 0..20 {
        let url = format!("{}/{rel}", a.url());
        asks.push(tokio::spawn(async move { get(&url, &[]).await }));
    }
    for ask in asks {
        let got = ask.await.unwrap();
        assert_eq!(got.status, 200);
        assert!(got.body_error.is_none(), "{:?}", got.body_error);
        assert!(
            got.bytes == want,
            "every client gets the whole verified NAR"
        );
    }
    assert_eq!(up.count(&rel), 1, "20 clients, one upstream GET");
    assert!(files(&a.cache_dir, "nar").is_empty(), "never stored");
    // A client after the shared one ended starts its own.
    let again = get(&format!("{}/{rel}", a.url()), &[]).await;
    assert!(again.status == 200 && again.bytes == want);
    assert_eq!(up.count(&rel), 2);
}

/// `a`'s signed narinfo with `b`'s FileHash, FileSize and URL (none of them signed).
fn narinfo_pointing_at(f: &Fixture, a: &str, b: &str) -> String {
    let theirs = f.narinfo(b);
    let field = |k: &str| {
        theirs
            .lines()
            .find(|l| l.starts_with(k))
            .unwrap()
            .to_owned()
    };
    f.narinfo(a)
        .lines()
        .map(|l| {
            for k in ["URL: ", "FileHash: ", "FileSize: "] {
                if l.starts_with(k) {
                    return field(k) + "\n";
                }
            }
            l.to_owned() + "\n"
        })
        .collect()
}

/// A peer that serves `a`'s narinfo pointing at `b`'s NAR (and, with `nar`, `b`'s NAR).
async fn liar(f: &Fixture, dir: &std::path::Path, a: &str, b: &str, nar: bool) -> Upstream {
    let l = Upstream::start(&dir.join("nothing")).await;
    let mut ov = l.overrides.lock().unwrap();
    let poisoned = narinfo_pointing_at(f, a, b);
    ov.insert(format!("{}.narinfo", Fixture::hash(a)), poisoned.into());
    if nar {
        let rel = f.nar_url(b);
        ov.insert(
            rel.clone(),
            std::fs::read(f.cache.join(rel)).unwrap().into(),
        );
    }
    drop(ov);
    l
}

fn file_hash_of(f: &Fixture, path: &str) -> String {
    f.nar_url(path)["nar/".len()..][..52].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_narinfo_naming_another_paths_cached_nar_is_refused() {
    let f = fixture().await;
    let work = tempfile::tempdir().unwrap();
    let (a, b) = (&f.blobs[2], &f.blobs[3]);
    let (ha, fha, fhb) = (Fixture::hash(a), file_hash_of(f, a), file_hash_of(f, b));
    let l = liar(f, work.path(), a, b, false).await;
    let up = Upstream::start(&f.cache).await;
    let x = Appliance::start(&work.path().join("x"), &[up.url()], &f.public_key, |s| {
        s.peers = Some(vec![l.url()])
    })
    .await;
    assert_ok(&nix_copy(&x.url(), &f.public_key, b, &work.path().join("warm")).await);

    // The upstream goes down; the liar's narinfo for A names B's cached NAR.
    up.fail_5xx.store(true, std::sync::atomic::Ordering::SeqCst);
    let got = get(&format!("{}/{ha}.narinfo", x.url()), &[]).await;
    assert!(
        !got.body.contains(&fhb),
        "A's narinfo never points at B's NAR"
    );
    assert_eq!(got.status, 503);
    assert_eq!(
        peer_rows(&x).await[0].state,
        "skipped",
        "the liar is on probation"
    );
    assert!(
        x.metric("nixgate_verification_failures_total{source=\"peer\"}")
            .await
            >= 1
    );

    // The upstream is back: A's own narinfo and NAR.
    up.fail_5xx
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let got = get(&format!("{}/{ha}.narinfo", x.url()), &[]).await;
    assert_eq!(got.status, 200);
    assert!(got.body.contains(&fha));
    let dest = work.path().join("client");
    assert_ok(&nix_copy(&x.url(), &f.public_key, a, &dest).await);
    assert!(substituted(&dest, a));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_narinfo_that_does_not_match_its_nar_is_forgotten_and_gives_way_to_upstream() {
    let f = fixture().await;
    let work = tempfile::tempdir().unwrap();
    let (a, b) = (&f.blobs[2], &f.blobs[3]);
    let (ha, fha, fhb) = (Fixture::hash(a), file_hash_of(f, a), file_hash_of(f, b));
    let up = Upstream::start(&f.cache).await;
    up.fail_5xx.store(true, std::sync::atomic::Ordering::SeqCst);

    // B is not cached: the poisoned narinfo cannot be told apart yet and is stored, but B's
    // bytes (from the peer) fail A's NarHash: never served as A's NAR, narinfo forgotten,
    // peer on probation.
    let l = liar(f, work.path(), a, b, true).await;
    let y = Appliance::start(&work.path().join("y"), &[up.url()], &f.public_key, |s| {
        s.peers = Some(vec![l.url()])
    })
    .await;
    let got = get(&format!("{}/{ha}.narinfo", y.url()), &[]).await;
    assert_eq!(got.status, 200);
    let nar = get(&format!("{}/nar/{fhb}.nar.xz", y.url()), &[]).await;
    assert!(
        nar.status != 200 || nar.body_error.is_some(),
        "B's bytes never complete a response for A's narinfo"
    );
    assert_eq!(
        peer_rows(&y).await[0].state,
        "skipped",
        "the liar is on probation"
    );
    assert!(
        files(&y.cache_dir, "narinfo").is_empty(),
        "narinfo forgotten"
    );
    assert!(
        files(&y.cache_dir, "nar").is_empty(),
        "nothing unverified stored"
    );

    // A poisoned narinfo that is stored gives way to the upstream's once it is back.
    let l2 = liar(f, work.path(), a, b, false).await;
    let z = Appliance::start(&work.path().join("z"), &[up.url()], &f.public_key, |s| {
        s.peers = Some(vec![l2.url()])
    })
    .await;
    let got = get(&format!("{}/{ha}.narinfo", z.url()), &[]).await;
    assert!(got.status == 200 && got.body.contains(&fhb));
    up.fail_5xx
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let url = format!("{}/{ha}.narinfo", z.url());
    wait_until(
        Duration::from_secs(15),
        "the upstream's narinfo",
        || async { get(&url, &[]).await.body.contains(&fha) },
    )
    .await;
    let fresh = get(&url, &[]).await.body;
    assert!(
        fresh.contains(&fha),
        "the upstream's narinfo replaced the peer's"
    );
    for c in [&y, &z] {
        let dest = work.path().join(format!("client-{}", c.addr.port()));
        assert_ok(&nix_copy(&c.url(), &f.public_key, a, &dest).await);
        assert!(substituted(&dest, a));
    }
}
