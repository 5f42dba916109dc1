//! IO wrappers that let hyper answer requests whose bytes the front loop (`front.rs`) already
//! read. [`OneRequest`] replays one bodiless request head and then reads as end of stream:
//! hyper answers that request, then finds the connection ended and returns, leaving the
//! socket open (its shutdown is only a flush) for the front loop's next request. [`Rewind`]
//! replays what was read, then reads the socket: hyper keeps the connection from there.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Copies as much of `src` as fits into `buf`.
fn replay(src: &mut Bytes, buf: &mut ReadBuf<'_>) {
    let n = src.len().min(buf.remaining());
    buf.put_slice(&src[..n]);
    src.advance(n);
}

/// One request head, then end of stream; writes go to `inner`.
pub struct OneRequest<'a, W> {
    head: Bytes,
    inner: W,
    /// Set when hyper read past the head: it wanted another request, so HTTP keep-alive
    /// holds. (With half-close on, hyper reads past a head only once its response is done.)
    wants_more: &'a AtomicBool,
}

impl<'a, W> OneRequest<'a, W> {
    /// Replays `head` (exactly one bodiless request) over `inner`.
    pub fn new(head: Bytes, inner: W, wants_more: &'a AtomicBool) -> Self {
        OneRequest {
            head,
            inner,
            wants_more,
        }
    }
}

/// The writes both wrappers pass straight to `self.inner` (they differ in shutdown only).
macro_rules! delegate_writes {
    () => {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.inner).poll_write(cx, buf)
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
        }

        fn is_write_vectored(&self) -> bool {
            self.inner.is_write_vectored()
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }
    };
}

impl<W: Unpin> AsyncRead for OneRequest<'_, W> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.head.is_empty() {
            self.wants_more.store(true, Ordering::Relaxed);
        } else {
            replay(&mut self.head, buf);
        }
        Poll::Ready(Ok(()))
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for OneRequest<'_, W> {
    delegate_writes!();

    /// The connection outlives hyper's turn: only flush.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
}

/// Bytes already read, then the socket.
pub struct Rewind<S> {
    read: Bytes,
    inner: S,
}

impl<S> Rewind<S> {
    /// Replays `read` before reading `inner`.
    pub fn new(read: Bytes, inner: S) -> Self {
        Rewind { read, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.read.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        replay(&mut self.read, buf);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    delegate_writes!();

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
