//! Response bodies: whole buffers, ranges of hits (the store's open NAR files), downloads
//! tailed as they grow (a temp file, not a hit), and passthrough streams. File reads are
//! positional (`pread`) on a shared handle, in 512 KiB chunks on the blocking pool. A body
//! that ends in an error makes hyper abort the connection, so a client never mistakes a
//! failed transfer for a complete one.

use std::fs::File;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{stream, TryStreamExt};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;
use tokio::sync::{mpsc, watch};

use crate::fetch::nar::{Progress, Reader, Relay};
use crate::metrics::Metrics;
use crate::store::{pread, Hit};
use crate::upstream::UpstreamBody;

/// Bytes per file read.
const CHUNK: usize = 512 << 10;

/// A body error: the response is aborted.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BodyError(pub String);

/// The response body type.
pub type Body = UnsyncBoxBody<Bytes, BodyError>;

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A body from a buffer, counted in `nixgate_served_bytes_total`.
pub fn full(b: impl Into<Bytes>, metrics: &Metrics) -> Body {
    let b = b.into();
    metrics.served(b.len() as u64);
    small(b)
}

/// A short body that is not content (an error phrase): not counted as served bytes.
pub fn small(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn from_stream<S>(s: S, metrics: Arc<Metrics>) -> Body
where
    S: futures_util::Stream<Item = Result<Bytes, BodyError>> + Send + 'static,
{
    let s = s
        .inspect_ok(move |b| metrics.served(b.len() as u64))
        .map_ok(Frame::data);
    StreamBody::new(s).boxed_unsync()
}

fn read_failed(e: std::io::Error) -> BodyError {
    BodyError(format!("reading cache file: {e}"))
}

async fn read_at(file: Arc<File>, pos: u64, len: usize) -> Result<Bytes, BodyError> {
    pread(&file, pos, len).await.map_err(read_failed)
}

/// Bytes `start..end` of a hit.
pub fn hit_range(hit: Hit, start: u64, end: u64, metrics: Arc<Metrics>) -> Body {
    let s = stream::try_unfold(start, move |pos| {
        let hit = hit.clone();
        async move {
            if pos >= end {
                return Ok(None);
            }
            let len = (end - pos).min(CHUNK as u64) as usize;
            let b = hit.read(pos, len).await.map_err(read_failed)?;
            let next = pos + b.len() as u64;
            Ok(Some((b, next)))
        }
    });
    from_stream(s, metrics)
}

struct Tail {
    file: Arc<File>,
    progress: watch::Receiver<Progress>,
    relay: Arc<Relay>,
    rest: mpsc::Receiver<Bytes>,
    pos: u64,
    finished: bool,
}

impl Tail {
    /// The next chunk of the growing file, waiting for the writer when caught up.
    async fn next(&mut self) -> Option<Result<Bytes, BodyError>> {
        if self.finished {
            return None;
        }
        let r = self.advance().await;
        match &r {
            Some(Ok(b)) => self.pos += b.len() as u64,
            _ => self.finished = true,
        }
        r
    }

    async fn advance(&mut self) -> Option<Result<Bytes, BodyError>> {
        loop {
            if let Some(file_end) = self.relay.file_end() {
                return self.relayed(file_end).await;
            }
            let state = self.progress.borrow_and_update().clone();
            // Hold back the last written byte until the file verified: a failed download
            // must never look complete to the client.
            let (readable, done) = match state {
                Progress::Running(n) => (n.saturating_sub(1), false),
                Progress::Done(n) => (n, true),
                Progress::Failed(e) => {
                    return Some(Err(BodyError(format!("download failed: {e}"))))
                }
                // Seen through `relay.file_end()` on the next turn.
                Progress::Relaying(_) => continue,
            };
            if self.pos < readable {
                let len = (readable - self.pos).min(CHUNK as u64) as usize;
                return Some(read_at(self.file.clone(), self.pos, len).await);
            }
            if done {
                return None;
            }
            if self.progress.changed().await.is_err()
                && !matches!(*self.progress.borrow(), Progress::Done(_))
            {
                return Some(Err(BodyError("download ended without a result".into())));
            }
        }
    }

    /// After the switch to uncached streaming: the temp file up to `file_end`, then this
    /// reader's channel, which ends well only if the download verified.
    async fn relayed(&mut self, file_end: u64) -> Option<Result<Bytes, BodyError>> {
        if self.pos < file_end {
            let len = (file_end - self.pos).min(CHUNK as u64) as usize;
            return Some(read_at(self.file.clone(), self.pos, len).await);
        }
        if let Some(b) = self.rest.recv().await {
            return Some(Ok(b));
        }
        let end = self
            .progress
            .wait_for(|p| matches!(p, Progress::Done(_) | Progress::Failed(_)))
            .await
            .map(|p| p.clone());
        match end {
            Ok(Progress::Done(_)) => None,
            Ok(Progress::Failed(e)) => Some(Err(BodyError(format!("download failed: {e}")))),
            _ => Some(Err(BodyError("download ended without a result".into()))),
        }
    }
}

/// A download into the cache, from its start, as it grows; with `counted_as`, its bytes are
/// counted as served NAR bytes of that extension as they go.
pub fn download(r: Reader, metrics: Arc<Metrics>, counted_as: Option<&'static str>) -> Body {
    let tail = Tail {
        file: r.download.file,
        progress: r.download.progress,
        relay: r.download.relay,
        rest: r.rest,
        pos: 0,
        finished: false,
    };
    let s = stream::unfold(tail, |mut t| async move { t.next().await.map(|r| (r, t)) });
    let m = metrics.clone();
    let s = s.inspect_ok(move |b| {
        if let Some(ext) = counted_as {
            m.transcode.served(ext, b.len() as u64);
        }
    });
    from_stream(s, metrics)
}

/// Chunks from a passthrough task (or a live transcode, `fetch/live.rs`); with
/// `counted_as`, its bytes are counted as served NAR bytes of that extension as they go. An
/// `Err` chunk aborts the body: a chunked one ends without its last chunk.
pub fn channel(
    rx: mpsc::Receiver<Result<Bytes, crate::fetch::FetchError>>,
    metrics: Arc<Metrics>,
    counted_as: Option<&'static str>,
) -> Body {
    let s = stream::unfold(rx, |mut rx| async move {
        let item = rx.recv().await?;
        Some((item.map_err(|e| BodyError(e.to_string())), rx))
    });
    let m = metrics.clone();
    let s = s.inspect_ok(move |b| {
        if let Some(ext) = counted_as {
            m.transcode.served(ext, b.len() as u64);
        }
    });
    from_stream(s, metrics)
}

/// An upstream body relayed as it arrives (for unverifiable files such as build logs).
pub fn relay(body: UpstreamBody, metrics: Arc<Metrics>) -> Body {
    let s = stream::try_unfold(body, |mut b| async move {
        Ok(b.chunk()
            .await
            .map_err(|e| BodyError(e.to_string()))?
            .map(|c| (c, b)))
    });
    from_stream(s, metrics)
}

/// The outcome of a `Range` header against a file of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Range {
    Full,
    /// `start..end` (end exclusive).
    Partial(u64, u64),
    Unsatisfiable,
}

/// A byte position: ASCII digits only (`u64::from_str` would also take a leading `+`). A
/// number past `u64::MAX` is past the end of any file, so it saturates.
fn digits(s: &str) -> Result<u64, ()> {
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
        return Err(());
    }
    Ok(s.parse().unwrap_or(u64::MAX))
}

/// Parses a single `bytes=` range (RFC 9110 §14.1.2). Multiple ranges and other units are
/// answered with the whole file, which the RFC allows.
pub fn parse_range(header: Option<&str>, size: u64) -> Range {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Range::Full;
    };
    if spec.contains(',') {
        return Range::Full;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return Range::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let parsed = match (digits(a), digits(b)) {
        // A last-byte-pos past the end means "to the end" (RFC 9110 §14.1.2); saturating,
        // since `last` may be u64::MAX.
        (Ok(start), Ok(last)) if start <= last => Some((start, last.saturating_add(1).min(size))),
        (Ok(start), Err(_)) if b.is_empty() => Some((start, size)),
        (Err(_), Ok(n)) if a.is_empty() && n > 0 => Some((size.saturating_sub(n), size)),
        _ => return Range::Full,
    };
    match parsed {
        Some((start, end)) if start < size => Range::Partial(start, end),
        _ => Range::Unsatisfiable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 100), Range::Full);
        assert_eq!(parse_range(Some("bytes=0-9"), 100), Range::Partial(0, 10));
        assert_eq!(parse_range(Some("bytes=90-"), 100), Range::Partial(90, 100));
        assert_eq!(parse_range(Some("bytes=-10"), 100), Range::Partial(90, 100));
        assert_eq!(
            parse_range(Some("bytes=50-500"), 100),
            Range::Partial(50, 100)
        );
        assert_eq!(parse_range(Some("bytes=100-"), 100), Range::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-1,5-6"), 100), Range::Full);
        assert_eq!(parse_range(Some("items=0-1"), 100), Range::Full);
        assert_eq!(parse_range(Some("bytes=+1-+5"), 100), Range::Full);
    }

    #[test]
    fn last_byte_past_the_end_is_clamped() {
        let max = format!("bytes=0-{}", u64::MAX);
        assert_eq!(parse_range(Some(&max), 100), Range::Partial(0, 100));
        let from = format!("bytes=40-{}", u64::MAX);
        assert_eq!(parse_range(Some(&from), 100), Range::Partial(40, 100));
        assert_eq!(parse_range(Some(&max), 0), Range::Unsatisfiable);
        let huge = format!("bytes={0}-{0}", u64::MAX);
        assert_eq!(parse_range(Some(&huge), 100), Range::Unsatisfiable);
        let past_u64 = "bytes=0-99999999999999999999";
        assert_eq!(parse_range(Some(past_u64), 100), Range::Partial(0, 100));
        let suffix = "bytes=-99999999999999999999";
        assert_eq!(parse_range(Some(suffix), 100), Range::Partial(0, 100));
        assert_eq!(
            parse_range(Some("bytes=99999999999999999999-"), 100),
            Range::Unsatisfiable
        );
    }
}
