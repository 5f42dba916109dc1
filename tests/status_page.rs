//! The status page in a real browser: an appliance (with a dead first upstream and a fleet
//! peer) serves a real `nix copy`, history samples accumulate, headless Chromium loads `/`
//! and the DOM must hold plots drawn with data; a screenshot is kept (its path is printed).
//! `nixgate status` is run against the same appliance.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

/// Chromium's flags for a quiet, self-contained headless run.
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    // The page renders from inlined data; let one 5 s refresh (a fetch of /_status/v1) run
    // before the dump (virtual time: this does not take 6 s).
    "--virtual-time-budget=6000",
];

fn chromium() -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join("chromium");
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "chromium is not installed: this test loads the status page in a real browser. \
         Install Debian's `chromium` (apt-get install -y chromium; ci/test.sh does)"
    );
}

/// Runs headless Chromium with `args` on `url` and returns its stdout.
async fn run_chromium(args: &[String], url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(chromium());
    cmd.args(CHROMIUM_FLAGS)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .expect("chromium finished within 90 s")
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The status document.
async fn status(a: &Appliance) -> serde_json::Value {
    let got = get(&format!("{}/_status/v1", a.url()), &[]).await;
    assert_eq!(got.status, 200);
    serde_json::from_str(&got.body).unwrap()
}

/// Waits until the hour ring holds `n` more samples than now (it is far from full here).
async fn wait_for_samples(a: &Appliance, n: usize) -> serde_json::Value {
    let len = |v: &serde_json::Value| v["hour"].as_array().unwrap().len();
    let before = len(&status(a).await);
    let what = format!("{n} new history samples");
    wait_until(Duration::from_secs(20), &what, || async {
        len(&status(a).await) >= before + n
    })
    .await;
    status(a).await
}

/// The text of the element with `id` in dumped HTML.
fn text_of<'a>(dom: &'a str, id: &str) -> &'a str {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id}"));
    let open = at + dom[at..].find('>').unwrap() + 1;
    &dom[open..open + dom[open..].find('<').unwrap()]
}

/// The `data-points` of each plot.
fn plot_points(dom: &str) -> Vec<u64> {
    dom.match_indices("data-points=\"")
        .map(|(i, m)| {
            let rest = &dom[i + m.len()..];
            rest[..rest.find('"').unwrap()].parse().unwrap()
        })
        .collect()
}

fn assert_rendered(dom: &str) {
    let points = plot_points(dom);
    assert_eq!(points.len(), 3, "three plots");
    assert!(
        points.iter().all(|n| *n >= 2),
        "plots with data: {points:?}"
    );
    assert!(dom.matches("class=\"series\"").count() >= 6, "line series");
    assert!(dom.contains("class=\"bar\""), "request bars");
    let ratio = text_of(dom, "hit-ratio");
    assert!(
        ratio.ends_with('%') && ratio != "0.0 %",
        "hit ratio {ratio}"
    );
    for id in ["bytes-served", "egress-saved", "bytes-upstream"] {
        let t = text_of(dom, id);
        assert!(t.ends_with('B') && !t.starts_with("0 "), "#{id}: {t}");
    }
    assert!(text_of(dom, "cache-fill").ends_with('%'));
    assert!(
        dom.contains("connect: "),
        "the dead upstream's last error is shown"
    );
    assert!(dom.contains(">static<"), "the peer table");
    assert!(
        dom.contains("<th>--serve-compression</th>") && dom.contains("<td>zstd</td>"),
        "the compression table names the mode"
    );
    assert!(dom.contains(">miss<"), "recent misses");
    let updated = text_of(dom, "updated");
    assert!(
        updated.starts_with("updated "),
        "the refresh failed: {updated}"
    );
    assert_readable(dom);
}

/// The texts of the elements of `class` in dumped HTML, in order.
fn texts_of_class<'a>(dom: &'a str, class: &str) -> Vec<&'a str> {
    dom.match_indices(&format!("class=\"{class}\""))
        .map(|(i, _)| {
            let open = i + dom[i..].find('>').unwrap() + 1;
            &dom[open..open + dom[open..].find('<').unwrap()]
        })
        .collect()
}

/// What a person needs to read the plots: which range is shown, axes with distinct round
/// labels and units, the sample interval, and a value under the pointer.
fn assert_readable(dom: &str) {
    assert!(
        dom.contains("id=\"range-hour\" aria-pressed=\"true\"")
            && dom.contains("id=\"range-day\" aria-pressed=\"false\""),
        "the shown range is marked pressed"
    );
    let ticks = texts_of_class(dom, "tick");
    // Per plot: five left labels, then (requests and cache plots) five right ones.
    assert_eq!(ticks.len(), 5 * 3 + 5 * 2, "{ticks:?}");
    for axis in ticks.chunks(5) {
        let distinct: std::collections::HashSet<_> = axis.iter().collect();
        assert_eq!(distinct.len(), 5, "axis labels repeat: {axis:?}");
    }
    assert!(
        ticks.iter().any(|t| t.ends_with(" %")),
        "hit ratio axis: {ticks:?}"
    );
    assert!(
        ticks.iter().any(|t| t.ends_with("iB") || t.ends_with(" B")),
        "byte axes: {ticks:?}"
    );
    let per = texts_of_class(dom, "per");
    assert!(
        !per.is_empty()
            && per
                .iter()
                .all(|p| p.starts_with("per ") && p.ends_with(" s")),
        "{per:?}"
    );
    let hovers = dom.matches("class=\"hover\"").count();
    assert!(hovers >= 6, "hover targets: {hovers}");
    assert!(
        dom.contains("<title>") && dom.contains(" · hits "),
        "tooltips name values"
    );
}

fn nixgate_status(url: &str, format: &str) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nixgate"))
        .args(["status", "--url", url, "--format", format])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Cold copies (misses), then warm ones (hits) and one that evicts, with samples in between.
async fn copy_rounds(f: &Fixture, a: &Appliance, work: &Path) -> serde_json::Value {
    let rounds: [&[&String]; 3] = [
        &[&f.top, &f.blobs[0]],
        &[&f.top, &f.blobs[0], &f.blobs[1]],
        &[&f.blobs[2], &f.blobs[1], &f.blobs[1]],
    ];
    let mut v = serde_json::Value::Null;
    for (r, paths) in rounds.iter().enumerate() {
        for (i, path) in paths.iter().enumerate() {
            let dest = work.join(format!("c{r}-{i}"));
            assert_ok(&nix_copy(&a.url(), &f.public_key, path, &dest).await);
        }
        v = wait_for_samples(a, 2).await;
    }
    v
}

/// Loads the page in Chromium: the DOM must hold the plots with data; keeps a screenshot.
async fn check_in_browser(a: &Appliance, names: &[&str]) {
    let page = get(&a.url(), &[]).await;
    assert_eq!(page.status, 200);
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    println!(
        "page weight: {} bytes (with inlined data)",
        page.bytes.len()
    );

    let dom = run_chromium(&["--dump-dom".into()], &a.url()).await;
    assert_rendered(&dom);
    // A miss is named while the cache holds its narinfo; the 1 MiB cap evicts most of them,
    // never the newest path, whose miss is among the events shown.
    assert!(
        names
            .iter()
            .any(|n| dom.contains(&format!("<td class=\"name\">{n}</td>"))),
        "misses are listed by store path name (one of {names:?})"
    );
    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/status-page.png");
    let _ = std::fs::remove_file(&shot);
    let args = [
        format!("--screenshot={}", shot.display()),
        "--window-size=1280,1400".into(),
    ];
    run_chromium(&args, &a.url()).await;
    let png = std::fs::metadata(&shot).expect("chromium wrote the screenshot");
    assert!(png.len() > 10_000, "a screenshot with content");
    println!("screenshot: {}", shot.display());
}

/// `nixgate status` against the appliance, as text and as JSON.
fn check_cli(a: &Appliance) {
    let text = nixgate_status(&a.url(), "text");
    print!("{text}");
    for want in [
        "hit ratio",
        "egress saved",
        "disk ",
        "peers          1",
        "circuit",
        "(--serve-compression zstd)",
        "transcoded ",
    ] {
        assert!(text.contains(want), "{want} in {text}");
    }
    let json: serde_json::Value = serde_json::from_str(&nixgate_status(&a.url(), "json")).unwrap();
    assert!(json["hour"].as_array().unwrap().len() >= 2);
    // Nix 2.8 decodes zstd: every NAR the copies took was sent, as xz or as zstd.
    let sent = &json["compression"]["served_bytes"];
    let by = |k: &str| sent[k].as_u64().unwrap();
    assert!(by("zstd") + by("xz") > 0, "{sent}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_page_renders_in_chromium() {
    let started = Instant::now();
    chromium(); // before any work: fail at once when it is missing
    let f = fixture().await;
    let up = Upstream::start(&f.cache).await;
    let work = tempfile::tempdir().unwrap();
    let fast = |a: &mut nixgate::config::ServeArgs| a.status_interval = Some("500ms".into());
    let b = Appliance::start(&work.path().join("b"), &[up.url()], &f.public_key, fast).await;
    // The first upstream refuses connections: its circuit and last error show on the page.
    let ups = ["http://127.0.0.1:1".to_owned(), up.url()];
    let peer = b.url();
    // A small cap, so that the fill plot shows and the third blob evicts.
    let a = Appliance::start(&work.path().join("a"), &ups, &f.public_key, |s| {
        fast(s);
        s.peers = Some(vec![peer]);
        // A fallback peer, not a fleet member: as a member, B would own a random share of the
        // fixture's (random) keys, all of them by chance, and A's bytes from the upstream
        // would then be 0 B.
        s.no_fleet = true;
        s.max_cache_size = Some("1MiB".into());
    })
    .await;

    let v = copy_rounds(f, &a, work.path()).await;
    assert!(v["totals"]["hits"].as_u64().unwrap() > 0, "{v}");
    assert!(v["totals"]["evictions"].as_u64().unwrap() > 0, "{v}");
    let paths = [&f.top, &f.dep, &f.blobs[0], &f.blobs[1], &f.blobs[2]];
    let names: Vec<&str> = paths
        .iter()
        .map(|p| p.rsplit('/').next().unwrap())
        .collect();
    check_in_browser(&a, &names).await;
    check_cli(&a);
    println!("test took {:?}", started.elapsed());
    a.stop().await;
    b.stop().await;
}
