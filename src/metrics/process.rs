//! The standard `process_*` metrics (as the Prometheus client libraries export them), read
//! from `/proc/self` when `/metrics` is scraped: CPU seconds, resident and virtual memory, open
//! and maximum file descriptors, start time. Parsing is pure; reading is best effort (a
//! missing file drops its samples, never the scrape).

use std::time::{SystemTime, UNIX_EPOCH};

/// What `/proc/self` says about this process.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub open_fds: u64,
    pub max_fds: Option<u64>,
    pub start_time_seconds: f64,
}

/// Clock ticks per second of `/proc/*/stat` times (`sysconf(_SC_CLK_TCK)`, 100 on Linux).
const TICKS: f64 = 100.0;
const PAGE: u64 = 4096;

/// The fields of `/proc/self/stat` after the command name: (utime+stime ticks, starttime
/// ticks since boot, vsize bytes, rss pages).
pub fn parse_stat(stat: &str) -> Option<(u64, u64, u64, u64)> {
    // The command name is in parentheses and may hold spaces: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime 15, starttime 22, vsize 23, rss 24.
    let at = |n: usize| f.get(n - 3)?.parse::<u64>().ok();
    Some((at(14)? + at(15)?, at(22)?, at(23)?, at(24)?))
}

/// `btime` (boot time, Unix seconds) from `/proc/stat`.
pub fn parse_btime(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// The soft limit of "Max open files" from `/proc/self/limits`.
pub fn parse_max_fds(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

impl ProcessStats {
    /// Reads this process's figures (zeros where `/proc` is not readable).
    pub fn read() -> ProcessStats {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let mut s = ProcessStats::default();
        if let Some((cpu, start, vsize, rss)) = parse_stat(&read("/proc/self/stat")) {
            s.cpu_seconds = cpu as f64 / TICKS;
            s.virtual_bytes = vsize;
            s.resident_bytes = rss * PAGE;
            let boot = parse_btime(&read("/proc/stat")).map(|b| b as f64);
            s.start_time_seconds = boot.map_or_else(now, |b| b + start as f64 / TICKS);
        }
        s.open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
        s.max_fds = parse_max_fds(&read("/proc/self/limits"));
        s
    }
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc() {
        let stat = "1234 (nix gate) S 1 1234 1234 0 -1 4194560 5000 0 0 0 250 50 0 0 20 0 \
                    9 0 123456 987654321 2048 18446744073709551615";
        assert_eq!(parse_stat(stat), Some((300, 123456, 987654321, 2048)));
        assert_eq!(
            parse_btime("cpu 1 2\nbtime 1700000000\nprocesses 5\n"),
            Some(1700000000)
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            65536                524288               files\n";
        assert_eq!(parse_max_fds(limits), Some(65536));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn reads_this_process() {
        let s = ProcessStats::read();
        assert!(s.resident_bytes > 0 && s.virtual_bytes >= s.resident_bytes);
        assert!(s.open_fds > 0 && s.max_fds.is_some());
        assert!(s.start_time_seconds > 1.0e9 && s.start_time_seconds <= now() + 1.0);
    }
}
