//! Gauges of the appliance's state, read from its parts when `/metrics` is scraped (not kept
//! as counters): readiness, each upstream's and the object store's circuit, the peers and fleet members known, and
//! the cache cap beside the bytes held.

use std::fmt::Write;

/// A circuit as a gauge: 0 closed, 1 half-open (one probe under way), 2 open.
pub fn circuit_value(state: &str) -> u8 {
    match state {
        "closed" => 0,
        "half-open" => 1,
        _ => 2,
    }
}

/// One sample of a gauge: its labels (`a="x"`, or empty) and its value.
type Sample = (String, u64);

/// What the gauges show, gathered by the `/metrics` handler.
#[derive(Debug, Default)]
pub struct StateGauges {
    /// `/readyz` would answer 200.
    pub ready: bool,
    /// `--max-cache-size`, bytes.
    pub cache_cap: u64,
    /// Each configured upstream's origin and circuit state (`closed`, `half-open`, `open`).
    pub circuits: Vec<(String, &'static str)>,
    /// The object store's circuit state, when one is configured.
    pub object_store_circuit: Option<&'static str>,
    /// Peers known (every source), of which skipped (circuit open) and fleet owners.
    pub peers: usize,
    pub peers_skipped: usize,
    pub fleet_owners: usize,
}

impl StateGauges {
    /// The upstreams' circuit samples, and the object store's.
    fn circuit_samples(&self) -> (Vec<Sample>, Vec<Sample>) {
        let upstreams = (self.circuits.iter())
            .map(|(u, s)| (format!("upstream=\"{u}\""), u64::from(circuit_value(s))))
            .collect();
        let bucket = (self.object_store_circuit.iter())
            .map(|s| (String::new(), u64::from(circuit_value(s))))
            .collect();
        (upstreams, bucket)
    }

    /// The families, in the text exposition format.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let mut gauge = |name: &str, help: &str, samples: &[(String, u64)]| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (labels, v) in samples {
                match labels.is_empty() {
                    true => _ = writeln!(o, "{name} {v}"),
                    false => _ = writeln!(o, "{name}{{{labels}}} {v}"),
                }
            }
        };
        let one = |v: u64| [(String::new(), v)];
        gauge(
            "nixgate_ready",
            "1 when /readyz answers 200 (the cache can store), else 0.",
            &one(u64::from(self.ready)),
        );
        gauge(
            "nixgate_cache_max_bytes",
            "The cache's size cap (--max-cache-size), bytes.",
            &one(self.cache_cap),
        );
        let (circuits, bucket) = self.circuit_samples();
        gauge(
            "nixgate_upstream_circuit_state",
            "Each upstream's circuit: 0 closed (in use), 1 half-open (being probed), 2 open \
             (skipped).",
            &circuits,
        );
        gauge(
            "nixgate_object_store_circuit_state",
            "The object store's circuit: 0 closed (in use), 2 open (skipped; probed in the \
             background until it answers).",
            &bucket,
        );
        let peers = [
            (
                "state=\"ok\"".to_owned(),
                (self.peers - self.peers_skipped) as u64,
            ),
            ("state=\"skipped\"".to_owned(), self.peers_skipped as u64),
        ];
        gauge(
            "nixgate_peers",
            "Peer appliances known (--peer, --peers-dns, mDNS), by state (skipped: circuit \
             open or on probation).",
            &peers,
        );
        gauge(
            "nixgate_fleet_members",
            "Live fleet members that own a share of the keys (this appliance not counted).",
            &one(self.fleet_owners as u64),
        );
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_each_gauge() {
        let g = StateGauges {
            ready: true,
            cache_cap: 1 << 30,
            circuits: vec![
                ("https://a:443".into(), "open"),
                ("http://b:80".into(), "closed"),
            ],
            object_store_circuit: Some("open"),
            peers: 3,
            peers_skipped: 1,
            fleet_owners: 2,
        };
        let t = g.render();
        for line in [
            "nixgate_ready 1",
            "nixgate_cache_max_bytes 1073741824",
            "nixgate_upstream_circuit_state{upstream=\"https://a:443\"} 2",
            "nixgate_upstream_circuit_state{upstream=\"http://b:80\"} 0",
            "nixgate_peers{state=\"ok\"} 2",
            "nixgate_peers{state=\"skipped\"} 1",
            "nixgate_fleet_members 2",
            "nixgate_object_store_circuit_state 2",
        ] {
            assert!(t.lines().any(|l| l == line), "{line} in {t}");
        }
    }
}
