//! Fleet ownership: appliances that are configured peers of each other fetch each narinfo and
//! each NAR from the upstream at most once between them (real `nix copy` through each member,
//! one after another and all at once), a member killed with `kill -9` costs nothing but its
//! share, a member that lies is refused and put on probation, and a joining member moves only
//! its share of keys.

mod common;

use std::time::Duration;

use common::*;

/// Whether member `i` of `n` (ids from [`member_id`]) asks another member for some narinfo
/// of `paths` (and their references): the ring's answer, not chance.
fn asks_the_fleet(f: &Fixture, i: usize, n: usize) -> bool {
    let ids: Vec<(String, ())> = (0..n).map(|j| (fleet_member_id(j), ())).collect();
    let mut hashes: Vec<&str> = all_paths(f).iter().map(|p| Fixture::hash(p)).collect();
    hashes.push(Fixture::hash(&f.dep));
    hashes
        .iter()
        .any(|h| !nixgate::peers::fleet::owners(h, &fleet_member_id(i), &ids).is_empty())
}

/// Bytes a member fetched from other members.
async fn from_fleet(a: &Appliance) -> u64 {
    a.metric("nixgate_fetched_bytes_total{source=\"fleet\"}")
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runners_one_after_another_cost_one_upstream_fetch_per_file() {
    let f = fixture().await;
    let work = tempfile::tempdir().unwrap();
    let up = Upstream::start(&f.cache).await;
    let members = fleet(work.path(), &up, &f.public_key, 3).await;
    copy_through_each(&members, f, work.path()).await;
    let (total, repeated) = upstream_counts(&up);
    assert!(
        repeated.is_empty(),
        "asked upstream more than once: {repeated:?}"
    );
    // 8 paths: 8 narinfos and 8 NARs, once for the whole fleet.
    assert_eq!(total, 16, "{:?}", up.requests.lock().unwrap());
    for (i, m) in members.iter().enumerate().skip(1) {
        assert_eq!(
            from_fleet(m).await > 0,
            asks_the_fleet(f, i, 3),
            "{} took bytes from owners as the ring says",
            m.url()
        );
    }
    let served: u64 = {
        let mut s = 0;
        for m in &members {
            s += m.metric("nixgate_fleet_requests_served_total").await;
        }
        s
    };
    assert!(served > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_runners_cost_one_upstream_fetch_per_file() {
    let f = fixture().await;
    let work = tempfile::tempdir().unwrap();
    let up = Upstream::start(&f.cache).await;
    let members = fleet(work.path(), &up, &f.public_key, 3).await;
    let runs = members.iter().enumerate().map(|(i, m)| {
        let dest = work.path().join(format!("runner{i}"));
        let (url, key, paths) = (m.url(), f.public_key.clone(), all_paths(f));
        async move { nix_copy_paths(&url, &key, &paths, &dest).await }
    });
    for out in futures_util::future::join_all(runs).await {
        assert_ok(&out);
    }
    let (total, repeated) = upstream_counts(&up);
    assert!(
        repeated.is_empty(),
        "asked upstream more than once: {repeated:?}"
    );
    assert_eq!(total, 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_killed_mid_run_costs_at_most_its_share() {
    let f = fixture().await;
    let work = tempfile::tempdir().unwrap();
    let up = Upstream::start(&f.cache).await;
    let listeners: Vec<_> = (0..2).map(|_| bound_listener()).collect();
    // The third is a child process (to be killed): its port is held until it listens.
    let held = hold_port();
    let mut ports: Vec<u16> = listeners.iter().map(|(_, p)| *p).collect();
    ports.push(held.port);
    let peers_of = |i: usize| -> Vec<String> {
        ports
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, p)| format!("http://127.0.0.1:{p}"))
            .collect()
    };
    let mut members = Vec::new();
    for (i, (listener, _)) in listeners.into_iter().enumerate() {
        let peers = peers_of(i);
        members.push(
            Appliance::options(&work.path().join(format!("m{i}")), &f.public_key)
                .upstream(up.url())
                .listener(listener)
                .peer_id(&fleet_member_id(i))
                .with(move |s| s.peers = Some(peers))
                .start()
                .await,
        );
    }
    fix_peer_id(&work.path().join("m2"), &fleet_member_id(2));
    let mut victim = spawn_member(
        &work.path().join("m2"),
        ports[2],
        &up.url(),
        &f.public_key,
        &ports[..2],
        &[],
    );
    for m in &members {
        wait_for_owners(m, 2).await;
    }
    // Three runners at once; the third member dies while they run.
    let runs = (0..3).map(|i| {
        let url = members[i % 2].url();
        let dest = work.path().join(format!("runner{i}"));
        let (key, paths) = (f.public_key.clone(), all_paths(f));
        async move { nix_copy_paths(&url, &key, &paths, &dest).await }
    });
    let killer = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        victim.kill().unwrap(); // SIGKILL
        victim.wait().unwrap();
    };
    let (outs, ()) = tokio::join!(futures_util::future::join_all(runs), killer);
    for out in outs {
        assert_ok(&out);
    }
    let (total, _) = upstream_counts(&up);
    assert!(total <= 32, "multiplier {} > 2", total as f64 / 16.0);
    // The dead member leaves the owners within the membership interval.
    for m in &members {
        wait_for_owners(m, 1).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_joining_member_moves_only_its_share_and_refetches_nothing() {
    let f = fixture().await;
    let work = tempfile::tempdir().unwrap();
    let up = Upstream::start(&f.cache).await;
    let mut members = fleet(work.path(), &up, &f.public_key, 3).await;
    let dest = work.path().join("warm");
    assert_ok(&nix_copy_paths(&members[0].url(), &f.public_key, &all_paths(f), &dest).await);
    let (before, _) = upstream_counts(&up);
    // A fourth member joins, knowing the three (as a DNS name lists it after a scale-up).
    let peers: Vec<String> = members.iter().map(Appliance::url).collect();
    let joined = Appliance::options(&work.path().join("m3"), &f.public_key)
        .upstream(up.url())
        .peer_id(&fleet_member_id(3))
        .with(move |s| s.peers = Some(peers))
        .start()
        .await;
    wait_for_owners(&joined, 3).await;
    let dest = work.path().join("runner-new");
    assert_ok(&nix_copy_paths(&joined.url(), &f.public_key, &all_paths(f), &dest).await);
    let (after, repeated) = upstream_counts(&up);
    // The newcomer owns about a quarter of the keys now; for those it asked the member that
    // owned them before it (only-if-cached), for the rest their owners: nothing is fetched
    // from the upstream again.
    assert_eq!(after, before, "refetched from the upstream: {repeated:?}");
    assert!(from_fleet(&joined).await > 0);
    members.push(joined);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_owner_that_serves_rotten_bytes_is_refused_and_the_upstream_serves() {
    let f = fixture().await;
    let work = tempfile::tempdir().unwrap();
    let up = Upstream::start(&f.cache).await;
    let members = fleet(work.path(), &up, &f.public_key, 2).await;
    let (a, c) = (&members[0], &members[1]);
    // C fetches its share and keeps a copy of A's: it holds every NAR.
    let warm = work.path().join("warm");
    assert_ok(&nix_copy_paths(&c.url(), &f.public_key, &all_paths(f), &warm).await);
    // C's disk rots: every cached NAR keeps its length but not its bytes. C still serves
    // them as hits (a lying owner, as far as A can tell).
    let nars = files(&c.cache_dir, "nar");
    assert!(!nars.is_empty());
    for nar in &nars {
        let mut bytes = std::fs::read(nar).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(nar, bytes).unwrap();
    }
    let before = upstream_counts(&up).0;
    // A asks C for C's share: the rotten bytes fail FileHash, nothing is stored, C is put on
    // probation, and the paths come from the upstream (at the latest on Nix's retry).
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
    assert!(refused >= 1, "the rotten NAR was counted");
    let rows = peer_rows(a).await;
    assert!(
        rows.iter().all(|p| p.state == "skipped" && !p.owner),
        "C is on probation and owns nothing: {rows:?}"
    );
    assert!(
        upstream_counts(&up).0 > before,
        "the upstream served instead"
    );
    // Nothing A committed is rotten: a second runner through A gets every path intact.
    let again = work.path().join("runner2");
    assert_ok(&nix_copy_paths(&a.url(), &f.public_key, &all_paths(f), &again).await);
}
