//! A push-based decoder of the LZ4 frame format (what Nix writes for `Compression: lz4`,
//! through libarchive), so lz4 NARs are checked chunk by chunk like every other compression.
//! lz4_flex has only a pull (`Read`) frame decoder; this parses the frame itself
//! (<https://github.com/lz4/lz4/blob/dev/doc/lz4_Frame_format.md>) and hands each block to
//! lz4_flex's block decoder, with the previous 64 KiB of output as the dictionary when blocks
//! are linked. Checksums are skipped: the NarHash check covers every byte. Frames may follow
//! each other, and skippable frames are skipped. Input is buffered one block at most (4 MiB).

use std::io::{self, Write};

const MAGIC: u32 = 0x184D_2204;
/// Skippable frames: `0x184D2A50..=0x184D2A5F`.
const SKIPPABLE: std::ops::RangeInclusive<u32> = 0x184D_2A50..=0x184D_2A5F;
/// How far back a linked block may reach.
const WINDOW: usize = 64 * 1024;

/// Where the parser is.
#[derive(Debug, Clone, Copy)]
enum State {
    /// Before a frame's magic number (or at the end of the stream).
    Magic,
    /// Its descriptor (FLG, BD, optional content size and dictionary id, header checksum).
    Descriptor,
    /// A block's 4-byte size (0 ends the frame).
    BlockSize,
    Block {
        size: usize,
        stored: bool,
    },
    /// The 4-byte checksum after the end mark.
    ContentChecksum,
    /// The rest of a skippable frame.
    Skip(usize),
}

/// The current frame's flags.
#[derive(Debug, Clone, Copy, Default)]
struct Frame {
    linked: bool,
    block_checksum: bool,
    content_checksum: bool,
    max_block: usize,
}

/// Decodes an LZ4 frame stream into `W`.
pub struct Lz4Decoder<W: Write> {
    out: W,
    input: Vec<u8>,
    state: State,
    frame: Frame,
    frames: u64,
    window: Vec<u8>,
    scratch: Vec<u8>,
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("lz4: {what}"))
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[..4].try_into().expect("4 bytes"))
}

impl<W: Write> Lz4Decoder<W> {
    pub fn new(out: W) -> Self {
        Lz4Decoder {
            out,
            input: Vec::new(),
            state: State::Magic,
            frame: Frame::default(),
            frames: 0,
            window: Vec::new(),
            scratch: Vec::new(),
        }
    }

    pub fn get_ref(&self) -> &W {
        &self.out
    }

    /// Decodes what `chunk` completes.
    pub fn write_all(&mut self, chunk: &[u8]) -> io::Result<()> {
        let mut input = std::mem::take(&mut self.input);
        input.extend_from_slice(chunk);
        let mut pos = 0;
        let stepped = loop {
            match self.step(&input[pos..]) {
                Ok(Some(used)) => pos += used,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        input.drain(..pos);
        self.input = input;
        stepped
    }

    /// Parses one item from the front of `input`: the bytes it used, or `None` when more
    /// input is needed.
    fn step(&mut self, input: &[u8]) -> io::Result<Option<usize>> {
        let need = self.needs(input)?;
        if input.len() < need || need == 0 {
            return Ok(None);
        }
        let item = &input[..need];
        self.state = match self.state {
            State::Magic => match le32(item) {
                MAGIC => State::Descriptor,
                m if SKIPPABLE.contains(&m) => match input.get(4..8) {
                    Some(len) => return self.skip_frame(le32(len) as usize),
                    None => return Ok(None),
                },
                _ => return Err(bad("not an LZ4 frame")),
            },
            State::Descriptor => {
                self.frame = descriptor(item)?;
                self.frames += 1;
                self.window.clear();
                State::BlockSize
            }
            State::BlockSize => match le32(item) {
                0 if self.frame.content_checksum => State::ContentChecksum,
                0 => State::Magic,
                v => {
                    let size = (v & 0x7FFF_FFFF) as usize;
                    if size > self.frame.max_block {
                        return Err(bad("block larger than the frame's maximum"));
                    }
                    State::Block {
                        size,
                        stored: v & 0x8000_0000 != 0,
                    }
                }
            },
            State::Block { size, stored } => {
                self.block(&item[..size], stored)?;
                State::BlockSize
            }
            State::ContentChecksum => State::Magic,
            State::Skip(left) => {
                let n = left.min(input.len());
                self.state = if n == left {
                    State::Magic
                } else {
                    State::Skip(left - n)
                };
                return Ok(Some(n));
            }
        };
        Ok(Some(need))
    }

    /// How many bytes the current item takes (0: unknown until more arrives).
    fn needs(&self, input: &[u8]) -> io::Result<usize> {
        Ok(match self.state {
            State::Magic | State::BlockSize | State::ContentChecksum => 4,
            State::Descriptor => match input.first() {
                Some(flg) => {
                    3 + if flg & 0x08 != 0 { 8 } else { 0 } + if flg & 0x01 != 0 { 4 } else { 0 }
                }
                None => 0,
            },
            State::Block { size, .. } => size + if self.frame.block_checksum { 4 } else { 0 },
            State::Skip(left) => left.min(input.len()).max(1),
        })
    }

    fn skip_frame(&mut self, len: usize) -> io::Result<Option<usize>> {
        self.state = if len == 0 {
            State::Magic
        } else {
            State::Skip(len)
        };
        Ok(Some(8))
    }

    /// Decodes one block into the sink (and the window, for linked blocks).
    fn block(&mut self, data: &[u8], stored: bool) -> io::Result<()> {
        let out: &[u8] = if stored {
            data
        } else {
            self.scratch.resize(self.frame.max_block, 0);
            let dict: &[u8] = if self.frame.linked { &self.window } else { &[] };
            let n = lz4_flex::block::decompress_into_with_dict(data, &mut self.scratch, dict)
                .map_err(|e| bad(&e.to_string()))?;
            &self.scratch[..n]
        };
        self.out.write_all(out)?;
        if self.frame.linked {
            self.window.extend_from_slice(out);
            let excess = self.window.len().saturating_sub(WINDOW);
            self.window.drain(..excess);
        }
        Ok(())
    }

    /// The sink, once the stream ended at a frame boundary.
    pub fn finish(self) -> io::Result<W> {
        match (self.state, self.input.is_empty(), self.frames) {
            (State::Magic, true, 1..) => Ok(self.out),
            _ => Err(bad("truncated stream")),
        }
    }
}

/// Parses a frame descriptor (its length was checked by the caller).
fn descriptor(d: &[u8]) -> io::Result<Frame> {
    let (flg, bd) = (d[0], d[1]);
    if flg >> 6 != 1 {
        return Err(bad("unsupported frame version"));
    }
    if flg & 0x01 != 0 {
        return Err(bad("frames that need a dictionary are not supported"));
    }
    let max_block = match (bd >> 4) & 0x7 {
        4 => 64 << 10,
        5 => 256 << 10,
        6 => 1 << 20,
        7 => 4 << 20,
        _ => return Err(bad("invalid block maximum size")),
    };
    Ok(Frame {
        linked: flg & 0x20 == 0,
        block_checksum: flg & 0x10 != 0,
        content_checksum: flg & 0x04 != 0,
        max_block,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lz4_flex::frame::{BlockMode, BlockSize, FrameEncoder, FrameInfo};

    fn data() -> Vec<u8> {
        // Repetitive enough that linked blocks reach back into earlier ones.
        (0..600_000u32)
            .flat_map(|i| format!("line {} of {}\n", i % 977, i % 13).into_bytes())
            .collect()
    }

    fn encode(data: &[u8], mode: BlockMode, checksums: bool) -> Vec<u8> {
        let mut info = FrameInfo::new()
            .block_mode(mode)
            .block_size(BlockSize::Max64KB);
        info = info.block_checksums(checksums).content_checksum(checksums);
        let mut e = FrameEncoder::with_frame_info(info, Vec::new());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn decode(file: &[u8], chunk: usize) -> io::Result<Vec<u8>> {
        let mut d = Lz4Decoder::new(Vec::new());
        for c in file.chunks(chunk) {
            d.write_all(c)?;
        }
        d.finish()
    }

    #[test]
    fn linked_and_independent_frames_in_any_chunking() {
        let data = data();
        for mode in [BlockMode::Linked, BlockMode::Independent] {
            for checksums in [false, true] {
                let file = encode(&data, mode, checksums);
                for chunk in [1, 7, 4096, 1 << 20] {
                    let got = decode(&file, chunk).unwrap();
                    assert!(got == data, "{mode:?} {checksums} {chunk}");
                }
            }
        }
    }

    #[test]
    fn concatenated_and_skippable_frames() {
        let data = data();
        let mut file = encode(&data[..1000], BlockMode::Linked, false);
        file.extend_from_slice(&0x184D_2A53u32.to_le_bytes());
        file.extend_from_slice(&3u32.to_le_bytes());
        file.extend_from_slice(b"xyz");
        file.extend(encode(&data[1000..], BlockMode::Linked, true));
        assert!(decode(&file, 333).unwrap() == data);
    }

    #[test]
    fn truncated_and_corrupt_streams_fail() {
        let file = encode(&data(), BlockMode::Linked, false);
        assert!(decode(&file[..file.len() - 1], 4096).is_err());
        assert!(decode(b"", 1).is_err());
        assert!(decode(b"\x28\xb5\x2f\xfd", 1).is_err());
        let mut bad = file.clone();
        bad[20] ^= 0xff;
        let mut big = file;
        big[4] = 0x40 | 0x08; // content size flag without the bytes: misparsed, not a panic
        for f in [bad, big] {
            let _ = decode(&f, 4096);
        }
    }
}
