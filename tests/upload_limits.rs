//! Upload limits: the staging area (size and age), chunked and stalled bodies, the upload
//! budget (507, freed by `DELETE`) and LRU pressure that never evicts an upload.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn staging_is_bounded_in_size_and_age() {
    let f = fixture().await;
    let tmp = tempfile::tempdir().unwrap();
    let up = Upstream::start(&f.cache).await;
    let (ci_sk, ci) = key_pair(&tmp.path().join("keys"), "ci-1");
    let a = uploading(&tmp.path().join("a"), &up, &[&f.public_key, &ci], |s| {
        s.upload_staging_size = Some("16KiB".into());
        s.upload_staging_age = Some("1s".into());
    })
    .await;
    let big = as_cache(
        &build_unique("big", 20_000),
        &tmp.path().join("b"),
        Some(&ci_sk),
    );
    let small = as_cache(
        &build_unique("small", 2000),
        &tmp.path().join("s"),
        Some(&ci_sk),
    );
    let (s, _, _) = send(
        "PUT",
        &format!("{}/{}", a.url(), big.nar_url),
        Some(BEARER),
        big.nar.clone(),
    )
    .await;
    assert_eq!(s, 413, "larger than the staging area");
    assert!(
        a.metric("nixgate_uploads_total{outcome=\"too_large\"}")
            .await
            >= 1
    );
    // A NAR whose narinfo comes too late is dropped.
    let (s, _, _) = send(
        "PUT",
        &format!("{}/{}", a.url(), small.nar_url),
        Some(BEARER),
        small.nar.clone(),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(staged(&a), 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let url = format!("{}/{}.narinfo", a.url(), small.hash);
    let (s, _, body) = send(
        "PUT",
        &url,
        Some(BEARER),
        small.narinfo.clone().into_bytes(),
    )
    .await;
    assert_eq!(s, 400, "{body}");
    assert_eq!((staged(&a), held(&a)), (0, 0));
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_budget_answers_507_and_the_lru_never_evicts_uploads() {
    let f = fixture().await;
    let tmp = tempfile::tempdir().unwrap();
    let up = Upstream::start(&f.cache).await;
    let (ci_sk, ci) = key_pair(&tmp.path().join("keys"), "ci-1");
    let a = uploading(&tmp.path().join("a"), &up, &[&f.public_key, &ci], |s| {
        s.max_cache_size = Some("1MiB".into());
        s.upload_max_size = Some("40KiB".into());
    })
    .await;
    let x = as_cache(
        &build_unique("kept", 25_000),
        &tmp.path().join("x"),
        Some(&ci_sk),
    );
    let y = as_cache(
        &build_unique("later", 25_000),
        &tmp.path().join("y"),
        Some(&ci_sk),
    );
    assert_eq!(upload(&a.url(), BEARER, &x, &x.narinfo).await, (200, 200));
    assert_eq!(upload(&a.url(), BEARER, &y, &y.narinfo).await, (200, 507));
    assert!(a.metric("nixgate_uploads_total{outcome=\"full\"}").await >= 1);

    // Fill the LRU cache well past its cap: uploads are not part of it.
    let blobs: Vec<&str> = f.blobs.iter().map(String::as_str).collect();
    assert_ok(&nix_copy_paths(&a.url(), &f.public_key, &blobs, &tmp.path().join("r")).await);
    assert!(a.metric("nixgate_evictions_total").await > 0);
    assert_eq!(
        get(&format!("{}/{}.narinfo", a.url(), x.hash), &[])
            .await
            .status,
        200
    );
    assert_eq!(
        get(&format!("{}/{}", a.url(), x.nar_url), &[]).await.bytes,
        x.nar
    );

    // The operator frees the budget explicitly; then the next upload fits.
    let url = format!("{}/{}.narinfo", a.url(), x.hash);
    assert_eq!(send("DELETE", &url, Some(BEARER), vec![]).await.0, 200);
    assert_eq!(get(&url, &[]).await.status, 404);
    assert_eq!(upload(&a.url(), BEARER, &y, &y.narinfo).await, (200, 200));
    a.stop().await;
}

/// Sends a raw request head and `chunks`, then reads the
/// answer's status line.
async fn raw_put(addr: std::net::SocketAddr, head: &str, chunks: &[Vec<u8>]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    for c in chunks {
        // The server may answer (and stop reading) before everything is sent.
        if s.write_all(c).await.is_err() {
            break;
        }
    }
    let mut answer = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut answer))
        .await
        .expect("an answer")
        .unwrap_or(0);
    String::from_utf8_lossy(&answer[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chunked_bodies_are_bounded_and_stalled_bodies_time_out() {
    let f = fixture().await;
    let tmp = tempfile::tempdir().unwrap();
    let up = Upstream::start(&f.cache).await;
    let a = uploading(&tmp.path().join("a"), &up, &[&f.public_key], |s| {
        s.upload_staging_size = Some("16KiB".into());
        s.stall_timeout = Some("1s".into());
    })
    .await;
    let fh = "1".repeat(52);
    let head = |framing: &str| {
        format!("PUT /nar/{fh}.nar.xz HTTP/1.1\r\nHost: x\r\nAuthorization: {BEARER}\r\n{framing}\r\n\r\n")
    };
    // Chunked, no length announced: refused once past the staging size.
    let chunk = [
        format!("{:x}\r\n", 8192).into_bytes(),
        vec![7u8; 8192],
        b"\r\n".to_vec(),
    ]
    .concat();
    let status = raw_put(a.addr, &head("Transfer-Encoding: chunked"), &vec![chunk; 4]).await;
    assert!(status.contains(" 413 "), "{status}");
    // A body that stops sending.
    let status = raw_put(a.addr, &head("Content-Length: 1000"), &[vec![0u8; 10]]).await;
    assert!(status.contains(" 408 "), "{status}");
    assert!(a.metric("nixgate_uploads_total{outcome=\"timeout\"}").await >= 1);
    assert_eq!((staged(&a), held(&a)), (0, 0));
    a.stop().await;
}
