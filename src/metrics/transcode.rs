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
    pub relayed: u64,
    pub served_zstd: u64,
    pub served_xz: u64,
    pub served_none: u64,
    pub served_other: u64,
}

/// The thread CPU time of one transcode, by stage.
#[derive(Debug, Clone, Copy, Default)]
pub struct StageCpu {
    /// Decoding (and hashing) the NAR for the transcode: a second decode of a committed file;
    /// zero for a download's tap, whose decode is the download's own NarHash check.
    pub decode: Duration,
    /// The zstd encoder.
    pub encode: Duration,
}

/// How a runner's narinfo was answered (`nixgate_narinfos_served_total{as}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NarinfoAs {
    /// Naming nixgate's zstd file.
    Zstd,
    /// Naming nixgate's plain NAR (`--serve-compression none`).
    None,
    /// The upstream's narinfo: a client that is no Nix, or nixgate's file not available.
    Upstream,
    /// The upstream's narinfo because the client's Nix does not decode nixgate's file.
    UpstreamOldNix,
}

impl NarinfoAs {
    const ALL: [NarinfoAs; 4] = [
        NarinfoAs::Zstd,
        NarinfoAs::None,
        NarinfoAs::Upstream,
        NarinfoAs::UpstreamOldNix,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NarinfoAs::Zstd => "zstd",
            NarinfoAs::None => "none",
            NarinfoAs::Upstream => "upstream",
            NarinfoAs::UpstreamOldNix => "upstream_old_nix",
        }
    }
}

/// Transcode and served-by-compression counters.
#[derive(Default)]
pub struct TranscodeCounters {
    nar_bytes: AtomicU64,
    out_bytes: AtomicU64,
    decode_ns: AtomicU64,
    encode_ns: AtomicU64,
    stored: AtomicU64,
    failed: AtomicU64,
    skipped: AtomicU64,
    relayed: AtomicU64,
    served: [AtomicU64; COMPRESSIONS.len()],
    narinfos: [AtomicU64; NarinfoAs::ALL.len()],
}

impl TranscodeCounters {
    /// A transcode stored a file: `nar` decoded bytes became `out` bytes, costing `cpu`.
    pub fn transcoded(&self, nar: u64, out: u64, cpu: StageCpu) {
        self.nar_bytes.fetch_add(nar, Relaxed);
        self.out_bytes.fetch_add(out, Relaxed);
        self.decode_ns
            .fetch_add(cpu.decode.as_nanos() as u64, Relaxed);
        self.encode_ns
            .fetch_add(cpu.encode.as_nanos() as u64, Relaxed);
    }

    /// A runner's narinfo was answered as `as_`.
    pub fn narinfo(&self, as_: NarinfoAs) {
        let i = NarinfoAs::ALL.iter().position(|a| *a == as_);
        self.narinfos[i.expect("ALL lists every value")].fetch_add(1, Relaxed);
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

    /// A NAR was transcoded live for one runner, uncached (`fetch/live.rs`): the cache could
    /// not store it.
    pub fn relayed(&self) {
        self.relayed.fetch_add(1, Relaxed);
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
            cpu_seconds: (v(&self.decode_ns) + v(&self.encode_ns)) as f64 / 1e9,
            stored: v(&self.stored),
            failed: v(&self.failed),
            skipped: v(&self.skipped),
            relayed: v(&self.relayed),
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
            ("relayed", &self.relayed),
        ];
        let served = COMPRESSIONS.iter().zip(&self.served);
        let secs = |a: &AtomicU64| a.load(Relaxed) as f64 / 1e9;
        let stage = [("decode", &self.decode_ns), ("encode", &self.encode_ns)];
        let narinfos = NarinfoAs::ALL.iter().zip(&self.narinfos);
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
                "Thread CPU time of the transcodes by stage: decode (decoding and hashing a committed NAR again; 0 when the download's own check fed the encoder) and encode (zstd).",
            )
            .samples(stage.iter().map(|(l, a)| ("", format!("stage=\"{l}\""), secs(a)))),
            Family::new(
                "nixgate_transcodes_total",
                Kind::Counter,
                "Transcodes by outcome (failed: nothing stored; skipped: the NAR and its copy would take over a quarter of the cap; runners keep the upstream's file either way; relayed: made live for one runner and not stored, the cache having no room).",
            )
            .samples(outcome.iter().map(|(l, a)| ("", format!("outcome=\"{l}\""), v(a)))),
            Family::new(
                "nixgate_served_nar_bytes_total",
                Kind::Counter,
                "Length of the NAR responses sent, by the compression of the file.",
            )
            .samples(served.map(|((_, l), a)| ("", format!("compression=\"{l}\""), v(a)))),
            Family::new(
                "nixgate_narinfos_served_total",
                Kind::Counter,
                "Narinfos sent to runners, by what they name: zstd or none (nixgate's own file), upstream (the upstream's file), upstream_old_nix (a Nix too old for nixgate's file).",
            )
            .samples(narinfos.map(|(a, n)| ("", format!("as=\"{}\"", a.as_str()), v(n)))),
        ]
    }
}
