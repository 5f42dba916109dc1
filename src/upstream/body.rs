//! A response body from an upstream, peer or fleet member, read with the stall timeout.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::UpstreamError;

/// A response body read with the stall timeout.
pub struct UpstreamBody {
    pub(super) body: Incoming,
    pub(super) stall: Duration,
    /// `Content-Length`, when the upstream sent one.
    pub content_length: Option<u64>,
    pub headers: http::HeaderMap,
}

impl UpstreamBody {
    /// The next data chunk; `None` at the end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, UpstreamError> {
        loop {
            let frame = tokio::time::timeout(self.stall, self.body.frame())
                .await
                .map_err(|_| UpstreamError::Stalled(self.stall))?;
            match frame {
                None => return Ok(None),
                Some(Err(e)) => return Err(UpstreamError::Body(e.to_string())),
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
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
