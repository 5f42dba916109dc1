//! Nix's base-32 encoding ("nix32"), as used in store paths and `sha256:` hashes.
//!
//! Example: the 20-byte store-path hash of
//! `/nix/store/6dyjazmc27x71a77v1pcbi549rpk5wh6-nixgate-vec-top` is the 32 characters
//! `6dyjazmc27x71a77v1pcbi549rpk5wh6`; a sha256 is 52 characters.
//!
//! It is *not* RFC 4648 base32: the alphabet omits `e o t u`, and the bytes are taken
//! least-significant first while the most significant character is printed first
//! (`src/libutil/base-nix-32.cc` in the Nix sources).

use thiserror::Error;

const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Why a string is not valid nix32 for the expected length.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Nix32Error {
    /// The string has the wrong number of characters for the expected byte length.
    #[error("expected {expected} nix32 characters, got {got}")]
    Length { expected: usize, got: usize },
    /// A character outside the nix32 alphabet.
    #[error("invalid nix32 character {0:?}")]
    Char(char),
    /// The top bits of the first character do not fit in the byte length.
    #[error("nix32 value overflows {0} bytes")]
    Overflow(usize),
}

/// Number of nix32 characters that encode `n` bytes.
pub const fn encoded_len(n: usize) -> usize {
    if n == 0 {
        0
    } else {
        (n * 8 - 1) / 5 + 1
    }
}

/// Encodes bytes as nix32.
pub fn encode(bytes: &[u8]) -> String {
    let len = encoded_len(bytes.len());
    let mut out = String::with_capacity(len);
    for n in (0..len).rev() {
        let b = n * 5;
        let (i, j) = (b / 8, b % 8);
        let lo = u16::from(bytes[i]) >> j;
        let hi = bytes.get(i + 1).map_or(0, |&x| u16::from(x) << (8 - j));
        out.push(ALPHABET[usize::from((lo | hi) & 31)] as char);
    }
    out
}

fn digit(c: u8) -> Option<u8> {
    ALPHABET.iter().position(|&a| a == c).map(|p| p as u8)
}

/// Decodes nix32 into exactly `N` bytes.
pub fn decode<const N: usize>(s: &str) -> Result<[u8; N], Nix32Error> {
    let expected = encoded_len(N);
    if s.len() != expected {
        return Err(Nix32Error::Length {
            expected,
            got: s.len(),
        });
    }
    let mut out = [0u8; N];
    for (n, c) in s.bytes().rev().enumerate() {
        let d = u16::from(digit(c).ok_or(Nix32Error::Char(c as char))?);
        let b = n * 5;
        let (i, j) = (b / 8, b % 8);
        out[i] |= (d << j) as u8;
        let carry = (d >> (8 - j)) as u8;
        if i + 1 < N {
            out[i + 1] |= carry;
        } else if carry != 0 {
            return Err(Nix32Error::Overflow(N));
        }
    }
    Ok(out)
}

/// True when `s` is exactly `len` characters of the nix32 alphabet (no allocation).
pub fn is_nix32(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|c| digit(c).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// From real `nix`: `sha256sum` of a NAR file vs. the nix32 name `nix copy` gave it.
    const FILE_HEX: &str = "b268d4a2a27a778b3dacd7a4cc235dd1463d3c45d3b89ff8e95b23a48cd42ba8";
    const FILE_NIX32: &str = "1a1bsj6a88svx7w9zf6k8ly3sinibliwr96pmhyqnxvslaid8s5j";

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn matches_real_nix_vector() {
        assert_eq!(encode(&hex(FILE_HEX)), FILE_NIX32);
        assert_eq!(decode::<32>(FILE_NIX32).unwrap().to_vec(), hex(FILE_HEX));
    }

    #[test]
    fn lengths() {
        assert_eq!(encoded_len(20), 32);
        assert_eq!(encoded_len(32), 52);
        // `nix hash to-base16 --type sha1 0000000000000000000000000000000z` = 1f00…
        let mut sha1 = [0u8; 20];
        sha1[0] = 0x1f;
        assert_eq!(encode(&sha1), "0000000000000000000000000000000z");
    }

    #[test]
    fn round_trips_and_rejects() {
        let bytes: [u8; 20] = core::array::from_fn(|i| (i * 37 + 11) as u8);
        assert_eq!(decode::<20>(&encode(&bytes)).unwrap(), bytes);
        assert!(matches!(
            decode::<20>("e000000000000000000000000000000z"),
            Err(Nix32Error::Char('e'))
        ));
        assert!(matches!(
            decode::<20>("abc"),
            Err(Nix32Error::Length { .. })
        ));
        // 32 chars carry 160 bits exactly for 20 bytes; 52 chars carry 260 bits for 32 bytes,
        // so a top character above 0xf overflows a sha256.
        assert_eq!(
            decode::<32>(&format!("z{}", &FILE_NIX32[1..])),
            Err(Nix32Error::Overflow(32))
        );
        assert!(is_nix32(FILE_NIX32, 52));
        assert!(!is_nix32("../../etc/passwd", 16));
    }
}
