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
    let mut refused = 0;
    for _ in 0..100 {
        refused = a.metric("nixgate_peer_digests_refused_total").await;
        if refused >= 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
