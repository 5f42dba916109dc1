//! A fleet serving zstd (issue 22, docs/ZSTD.md §7): the key's owner transcodes each NAR once
//! for the whole fleet and members stream its zstd file (real `nix copy` through every
//! member); an owner that does not advertise zstd (`--serve-compression upstream`, as a
//! previous version) is asked for the upstream's file and the member transcodes; an owner
//! whose zstd does not verify against the signed NarHash is refused and put on probation.

mod common;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;

use nixgate::store::digest;

use common::*;

/// How many distinct NARs the upstream was asked for.
fn upstream_nars(up: &Upstream) -> usize {
    let reqs = up.requests.lock().unwrap();
    reqs.keys().filter(|p| p.starts_with("nar/")).count()
}

/// Files of the cache at `dir` whose names end with `suffix`.
fn held(dir: &Path, suffix: &str) -> Vec<std::path::PathBuf> {
    let all = files(dir, "nar").into_iter();
    all.filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect()
}

const STORED: &str = "nixgate_transcodes_total{outcome=\"stored\"}";
const FROM_FLEET: &str = "nixgate_fetched_bytes_total{source=\"fleet\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_owner_transcodes_once_and_members_stream_its_zstd() {
    let f = fixture().await;
    let work = tempfile::tempdir().unwrap();
    let up = Upstream::start(&f.cache).await;
    let members = fleet(work.path(), &up, &f.public_key, 3).await;
    copy_through_each(&members, f, work.path()).await;
    let (_, repeated) = upstream_counts(&up);
    assert!(
        repeated.is_empty(),
        "asked upstream more than once: {repeated:?}"
    );
    let nars = upstream_nars(&up);
    assert!(nars >= 8, "the fixture's NARs were fetched: {nars}");
    let mut transcoded = 0;
    for m in &members {
        transcoded += m.metric(STORED).await;
    }
    assert_eq!(
        transcoded, nars as u64,
        "one transcode per NAR in the fleet"
    );
    let upstream_files: usize = members
        .iter()
        .map(|m| held(&m.cache_dir, ".nar.xz").len())
        .sum();
    assert_eq!(
        upstream_files, nars,
        "the upstream's file only at its owner"
    );
    for (i, m) in members.iter().enumerate() {
        let zst = held(&m.cache_dir, ".served.nar.zst").len();
        assert_eq!(
            zst, nars,
            "member {i} holds nixgate's file of every NAR it served"
        );
        assert!(
            m.metric(FROM_FLEET).await > 0,
            "member {i} streamed from owners"
        );
    }
    // A runner that kept an xz narinfo (from before the switch) asks the xz URL: a member
    // without that file gets it from its owner, not from the upstream again.
    let mut paths = all_paths(f);
    paths.push(&f.dep);
    for m in &members {
        for p in &paths {
            let url = f.nar_url(p);
            let got = get(&format!("{}/{url}", m.url()), NIX_UA).await;
            assert_eq!(got.status, 200, "{url}");
            let want = std::fs::read(f.cache.join(&url)).unwrap();
            assert_eq!(got.bytes, want, "{url}");
        }
    }
    assert_eq!(upstream_nars(&up), nars);
    assert!(upstream_counts(&up).1.is_empty(), "no upstream GET twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_owner_that_serves_no_zstd_is_asked_for_the_upstream_file() {
    let f = fixture().await;
    let work = tempfile::tempdir().unwrap();
    let up = Upstream::start(&f.cache).await;
    // Member 1 serves the upstream's compression: it advertises nothing, as a previous
    // version does.
    let members = fleet_with(work.path(), &up, &f.public_key, 2, |i, s| {
        if i == 1 {
            s.serve_compression = Some(nixgate::fetch::ServeCompression::Upstream);
        }
    })
    .await;
    let (a, b) = (&members[0], &members[1]);
    let serves = |rows: Vec<PeerRow>| rows.into_iter().map(|p| p.serves).collect::<Vec<_>>();
    assert_eq!(serves(peer_rows(a).await), [None], "B advertises nothing");
    assert_eq!(serves(peer_rows(b).await), [Some("zstd".to_owned())]);
    let dest = work.path().join("runner");
    assert_ok(&nix_copy_paths(&a.url(), &f.public_key, &all_paths(f), &dest).await);
    let nars = upstream_nars(&up);
    assert!(b.metric(FROM_FLEET).await == 0 && a.metric(FROM_FLEET).await > 0);
    assert_eq!(
        b.metric(STORED).await,
        0,
        "the zstd-less owner transcodes nothing"
    );
    assert_eq!(
        a.metric(STORED).await,
        nars as u64,
        "the member transcodes every NAR"
    );
    assert_eq!(
        held(&a.cache_dir, ".nar.xz").len(),
        nars,
        "it got the upstream's files"
    );
    assert_eq!(held(&a.cache_dir, ".served.nar.zst").len(), nars);
    let (_, repeated) = upstream_counts(&up);
    assert!(
        repeated.is_empty(),
        "asked upstream more than once: {repeated:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_owner_whose_zstd_does_not_verify_is_refused() {
    let f = fixture().await;
    let work = tempfile::tempdir().unwrap();
    let up = Upstream::start(&f.cache).await;
    let members = fleet(work.path(), &up, &f.public_key, 2).await;
    let (a, c) = (&members[0], &members[1]);
    let warm = work.path().join("warm");
    assert_ok(&nix_copy_paths(&c.url(), &f.public_key, &all_paths(f), &warm).await);
    // C's zstd files rot (same length); its upstream files stay intact. C serves them as hits.
    let rotten = held(&c.cache_dir, ".served.nar.zst");
    assert!(!rotten.is_empty());
    for file in &rotten {
        let mut bytes = std::fs::read(file).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(file, bytes).unwrap();
    }
    // A streams C's share from C: it does not verify, A stores nothing of it, aborts the
    // runner's body, and puts C on probation; Nix's retry (or a second run) completes from
    // the upstream.
    let dest = work.path().join("runner");
    let first = nix_copy_paths(&a.url(), &f.public_key, &all_paths(f), &dest).await;
    if !first.status.success() {
        assert_ok(&nix_copy_paths(&a.url(), &f.public_key, &all_paths(f), &dest).await);
    }
    for p in all_paths(f) {
        assert!(substituted(&dest, p), "{p}");
    }
    let refused = a
        .metric("nixgate_verification_failures_total{source=\"fleet\"}")
        .await;
    assert!(refused >= 1, "C's zstd was refused");
    let rows = peer_rows(a).await;
    assert!(
        rows.iter().all(|p| p.state == "skipped" && !p.owner),
        "C is on probation and owns nothing: {rows:?}"
    );
    // Nothing A committed is rotten: a second runner through A gets every path intact.
    let again = work.path().join("runner2");
    assert_ok(&nix_copy_paths(&a.url(), &f.public_key, &all_paths(f), &again).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_upstream_down_a_peer_serves_the_zstd_it_holds() {
    let f = fixture().await;
    let work = tempfile::tempdir().unwrap();
    let up = Upstream::start(&f.cache).await;
    let mut members = fleet(work.path(), &up, &f.public_key, 2).await;
    let warm = work.path().join("warm");
    assert_ok(&nix_copy_paths(&members[0].url(), &f.public_key, &all_paths(f), &warm).await);
    // B, the owner of part of the keys, leaves with the only upstream files of its share: A
    // holds those NARs as zstd only.
    members.pop().unwrap().stop().await;
    let a = &members[0];
    let nars = upstream_nars(&up);
    let a_xz = held(&a.cache_dir, ".nar.xz").len();
    assert!(
        a_xz < nars,
        "some NARs are held by A as zstd only: {a_xz} of {nars}"
    );
    assert_eq!(held(&a.cache_dir, ".served.nar.zst").len(), nars);
    // A's digest (cached for 5 s) lists what it holds before C first reads it.
    let keys: Vec<String> = all_paths(f)
        .iter()
        .map(|p| digest::narinfo_key(Fixture::hash(p)))
        .collect();
    wait_until(
        Duration::from_secs(10),
        "A's digest to list the paths",
        || async {
            let got = get(&format!("{}/_p2p/v1/digest", a.url()), &[]).await;
            let h = digest::Holdings::from_bytes(&got.bytes);
            h.is_ok_and(|h| keys.iter().all(|k| h.contains(k)))
        },
    )
    .await;
    // C, at another site whose upstream is down, has A as a peer (not a fleet member).
    let down = failing_upstream(f).await;
    let c = with_peers(&work.path().join("c"), &down, &f.public_key, vec![a.url()]).await;
    let dest = work.path().join("runner");
    assert_ok(&nix_copy_paths(&c.url(), &f.public_key, &all_paths(f), &dest).await);
    for p in all_paths(f) {
        assert!(substituted(&dest, p), "{p}");
    }
    assert!(
        c.metric("nixgate_fetched_bytes_total{source=\"peer\"}")
            .await
            > 0
    );
    assert_eq!(
        c.metric("nixgate_verification_failures_total{source=\"peer\"}")
            .await,
        0
    );
    let zst = held(&c.cache_dir, ".served.nar.zst").len();
    assert_eq!(zst, nars, "C holds nixgate's file of every NAR");
    let failed = c
        .metric("nixgate_transcodes_total{outcome=\"failed\"}")
        .await;
    assert_eq!(
        failed, 0,
        "a download that got no byte is no failed transcode"
    );
}

/// An appliance whose one configured peer is `member`, a hostile fleet member claiming zstd
/// that owns `top`'s key and serves its signed narinfo; `top`'s NAR is asked of it as
/// nixgate's own file. The appliance has already cached the five blobs (cap 8 MiB).
async fn with_hostile_zstd_owner(
    f: &Fixture,
    dir: &Path,
    up: &Upstream,
) -> (Hostile, Appliance, String) {
    let own = "e".repeat(32);
    let h = Fixture::hash(&f.top);
    let member = Hostile::start(Some(&member_id(&own, &[h], &[]))).await;
    member.advertise_serves("zstd");
    member.serve(&format!("{h}.narinfo"), f.narinfo(&f.top), None);
    let a = with_member(dir, &up.url(), &f.public_key, &member, &own, |s| {
        s.max_cache_size = Some("8MiB".into())
    })
    .await;
    for blob in &f.blobs {
        let got = get(&format!("{}/{}", a.url(), f.nar_url(blob)), &[]).await;
        assert_eq!(got.status, 200);
    }
    let narinfo = get(&format!("{}/{h}.narinfo", a.url()), NIX_UA).await;
    let url = narinfo_field(&narinfo.body, "URL").unwrap().to_owned();
    assert!(url.ends_with(".nar.zst"), "{url}");
    (member, a, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_owner_announcing_more_than_the_nar_can_take_evicts_nothing() {
    let f = fixture().await;
    let work = tempfile::tempdir().unwrap();
    let up = Upstream::start(&f.cache).await;
    let (member, a, url) = with_hostile_zstd_owner(f, work.path(), &up).await;
    let evictions = a.metric("nixgate_evictions_total").await;
    // 7 MiB announced for a NAR of a few KiB: reserving it would push the blobs out.
    member.serve_announcing(&url, Bytes::from_static(b"(\xb5/\xfd"), 7 << 20);
    let got = get(&format!("{}/{url}", a.url()), NIX_UA).await;
    assert_eq!(
        got.status, 200,
        "the upstream's file, transcoded, after the refusal"
    );
    assert_eq!(
        zstd::decode_all(&got.bytes[..]).unwrap(),
        decoded_nar(f, &f.top)
    );
    assert_eq!(
        member.count(&url),
        1,
        "the member was asked for its own file"
    );
    assert_eq!(
        a.metric("nixgate_evictions_total").await,
        evictions,
        "nothing evicted for it"
    );
    let refused = a.metric("nixgate_verification_failures_total{source=\"fleet\"}");
    assert!(refused.await >= 1);
    assert_eq!(peer_rows(&a).await[0].state, "skipped", "on probation");
    assert_eq!(get(&format!("{}/readyz", a.url()), &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_owner_sending_a_zstd_file_cut_short_is_refused() {
    let f = fixture().await;
    let work = tempfile::tempdir().unwrap();
    let up = Upstream::start(&f.cache).await;
    let (member, a, url) = with_hostile_zstd_owner(f, work.path(), &up).await;
    // Every NAR byte comes out of it, but its checksum is missing: no runner could use it.
    let mut e = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    e.include_checksum(true).unwrap();
    std::io::Write::write_all(&mut e, &decoded_nar(f, &f.top)).unwrap();
    let whole = e.finish().unwrap();
    member.serve(&url, whole[..whole.len() - 4].to_vec(), None);
    // Refused at its end (before any byte went out, for a NAR this small): the runner gets
    // the upstream's file transcoded instead, or an aborted body (Nix retries).
    let nar = decoded_nar(f, &f.top);
    let first = get(&format!("{}/{url}", a.url()), NIX_UA).await;
    if first.status == 200 && first.body_error.is_none() {
        assert_eq!(zstd::decode_all(&first.bytes[..]).unwrap(), nar);
    }
    assert_eq!(
        member.count(&url),
        1,
        "the member was asked for its own file"
    );
    let refused = a.metric("nixgate_verification_failures_total{source=\"fleet\"}");
    assert!(refused.await >= 1);
    assert_eq!(peer_rows(&a).await[0].state, "skipped", "on probation");
    for file in held(&a.cache_dir, ".served.nar.zst") {
        let bytes = std::fs::read(&file).unwrap();
        assert_eq!(
            zstd::decode_all(&bytes[..]).unwrap(),
            nar,
            "only a whole file is kept"
        );
    }
    let again = get(&format!("{}/{url}", a.url()), NIX_UA).await;
    assert_eq!(again.status, 200);
    assert_eq!(
        zstd::decode_all(&again.bytes[..]).unwrap(),
        decoded_nar(f, &f.top)
    );
}
