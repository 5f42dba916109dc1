//! Streaming decoders for the compressions whose NARs nixgate can check against the signed
//! `NarHash`: `none`, `xz`, `zstd`, `bzip2`, `gzip` and `br` (brotli). Each is push-based (a
//! `Write` that decodes into an inner `Write`), so a download is checked chunk by chunk as it
//! arrives, never buffered whole.
//!
//! Nix writes `lz4`, `lzip` and others through libarchive too (`src/libutil/compression.cc`);
//! nixgate has no push decoder for them, so their NARs are refused when a narinfo names them
//! ([`Decoder::new`] says which): a NAR that cannot be checked is never stored or served.

use std::io::{self, Write};

use crate::nix::compression::Compression;

/// Output buffer of the brotli decoder (its own ring buffer is sized by the stream).
const BROTLI_BUFFER: usize = 64 * 1024;

/// Whether nixgate can decode `c` (and so check a NAR compressed with it).
pub fn supports(c: Compression) -> bool {
    !matches!(c, Compression::Lzip | Compression::Lz4 | Compression::Other)
}

/// A decoder writing the decompressed NAR into `W`.
pub enum Decoder<W: Write> {
    None(W),
    Xz(xz2::write::XzDecoder<W>),
    Zstd(zstd::stream::write::Decoder<'static, W>),
    Bzip2(bzip2::write::BzDecoder<W>),
    Gzip(flate2::write::MultiGzDecoder<W>),
    Brotli(Box<brotli_decompressor::DecompressorWriter<W>>),
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
            Compression::Lzip | Compression::Lz4 | Compression::Other => return None,
        })
    }

    /// Decodes `chunk` into the sink.
    pub fn write_all(&mut self, chunk: &[u8]) -> io::Result<()> {
        match self {
            Decoder::None(s) => s.write_all(chunk),
            Decoder::Xz(d) => d.write_all(chunk),
            Decoder::Zstd(d) => d.write_all(chunk),
            Decoder::Bzip2(d) => d.write_all(chunk),
            Decoder::Gzip(d) => d.write_all(chunk),
            Decoder::Brotli(d) => d.write_all(chunk),
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
        }
    }

    /// Ends the stream: the sink once everything decoded, or why the stream is incomplete.
    pub fn finish(self) -> io::Result<W> {
        match self {
            Decoder::None(s) => Ok(s),
            Decoder::Xz(mut d) => d.finish(),
            Decoder::Zstd(mut d) => d.flush().map(|()| d.into_inner()),
            Decoder::Bzip2(mut d) => d.finish(),
            Decoder::Gzip(d) => d.finish(),
            Decoder::Brotli(d) => d
                .into_inner()
                .map_err(|_| io::Error::other("truncated brotli stream")),
        }
    }
}
