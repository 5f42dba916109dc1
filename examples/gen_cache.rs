//! Writes a synthetic signed binary cache for the benchmark:
//! `gen_cache DIR NARINFOS SMALL_NAR_BYTES BIG_NAR_MIB...`.
//!
//! Narinfos are real (signed with a fixed key, fingerprint as Nix computes it); NAR files are
//! real NARs (one regular file of pseudo-random bytes) compressed with zstd (with
//! `GEN_COMPRESSION=xz`: xz, as most upstreams, so that nixgate serves Nix clients its own zstd
//! file), so every check nixgate makes holds (FileHash, FileSize, the NAR header, and
//! NarHash/NarSize of the decompressed bytes).
//! Prints nothing; writes DIR/key.pub, DIR/narinfos.txt (request paths) and DIR/big.txt
//! (`<narinfo path> <nar path>` per big NAR).

use std::fmt::Write as _;
use std::io::Read as _;
use std::path::Path;

use nixgate::nix::hash::Sha256;
use nixgate::nix::narinfo::NarInfo;
use nixgate::nix::nix32;
use nixgate::nix::signature::SecretKey;

struct Rng(u64);
impl Rng {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf.iter_mut() {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            *b = self.0 as u8;
        }
    }
}

/// A NAR string: its length as u64 LE, the bytes, zeros to a multiple of 8.
fn nar_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s);
    out.resize(out.len().next_multiple_of(8), 0);
}

/// The NAR of one regular file holding `contents` (what `nix-store --dump` writes for it).
fn nar_of_file(contents: &[u8]) -> Vec<u8> {
    let mut nar = Vec::with_capacity(contents.len() + 128);
    for s in [
        &b"nix-archive-1"[..],
        b"(",
        b"type",
        b"regular",
        b"contents",
    ] {
        nar_str(&mut nar, s);
    }
    nar_str(&mut nar, contents);
    nar_str(&mut nar, b")");
    nar
}

fn write_path(
    dir: &Path,
    key: &SecretKey,
    i: usize,
    nar_bytes: usize,
    rng: &mut Rng,
    xz: bool,
) -> (String, String) {
    let mut h = [0u8; 20];
    rng.fill(&mut h);
    let hash = nix32::encode(&h);
    let mut contents = vec![0u8; nar_bytes.saturating_sub(120)];
    rng.fill(&mut contents);
    let plain = nar_of_file(&contents);
    let (nar, ext, compression) = match xz {
        true => {
            let mut out = Vec::new();
            xz2::read::XzEncoder::new(&plain[..], 6)
                .read_to_end(&mut out)
                .unwrap();
            (out, "xz", "xz")
        }
        false => (zstd::encode_all(&plain[..], 1).unwrap(), "zst", "zstd"),
    };
    let fh = Sha256::digest(&nar);
    let nar_name = format!("nar/{}.nar.{ext}", fh.to_nix32());
    std::fs::write(dir.join(&nar_name), &nar).unwrap();
    let text = format!(
        "StorePath: /nix/store/{hash}-bench-{i}\nURL: {nar_name}\nCompression: {compression}\nFileHash: {fh}\nFileSize: {}\nNarHash: {}\nNarSize: {}\nReferences: \n",
        nar.len(),
        Sha256::digest(&plain),
        plain.len()
    );
    let mut ni: NarInfo = text.parse().unwrap();
    ni.sigs.push(key.sign(&ni.fingerprint("/nix/store")));
    std::fs::write(dir.join(format!("{hash}.narinfo")), ni.to_string()).unwrap();
    (format!("/{hash}.narinfo"), format!("/{nar_name}"))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = Path::new(&args[1]);
    let count: usize = args[2].parse().unwrap();
    let small: usize = args[3].parse().unwrap();
    let xz = std::env::var("GEN_COMPRESSION").is_ok_and(|c| c == "xz");
    std::fs::create_dir_all(dir.join("nar")).unwrap();
    std::fs::write(
        dir.join("nix-cache-info"),
        "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n",
    )
    .unwrap();
    let key = SecretKey::from_seed("bench-1", [7; 32]);
    std::fs::write(dir.join("key.pub"), key.public().to_string()).unwrap();
    let mut rng = Rng(0x9e3779b97f4a7c15);
    let mut list = String::new();
    for i in 0..count {
        let (ni, _) = write_path(dir, &key, i, small, &mut rng, xz);
        writeln!(list, "{ni}").unwrap();
    }
    std::fs::write(dir.join("narinfos.txt"), list).unwrap();
    let mut big = String::new();
    for (j, mib) in args[4..].iter().enumerate() {
        let (ni, nar) = write_path(
            dir,
            &key,
            count + j,
            mib.parse::<usize>().unwrap() << 20,
            &mut rng,
            xz,
        );
        writeln!(big, "{ni} {nar}").unwrap();
    }
    std::fs::write(dir.join("big.txt"), big).unwrap();
}
