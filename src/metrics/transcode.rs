//! Metrics of the NARs nixgate recompresses for runners (`--serve-compression`,
//! `fetch/served.rs`): what the transcodes cost and what runners were sent, by compression.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use super::family::{Family, Kind};

/// The `compression` label of served NAR bytes, from the extension of the URL asked.
const COMPRESSIONS: [(&str, &str); 4] = [
    (".zst", "zstd"),
    (".xz", "xz"),
    ("", "none"),
    ("*", "other"),
];

/// The counters' values at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TranscodeTotals {
    pub nar_bytes: u64,
    pub out_bytes: u64,
    pub cpu_seconds: f64,
    pub stored: u64,
    pub failed: u64,
    pub skipped: u64,
    pub served_zstd: u64,
    pub served_xz: u64,
    pub served_none: u64,
    pub served_other: u64,
}

/// Transcode and served-by-compression counters.
#[derive(Default)]
pub struct TranscodeCounters {
    nar_bytes: AtomicU64,
    out_bytes: AtomicU64,
    cpu_ns: AtomicU64,
    stored: AtomicU64,
    failed: AtomicU64,
    skipped: AtomicU64,
    served: [AtomicU64; COMPRESSIONS.len()],
}

impl TranscodeCounters {
    /// A transcode stored a file: `nar` decoded bytes became `out` bytes, costing `cpu`.
    pub fn transcoded(&self, nar: u64, out: u64, cpu: Duration) {
        self.nar_bytes.fetch_add(nar, Relaxed);
        self.out_bytes.fetch_add(out, Relaxed);
        self.cpu_ns.fetch_add(cpu.as_nanos() as u64, Relaxed);
    }

    /// A transcode ended, stored or not.
    pub fn ended(&self, stored: bool) {
        let c = if stored { &self.stored } else { &self.failed };
        c.fetch_add(1, Relaxed);
    }

    /// A NAR was not transcoded: with its own file it would take over a quarter of the cap.
    pub fn skipped(&self) {
        self.skipped.fetch_add(1, Relaxed);
    }

    /// A NAR response of `bytes` for a URL with extension `ext` (`.zst`, `.xz`, ...).
    pub fn served(&self, ext: &str, bytes: u64) {
        let i = COMPRESSIONS.iter().position(|(e, _)| *e == ext);
        let i = i.unwrap_or(COMPRESSIONS.len() - 1);
        self.served[i].fetch_add(bytes, Relaxed);
    }

    /// Decoded NAR bytes transcoded, and the bytes written, so far.
    pub fn bytes(&self) -> (u64, u64) {
        (self.nar_bytes.load(Relaxed), self.out_bytes.load(Relaxed))
    }

    /// Every counter at once, for the status page.
    pub fn totals(&self) -> TranscodeTotals {
        let v = |a: &AtomicU64| a.load(Relaxed);
        let served = |name: &str| {
            let i = COMPRESSIONS.iter().position(|(_, l)| *l == name);
            i.map_or(0, |i| v(&self.served[i]))
        };
        TranscodeTotals {
            nar_bytes: v(&self.nar_bytes),
            out_bytes: v(&self.out_bytes),
            cpu_seconds: v(&self.cpu_ns) as f64 / 1e9,
            stored: v(&self.stored),
            failed: v(&self.failed),
            skipped: v(&self.skipped),
            served_zstd: served("zstd"),
            served_xz: served("xz"),
            served_none: served("none"),
            served_other: served("other"),
        }
    }

    /// The families, in exposition order.
    pub(super) fn families(&self) -> Vec<Family> {
        let v = |a: &AtomicU64| a.load(Relaxed) as f64;
        let side = [("nar", &self.nar_bytes), ("out", &self.out_bytes)];
        let outcome = [
            ("stored", &self.stored),
            ("failed", &self.failed),
            ("skipped", &self.skipped),
        ];
        let served = COMPRESSIONS.iter().zip(&self.served);
        vec![
            Family::new(
                "nixgate_transcoded_bytes_total",
                Kind::Counter,
                "Bytes of NARs recompressed for runners: side=nar the decoded NAR, side=out the file written.",
            )
            .samples(side.iter().map(|(l, a)| ("", format!("side=\"{l}\""), v(a)))),
            Family::new(
                "nixgate_transcode_cpu_seconds_total",
                Kind::Counter,
                "CPU time of the transcodes (decode, NarHash check and encode, thread CPU time).",
            )
            .samples(std::iter::once((
                "",
                String::new(),
                self.cpu_ns.load(Relaxed) as f64 / 1e9,
            ))),
            Family::new(
                "nixgate_transcodes_total",
                Kind::Counter,
                "Transcodes by outcome (failed: nothing stored; skipped: the NAR and its copy would take over a quarter of the cap; runners keep the upstream's file either way).",
            )
            .samples(outcome.iter().map(|(l, a)| ("", format!("outcome=\"{l}\""), v(a)))),
            Family::new(
                "nixgate_served_nar_bytes_total",
                Kind::Counter,
                "Length of the NAR responses sent, by the compression of the file.",
            )
            .samples(served.map(|((_, l), a)| ("", format!("compression=\"{l}\""), v(a)))),
        ]
    }
}
