//! A fleet of appliances on loopback for tests: configured peers of each other with fixed
//! ids (so the rendezvous ring is the same every run), and the upstream's request counts that
//! tell whether the fleet fetched each file once.

use std::path::Path;
use std::time::Duration;

use super::*;

/// The upstream's request counts for narinfos and NARs: (requests, paths asked more than once).
pub fn upstream_counts(up: &Upstream) -> (u64, Vec<String>) {
    let reqs = up.requests.lock().unwrap();
    let mut total = 0;
    let mut repeated = Vec::new();
    for (path, n) in reqs.iter() {
        if path.ends_with(".narinfo") || path.starts_with("nar/") {
            total += n;
            if *n > 1 {
                repeated.push(format!("{path} x{n}"));
            }
        }
    }
    (total, repeated)
}

/// The fixed peer id of member `i` (so the ring is the same every run, given the keys).
pub fn fleet_member_id(i: usize) -> String {
    format!("{:032x}", 0x000f_1ee7_0000 + i)
}

/// Starts `n` appliances, each with the others as `--peer` (listeners bound first, so each
/// knows the others' ports) and a fixed id, and waits until every member sees every other as
/// an owner.
pub async fn fleet(dir: &Path, up: &Upstream, key: &str, n: usize) -> Vec<Appliance> {
    fleet_with(dir, up, key, n, |_, _| {}).await
}

/// [`fleet`], with member `i`'s settings changed by `set(i, settings)`.
pub async fn fleet_with(
    dir: &Path,
    up: &Upstream,
    key: &str,
    n: usize,
    set: impl Fn(usize, &mut nixgate::config::ServeArgs),
) -> Vec<Appliance> {
    let listeners: Vec<_> = (0..n).map(|_| bound_listener()).collect();
    let ports: Vec<u16> = listeners.iter().map(|(_, p)| *p).collect();
    let mut members = Vec::new();
    for (i, (listener, port)) in listeners.into_iter().enumerate() {
        let peers: Vec<String> = ports
            .iter()
            .filter(|p| **p != port)
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect();
        let a = Appliance::options(&dir.join(format!("m{i}")), key)
            .upstream(up.url())
            .listener(listener)
            .peer_id(&fleet_member_id(i))
            .with(|s| {
                s.peers = Some(peers);
                set(i, s)
            })
            .start()
            .await;
        members.push(a);
    }
    for m in &members {
        wait_for_owners(m, n - 1).await;
    }
    members
}

/// Waits until `a` counts `n` live owners among its peers.
pub async fn wait_for_owners(a: &Appliance, n: usize) {
    let what = format!("{} to see {n} owners", a.url());
    wait_until(Duration::from_secs(10), &what, || async {
        peer_rows(a).await.iter().filter(|p| p.owner).count() == n
    })
    .await;
}

/// A runner at each member in turn: real `nix copy` of every fixture path into a fresh store,
/// each path then substituted.
pub async fn copy_through_each(members: &[Appliance], f: &Fixture, work: &Path) {
    for (i, m) in members.iter().enumerate() {
        let dest = work.join(format!("runner{i}"));
        assert_ok(&nix_copy_paths(&m.url(), &f.public_key, &all_paths(f), &dest).await);
        for p in all_paths(f) {
            assert!(substituted(&dest, p), "{p} through member {i}");
        }
    }
}
