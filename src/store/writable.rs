//! The one test of a cache directory's health: can a file be created, written and removed in
//! it. Startup validation (`--cache-dir`) and `/readyz` ask the same question.

use std::io;
use std::path::Path;

use thiserror::Error;

/// Why a directory cannot hold the cache: the step that failed and the OS error.
#[derive(Debug, Error)]
pub enum NotWritable {
    #[error("cannot create: {0}")]
    Create(#[source] io::Error),
    #[error("not writable: {0}")]
    Write(#[source] io::Error),
    #[error("cannot remove files: {0}")]
    Remove(#[source] io::Error),
}

/// Creates `dir` if needed and proves a file can be written in it.
pub fn check_writable(dir: &Path) -> Result<(), NotWritable> {
    std::fs::create_dir_all(dir).map_err(NotWritable::Create)?;
    let probe = dir.join(format!(".nixgate-write-probe-{}", std::process::id()));
    std::fs::write(&probe, b"ok").map_err(NotWritable::Write)?;
    std::fs::remove_file(&probe).map_err(NotWritable::Remove)
}
