//! What `nixgate warm` prints: one JSON object per line per event when stdout is not a
//! terminal (for CI logs and scripts), a progress line redrawn in place when it is.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};

use crate::units::human_bytes;

/// The running tally and where it is printed.
pub struct Report {
    json: bool,
    start: Instant,
    /// Paths in the closure found so far.
    pub total: usize,
    /// Paths whose NAR was read in full (or that failed).
    pub done: usize,
    /// Sum of the `FileSize`s of the narinfos found (for the ETA).
    pub expected_bytes: u64,
    /// NAR bytes read so far, updated by the downloads.
    pub bytes: Arc<AtomicU64>,
}

impl Report {
    /// JSON lines when `json`, else a progress line.
    pub fn new(json: bool) -> Report {
        Report {
            json,
            start: Instant::now(),
            total: 0,
            done: 0,
            expected_bytes: 0,
            bytes: Arc::default(),
        }
    }

    /// Seconds since the start.
    pub fn seconds(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// One event: a JSON line, or (on a terminal) an updated progress line. Errors are
    /// shown on a terminal too, on a line of their own.
    pub fn event(&mut self, event: &str, mut fields: Value) {
        if self.json {
            fields["event"] = json!(event);
            // A closed pipe (`| head`) is not an error of the warm-up itself.
            let _ = writeln!(std::io::stdout().lock(), "{fields}");
            return;
        }
        if event == "error" {
            let s = |k: &str| fields[k].as_str().unwrap_or_default().to_owned();
            eprintln!("\r\x1b[Kwarm: {} {}: {}", s("stage"), s("path"), s("error"));
        }
        self.progress();
    }

    /// Redraws the progress line (terminal only): paths, bytes, rate and an estimate.
    pub fn progress(&self) {
        if self.json {
            return;
        }
        let bytes = self.bytes.load(Ordering::Relaxed);
        let secs = self.seconds().max(0.001);
        let rate = bytes as f64 / secs;
        let left = self.expected_bytes.saturating_sub(bytes);
        let eta = if rate > 0.0 && left > 0 {
            format!(", ETA {:.0}s", left as f64 / rate)
        } else {
            String::new()
        };
        let mut out = std::io::stdout().lock();
        let _ = write!(
            out,
            "\r\x1b[K{}/{} paths, {}, {}/s{eta}",
            self.done,
            self.total,
            human_bytes(bytes),
            human_bytes(rate as u64),
        );
        let _ = out.flush();
    }

    /// Ends the progress line (terminal only).
    pub fn end_line(&self) {
        if !self.json {
            let _ = writeln!(std::io::stdout().lock());
        }
    }
}
