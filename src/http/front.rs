//! The per-connection front loop of a regular connection: it reads each request head itself
//! (`head.rs`) and answers a cached NAR with `sendfile` (`zerocopy.rs`) from the store's
//! [`Hit`] (opened on the blocking pool, never here); every other request is answered by
//! hyper, as before.
//!
//! - A bodiless request that is not a NAR hit: hyper answers that one request on
//!   [`OneRequest`], which replays its head and then reads as end of stream, so no byte of a
//!   pipelined next request ever reaches hyper's parser. Hyper reads past the head only when it
//!   wants the connection kept alive; then the loop goes on, else the connection closes.
//! - Anything else (a body, `Expect`, odd framing, a parse error): hyper takes the rest of the
//!   connection with the bytes read so far replayed in front ([`Rewind`]), and never gives it
//!   back. Hyper's own rules then apply, as they did to every connection before.
//!
//! Why two parsers on one connection are safe: both are httparse on the same bytes, and only
//! a request with no body by any reading (`head.rs`) is parsed here, so its end is its head's
//! end for both; hyper gets exactly one head ([`OneRequest`]) or the whole rest of the
//! connection ([`Rewind`]), never a guess. A half-read body cannot happen: a request with a
//! body is hyper's, with the connection. Keep-alive is hyper's call on its requests (it reads
//! past the head only to serve another) and plain HTTP/1.1 on ours (1.0 and any
//! `Connection` token but `keep-alive` go to hyper).
//!
//! Shutdown: a connection waiting for a head closes at once; a response under way finishes
//! (the drain deadline bounds it; a head not yet written says `connection: close`) and its
//! connection closes after it.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::body::{parse_range, Body, Range};
use super::head::{classify, NarAsk, Next};
use super::replay::{OneRequest, Rewind};
use super::send_timeout::SendTimeout;
use super::service::handle;
use super::state::App;
use super::zerocopy::{response_head, Part, Sender};
use crate::metrics::{Outcome, Route};
use crate::store::Hit;

/// Slow-loris guard: the request head must arrive within this (idle keep-alive included, as
/// hyper counts it).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// What every regular connection shares.
pub struct Front {
    pub app: Arc<App>,
    pub send_timeout: Duration,
    pub shutdown: CancellationToken,
    /// Hyper for the rest of a connection (keep-alive, header read timeout).
    pub regular: http1::Builder,
    /// Hyper for one replayed request: half-close on, so it reads nothing past the head
    /// until its response is done.
    one: http1::Builder,
}

/// How a NAR request ended on the zero-copy path.
enum Served {
    /// Answered; the connection may serve the next request.
    KeepAlive,
    /// Answered or failed; the connection closes.
    Close,
    /// Not a hit here (or a 416, or a file the store could not open): hyper answers it.
    NotHere,
}

/// Runs `conn` to its end; on shutdown, lets it finish its response and close. Ends early
/// (dropping the connection) if `gone` completes first.
pub async fn drive<I, S>(
    conn: http1::Connection<I, S>,
    shutdown: &CancellationToken,
    gone: impl Future<Output = ()>,
) -> Result<(), hyper::Error>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<Incoming, ResBody = Body>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        biased;
        r = conn.as_mut() => return r,
        _ = gone => return Ok(()),
        _ = shutdown.cancelled() => {}
    }
    conn.as_mut().graceful_shutdown();
    conn.await
}

/// Logs how a hyper connection ended and counts a send timeout.
pub fn report(app: &App, r: Result<(), hyper::Error>) -> bool {
    let Err(e) = r else { return true };
    if timed_out(&e) {
        app.metrics.send_timeout();
    }
    tracing::debug!(error = %e, "connection ended with an error");
    false
}

/// True when a connection ended because its client accepted no bytes (see `send_timeout.rs`).
fn timed_out(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::TimedOut;
        }
        source = s.source();
    }
    false
}

/// Completes when the client has closed its end (EOF or an error on peek), the way hyper
/// notices a client gone while it waits on a response; never when request bytes are waiting.
async fn peer_gone(rd: &mut tokio::net::tcp::ReadHalf<'_>) {
    let mut b = [0u8; 1];
    match rd.peek(&mut b).await {
        Ok(0) | Err(_) => {}
        Ok(_) => std::future::pending().await,
    }
}

impl Front {
    /// The shared state of regular connections.
    pub fn new(app: Arc<App>, send_timeout: Duration, shutdown: CancellationToken) -> Self {
        let mut regular = http1::Builder::new();
        regular
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .keep_alive(true);
        let mut one = regular.clone();
        one.half_close(true);
        Front {
            app,
            send_timeout,
            shutdown,
            regular,
            one,
        }
    }

    /// Serves one regular connection to its end.
    pub async fn serve(&self, mut stream: TcpStream) {
        let mut buf = BytesMut::with_capacity(4096);
        loop {
            let Some(next) = self.read_head(&mut stream, &mut buf).await else {
                return;
            };
            let keep = match next {
                Next::Nar(len, ask) => match self.nar(&stream, &ask).await {
                    Served::KeepAlive => {
                        buf.advance(len);
                        true
                    }
                    Served::Close => return,
                    Served::NotHere => self.one(&mut stream, &mut buf, len).await,
                },
                Next::One(len) => self.one(&mut stream, &mut buf, len).await,
                Next::Partial | Next::Handoff => {
                    return self.handoff(stream, buf.freeze()).await;
                }
            };
            if !keep || self.shutdown.is_cancelled() {
                return;
            }
        }
    }

    /// Reads until `buf` holds a complete head (or what to hand to hyper). `None`: the
    /// connection ends (EOF, an error, the header read timeout, or shutdown before a whole
    /// head is here).
    async fn read_head(&self, stream: &mut TcpStream, buf: &mut BytesMut) -> Option<Next> {
        let deadline = tokio::time::Instant::now() + HEADER_READ_TIMEOUT;
        loop {
            if !buf.is_empty() {
                match classify(buf) {
                    Next::Partial => {}
                    next => return Some(next),
                }
            } else if self.shutdown.is_cancelled() {
                return None;
            }
            buf.reserve(4096);
            tokio::select! {
                r = tokio::time::timeout_at(deadline, stream.read_buf(buf)) => match r {
                    Ok(Ok(n)) if n > 0 => {}
                    Ok(_) => return None,
                    Err(_) => {
                        tracing::debug!("read header from client timeout");
                        return None;
                    }
                },
                // Like hyper: a connection waiting for a head closes, partial head or not.
                _ = self.shutdown.cancelled() => return None,
            }
        }
    }

    /// Hyper answers the bodiless request whose head is the first `len` bytes of `buf`
    /// (which then no longer holds it). True when the connection stays open.
    async fn one(&self, stream: &mut TcpStream, buf: &mut BytesMut, len: usize) -> bool {
        let head = buf.split_to(len).freeze();
        let pipelined = !buf.is_empty();
        let wants_more = AtomicBool::new(false);
        let (mut rd, wr) = stream.split();
        let io = OneRequest::new(head, SendTimeout::new(wr, self.send_timeout), &wants_more);
        let app = self.app.clone();
        let svc = service_fn(move |req| handle(app.clone(), req));
        let conn = self.one.serve_connection(TokioIo::new(io), svc);
        // Bytes of a next request already read: hyper would not look for a closed client
        // either (its read buffer is not empty).
        let gone = async move {
            if pipelined {
                std::future::pending::<()>().await
            }
            peer_gone(&mut rd).await
        };
        let r = drive(conn, &self.shutdown, gone).await;
        report(&self.app, r) && wants_more.load(Ordering::Relaxed)
    }

    /// Hyper takes the connection from here, `read` replayed first.
    async fn handoff(&self, stream: TcpStream, read: Bytes) {
        let io = Rewind::new(read, SendTimeout::new(stream, self.send_timeout));
        let app = self.app.clone();
        let svc = service_fn(move |req| handle(app.clone(), req));
        let conn = self.regular.serve_connection(TokioIo::new(io), svc);
        report(
            &self.app,
            drive(conn, &self.shutdown, std::future::pending()).await,
        );
    }

    /// Answers a NAR request here if it is a cache hit.
    async fn nar(&self, stream: &TcpStream, ask: &NarAsk) -> Served {
        let app = &self.app;
        // Opened by the store on the blocking pool; one it cannot open: hyper's path decides.
        let Ok(Some(hit)) = app.fetcher.cached(ask.file_hash, ask.ext).await else {
            return Served::NotHere;
        };
        let size = hit.len();
        let part = match parse_range(ask.range.as_deref(), size) {
            _ if ask.head => Part::Whole(size),
            Range::Full => Part::Whole(size),
            Range::Partial(start, end) => Part::Range { start, end, size },
            Range::Unsatisfiable => return Served::NotHere,
        };
        if ask.fleet {
            app.metrics.fleet_served();
        }
        app.metrics.request(Route::Nar, Outcome::Hit);
        app.metrics.zero_copy();
        if !ask.head {
            let (start, end) = part.span();
            app.metrics.transcode.served(hit.ext(), end - start);
        }
        app.status.request(Route::Nar, Outcome::Hit, &ask.path);
        let closing = self.shutdown.is_cancelled();
        let body = (!ask.head).then_some(&hit);
        match self.send(stream, part, body, closing).await {
            Ok(()) if !closing => Served::KeepAlive,
            Ok(()) => Served::Close,
            Err(e) => {
                if e.kind() == std::io::ErrorKind::TimedOut {
                    app.metrics.send_timeout();
                }
                tracing::debug!(error = %e, path = %ask.path, "zero-copy response aborted");
                Served::Close
            }
        }
    }

    /// Writes the head and, for a GET, the file region.
    async fn send(
        &self,
        stream: &TcpStream,
        part: Part,
        file: Option<&Hit>,
        closing: bool,
    ) -> std::io::Result<()> {
        let head = response_head(part, closing);
        let mut tx = Sender::new(stream, self.send_timeout);
        let (start, end) = part.span();
        let body = file.filter(|_| end > start);
        tx.write_all(head.as_bytes(), body.is_some()).await?;
        if let Some(file) = body {
            tx.send_file(file, start, end, &self.app.metrics).await?;
            tracing::debug!(bytes = end - start, "zero-copy NAR hit");
        }
        Ok(())
    }
}
