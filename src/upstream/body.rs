//! A response body from an upstream, peer or fleet member, read with a minimum-progress
//! rule: within every stall window (`--stall-timeout`, shorter for peers) the source must
//! send at least `--min-transfer-rate` times the window, so neither silence nor a drip of a
//! byte now and then holds a download (and every runner coalesced on it).

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::UpstreamError;

/// A response body read with the minimum-progress rule.
pub struct UpstreamBody {
    pub(super) body: Incoming,
    /// The progress owed per stall window, and the current window.
    pub(super) progress: Progress,
    /// `Content-Length`, when the upstream sent one.
    pub content_length: Option<u64>,
    pub headers: http::HeaderMap,
    /// Where the body starts in the file, when the server answered a range request with 206.
    pub range_start: Option<u64>,
    /// The part of a chunk left over by [`UpstreamBody::skip`], returned first.
    pub(super) pending: Option<Bytes>,
}

/// The first byte of a `Content-Range: bytes START-END/TOTAL` header.
pub(super) fn content_range_start(headers: &http::HeaderMap) -> Option<u64> {
    let v = headers.get(http::header::CONTENT_RANGE)?.to_str().ok()?;
    let (start, _) = v.strip_prefix("bytes ")?.split_once('-')?;
    start.trim().parse().ok()
}

/// The minimum-progress rule: `owed` bytes within every window of `window`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Progress {
    window: Duration,
    owed: u64,
    started: Instant,
    got: u64,
}

impl Progress {
    /// `rate` bytes per second, judged over windows of `window`, from now.
    pub(super) fn new(window: Duration, rate: u64) -> Self {
        Progress {
            window,
            owed: (rate as f64 * window.as_secs_f64()) as u64,
            started: Instant::now(),
            got: 0,
        }
    }

    /// How long the next chunk may take before the window is over.
    fn left(&self) -> Duration {
        self.window.saturating_sub(self.started.elapsed())
    }

    /// Counts `n` bytes; a window whose due arrived starts the next one.
    fn got(&mut self, n: usize) {
        self.got += n as u64;
        if self.got >= self.owed.max(1) {
            self.started = Instant::now();
            self.got = 0;
        }
    }

    /// Why the window ran out: nothing at all, or too little.
    fn failure(&self) -> UpstreamError {
        match self.got {
            0 => UpstreamError::Stalled(self.window),
            got => UpstreamError::TooSlow {
                got,
                owed: self.owed,
                window: self.window,
            },
        }
    }
}

impl UpstreamBody {
    /// The next data chunk; `None` at the end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, UpstreamError> {
        if let Some(p) = self.pending.take() {
            return Ok(Some(p));
        }
        loop {
            let frame = tokio::time::timeout(self.progress.left(), self.body.frame())
                .await
                .map_err(|_| self.progress.failure())?;
            match frame {
                None => return Ok(None),
                Some(Err(e)) => return Err(UpstreamError::Body(e.to_string())),
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        self.progress.got(data.len());
                        return Ok(Some(data));
                    }
                }
            }
        }
    }

    /// Waits for one chunk, then appends whatever else is ready without waiting, up to
    /// `max` bytes: large writes when the upstream is fast, low latency when it is slow.
    pub async fn batch(&mut self, max: usize) -> Result<Option<Bytes>, UpstreamError> {
        let Some(first) = self.chunk().await? else {
            return Ok(None);
        };
        if first.len() >= max {
            return Ok(Some(first));
        }
        let mut buf = BytesMut::from(&first[..]);
        while buf.len() < max {
            match self.chunk().now_or_never() {
                Some(Ok(Some(more))) => buf.extend_from_slice(&more),
                Some(Ok(None)) | None => break,
                Some(Err(e)) => return Err(e),
            }
        }
        Ok(Some(buf.freeze()))
    }

    /// Reads and drops the first `n` bytes (a server that ignored a range request sent them
    /// again); fails when the body ends before them.
    pub async fn skip(&mut self, mut n: u64) -> Result<(), UpstreamError> {
        while n > 0 {
            let Some(mut c) = self.chunk().await? else {
                return Err(UpstreamError::Body(format!(
                    "ended {n} bytes before the resume offset"
                )));
            };
            if (c.len() as u64) > n {
                self.pending = Some(c.split_off(n as usize));
                return Ok(());
            }
            n -= c.len() as u64;
        }
        Ok(())
    }

    /// Reads the whole body, refusing more than `limit` bytes.
    pub async fn read_all(mut self, limit: usize) -> Result<Bytes, UpstreamError> {
        let mut buf = BytesMut::new();
        while let Some(c) = self.chunk().await? {
            if buf.len() + c.len() > limit {
                return Err(UpstreamError::TooLarge(limit));
            }
            buf.extend_from_slice(&c);
        }
        Ok(buf.freeze())
    }
}
