//! The `Compression:` field of a narinfo, the NAR file extension Nix pairs with it, and the
//! magic bytes that tell whether a file really is what the field says.
//!
//! Absent or empty `Compression` means `bzip2` (`src/libstore/nar-info.cc`). The extension map
//! is Nix's own writer's (`binary-cache-store.cc`): `xz → .xz`, `bzip2 → .bz2`, `zstd → .zst`,
//! `lzip → .lzip`, `lz4 → .lz4`, `br → .br`, anything else (including `none`) no suffix. Nix
//! decodes everything but `none`/`br` through libarchive auto-detection and fails with "input
//! compression not recognized" when the bytes do not match (ncps#1398), hence the magic check.

/// A compression method named by a narinfo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Xz,
    Bzip2,
    Zstd,
    Gzip,
    Lzip,
    Lz4,
    Brotli,
    /// A name Nix knows (e.g. `lzma`, `lzop`) whose bytes we do not check.
    Other,
}

/// The first 21 bytes of every NAR: the 8-byte length of the string `nix-archive-1`, then it
/// (`src/libutil/archive.cc`, `narVersionMagic1`).
pub const NAR_MAGIC: &[u8] = b"\x0d\0\0\0\0\0\0\0nix-archive-1";

/// Every NAR extension Nix may use (with dot, or `""`).
pub const NAR_EXTENSIONS: [&str; 7] = ["", ".xz", ".bz2", ".zst", ".lzip", ".lz4", ".br"];

impl Compression {
    /// Interprets a narinfo `Compression` value (`None` = field absent).
    pub fn from_field(v: Option<&str>) -> Self {
        match v.unwrap_or("") {
            "" | "bzip2" => Self::Bzip2,
            "none" => Self::None,
            "xz" => Self::Xz,
            "zstd" => Self::Zstd,
            "gzip" => Self::Gzip,
            "lzip" => Self::Lzip,
            "lz4" => Self::Lz4,
            "br" => Self::Brotli,
            _ => Self::Other,
        }
    }

    /// The NAR file extension, with its dot, or `""`.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Xz => ".xz",
            Self::Bzip2 => ".bz2",
            Self::Zstd => ".zst",
            Self::Lzip => ".lzip",
            Self::Lz4 => ".lz4",
            Self::Brotli => ".br",
            Self::None | Self::Gzip | Self::Other => "",
        }
    }

    /// The static form of a NAR extension Nix may use (with dot, or `""`), if known.
    pub fn known_extension(ext: &str) -> Option<&'static str> {
        NAR_EXTENSIONS.into_iter().find(|e| *e == ext)
    }

    /// The compression a NAR extension implies, when it implies exactly one.
    pub fn from_extension(ext: &str) -> Option<Self> {
        Some(match ext {
            ".xz" => Self::Xz,
            ".bz2" => Self::Bzip2,
            ".zst" => Self::Zstd,
            ".lzip" => Self::Lzip,
            ".lz4" => Self::Lz4,
            ".br" => Self::Brotli,
            _ => return None,
        })
    }

    /// How many leading bytes [`Self::matches_magic`] needs.
    pub const MAGIC_LEN: usize = 21;

    /// True when `head` (the first bytes of a file, at least [`Self::MAGIC_LEN`] unless the
    /// file is shorter) is plausibly compressed with this method. Brotli has no magic.
    pub fn matches_magic(self, head: &[u8]) -> bool {
        match self {
            Self::None => head.get(..NAR_MAGIC.len()) == Some(NAR_MAGIC),
            Self::Xz => head.starts_with(b"\xfd7zXZ\0"),
            Self::Bzip2 => head.starts_with(b"BZh"),
            Self::Zstd => head.starts_with(b"\x28\xb5\x2f\xfd"),
            Self::Gzip => head.starts_with(b"\x1f\x8b"),
            Self::Lzip => head.starts_with(b"LZIP"),
            Self::Lz4 => head.starts_with(b"\x04\x22\x4d\x18"),
            Self::Brotli | Self::Other => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_means_bzip2_and_extensions_follow_nix() {
        assert_eq!(Compression::from_field(None), Compression::Bzip2);
        assert_eq!(Compression::from_field(Some("")).extension(), ".bz2");
        assert_eq!(Compression::from_field(Some("xz")).extension(), ".xz");
        assert_eq!(Compression::from_field(Some("zstd")).extension(), ".zst");
        assert_eq!(Compression::from_field(Some("none")).extension(), "");
        assert_eq!(Compression::from_field(Some("gzip")).extension(), "");
    }

    #[test]
    fn magic() {
        // First bytes of a real `nix copy --to file://…?compression=xz` NAR.
        assert!(Compression::Xz.matches_magic(b"\xfd7zXZ\0\0\x04\xe6\xd6\xb4\x46"));
        assert!(!Compression::Zstd.matches_magic(b"\xfd7zXZ\0\0"));
        assert!(Compression::None.matches_magic(b"\x0d\0\0\0\0\0\0\0nix-archive-1\0\0\0"));
        assert!(!Compression::None.matches_magic(b"BZh91AY"));
    }
}
