//! `nixgate status`: reads an appliance's `/_status/v1` and prints the summary an operator
//! wants on a shell (hit ratio, egress saved, disk, upstreams, peers), or the JSON itself.

use std::fmt::Write;
use std::time::Duration;

use serde_json::Value;
use url::Url;

use crate::units::human_bytes;
use crate::upstream::probe;

/// The largest status document read (the rings are ~60 KB of numbers, ~200 KB as JSON).
const MAX_BODY: usize = 8 << 20;
/// How long the appliance has to answer.
const DEADLINE: Duration = Duration::from_secs(10);

/// Fetches the status document of the appliance at `base` (a base URL whose path ends in `/`,
/// as `config::parse_appliance_url` makes it).
pub async fn fetch(base: &Url) -> anyhow::Result<Value> {
    let body = probe::get_bytes(base, "_status/v1", DEADLINE, MAX_BODY)
        .await
        .map_err(|e| anyhow::anyhow!("{base}_status/v1: {e}"))?;
    Ok(serde_json::from_slice(&body)?)
}

fn num(v: &Value, path: &str) -> u64 {
    v.pointer(path).and_then(Value::as_u64).unwrap_or(0)
}

fn ratio(hits: u64, misses: u64) -> String {
    match hits + misses {
        0 => "– (no narinfo or NAR request yet)".into(),
        n => format!("{:.1} %", 100.0 * hits as f64 / n as f64),
    }
}

/// The change of counter `key` over the hour ring.
fn last_hour(v: &Value, key: &str) -> u64 {
    let hour = v["hour"].as_array().map(Vec::as_slice).unwrap_or_default();
    match (hour.first(), hour.last()) {
        (Some(a), Some(b)) => num(b, &format!("/{key}")).saturating_sub(num(a, &format!("/{key}"))),
        _ => 0,
    }
}

/// The text summary of a status document.
pub fn summary(v: &Value) -> String {
    let mut o = String::new();
    let up = num(v, "/now").saturating_sub(num(v, "/started"));
    let version = v["version"].as_str().unwrap_or("?");
    let _ = writeln!(
        o,
        "nixgate {version}, up {}h {:02}m",
        up / 3600,
        up % 3600 / 60
    );
    let (hits, misses) = (num(v, "/totals/hits"), num(v, "/totals/misses"));
    let _ = writeln!(
        o,
        "hit ratio      {}  ({hits} hits, {misses} misses, {} errors)",
        ratio(hits, misses),
        num(v, "/totals/errors")
    );
    let _ = writeln!(
        o,
        "  last hour    {}",
        ratio(last_hour(v, "hits"), last_hour(v, "misses"))
    );
    let _ = writeln!(
        o,
        "served         {}",
        human_bytes(num(v, "/totals/served_bytes"))
    );
    let f = |k: &str| human_bytes(num(v, &format!("/totals/fetched/{k}")));
    let _ = writeln!(
        o,
        "fetched        upstream {}, peer {}, torrent {}, fleet {}",
        f("upstream"),
        f("peer"),
        f("torrent"),
        f("fleet")
    );
    let _ = writeln!(
        o,
        "egress saved   {}",
        human_bytes(num(v, "/totals/egress_saved_bytes"))
    );
    let fill = v
        .pointer("/cache/fill")
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    let _ = writeln!(
        o,
        "disk           {} of {} ({:.1} %), {} files, {} evictions",
        human_bytes(num(v, "/cache/bytes")),
        human_bytes(num(v, "/cache/max_bytes")),
        100.0 * fill,
        num(v, "/cache/entries"),
        num(v, "/totals/evictions")
    );
    let _ = writeln!(
        o,
        "verification   {} failures",
        num(v, "/totals/verification_failures")
    );
    compression(&mut o, v);
    rows(&mut o, v);
    o
}

/// What runners were sent NARs as, and what recompressing them cost.
fn compression(o: &mut String, v: &Value) {
    let c = &v["compression"];
    if c.is_null() {
        return;
    }
    let b = |k: &str| human_bytes(num(c, &format!("/served_bytes/{k}")));
    let _ = writeln!(
        o,
        "runners got    zstd {}, xz {}, none {}, other {} (--serve-compression {})",
        b("zstd"),
        b("xz"),
        b("none"),
        b("other"),
        c["mode"].as_str().unwrap_or("?")
    );
    let ratio = c["ratio"]
        .as_f64()
        .map_or("-".into(), |r| format!("{r:.2}"));
    let per_gb = c["cpu_seconds_per_gb"]
        .as_f64()
        .map_or("-".into(), |s| format!("{s:.1}"));
    let _ = writeln!(
        o,
        "transcoded     {} of NAR into {} ({ratio} of it), {per_gb} CPU s/GB; {} stored, {} failed, {} skipped, {} relayed",
        human_bytes(num(c, "/transcoded_nar_bytes")),
        human_bytes(num(c, "/transcoded_out_bytes")),
        num(c, "/stored"),
        num(c, "/failed"),
        num(c, "/skipped"),
        num(c, "/relayed")
    );
}

/// The upstream and peer lines.
fn rows(o: &mut String, v: &Value) {
    let empty = Vec::new();
    for u in v["upstreams"].as_array().unwrap_or(&empty) {
        let err = u["last_error"]
            .as_str()
            .map(|e| format!(", last error: {e}"));
        let _ = writeln!(
            o,
            "upstream       {} circuit {}{}",
            u["url"].as_str().unwrap_or("?"),
            u["circuit"].as_str().unwrap_or("?"),
            err.unwrap_or_default()
        );
    }
    if let Some(b) = v.get("object_store").filter(|b| !b.is_null()) {
        let _ = writeln!(
            o,
            "object store   {} circuit {}, read {}, written {}, queue {}, dropped {}",
            b["url"].as_str().unwrap_or("?"),
            b["circuit"].as_str().unwrap_or("?"),
            human_bytes(num(b, "/read_bytes")),
            human_bytes(num(b, "/written_bytes")),
            num(b, "/queue_depth"),
            num(b, "/writes_dropped")
        );
    }
    let peers = v["peers"].as_array().unwrap_or(&empty);
    let ok = peers.iter().filter(|p| p["state"] == "ok").count();
    let owners = peers.iter().filter(|p| p["owner"] == true).count();
    let _ = writeln!(
        o,
        "peers          {} ({ok} ok, {owners} fleet owners)",
        peers.len()
    );
    for p in peers {
        let _ = writeln!(
            o,
            "  {} {} {}{}{}",
            p["url"].as_str().unwrap_or("?"),
            p["origin"].as_str().unwrap_or("?"),
            p["state"].as_str().unwrap_or("?"),
            if p["owner"] == true { " owner" } else { "" },
            match p["serves"].as_str() {
                Some(s) => format!(" serves {s}"),
                None => String::new(),
            }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_a_document() {
        let v = serde_json::json!({
            "version": "1.0", "now": 7300, "started": 100,
            "totals": { "hits": 3, "misses": 1, "errors": 0, "served_bytes": 3 << 20,
                        "fetched": { "upstream": 1 << 20, "peer": 0, "torrent": 0, "fleet": 0 },
                        "egress_saved_bytes": 2 << 20, "evictions": 0, "verification_failures": 0 },
            "cache": { "bytes": 1 << 20, "entries": 4, "max_bytes": 10 << 20, "fill": 0.1 },
            "hour": [ { "hits": 1, "misses": 1 }, { "hits": 3, "misses": 1 } ],
            "upstreams": [ { "url": "http://u/", "circuit": "closed", "last_error": null } ],
            "peers": [ { "url": "http://p/", "origin": "dns", "state": "ok", "owner": true, "serves": "zstd" } ],
            "compression": { "mode": "zstd",
                             "served_bytes": { "zstd": 2 << 20, "xz": 1 << 20, "none": 0, "other": 0 },
                             "transcoded_nar_bytes": 4 << 20, "transcoded_out_bytes": 1 << 20,
                             "ratio": 0.25, "cpu_seconds": 0.1, "cpu_seconds_per_gb": 23.84,
                             "stored": 2, "failed": 0, "skipped": 1, "relayed": 3 },
        });
        let s = summary(&v);
        assert!(s.contains("up 2h 00m"), "{s}");
        assert!(s.contains("hit ratio      75.0 %"), "{s}");
        assert!(s.contains("last hour    100.0 %"), "{s}");
        assert!(s.contains("egress saved   2.0 MiB"), "{s}");
        assert!(s.contains("1.0 MiB of 10.0 MiB (10.0 %), 4 files"), "{s}");
        assert!(s.contains("peers          1 (1 ok, 1 fleet owners)"), "{s}");
        assert!(s.contains("  http://p/ dns ok owner serves zstd"), "{s}");
        assert!(
            s.contains("runners got    zstd 2.0 MiB, xz 1.0 MiB, none 0 B, other 0 B (--serve-compression zstd)"),
            "{s}"
        );
        assert!(
            s.contains("transcoded     4.0 MiB of NAR into 1.0 MiB (0.25 of it), 23.8 CPU s/GB; 2 stored, 0 failed, 1 skipped, 3 relayed"),
            "{s}"
        );
    }
}
