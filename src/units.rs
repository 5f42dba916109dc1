//! Human sizes (`50GiB`, `500MiB`) and durations (`30s`, `500ms`, `5m`) for flags and files.

use std::time::Duration;

use thiserror::Error;

/// A size or duration that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UnitError {
    #[error("cannot parse size {0:?}: expected a number and an optional unit, e.g. 50GiB, 10 GiB, 1.5GiB, 500MiB, 10G, 2GB, 1000000 (bytes)")]
    Size(String),
    #[error("cannot parse duration {0:?}: expected e.g. 500ms, 30s, 5m, 1h")]
    Duration(String),
}

fn split_number(s: &str) -> Option<(u64, &str)> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    Some((s[..end].parse().ok()?, &s[end..]))
}

/// The multiplier of a size unit. `K/M/G/T` and `KiB/MiB/GiB/TiB` are powers of 1024 (as in
/// nginx and Kubernetes `Gi`); `KB/MB/GB/TB` are powers of 1000; none (or `B`) is bytes.
fn size_unit(unit: &str) -> Option<u64> {
    Some(match unit {
        "" | "B" => 1,
        "K" | "KiB" | "Ki" => 1 << 10,
        "M" | "MiB" | "Mi" => 1 << 20,
        "G" | "GiB" | "Gi" => 1 << 30,
        "T" | "TiB" | "Ti" => 1 << 40,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        _ => return None,
    })
}

/// Parses a byte size: a number, optional spaces, an optional unit (see [`size_unit`]): `50GiB`,
/// `10 GiB`, `1.5GiB` (a fraction needs a unit larger than a byte; rounded down to a byte),
/// `10G`, `2GB`, `1000000`. The Helm chart's
/// `values.schema.json` accepts exactly this syntax (checked by the `chart_schema_agrees` test).
pub fn parse_size(s: &str) -> Result<u64, UnitError> {
    let err = || UnitError::Size(s.to_owned());
    let (whole, rest) = split_number(s).ok_or_else(err)?;
    let (frac, rest) = match rest.strip_prefix('.') {
        Some(after) => {
            let digits = after
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(after.len());
            // At most 12 fraction digits: enough for a byte of a TiB, and 10^12 fits the math.
            if digits == 0 || digits > 12 {
                return Err(err());
            }
            (Some(&after[..digits]), &after[digits..])
        }
        None => (None, rest),
    };
    let mult = size_unit(rest.trim_start_matches(' ')).ok_or_else(err)?;
    let whole = whole.checked_mul(mult).ok_or_else(err)?;
    let Some(frac) = frac else { return Ok(whole) };
    if mult == 1 {
        return Err(err()); // a fraction of a byte
    }
    let scale = 10u128.pow(frac.len() as u32);
    let part = frac.parse::<u128>().map_err(|_| err())? * u128::from(mult) / scale;
    whole.checked_add(part as u64).ok_or_else(err)
}

/// Bytes with a binary unit, e.g. `1.5 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let (mut v, mut i) = (n as f64, 0);
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// Parses a duration with a unit (`ms`, `s`, `m`, `h`); a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, UnitError> {
    let err = || UnitError::Duration(s.to_owned());
    let (n, unit) = split_number(s).ok_or_else(err)?;
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(err)?),
        "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(err)?),
        _ => return Err(err()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("50GiB"), Ok(50 << 30));
        assert_eq!(parse_size("500MiB"), Ok(500 << 20));
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("2GB"), Ok(2_000_000_000));
        assert_eq!(parse_size("123"), Ok(123));
        assert_eq!(parse_size("10 GiB"), Ok(10 << 30));
        assert_eq!(parse_size("10 GB"), Ok(10_000_000_000));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("0.5 K"), Ok(512));
        assert_eq!(parse_size("1.001KB"), Ok(1001));
        for bad in [
            "",
            "GiB",
            "-1",
            "1.5",
            "2.0",
            "1.0B",
            "1\tG",
            "1.",
            ".5G",
            "1,5G",
            " 1G",
            "1G ",
            "1 gib",
            "10 Gi B",
            "99999999999999TiB",
            "1.0000000000001G",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    /// The Helm chart's schema (what `helm install` accepts for `cache.maxSize` and friends)
    /// and this parser (what the pod then runs with) agree on every sample.
    #[test]
    fn chart_schema_agrees() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/helm/nixgate/values.schema.json"
        );
        let schema: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let pattern = schema["definitions"]["size"]["pattern"].as_str().unwrap();
        let re = regex::Regex::new(pattern).unwrap();
        let samples = [
            "10G",
            "10GiB",
            "10 GiB",
            "1.5GiB",
            "0.25 T",
            "50Gi",
            "2GB",
            "2 KB",
            "512K",
            "1000",
            "1B",
            "1 B",
            "7Mi",
            "7 MiB",
            "",
            "1.5",
            "1.5B",
            "2.0",
            "10 gib",
            "10GIB",
            "1,5G",
            ".5G",
            "5.G",
            "1e9",
            "-1",
            "10 Gi B",
            " 1G",
            "1G ",
            "1\tG",
            "1.0000000000001G",
            "10Pi",
            "lots",
        ];
        for s in samples {
            assert_eq!(re.is_match(s), parse_size(s).is_ok(), "{s:?}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("5 m").is_err());
    }
}
