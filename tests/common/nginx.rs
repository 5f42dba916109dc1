//! A real nginx upstream for tests: serves a directory (the fixture's binary cache) on a held
//! loopback port behind `auth_basic`, from a config generated in a temp dir; `/redir/…`
//! answers a 302 to another host. Also a tiny HTTP listener that records request heads (to
//! prove what a peer or a redirect target never receives).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::appliance::{hold_port, HeldPort};
use super::wait::wait_until;

/// A running nginx; killed when dropped.
pub struct Nginx {
    pub port: u16,
    child: Child,
    /// The port, held (nginx binds it with `SO_REUSEADDR` too) so nothing else takes it.
    _held: HeldPort,
}

impl Nginx {
    /// nginx serving `root` on 127.0.0.1 to `user`:`password` only; `/redir/X` answers a
    /// 302 to `redirect_to` + `/X`.
    pub async fn start(
        dir: &Path,
        root: &Path,
        user: &str,
        password: &str,
        redirect_to: &str,
    ) -> Nginx {
        std::fs::create_dir_all(dir).unwrap();
        let hash = Command::new("openssl")
            .args(["passwd", "-apr1", password])
            .output()
            .expect("openssl is installed");
        let hash = String::from_utf8(hash.stdout).unwrap();
        std::fs::write(dir.join("htpasswd"), format!("{user}:{}\n", hash.trim())).unwrap();
        let d = dir.display();
        let server = |port: u16| {
            format!(
                "listen 127.0.0.1:{port};
    root {root};
    location /redir/ {{ rewrite ^/redir/(.*)$ {redirect_to}/$1 redirect; }}
    location / {{ auth_basic \"private cache\"; auth_basic_user_file {d}/htpasswd; }}",
                root = root.display()
            )
        };
        Self::start_with(dir, server).await
    }

    /// nginx serving `root` over https on 127.0.0.1 with `cert` and `key` (PEM files).
    pub async fn start_tls(dir: &Path, root: &Path, cert: &Path, key: &Path) -> Nginx {
        let server = |port: u16| {
            format!(
                "listen 127.0.0.1:{port} ssl;
    ssl_certificate {}; ssl_certificate_key {};
    root {};",
                cert.display(),
                key.display(),
                root.display()
            )
        };
        Self::start_with(dir, server).await
    }

    /// nginx with one server block (`server(port)`), on a held loopback port.
    async fn start_with(dir: &Path, server: impl Fn(u16) -> String) -> Nginx {
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        let held = hold_port();
        let port = held.port;
        let d = dir.display();
        let conf = format!(
            "daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log {d}/access.log;
  client_body_temp_path {d}/tmp/body; proxy_temp_path {d}/tmp/proxy;
  fastcgi_temp_path {d}/tmp/fastcgi; uwsgi_temp_path {d}/tmp/uwsgi; scgi_temp_path {d}/tmp/scgi;
  server {{
    {}
  }}
}}
",
            server(port)
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let child = Command::new("nginx")
            .args(["-e", &format!("{d}/error.log"), "-c"])
            .arg(dir.join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx is installed");
        // Held from here on, so that a panic below kills and reaps it (Drop).
        let mut nginx = Nginx {
            port,
            child,
            _held: held,
        };
        let log = dir.join("error.log");
        wait_until(Duration::from_secs(5), "nginx to listen", || {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                panic!("nginx exited ({status}): {text}");
            }
            async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            }
        })
        .await;
        nginx
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP listener that records every request head it gets and answers 404.
pub struct Recorder {
    pub port: u16,
    pub heads: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    pub async fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let heads: Arc<Mutex<Vec<String>>> = Default::default();
        let h = heads.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let h = h.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    h.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&buf).into_owned());
                    let _ = s
                        .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .await;
                });
            }
        });
        Recorder { port, heads }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The recorded heads.
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}
