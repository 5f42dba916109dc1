//! The zero-copy answer to a cached NAR: the response head, exactly as hyper writes today's
//! hit (same status, headers, order and `date`), then the file region with `sendfile(2)` from
//! the open file to the socket, so the bytes go from the page cache to the socket without
//! passing through user memory. Linux only.
//!
//! The socket is non-blocking: a `sendfile` that would block waits for the socket to be
//! writable, and fails with `TimedOut` after `--send-timeout` without progress (the same rule
//! as `send_timeout.rs`). The file is the store's [`Hit`], opened before the head is written:
//! it keeps an evicted NAR readable until the end.

use std::io;
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::store::Hit;

/// Largest count one `sendfile` call takes on Linux.
const MAX_SENDFILE: u64 = 0x7fff_f000;

fn sys<T>(r: rustix::io::Result<T>) -> io::Result<T> {
    r.map_err(io::Error::from)
}

/// What part of a file of `size` bytes a response carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The whole file (200).
    Whole(u64),
    /// Bytes `start..end` (206).
    Range { start: u64, end: u64, size: u64 },
}

impl Part {
    /// The body's byte range in the file.
    pub fn span(self) -> (u64, u64) {
        match self {
            Part::Whole(size) => (0, size),
            Part::Range { start, end, .. } => (start, end),
        }
    }
}

/// The response head hyper writes for a cached NAR (`handlers::cached_file`, `nar_head`);
/// `closing` adds the `connection: close` hyper adds during graceful shutdown.
pub fn response_head(part: Part, closing: bool) -> String {
    let mut h = String::with_capacity(256);
    let (status, len) = match part {
        Part::Whole(size) => ("200 OK", size),
        Part::Range { start, end, .. } => ("206 Partial Content", end - start),
    };
    h.push_str("HTTP/1.1 ");
    h.push_str(status);
    h.push_str("\r\ncontent-type: application/x-nix-nar\r\naccept-ranges: bytes\r\n");
    h.push_str(&format!("content-length: {len}\r\n"));
    if let Part::Range { start, end, size } = part {
        h.push_str(&format!(
            "content-range: bytes {start}-{}/{size}\r\n",
            end - 1
        ));
    }
    if closing {
        h.push_str("connection: close\r\n");
    }
    h.push_str("date: ");
    h.push_str(&httpdate::fmt_http_date(std::time::SystemTime::now()));
    h.push_str("\r\n\r\n");
    h
}

/// Writes to one socket, failing after `timeout` without progress.
pub struct Sender<'a> {
    stream: &'a TcpStream,
    timeout: Duration,
    /// When the current wait for a writable socket began; `None` after progress.
    stalled: Option<Instant>,
}

impl<'a> Sender<'a> {
    /// A sender on `stream` with the send-progress `timeout`.
    pub fn new(stream: &'a TcpStream, timeout: Duration) -> Self {
        Sender {
            stream,
            timeout,
            stalled: None,
        }
    }

    /// Runs the non-blocking `op` until it makes progress; waits for the socket in between.
    async fn progress(&mut self, mut op: impl FnMut() -> io::Result<usize>) -> io::Result<usize> {
        loop {
            match self.stream.try_io(Interest::WRITABLE, &mut op) {
                Ok(n) => {
                    self.stalled = None;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let since = *self.stalled.get_or_insert_with(Instant::now);
                    tokio::time::timeout_at(since + self.timeout, self.stream.writable())
                        .await
                        .map_err(|_| {
                            io::Error::new(
                                io::ErrorKind::TimedOut,
                                "client accepted no bytes within the send timeout",
                            )
                        })??;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes all of `bytes`; `more` tells the kernel a body follows at once (`MSG_MORE`),
    /// so a small response leaves in one segment.
    pub async fn write_all(&mut self, mut bytes: &[u8], more: bool) -> io::Result<()> {
        use rustix::net::SendFlags;
        let stream = self.stream;
        let mut flags = SendFlags::NOSIGNAL;
        if more {
            flags |= SendFlags::MORE;
        }
        while !bytes.is_empty() {
            let n = self
                .progress(|| sys(rustix::net::send(stream, bytes, flags)))
                .await?;
            bytes = &bytes[n..];
        }
        Ok(())
    }

    /// Sends bytes `start..end` of `file` with `sendfile(2)`, counting them as served.
    pub async fn send_file(
        &mut self,
        file: &Hit,
        start: u64,
        end: u64,
        metrics: &Metrics,
    ) -> io::Result<()> {
        let stream = self.stream;
        let mut pos = start;
        while pos < end {
            let count = (end - pos).min(MAX_SENDFILE) as usize;
            let n = self
                .progress(|| {
                    let mut off = pos;
                    sys(rustix::fs::sendfile(stream, file, Some(&mut off), count))
                })
                .await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "cache file shorter than expected",
                ));
            }
            pos += n as u64;
            metrics.served(n as u64);
            tokio::task::consume_budget().await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_carry_hyper_order_and_ranges() {
        let h = response_head(Part::Whole(10), false);
        assert!(h.starts_with(
            "HTTP/1.1 200 OK\r\ncontent-type: application/x-nix-nar\r\naccept-ranges: bytes\r\ncontent-length: 10\r\ndate: "
        ));
        assert!(h.ends_with(" GMT\r\n\r\n"));
        let r = response_head(
            Part::Range {
                start: 5,
                end: 8,
                size: 10,
            },
            true,
        );
        assert!(r.contains("206 Partial Content\r\n"));
        assert!(
            r.contains("content-length: 3\r\ncontent-range: bytes 5-7/10\r\nconnection: close\r\n")
        );
    }
}
