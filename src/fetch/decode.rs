//! Streaming decoders for the compressions whose NARs nixgate can check against the signed
//! `NarHash`: `none`, `xz`, `zstd`, `bzip2`, `gzip`, `br` (brotli) and `lz4`. Each is
//! push-based (a `Write` that decodes into an inner `Write`), so a download is checked chunk
//! by chunk as it arrives, never buffered whole.
//!
//! Nix writes `lzip` and others through libarchive too (`src/libutil/compression.cc`);
//! nixgate has no decoder for them, so their NARs are refused when a narinfo names them
//! ([`supports`] says which): a NAR that cannot be checked is never stored or served.

use std::io::{self, Write};

use crate::nix::compression::Compression;

/// Output buffer of the brotli decoder (its own ring buffer is sized by the stream).
const BROTLI_BUFFER: usize = 64 * 1024;

/// Whether nixgate can decode `c` (and so check a NAR compressed with it).
pub fn supports(c: Compression) -> bool {
    !matches!(c, Compression::Lzip | Compression::Other)
}

/// A decoder writing the decompressed NAR into `W`.
pub enum Decoder<W: Write> {
    None(W),
    Xz(xz2::write::XzDecoder<W>),
    Zstd(zstd::stream::write::Decoder<'static, W>),
    Bzip2(bzip2::write::BzDecoder<W>),
    Gzip(flate2::write::MultiGzDecoder<W>),
    Brotli(Box<brotli_decompressor::DecompressorWriter<W>>),
    Lz4(Box<super::lz4::Lz4Decoder<W>>),
}

impl<W: Write> Decoder<W> {
    /// The decoder for `c`; `None` when nixgate cannot decode it (see [`Self::supports`]).
    pub fn new(c: Compression, sink: W) -> Option<Self> {
        Some(match c {
            Compression::None => Decoder::None(sink),
            // Nix's xz writer may emit several streams (parallel compression).
            Compression::Xz => Decoder::Xz(xz2::write::XzDecoder::new_multi_decoder(sink)),
            // Fails only when zstd cannot allocate its context.
            Compression::Zstd => Decoder::Zstd(zstd::stream::write::Decoder::new(sink).ok()?),
            Compression::Bzip2 => Decoder::Bzip2(bzip2::write::BzDecoder::new(sink)),
            Compression::Gzip => Decoder::Gzip(flate2::write::MultiGzDecoder::new(sink)),
            Compression::Brotli => Decoder::Brotli(Box::new(
                brotli_decompressor::DecompressorWriter::new(sink, BROTLI_BUFFER),
            )),
            Compression::Lz4 => Decoder::Lz4(Box::new(super::lz4::Lz4Decoder::new(sink))),
            Compression::Lzip | Compression::Other => return None,
        })
    }

    /// Refuses (as a decode error) zstd frames whose window exceeds `2^log` bytes, so that
    /// the decoder never allocates more; other compressions are unaffected.
    pub fn limit_window(&mut self, log: u32) -> io::Result<()> {
        match self {
            Decoder::Zstd(d) => d.window_log_max(log),
            _ => Ok(()),
        }
    }

    /// Decodes `chunk` into the sink, and everything it completes reaches the sink before
    /// this returns (some decoders keep their output until the next write otherwise).
    pub fn write_all(&mut self, chunk: &[u8]) -> io::Result<()> {
        self.write_chunk(chunk)?;
        match self {
            Decoder::None(_) | Decoder::Lz4(_) => Ok(()),
            Decoder::Xz(d) => d.flush(),
            Decoder::Zstd(d) => d.flush(),
            Decoder::Bzip2(d) => d.flush(),
            Decoder::Gzip(d) => d.flush(),
            Decoder::Brotli(d) => d.flush(),
        }
    }

    fn write_chunk(&mut self, chunk: &[u8]) -> io::Result<()> {
        match self {
            Decoder::None(s) => s.write_all(chunk),
            Decoder::Xz(d) => d.write_all(chunk),
            Decoder::Zstd(d) => d.write_all(chunk),
            Decoder::Bzip2(d) => d.write_all(chunk),
            Decoder::Gzip(d) => d.write_all(chunk),
            Decoder::Brotli(d) => d.write_all(chunk),
            Decoder::Lz4(d) => d.write_all(chunk),
        }
    }

    /// The sink, as decoded so far.
    pub fn sink(&self) -> &W {
        match self {
            Decoder::None(s) => s,
            Decoder::Xz(d) => d.get_ref(),
            Decoder::Zstd(d) => d.get_ref(),
            Decoder::Bzip2(d) => d.get_ref(),
            Decoder::Gzip(d) => d.get_ref(),
            Decoder::Brotli(d) => d.get_ref(),
            Decoder::Lz4(d) => d.get_ref(),
        }
    }

    /// Ends the stream: the sink once everything decoded, or why the stream is incomplete.
    pub fn finish(self) -> io::Result<W> {
        match self {
            Decoder::None(s) => Ok(s),
            Decoder::Xz(mut d) => d.finish(),
            // `finish`, not `flush`: a stream cut inside its last frame (say, without its
            // checksum) or with a partial frame after it is refused, even though every NAR
            // byte came out: a file of nixgate's own has no FileHash to pin its bytes.
            Decoder::Zstd(d) => d.finish(),
            Decoder::Bzip2(mut d) => d.finish(),
            Decoder::Gzip(d) => d.finish(),
            Decoder::Brotli(d) => d
                .into_inner()
                .map_err(|_| io::Error::other("truncated brotli stream")),
            Decoder::Lz4(d) => d.finish(),
        }
    }
}
