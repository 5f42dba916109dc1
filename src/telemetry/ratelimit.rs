//! Repeated warnings are rate-limited: at most [`BURST`] WARN or ERROR lines a minute from one
//! place in the code (one callsite); beyond that they are counted, and the count is written as
//! one line of its own when that place logs again in a later minute. A flood of one failure
//! (a full disk under every request, a lying peer asked again and again) thus costs a few
//! lines a minute, and the operator still sees how many were left out.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::callsite::Identifier;
use tracing::subscriber::Interest;
use tracing::{Level, Metadata};
use tracing_subscriber::layer::{Context, Filter};

use super::writer::LossyStderr;

/// Lines let through per callsite and window.
pub const BURST: u32 = 10;
/// The window.
pub const WINDOW: Duration = Duration::from_secs(60);

struct Window {
    start: Instant,
    seen: u32,
}

/// Per-callsite windows of WARN and ERROR events.
#[derive(Default)]
pub struct RateLimit {
    windows: Mutex<HashMap<Identifier, Window>>,
}

/// What to do with one event.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Log,
    /// Log it, after a line saying how many from this place were suppressed.
    LogAfterSuppressed(u32),
    Suppress,
}

impl RateLimit {
    /// The verdict for an event of `meta` at `now`; INFO and below are never limited.
    pub fn check(&self, meta: &Metadata<'_>, now: Instant) -> Verdict {
        if *meta.level() > Level::WARN {
            return Verdict::Log;
        }
        let mut w = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let win = w.entry(meta.callsite()).or_insert(Window {
            start: now,
            seen: 0,
        });
        if now.duration_since(win.start) >= WINDOW {
            let suppressed = win.seen.saturating_sub(BURST);
            *win = Window {
                start: now,
                seen: 1,
            };
            return match suppressed {
                0 => Verdict::Log,
                n => Verdict::LogAfterSuppressed(n),
            };
        }
        win.seen += 1;
        match win.seen <= BURST {
            true => Verdict::Log,
            false => Verdict::Suppress,
        }
    }
}

/// The per-layer filter: the limit, and where the "suppressed" lines go.
pub struct Limited {
    limit: RateLimit,
    out: &'static LossyStderr,
    json: bool,
}

impl Limited {
    pub fn new(out: &'static LossyStderr, json: bool) -> Self {
        Limited {
            limit: RateLimit::default(),
            out,
            json,
        }
    }
}

impl<S> Filter<S> for Limited {
    fn enabled(&self, meta: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        match self.limit.check(meta, Instant::now()) {
            Verdict::Log => true,
            Verdict::Suppress => false,
            Verdict::LogAfterSuppressed(n) => {
                self.out
                    .line(suppressed_line(meta, n, self.json).as_bytes());
                true
            }
        }
    }

    /// Only WARN and ERROR callsites are asked per event; every other callsite keeps a cached
    /// interest, so disabled debug and trace points on the hot path stay free.
    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        match *meta.level() <= Level::WARN {
            true => Interest::sometimes(),
            false => Interest::always(),
        }
    }
}

/// The line that reports `n` suppressed lines from `meta`'s place.
pub fn suppressed_line(meta: &Metadata<'_>, n: u32, json: bool) -> String {
    let at = format!(
        "{}:{}",
        meta.file().unwrap_or("?"),
        meta.line().unwrap_or_default()
    );
    let now = humantime_now();
    let what = format!(
        "{n} more lines like the next were suppressed in the last minute (over {BURST} a minute from one place)"
    );
    match json {
        true => {
            serde_json::json!({
                "timestamp": now, "level": "WARN", "target": meta.target(),
                "message": what, "suppressed": n, "from": at,
            })
            .to_string()
                + "\n"
        }
        false => format!(
            "{now}  WARN {}: {what} suppressed={n} from={at}\n",
            meta.target()
        ),
    }
}

/// An RFC 3339 UTC timestamp like tracing-subscriber's.
fn humantime_now() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_micros()
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_428), (2025, 12, 6));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn a_flood_from_one_place_is_cut_and_counted() {
        let r = RateLimit::default();
        let meta = warn_meta();
        let t0 = Instant::now();
        let verdicts: Vec<_> = (0..25).map(|_| r.check(meta, t0)).collect();
        assert_eq!(
            verdicts.iter().filter(|v| **v == Verdict::Log).count(),
            BURST as usize
        );
        assert_eq!(
            verdicts.iter().filter(|v| **v == Verdict::Suppress).count(),
            15
        );
        assert_eq!(r.check(meta, t0 + WINDOW), Verdict::LogAfterSuppressed(15));
        assert_eq!(r.check(meta, t0 + WINDOW), Verdict::Log);
        let line = suppressed_line(meta, 15, true);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["suppressed"], 15);
    }

    fn warn_meta() -> &'static Metadata<'static> {
        struct Cs;
        static CS: Cs = Cs;
        impl tracing::Callsite for Cs {
            fn set_interest(&self, _: tracing::subscriber::Interest) {}
            fn metadata(&self) -> &Metadata<'_> {
                &META
            }
        }
        static META: Metadata<'static> = tracing::metadata!(
            name: "test",
            target: "nixgate::test",
            level: Level::WARN,
            fields: &[],
            callsite: &CS,
            kind: tracing::metadata::Kind::EVENT
        );
        &META
    }
}
