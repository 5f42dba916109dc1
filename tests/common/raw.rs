//! A raw HTTP/1.1 client connection for tests that need exact bytes: requests written as
//! given (pipelined if several are in one write), responses read back by Content-Length, heads
//! kept as sent.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One raw HTTP/1.1 connection: requests written as given, responses read by Content-Length.
pub struct Raw {
    pub s: TcpStream,
    buf: Vec<u8>,
}

/// A response: the head as sent (status line and headers) and the body.
pub struct Resp {
    pub head: String,
    pub body: Vec<u8>,
}

impl Resp {
    /// The status code.
    pub fn status(&self) -> u16 {
        self.head[9..12].parse().unwrap()
    }
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(": ")?;
            k.eq_ignore_ascii_case(name).then_some(v)
        })
    }
    /// The head with the `date` value blanked (it may change between two answers).
    pub fn dateless(&self) -> String {
        self.head
            .lines()
            .map(|l| {
                if l.starts_with("date: ") {
                    "date: *"
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Raw {
    /// Connects to `addr`.
    pub async fn open(addr: SocketAddr) -> Raw {
        Raw {
            s: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    /// Writes `raw` as is.
    pub async fn send(&mut self, raw: &str) {
        self.s.write_all(raw.as_bytes()).await.unwrap();
    }

    async fn fill(&mut self) {
        let mut chunk = vec![0u8; 1 << 16];
        let n = tokio::time::timeout(Duration::from_secs(10), self.s.read(&mut chunk))
            .await
            .expect("response within 10 s")
            .unwrap();
        assert!(n > 0, "connection closed early");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    /// Reads one response (`head_only`: to a HEAD, no body whatever Content-Length says).
    pub async fn read(&mut self, head_only: bool) -> Resp {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            self.fill().await;
        };
        let head = String::from_utf8(self.buf.drain(..end).collect()).unwrap();
        let mut r = Resp {
            head,
            body: Vec::new(),
        };
        let len: usize = match r.header("content-length") {
            Some(n) if !head_only => n.parse().unwrap(),
            _ => 0,
        };
        while self.buf.len() < len {
            self.fill().await;
        }
        r.body = self.buf.drain(..len).collect();
        r
    }

    /// A GET of `path` with the `extra` header lines, and its response.
    pub async fn get(&mut self, path: &str, extra: &str) -> Resp {
        self.send(&format!("GET {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n"))
            .await;
        self.read(false).await
    }
}
