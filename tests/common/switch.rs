//! A switch in front of the object store (SeaweedFS): a TCP proxy that hangs (answers each
//! new connection's request with response headers, then nothing), forwards, or forwards
//! after a delay, and notes the first request line of every connection it forwards.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::seaweed::{Seaweed, BUCKET};

/// What the switch does with a new connection.
#[derive(Clone, Copy, Debug)]
pub enum Mode {
    Hang,
    Forward,
    /// Forwards the connection's request after this long, one request per connection.
    Delay(Duration),
}

pub struct Switch {
    pub addr: SocketAddr,
    mode: Arc<Mutex<Mode>>,
    forwarded: Arc<Mutex<Vec<String>>>,
}

impl Switch {
    /// A switch in front of `sw`'s S3 endpoint, in `mode`.
    pub async fn start(sw: &Seaweed, mode: Mode) -> Switch {
        let seaweed: url::Url = sw.endpoint().parse().unwrap();
        let to = SocketAddr::from(([127, 0, 0, 1], seaweed.port().unwrap()));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(Mutex::new(mode));
        let forwarded = Arc::new(Mutex::new(Vec::new()));
        let (m, fw) = (mode.clone(), forwarded.clone());
        tokio::spawn(async move {
            loop {
                let (s, _) = listener.accept().await.unwrap();
                let now = *m.lock().unwrap();
                tokio::spawn(serve(s, to, now, fw.clone()));
            }
        });
        Switch {
            addr,
            mode,
            forwarded,
        }
    }

    /// The `--object-store` URL of [`BUCKET`]'s `prefix` through the switch.
    pub fn url(&self, prefix: &str) -> String {
        let addr = self.addr;
        format!("s3://{BUCKET}/{prefix}?endpoint=http://{addr}&region=us-east-1")
    }

    /// From now on new connections are handled in `mode`.
    pub fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    /// The first request line of each connection forwarded so far, in order.
    pub fn forwarded(&self) -> Vec<String> {
        self.forwarded.lock().unwrap().clone()
    }
}

async fn serve(mut s: TcpStream, to: SocketAddr, mode: Mode, forwarded: Arc<Mutex<Vec<String>>>) {
    let mut buf = vec![0u8; 64 << 10];
    let Ok(n) = s.read(&mut buf).await else {
        return;
    };
    match mode {
        Mode::Hang => {
            let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
            let _ = s.write_all(head).await;
            return std::future::pending().await;
        }
        Mode::Delay(d) => tokio::time::sleep(d).await,
        Mode::Forward => {}
    }
    let head = String::from_utf8_lossy(&buf[..n]).into_owned();
    let line = head.lines().next().unwrap_or_default().to_owned();
    forwarded.lock().unwrap().push(line);
    let mut upstream = TcpStream::connect(to).await.unwrap();
    let sent = match mode {
        // One request per connection, so that each one waits (only `host` is signed).
        Mode::Delay(_) => head.replacen("\r\n", "\r\nConnection: close\r\n", 1),
        Mode::Hang | Mode::Forward => head,
    };
    let _ = upstream.write_all(sent.as_bytes()).await;
    let _ = tokio::io::copy_bidirectional(&mut s, &mut upstream).await;
}
