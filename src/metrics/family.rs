//! The text exposition format's pieces: a metric family (name, type, help, samples) and how
//! it is written, histograms included.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::labels::LabelValue;

/// A Prometheus metric type.
#[derive(Clone, Copy)]
pub(super) enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One sample: the suffix of the family's name (`_bucket`, `_sum`, `_count` of a histogram;
/// else empty), its label set, its value.
pub(super) type Sample = (&'static str, String, f64);

/// One metric family as rendered: name, type, help and its samples.
pub(super) struct Family {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
    pub samples: Vec<Sample>,
}

impl Family {
    pub fn new(name: &'static str, kind: Kind, help: &'static str) -> Self {
        Family {
            name,
            kind,
            help,
            samples: Vec::new(),
        }
    }

    /// An unlabelled sample.
    pub fn value(mut self, v: &AtomicU64) -> Self {
        self.samples
            .push(("", String::new(), v.load(Relaxed) as f64));
        self
    }

    /// One sample per value of a label enum.
    pub fn by<'m, L: LabelValue + Copy>(
        mut self,
        label: &str,
        all: &[L],
        get: impl Fn(L) -> &'m AtomicU64,
    ) -> Self {
        for l in all {
            let v = get(*l).load(Relaxed) as f64;
            self.samples
                .push(("", format!("{label}=\"{}\"", l.label()), v));
        }
        self
    }

    pub fn samples(mut self, s: impl Iterator<Item = Sample>) -> Self {
        self.samples.extend(s);
        self
    }

    /// The `_bucket`, `_sum` and `_count` samples of `h` under `labels` (non-empty).
    pub fn histogram(&mut self, labels: &str, h: &super::histogram::Histogram) {
        let (buckets, sum, count) = h.snapshot();
        for (le, n) in buckets {
            let l = format!("{labels},le=\"{le}\"");
            self.samples.push(("_bucket", l, n as f64));
        }
        self.samples.push(("_sum", labels.to_owned(), sum));
        self.samples
            .push(("_count", labels.to_owned(), count as f64));
    }

    pub fn write(&self, o: &mut String) {
        let kind = match self.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let _ = writeln!(
            o,
            "# HELP {} {}\n# TYPE {} {kind}",
            self.name, self.help, self.name
        );
        for (suffix, labels, v) in &self.samples {
            if labels.is_empty() {
                let _ = writeln!(o, "{}{suffix} {v}", self.name);
            } else {
                let _ = writeln!(o, "{}{suffix}{{{labels}}} {v}", self.name);
            }
        }
    }
}
