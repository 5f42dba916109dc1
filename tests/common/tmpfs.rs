//! A small tmpfs for a cache directory, to run a disk out of room (the tests run as root, as
//! the rest of the suite does for nix).

use std::path::{Path, PathBuf};

/// Unmounts the tmpfs when the test ends, however it ends.
pub struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// A tmpfs of `size` (`mount -o size=`: `2m`, …) at `dir`.
pub fn tmpfs(dir: &Path, size: &str) -> Mount {
    std::fs::create_dir_all(dir).unwrap();
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .status()
        .unwrap();
    assert!(st.success(), "cannot mount a tmpfs: the test needs root");
    Mount(dir.to_owned())
}
