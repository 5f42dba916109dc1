//! Bytes held back until they prove to be a NAR: a source's first chunks are released to
//! readers (and to the temp file they tail) only once they decompress to a whole NAR header
//! (`nix-archive-1`), so an unrelated body (an internal page, an error document) never
//! reaches a client, not even in part. The header sits in the first kilobytes of every
//! compression nixgate decodes (bzip2's first block is the largest wait, under 1 MiB).

use bytes::Bytes;

use super::super::verify::VerifyError;

/// The most a source may send before its bytes show a NAR header.
pub(super) const MAX_UNPROVEN: u64 = 8 << 20;

/// Chunks not yet shown to be a NAR, with the offset each ends at.
#[derive(Default)]
pub(super) struct Unproven {
    chunks: Vec<(Bytes, u64)>,
    bytes: u64,
}

impl Unproven {
    /// What may be released now that `chunk` (ending at offset `written`) came: nothing
    /// until `proven`, then every chunk held, in order. [`VerifyError::NotANar`] when more
    /// than [`MAX_UNPROVEN`] bytes came without a header.
    pub fn release(
        &mut self,
        chunk: Bytes,
        written: u64,
        proven: bool,
    ) -> Result<Vec<(Bytes, u64)>, VerifyError> {
        if proven && self.chunks.is_empty() {
            return Ok(vec![(chunk, written)]);
        }
        self.bytes += chunk.len() as u64;
        self.chunks.push((chunk, written));
        if proven {
            return Ok(self.release_all());
        }
        if self.bytes > MAX_UNPROVEN {
            return Err(VerifyError::NotANar);
        }
        Ok(Vec::new())
    }

    /// Everything held (the file verified as a whole, header included).
    pub fn release_all(&mut self) -> Vec<(Bytes, u64)> {
        self.bytes = 0;
        std::mem::take(&mut self.chunks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_until_proven_then_releases_in_order() {
        let mut u = Unproven::default();
        let c = |s: &'static str| Bytes::from_static(s.as_bytes());
        assert!(u.release(c("ab"), 2, false).unwrap().is_empty());
        assert!(u.release(c("cd"), 4, false).unwrap().is_empty());
        let out = u.release(c("ef"), 6, true).unwrap();
        let offsets: Vec<u64> = out.iter().map(|(_, w)| *w).collect();
        assert_eq!(offsets, [2, 4, 6]);
        assert_eq!(u.release(c("gh"), 8, true).unwrap().len(), 1);
    }

    #[test]
    fn refuses_a_source_that_never_shows_a_header() {
        let mut u = Unproven::default();
        let big = Bytes::from(vec![0u8; 1 << 20]);
        let mut written = 0;
        let mut refused = false;
        for _ in 0..9 {
            written += big.len() as u64;
            if u.release(big.clone(), written, false).is_err() {
                refused = true;
                break;
            }
        }
        assert!(refused && written > MAX_UNPROVEN);
    }
}
