//! Tests of the file and NAR checks: every decodable compression, forged and truncated
//! bodies, bodies that are no NAR.

use std::io::Write;

use sha2::Digest;

use super::*;
use crate::nix::compression::NAR_MAGIC;

fn nar_bytes() -> Vec<u8> {
    // A NAR header, then any bytes, long enough to span chunks.
    let mut nar = NAR_MAGIC.to_vec();
    nar.extend((0..200_000u32).flat_map(|i| i.to_le_bytes()));
    nar
}

fn compress(c: Compression, data: &[u8]) -> Vec<u8> {
    match c {
        Compression::None => data.to_vec(),
        Compression::Xz => {
            let mut e = xz2::write::XzEncoder::new(Vec::new(), 6);
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        Compression::Zstd => zstd::encode_all(data, 3).unwrap(),
        Compression::Bzip2 => {
            let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        Compression::Lz4 => {
            let mut e = lz4_flex::frame::FrameEncoder::new(Vec::new());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        _ => unreachable!(),
    }
}

const DECODABLE: [Compression; 6] = [
    Compression::Lz4,
    Compression::None,
    Compression::Xz,
    Compression::Zstd,
    Compression::Bzip2,
    Compression::Gzip,
];

fn check(c: Compression, file: &[u8], hash: Sha256, size: u64) -> Result<(), VerifyError> {
    check_with(c, file, Some((hash, size)))
}

fn check_with(
    c: Compression,
    file: &[u8],
    signed: Option<(Sha256, u64)>,
) -> Result<(), VerifyError> {
    let mut n = NarCheck::new(c, signed).unwrap();
    for chunk in file.chunks(7_777) {
        n.update(chunk)?;
    }
    n.finish()
}

#[test]
fn nar_hash_after_decompression() {
    let nar = nar_bytes();
    let hash = Sha256(sha2::Sha256::digest(&nar).into());
    let size = nar.len() as u64;
    for c in DECODABLE {
        let file = compress(c, &nar);
        check(c, &file, hash, size).unwrap_or_else(|e| panic!("{c:?}: {e}"));

        let mut other = nar.clone();
        other[12_345] ^= 1;
        let forged = compress(c, &other);
        assert!(check(c, &forged, hash, size).is_err(), "{c:?} forged");

        let mut longer = nar.clone();
        longer.push(0);
        assert!(
            check(c, &compress(c, &longer), hash, size).is_err(),
            "{c:?} longer"
        );
        assert!(
            check(c, &file[..file.len() / 2], hash, size).is_err(),
            "{c:?} truncated"
        );
    }
    for c in [Compression::Lzip, Compression::Other] {
        assert_eq!(
            NarCheck::signed(c, hash, size).err(),
            Some(VerifyError::Uncheckable(c))
        );
    }
}

#[test]
fn every_nar_begins_with_its_header() {
    let nar = nar_bytes();
    let hash = Sha256(sha2::Sha256::digest(&nar).into());
    let mut html = b"<html>internal page</html>".to_vec();
    html.resize(nar.len(), b' ');
    let html_hash = Sha256(sha2::Sha256::digest(&html).into());
    for c in DECODABLE {
        // Signed or not, a body that is no NAR is refused, as soon as its start decodes.
        let file = compress(c, &html);
        let signed = Some((html_hash, html.len() as u64));
        assert_eq!(
            check_with(c, &file, signed),
            Err(VerifyError::NotANar),
            "{c:?}"
        );
        let mut n = NarCheck::new(c, None).unwrap();
        let first = n.update(&file);
        assert!(first.is_err() || n.finish().is_err(), "{c:?} unsigned");
        // One chunk is enough to see the header (decoders must not sit on their output).
        let mut n = NarCheck::new(c, None).unwrap();
        n.update(&compress(c, &nar)).unwrap();
        assert!(n.header_seen(), "{c:?} after one chunk");
        // A real NAR passes the header check without a narinfo, and with one.
        let file = compress(c, &nar);
        check_with(c, &file, None).unwrap_or_else(|e| panic!("{c:?}: {e}"));
        let mut whole = NarCheck::new(c, None).unwrap();
        whole.update(&file).unwrap();
        whole
            .finish()
            .unwrap_or_else(|e| panic!("{c:?} in one chunk: {e}"));
        check(c, &file, hash, nar.len() as u64).unwrap();
    }
    let mut n = NarCheck::new(Compression::None, None).unwrap();
    n.update(&NAR_MAGIC[..20]).unwrap();
    assert!(!n.header_seen());
    n.update(&NAR_MAGIC[20..]).unwrap();
    assert!(n.header_seen());
}

#[test]
fn file_hash_size_and_magic() {
    let data = compress(Compression::Xz, &nar_bytes());
    let fh = Sha256(sha2::Sha256::digest(&data).into());
    let expect = FileExpect {
        file_hash: Some(fh),
        file_size: Some(data.len() as u64),
        max_size: None,
        compression: Some(Compression::Xz),
    };
    let mut f = FileCheck::new(expect);
    f.update(&data).unwrap();
    assert_eq!(f.finish().unwrap(), data.len() as u64);

    let mut f = FileCheck::new(FileExpect {
        compression: Some(Compression::Zstd),
        ..expect
    });
    f.update(&data).unwrap();
    assert_eq!(f.finish(), Err(VerifyError::Magic(Compression::Zstd)));

    let mut f = FileCheck::new(FileExpect {
        file_size: Some(10),
        ..expect
    });
    assert_eq!(f.update(&data), Err(VerifyError::FileTooLong(10)));

    let mut f = FileCheck::new(FileExpect {
        file_hash: None,
        file_size: None,
        max_size: Some(10),
        ..expect
    });
    assert_eq!(f.update(&data), Err(VerifyError::OverBound(10)));
}

#[test]
fn a_zstd_window_over_the_limit_is_refused_before_it_is_allocated() {
    let nar = nar_bytes();
    let hash = Sha256(sha2::Sha256::digest(&nar).into());
    // Streamed with no pledged size: the frame declares the whole 128 MiB window.
    let mut e = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    e.window_log(27).unwrap();
    e.write_all(&nar).unwrap();
    let wide = e.finish().unwrap();
    let check = || NarCheck::signed(Compression::Zstd, hash, nar.len() as u64).unwrap();
    let mut limited = check().limit_window(25).unwrap();
    assert!(matches!(limited.update(&wide), Err(VerifyError::Decode(_))));
    let mut unlimited = check();
    unlimited.update(&wide).unwrap();
    unlimited.finish().unwrap();
    // nixgate's own files (window 2^23, size pledged) pass the limit.
    let ours = zstd::encode_all(&nar[..], 3).unwrap();
    let mut limited = check().limit_window(25).unwrap();
    limited.update(&ours).unwrap();
    limited.finish().unwrap();
}

#[test]
fn a_zstd_stream_cut_short_or_with_trailing_junk_is_refused() {
    let nar = nar_bytes();
    let hash = Sha256(sha2::Sha256::digest(&nar).into());
    let whole = zstd::encode_all(&nar[..], 3).unwrap();
    let check = |bytes: &[u8]| {
        let mut c = NarCheck::signed(Compression::Zstd, hash, nar.len() as u64).unwrap();
        c.update(bytes).and_then(|()| c.finish())
    };
    check(&whole).unwrap();
    // Every NAR byte comes out of both, yet neither is a whole zstd file.
    let cut = &whole[..whole.len() - 4];
    assert!(
        matches!(check(cut), Err(VerifyError::Decode(_))),
        "no checksum"
    );
    let mut junk = whole.clone();
    junk.extend_from_slice(&[0x28, 0xb5, 0x2f]);
    assert!(
        matches!(check(&junk), Err(VerifyError::Decode(_))),
        "a partial frame after it"
    );
}
