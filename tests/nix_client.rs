//! Real Nix substituting through nixgate: a cold closure, the same closure with the upstream
//! gone, and again after a restart on the same cache directory.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cold_copy_then_upstream_down_then_restart() {
    let f = fixture().await;
    let up = Upstream::start(&f.cache).await;
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let a = Appliance::start_default(&cache, &up, &f.public_key).await;

    let out = nix_copy(&a.url(), &f.public_key, &f.top, &work.path().join("c1")).await;
    assert_ok(&out);
    assert!(
        substituted(&work.path().join("c1"), &f.top)
            && substituted(&work.path().join("c1"), &f.dep)
    );
    let top_nar = f.nar_url(&f.top);
    assert_eq!(up.count(&top_nar), 1);
    assert!(
        a.metric("nixgate_fetched_bytes_total{source=\"upstream\"}")
            .await
            > 0
    );

    // Upstream gone: the closure still substitutes from the cache.
    up.stop();
    let out = nix_copy(&a.url(), &f.public_key, &f.top, &work.path().join("c2")).await;
    assert_ok(&out);
    assert!(substituted(&work.path().join("c2"), &f.top));

    // Restart on the same cache dir, upstream still gone.
    a.stop().await;
    let a = Appliance::start_default(&cache, &up, &f.public_key).await;
    let out = nix_copy(&a.url(), &f.public_key, &f.top, &work.path().join("c3")).await;
    assert_ok(&out);
    assert!(substituted(&work.path().join("c3"), &f.top));
    assert!(a.metric("nixgate_cache_entries").await >= 4);

    // A path never cached, with upstream down: 503 + Retry-After, never a 404.
    let miss = get(
        &format!("{}/{}.narinfo", a.url(), Fixture::hash(&f.big)),
        &[],
    )
    .await;
    assert_eq!(miss.status, 503);
    assert!(miss.headers.contains_key("retry-after"));
    a.stop().await;
}
