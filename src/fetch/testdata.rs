//! Test data of the transcode and tap tests: a text-like NAR (compressible as real NARs of
//! text are) and its xz file, as an upstream would store it.

use std::io::Write;

/// The NAR magic followed by `lines` lines of text.
pub fn text_nar(lines: u32) -> Vec<u8> {
    let mut nar = crate::nix::compression::NAR_MAGIC.to_vec();
    for i in 0..lines {
        nar.extend_from_slice(format!("line {} of a text file\n", i % 977).as_bytes());
    }
    nar
}

/// `b` compressed with xz -6.
pub fn xz(b: &[u8]) -> Vec<u8> {
    let mut e = xz2::write::XzEncoder::new(Vec::new(), 6);
    e.write_all(b).unwrap();
    e.finish().unwrap()
}
