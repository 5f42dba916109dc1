//! Lying swarms: forged or inconsistent `.torrent`s are refused and counted, a self-consistent
//! swarm of wrong bytes is caught by the signed NarHash, and the liars are put on probation
//! while the honest swarm serves.

mod common;

use common::*;

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
