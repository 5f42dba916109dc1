//! `/metrics` as an operator's Prometheus sees it: lint-clean (`promtool check metrics`), the
//! standard `process_*` and a `nixgate_build_info` series, and no series for a route and
//! result that cannot go together.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;

fn promtool_check(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed (apt-get install prometheus; ci/test.sh does)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success() && said.trim().is_empty(), said)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_lint_clean_and_carry_build_and_process_series() {
    let f = fixture().await;
    let up = Upstream::start(&f.cache).await;
    let work = tempfile::tempdir().unwrap();
    let a = Appliance::start_default(&work.path().join("cache"), &up, &f.public_key).await;
    // Some traffic: a narinfo miss, its NAR, a 404, a bad request.
    let info = get(
        &format!("{}/{}.narinfo", a.url(), Fixture::hash(&f.top)),
        &[],
    )
    .await;
    assert_eq!(info.status, 200);
    assert_eq!(
        get(&format!("{}/{}", a.url(), f.nar_url(&f.top)), &[])
            .await
            .status,
        200
    );
    let absent = format!("{}/{}.narinfo", a.url(), "0".repeat(32));
    assert_eq!(get(&absent, &[]).await.status, 404);
    assert_eq!(
        get(&format!("{}/nar/x.nar", a.url()), &[]).await.status,
        400
    );

    let m = get(&format!("{}/metrics", a.url()), &[]).await;
    assert_eq!(m.status, 200);
    let (clean, said) = promtool_check(&m.body);
    assert!(clean, "promtool check metrics: {said}");
    let value = |line: &str| {
        m.body
            .lines()
            .find_map(|l| l.strip_prefix(line)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {line} in /metrics"))
            .parse::<f64>()
            .unwrap()
    };
    let version = format!(
        "nixgate_build_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(value(&version), 1.0);
    assert!(value("process_resident_memory_bytes") > 1e6);
    assert!(
        value("process_open_fds") >= 3.0 && value("process_max_fds") >= value("process_open_fds")
    );
    assert!(value("process_cpu_seconds_total") > 0.0);
    assert!(value("process_start_time_seconds") > 1.6e9);
    assert_eq!(
        value("nixgate_requests_total{route=\"narinfo\",result=\"miss\"}"),
        1.0
    );
    assert_eq!(
        value("nixgate_requests_total{route=\"narinfo\",result=\"not_found\"}"),
        1.0
    );
    // Upstream answers and latency by upstream (its origin: never a credential), runners'
    // latency by route and result.
    let origin = up.url().trim_end_matches('/').to_owned();
    let by_up = format!("nixgate_upstream_requests_total{{upstream=\"{origin}\",status=\"200\"}}");
    assert!(value(&by_up) >= 2.0, "{by_up}");
    let count = format!("nixgate_upstream_response_seconds_count{{upstream=\"{origin}\"}}");
    assert!(value(&count) >= 2.0);
    let inf =
        "nixgate_request_duration_seconds_bucket{route=\"narinfo\",result=\"miss\",le=\"+Inf\"}";
    assert_eq!(value(inf), 1.0);
    assert!(m
        .body
        .contains("nixgate_request_duration_seconds_sum{route=\"nar\",result=\"miss\"}"));
    // State gauges.
    assert_eq!(value("nixgate_ready"), 1.0);
    assert_eq!(
        value("nixgate_cache_max_bytes"),
        10.0 * 1024.0 * 1024.0 * 1024.0
    );
    let circuit = format!("nixgate_upstream_circuit_state{{upstream=\"{origin}\"}}");
    assert_eq!(value(&circuit), 0.0);
    assert_eq!(value("nixgate_peers{state=\"ok\"}"), 0.0);
    assert_eq!(value("nixgate_fleet_members"), 0.0);
    for impossible in [
        "route=\"healthz\",result=\"stored\"",
        "route=\"metrics\",result=\"miss\"",
        "route=\"other\",result=\"hit\"",
    ] {
        assert!(!m.body.contains(impossible), "{impossible} exported");
    }

    // Operators' requests are not runners' traffic: served bytes stay as they are.
    let served = a.metric("nixgate_served_bytes_total").await;
    for route in [
        "metrics",
        "",
        "_status/v1",
        "healthz",
        "readyz",
        "_p2p/v1/peers",
    ] {
        assert_eq!(
            get(&format!("{}/{route}", a.url()), &[]).await.status,
            200,
            "/{route}"
        );
    }
    assert_eq!(a.metric("nixgate_served_bytes_total").await, served);
    a.stop().await;
}
