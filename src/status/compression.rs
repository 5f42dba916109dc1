//! The status document's `compression` section: what runners were sent NARs as
//! (`--serve-compression`, docs/ZSTD.md) and what recompressing them cost the appliance.

use serde::Serialize;

use crate::metrics::transcode::TranscodeTotals;

/// What runners got and what it cost.
#[derive(Debug, Serialize, PartialEq)]
pub struct CompressionRow {
    /// `--serve-compression`: `zstd`, `none` or `upstream`.
    pub mode: &'static str,
    /// Bytes of NAR responses by the compression of the file sent.
    pub served_bytes: ServedBy,
    /// Decoded NAR bytes recompressed, and the bytes of the files written from them.
    pub transcoded_nar_bytes: u64,
    pub transcoded_out_bytes: u64,
    /// transcoded_out_bytes / transcoded_nar_bytes; `null` before any transcode.
    pub ratio: Option<f64>,
    /// Thread CPU time of the transcodes, and per GB (10⁹ bytes) of NAR.
    pub cpu_seconds: f64,
    pub cpu_seconds_per_gb: Option<f64>,
    /// Transcodes by outcome (`nixgate_transcodes_total`).
    pub stored: u64,
    pub failed: u64,
    pub skipped: u64,
    /// Made live for one runner, not stored (the cache could not store it).
    pub relayed: u64,
}

/// Bytes served by compression.
#[derive(Debug, Serialize, PartialEq)]
pub struct ServedBy {
    pub zstd: u64,
    pub xz: u64,
    pub none: u64,
    pub other: u64,
}

impl CompressionRow {
    pub fn new(mode: &'static str, t: TranscodeTotals) -> Self {
        let nar = t.nar_bytes;
        CompressionRow {
            mode,
            served_bytes: ServedBy {
                zstd: t.served_zstd,
                xz: t.served_xz,
                none: t.served_none,
                other: t.served_other,
            },
            transcoded_nar_bytes: nar,
            transcoded_out_bytes: t.out_bytes,
            ratio: (nar > 0).then(|| t.out_bytes as f64 / nar as f64),
            cpu_seconds: t.cpu_seconds,
            cpu_seconds_per_gb: (nar > 0).then(|| t.cpu_seconds / (nar as f64 / 1e9)),
            stored: t.stored,
            failed: t.failed,
            skipped: t.skipped,
            relayed: t.relayed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_per_gb_and_none_before_any_transcode() {
        let empty = CompressionRow::new("zstd", TranscodeTotals::default());
        assert_eq!((empty.ratio, empty.cpu_seconds_per_gb), (None, None));
        let t = TranscodeTotals {
            nar_bytes: 2_000_000_000,
            out_bytes: 500_000_000,
            cpu_seconds: 51.0,
            stored: 3,
            served_zstd: 7,
            served_xz: 1,
            ..Default::default()
        };
        let row = CompressionRow::new("zstd", t);
        assert_eq!(row.ratio, Some(0.25));
        assert_eq!(row.cpu_seconds_per_gb, Some(25.5));
        assert_eq!(
            (row.stored, row.served_bytes.zstd, row.served_bytes.xz),
            (3, 7, 1)
        );
    }
}
