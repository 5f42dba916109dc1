//! Logging: human-readable by default, JSON lines with `--log-format json`; level from
//! `RUST_LOG` (default `info`). Lines go through a bounded queue to stderr (`writer.rs`), so
//! a slow or vanished log reader costs log lines, counted, never the process.

mod writer;

pub use writer::{dropped_lines, flush, QUEUE_BYTES};

use serde::Deserialize;
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

/// Installs the global subscriber (once; later calls are ignored).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer::LossyStderr::get())
        // Colours only for a person at a terminal, never into files or log collectors.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
