//! Settings that are valid but probably not what the operator wants: `serve` logs each at WARN
//! when it starts and `check-config` prints them, from this one list.

use std::path::Path;

use super::Config;
use crate::units::human_bytes;

impl Config {
    /// What looks wrong in a configuration that is otherwise usable, one sentence each.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.uploads.token.is_some() && self.uploads.signing_key.is_none() {
            w.push(
                "uploads are on without --signing-key-file: only paths already signed by a \
                 --trusted-public-key are accepted, so `nix copy --to` of CI's own (unsigned) \
                 builds is refused (403)"
                    .into(),
            );
        }
        if let Some(o) = self.fetch.object_store.as_ref() {
            if o.credentials.is_none() {
                w.push(
                    "--object-store without credentials (no AWS_ACCESS_KEY_ID and \
                     AWS_SECRET_ACCESS_KEY, no credentials file profile): its requests are \
                     anonymous, so only a bucket that allows anonymous reads and writes works"
                        .into(),
                );
            }
        }
        if let Some(fs) = filesystem_size(&self.cache_dir) {
            if self.max_cache_size > fs {
                w.push(format!(
                    "--max-cache-size {} is larger than the file system of {} ({}): the disk \
                     fills before the LRU evicts",
                    human_bytes(self.max_cache_size),
                    self.cache_dir.display(),
                    human_bytes(fs)
                ));
            }
        }
        w
    }
}

/// The size of the file system holding `dir` (or its nearest existing ancestor).
fn filesystem_size(dir: &Path) -> Option<u64> {
    let existing = dir.ancestors().find(|d| d.exists())?;
    let st = rustix::fs::statvfs(existing).ok()?;
    Some(st.f_blocks.saturating_mul(st.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cap_beyond_the_disk_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let fs = filesystem_size(dir.path()).unwrap();
        assert!(fs > 0);
        assert_eq!(filesystem_size(&dir.path().join("not/yet")), Some(fs));
    }
}
