//! Human sizes (`50GiB`, `500MiB`) and durations (`30s`, `500ms`, `5m`) for flags and files.

use std::time::Duration;

use thiserror::Error;

/// A size or duration that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UnitError {
    #[error("cannot parse size {0:?}: expected a number and a unit without spaces, e.g. 50GiB, 500MiB, 10G, 1000000 (bytes)")]
    Size(String),
    #[error("cannot parse duration {0:?}: expected e.g. 500ms, 30s, 5m, 1h")]
    Duration(String),
}

fn split_number(s: &str) -> Option<(u64, &str)> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    Some((s[..end].parse().ok()?, &s[end..]))
}

/// Parses a byte size. `K/M/G/T` and `KiB/MiB/GiB/TiB` are powers of 1024 (as in nginx and
/// Kubernetes `Gi`); `KB/MB/GB/TB` are powers of 1000. A bare number is bytes.
pub fn parse_size(s: &str) -> Result<u64, UnitError> {
    let err = || UnitError::Size(s.to_owned());
    let (n, unit) = split_number(s).ok_or_else(err)?;
    let mult: u64 = match unit {
        "" | "B" => 1,
        "K" | "KiB" | "Ki" => 1 << 10,
        "M" | "MiB" | "Mi" => 1 << 20,
        "G" | "GiB" | "Gi" => 1 << 30,
        "T" | "TiB" | "Ti" => 1 << 40,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        _ => return Err(err()),
    };
    n.checked_mul(mult).ok_or_else(err)
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
        for bad in ["10 GB", "", "GiB", "1.5GiB", "-1", "99999999999999TiB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
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
