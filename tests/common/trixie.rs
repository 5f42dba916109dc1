//! A current Nix beside the suite's Debian 2.8: Debian trixie's `nix-bin` (2.26) in a
//! `debootstrap` chroot under the repository's `target/nix-trixie`, made once (under a file
//! lock, so parallel test binaries don't race) and reused while present. The chroot shares the
//! host's network, so it reaches an appliance on 127.0.0.1; it has its own `/nix/store`, so
//! what it builds is unknown to the host's Nix (a real substitution when the host pulls it).
//!
//! `nix` runs in a private mount namespace (`unshare --mount`) where `proc` and `/dev` are
//! mounted for it: the mounts die with the process, so no test leaves a mount behind and the
//! chroot can be deleted like any directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use super::fixture::NIX_CONFIG;

/// Debian's archive, as the machine's own apt sources name it.
const MIRROR: &str = "http://deb.debian.org/debian";
/// `libdbi-perl` provides `perl-dbdabi-94`, a virtual package `nix-bin` needs through
/// `libdbd-sqlite3-perl` and that debootstrap's resolver does not pick by itself.
const INCLUDE: &str = "nix-bin,ca-certificates,libdbi-perl";
/// Written last: a chroot without it is a broken earlier attempt, made again.
const READY: &str = ".nixgate-ready";

/// The chroot with a current Nix.
pub struct Trixie {
    pub root: PathBuf,
}

/// The chroot, made on first use by any test binary (about a minute) and reused after.
pub fn trixie() -> &'static Trixie {
    static T: OnceLock<Trixie> = OnceLock::new();
    T.get_or_init(|| {
        let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .expect("target/tmp is under target/")
            .to_owned();
        let root = target.join("nix-trixie");
        let lock = std::fs::File::create(target.join("nix-trixie.lock")).unwrap();
        // Held until this function returns: another test binary waits here, then reuses it.
        lock.lock().expect("lock target/nix-trixie.lock");
        if !root.join(READY).exists() {
            make(&root);
        }
        Trixie { root }
    })
}

fn make(root: &Path) {
    let found = Command::new("sh")
        .args(["-c", "command -v debootstrap"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "debootstrap is missing: the upload-outage tests need it to make a chroot with a \
         current Nix (run ci/test.sh, which installs it, or apt-get install debootstrap)"
    );
    let partial = root.with_extension("partial");
    // Earlier attempts ran in a private mount namespace, so nothing is mounted in there.
    for dir in [&partial, &root.to_path_buf()] {
        if dir.exists() {
            std::fs::remove_dir_all(dir).unwrap();
        }
    }
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "debootstrap"])
        .args([
            "--variant=minbase",
            &format!("--include={INCLUDE}"),
            "trixie",
        ])
        .arg(&partial)
        .arg(MIRROR)
        .output()
        .expect("run debootstrap");
    assert!(
        out.status.success(),
        "debootstrap of trixie failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    std::fs::write(partial.join(READY), "").unwrap();
    std::fs::rename(&partial, root).unwrap();
}

fn unique() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

impl Trixie {
    /// A fresh directory inside the chroot: its host path and its path as `nix` there sees it.
    pub fn workdir(&self, tag: &str) -> (PathBuf, String) {
        let inside = format!("/tmp/nixgate-{}-{tag}-{}", std::process::id(), unique());
        let host = self.root.join(inside.trim_start_matches('/'));
        let _ = std::fs::remove_dir_all(&host);
        std::fs::create_dir_all(&host).unwrap();
        (host, inside)
    }

    /// Runs `prog` (`nix`, `nix-build`, ...) inside the chroot with the suite's Nix settings
    /// and a fresh narinfo cache (so nothing a Nix remembered leaks between tests).
    pub async fn run(&self, prog: &str, args: &[&str]) -> Output {
        let (_, xdg) = self.workdir("xdg");
        let script = r#"mount -t proc proc "$0/proc" && mount --rbind /dev "$0/dev" && exec chroot "$0" "$@""#;
        tokio::process::Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", script])
            .arg(&self.root)
            .arg(prog)
            .args(args)
            .env("NIX_CONFIG", NIX_CONFIG)
            .env("XDG_CACHE_HOME", xdg)
            .env("HOME", "/root")
            .env("PATH", "/usr/bin:/bin:/usr/sbin:/sbin")
            .output()
            .await
            .expect("unshare and chroot run")
    }

    /// Like [`Trixie::run`], asserting success; its trimmed stdout.
    pub async fn ok(&self, prog: &str, args: &[&str]) -> String {
        let out = self.run(prog, args).await;
        assert!(
            out.status.success(),
            "{prog} {args:?} in the trixie chroot failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// `nix --version`'s version number.
    pub async fn version(&self) -> String {
        let v = self.ok("nix", &["--version"]).await;
        v.rsplit(' ').next().unwrap().to_owned()
    }
}
