//! BitTorrent helpers: appliances with BitTorrent on, the torrent of a fixture NAR computed
//! independently of any appliance, infohashes of `.torrent` files, and a seeding peer.

use std::path::{Path, PathBuf};

use nixgate::torrent::meta::{NarTorrent, PieceHasher};

use super::appliance::{hold_port, holding_appliance, Appliance};
use super::fixture::Fixture;
use super::upstream::Upstream;

/// BitTorrent on, on a held port (with port 0 librqbit would announce 4240).
pub fn with_torrent(a: &mut nixgate::config::ServeArgs, trackers: &[String]) {
    a.no_torrent = false;
    a.torrent_listen = Some(format!("127.0.0.1:{}", hold_port().keep()));
    a.trackers = Some(trackers.to_vec());
}

/// An appliance with BitTorrent on, in front of `up`, with these peers and trackers.
pub async fn torrent_appliance(
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
        s.no_fleet = true; // the swarm and fallback roles, not fleet ownership
        extra(s);
    })
    .await
}

/// The FileHash (nix32) and the NAR file of a fixture path.
pub fn nar_of(f: &Fixture, path: &str) -> (String, PathBuf) {
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
pub fn torrent_of_file(file: &Path) -> NarTorrent {
    let data = std::fs::read(file).unwrap();
    let name = file.file_name().unwrap().to_str().unwrap().to_owned();
    let mut h = PieceHasher::new(name, data.len() as u64);
    h.update(&data);
    h.finish(data.len() as u64).unwrap()
}

/// The infohash (hex) of a `.torrent` file.
pub fn info_hash_of(torrent_file: &[u8]) -> String {
    let t = librqbit::torrent_from_bytes(torrent_file).expect("a valid .torrent");
    t.info_hash.as_string()
}

/// A peer holding `paths` with BitTorrent on.
pub async fn holding_seeder(
    f: &Fixture,
    dir: &Path,
    paths: &[&String],
    trackers: &[String],
) -> (Upstream, Appliance) {
    holding_appliance(f, dir, paths, |s| with_torrent(s, trackers)).await
}
