//! The shared fixture: store paths built by real Nix (`top` -> `dep`, incompressible blobs, one
//! large NAR) and a signed, xz-compressed `file://` binary cache holding them, with its key.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

pub const NIX_CONFIG: &str = "experimental-features = nix-command\nsandbox = false\nbuild-users-group =\nsubstituters =\nnarinfo-cache-negative-ttl = 0";

/// The store paths and signed cache every test uses.
pub struct Fixture {
    pub dir: PathBuf,
    pub cache: PathBuf,
    pub public_key: String,
    /// `top` references `dep`; `blob-*` are ~400 KB of incompressible data each.
    pub top: String,
    pub dep: String,
    pub blobs: Vec<String>,
    /// ~3 MB incompressible.
    pub big: String,
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.env("NIX_CONFIG", NIX_CONFIG).output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?}: {e}. The tests need Debian's nix-bin: run ci/test.sh, which installs it")
    });
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

const EXPR: &str = r#"
let mk = name: script: derivation { inherit name; system = builtins.currentSystem; builder = "/bin/sh"; PATH = "/usr/bin:/bin"; args = [ "-c" script ]; };
    dep = mk "nixgate-test-dep" "mkdir -p $out; echo dependency > $out/dep";
    top = mk "nixgate-test-top" "mkdir -p $out; echo ${dep} > $out/ref; echo top > $out/top";
    blob = i: mk "nixgate-test-blob-${toString i}" "head -c 400000 /dev/urandom > $out";
    big = mk "nixgate-test-big" "head -c 3000000 /dev/urandom > $out";
in { inherit dep top big; blob0 = blob 0; blob1 = blob 1; blob2 = blob 2; blob3 = blob 3; blob4 = blob 4; }
"#;

fn build_fixture() -> Fixture {
    let dir = std::env::temp_dir().join(format!("nixgate-fixture-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("t.nix"), EXPR).unwrap();
    let sk =
        run(Command::new("nix").args(["key", "generate-secret", "--key-name", "nixgate-test-1"]));
    std::fs::write(dir.join("sk"), &sk).unwrap();
    let public_key = run(Command::new("sh").arg("-c").arg(format!(
        "nix key convert-secret-to-public < {}",
        dir.join("sk").display()
    )));
    let attr = |a: &str| {
        run(Command::new("nix-build")
            .arg(dir.join("t.nix"))
            .args(["--no-out-link", "-A", a]))
    };
    let (dep, top, big) = (attr("dep"), attr("top"), attr("big"));
    let blobs: Vec<String> = (0..5).map(|i| attr(&format!("blob{i}"))).collect();
    let cache = dir.join("cache");
    let to = format!(
        "file://{}?secret-key={}&compression=xz",
        cache.display(),
        dir.join("sk").display()
    );
    let mut copy = Command::new("nix");
    copy.args(["copy", "--to", &to, &top, &big]).args(&blobs);
    run(&mut copy);
    Fixture {
        dir,
        cache,
        public_key,
        top,
        dep,
        blobs,
        big,
    }
}

/// The shared fixture (built once per test binary).
pub async fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    tokio::task::spawn_blocking(|| F.get_or_init(build_fixture))
        .await
        .unwrap()
}

impl Fixture {
    /// The 32-char hash part of a store path.
    pub fn hash(path: &str) -> &str {
        &path["/nix/store/".len()..][..32]
    }
    /// The narinfo text of a path.
    pub fn narinfo(&self, path: &str) -> String {
        std::fs::read_to_string(self.cache.join(format!("{}.narinfo", Self::hash(path)))).unwrap()
    }
    /// The NAR URL (relative) of a path, from its narinfo.
    pub fn nar_url(&self, path: &str) -> String {
        self.narinfo(path)
            .lines()
            .find_map(|l| l.strip_prefix("URL: "))
            .unwrap()
            .to_owned()
    }
}

/// A 12 MB incompressible store path (more than the kernel buffers for one connection) in
/// its own uncompressed cache `<fixture>/<name>-cache`, signed with the fixture's key, with
/// the fixture's blobs too when `with_blobs`. Returns the cache directory and the path.
pub async fn big_path_cache(
    f: &'static Fixture,
    name: &'static str,
    with_blobs: bool,
) -> (PathBuf, String) {
    tokio::task::spawn_blocking(move || {
        let run = |cmd: &mut Command| {
            let out = cmd.env("NIX_CONFIG", NIX_CONFIG).output().unwrap();
            assert!(
                out.status.success(),
                "{cmd:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        };
        let expr = f.dir.join(format!("{name}.nix"));
        std::fs::write(
            &expr,
            format!(
                r#"derivation {{ name = "nixgate-test-{name}"; system = builtins.currentSystem;
               builder = "/bin/sh"; PATH = "/usr/bin:/bin";
               args = [ "-c" "head -c 12000000 /dev/urandom > $out" ]; }}"#
            ),
        )
        .unwrap();
        let path = run(Command::new("nix-build").arg(&expr).arg("--no-out-link"));
        let cache = f.dir.join(format!("{name}-cache"));
        let to = format!(
            "file://{}?secret-key={}&compression=none",
            cache.display(),
            f.dir.join("sk").display()
        );
        let mut copy = Command::new("nix");
        copy.args(["copy", "--to", &to, &path]);
        if with_blobs {
            copy.args(&f.blobs);
        }
        run(&mut copy);
        (cache, path)
    })
    .await
    .unwrap()
}
