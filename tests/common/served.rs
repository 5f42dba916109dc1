//! What a zstd-capable runner sends and gets (issue 22): its User-Agent, narinfo fields, and
//! the NAR a fixture path's xz file holds, to compare served bytes with.

use std::io::Read;

use super::*;

/// What Debian's Nix 2.8 sends (docs/ZSTD.md §6).
pub const NIX_UA: &[(&str, &str)] = &[("user-agent", "curl/7.85.0 Nix/2.8.0")];

/// The value of a narinfo field.
pub fn narinfo_field<'a>(narinfo: &'a str, name: &str) -> Option<&'a str> {
    narinfo
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
}

/// The NAR of `path`: the fixture's xz file, decoded.
pub fn decoded_nar(f: &Fixture, path: &str) -> Vec<u8> {
    let xz = std::fs::read(f.cache.join(f.nar_url(path))).unwrap();
    let mut nar = Vec::new();
    xz2::read::XzDecoder::new_multi_decoder(&xz[..])
        .read_to_end(&mut nar)
        .unwrap();
    nar
}
