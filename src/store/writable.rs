//! The one test of a cache directory's health: can a file be created, written and removed in
//! it. Startup validation (`--cache-dir`) and `/readyz` ask the same question.

use std::path::Path;

/// Creates `dir` if needed and proves a file can be written in it.
pub fn check_writable(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create: {e}"))?;
    let probe = dir.join(format!(".nixgate-write-probe-{}", std::process::id()));
    std::fs::write(&probe, b"ok").map_err(|e| format!("not writable: {e}"))?;
    std::fs::remove_file(&probe).map_err(|e| format!("cannot remove files: {e}"))
}
