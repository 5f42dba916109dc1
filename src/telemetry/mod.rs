//! Logging: human-readable by default, JSON lines with `--log-format json`; level from
//! `RUST_LOG` (default `info`). Lines go through a bounded queue to stderr (`writer.rs`), so
//! a slow or vanished log reader costs log lines, counted, never the process.

mod ratelimit;
mod writer;

pub use writer::{dropped_lines, flush, QUEUE_BYTES};

use serde::Deserialize;
use tracing_subscriber::prelude::*;
use tracing_subscriber::EnvFilter;

/// Log output format (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Installs the global subscriber (once; later calls are ignored). Repeated warnings from one
/// place are rate-limited (`ratelimit.rs`).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let out = writer::LossyStderr::get();
    let json = format == LogFormat::Json;
    let limited = ratelimit::Limited::new(out, json);
    // Colours only for a person at a terminal, never into files or log collectors.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(out)
        .with_ansi(ansi);
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match json {
        false => registry.with(layer.with_filter(limited)).try_init(),
        true => registry
            .with(layer.json().flatten_event(true).with_filter(limited))
            .try_init(),
    };
}
