//! Reading an upload's request body: frame by frame, each within the stall timeout (a body
//! that stops sending is abandoned: 408), never more than a limit (413), so memory stays
//! bounded (NARs go to disk as they arrive, see `staging.rs`).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Body;

use super::UploadError;

/// The next data chunk of `body` (`None` at its end), within `stall`.
pub(super) async fn next_chunk<B>(
    body: &mut B,
    stall: Duration,
) -> Result<Option<Bytes>, UploadError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    loop {
        let frame = tokio::time::timeout(stall, body.frame())
            .await
            .map_err(|_| UploadError::Timeout)?;
        let Some(frame) = frame else {
            return Ok(None);
        };
        let frame = frame.map_err(|e| UploadError::Body(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if !data.is_empty() {
                return Ok(Some(data));
            }
        }
    }
}

/// The whole body in memory, refused beyond `limit` bytes.
pub(super) async fn to_memory<B>(
    body: &mut B,
    limit: u64,
    stall: Duration,
) -> Result<Bytes, UploadError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut buf = BytesMut::new();
    while let Some(chunk) = next_chunk(body, stall).await? {
        if (buf.len() + chunk.len()) as u64 > limit {
            return Err(UploadError::TooLarge(limit));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Reads and drops the whole body, up to `limit` bytes.
pub(super) async fn discard<B>(body: &mut B, limit: u64, stall: Duration) -> Result<(), UploadError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut n = 0u64;
    while let Some(chunk) = next_chunk(body, stall).await? {
        n += chunk.len() as u64;
        if n > limit {
            return Err(UploadError::TooLarge(limit));
        }
    }
    Ok(())
}
