//! Behind a corporate proxy: upstream requests go through the proxy `HTTPS_PROXY` names (a
//! real tinyproxy with Basic auth, `CONNECT` tunnels) to an https upstream whose certificate
//! a private CA signed (a real nginx), trusted with `--ca-file`; runners substitute with real
//! Nix. Without the CA the upstream is refused (503), and check-config shows the proxy without
//! its password.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_nixgate");

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .expect("openssl is installed (ci/test.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A private CA and a certificate for 127.0.0.1 it signed: (ca.pem, cert.pem, key.pem).
fn private_ca(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let p = |n: &str| dir.join(n);
    run(Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=nixgate test CA", "-keyout"])
        .args([p("ca.key"), "-out".into(), p("ca.pem")]));
    run(Command::new("openssl")
        .args([
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
        ])
        .args([p("key.pem"), "-out".into(), p("req.csr")]));
    std::fs::write(p("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-in"])
        .args([
            p("req.csr"),
            "-CA".into(),
            p("ca.pem"),
            "-CAkey".into(),
            p("ca.key"),
        ])
        .args(["-CAcreateserial", "-extfile"])
        .args([p("san.ext"), "-out".into(), p("cert.pem")]));
    (p("ca.pem"), p("cert.pem"), p("key.pem"))
}

/// A real tinyproxy on a held port, requiring `user`:`password`; killed when dropped.
struct Tinyproxy {
    port: u16,
    log: std::path::PathBuf,
    child: Child,
    _held: HeldPort,
}

impl Tinyproxy {
    async fn start(dir: &Path, user: &str, password: &str) -> Tinyproxy {
        let held = hold_port();
        let port = held.port;
        let log = dir.join("tinyproxy.log");
        let conf = format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 60\nAllow 127.0.0.1\nLogFile \"{}\"\n\
             LogLevel Connect\nMaxClients 50\nBasicAuth {user} {password}\n",
            log.display()
        );
        std::fs::write(dir.join("tinyproxy.conf"), conf).unwrap();
        let child = Command::new("tinyproxy")
            .arg("-d")
            .arg("-c")
            .arg(dir.join("tinyproxy.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tinyproxy is installed (apt-get install tinyproxy; ci/test.sh does)");
        let t = Tinyproxy {
            port,
            log,
            child,
            _held: held,
        };
        wait_until(
            Duration::from_secs(5),
            "tinyproxy to listen",
            || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            },
        )
        .await;
        t
    }

    fn connects(&self) -> usize {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines().filter(|l| l.contains("CONNECT")).count()
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `nixgate serve` with `env` (the proxy variables) and `args`, on a held port.
fn serve(dir: &Path, port: u16, env: &[(&str, String)], args: &[String]) -> Child {
    let mut c = Command::new(BIN);
    c.args([
        "serve",
        "--no-torrent",
        "--listen",
        &format!("127.0.0.1:{port}"),
    ])
    .arg("--cache-dir")
    .arg(dir)
    .args(args);
    for v in [
        "HTTPS_PROXY",
        "HTTP_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
        "SSL_CERT_FILE",
    ] {
        c.env_remove(v).env_remove(v.to_lowercase());
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c.stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn wait_serving(port: u16) {
    wait_until(Duration::from_secs(10), "nixgate to serve", || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
            && get(&format!("http://127.0.0.1:{port}/healthz"), &[])
                .await
                .status
                == 200
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_are_reached_through_the_proxy_with_a_private_ca() {
    let f = fixture().await;
    let work = tempfile::tempdir().unwrap();
    let (ca, cert, key) = private_ca(work.path());
    let nginx = Nginx::start_tls(&work.path().join("nginx"), &f.cache, &cert, &key).await;
    std::fs::create_dir_all(work.path().join("proxy")).unwrap();
    let proxy = Tinyproxy::start(&work.path().join("proxy"), "ci", "pr0xy-s3cret").await;
    let upstream = format!("https://127.0.0.1:{}", nginx.port);
    let env = [(
        "HTTPS_PROXY",
        format!("http://ci:pr0xy-s3cret@127.0.0.1:{}", proxy.port),
    )];
    let key_arg = ["--trusted-public-key".to_owned(), f.public_key.clone()];
    let up_arg = ["--upstream".to_owned(), upstream.clone()];

    // Without the private CA, the upstream's certificate is refused: 503, nothing fetched.
    let held = hold_port();
    let mut a = serve(
        &work.path().join("a"),
        held.port,
        &env,
        &[&key_arg[..], &up_arg[..]].concat(),
    );
    wait_serving(held.port).await;
    let info = format!(
        "http://127.0.0.1:{}/{}.narinfo",
        held.port,
        Fixture::hash(&f.top)
    );
    assert_eq!(get(&info, &[]).await.status, 503);
    a.kill().unwrap();
    a.wait().unwrap();
    drop(held);

    // With --ca-file: through the proxy (CONNECT), and a runner substitutes the closure.
    let held = hold_port();
    let ca_arg = ["--ca-file".to_owned(), ca.display().to_string()];
    let args = [&key_arg[..], &up_arg[..], &ca_arg[..]].concat();
    let mut b = serve(&work.path().join("b"), held.port, &env, &args);
    wait_serving(held.port).await;
    let before = proxy.connects();
    let url = format!("http://127.0.0.1:{}", held.port);
    let dest = work.path().join("client");
    assert_ok(&nix_copy(&url, &f.public_key, &f.top, &dest).await);
    assert!(
        proxy.connects() > before,
        "the upstream was reached through the proxy"
    );
    b.kill().unwrap();
    b.wait().unwrap();

    // check-config names the proxy and the CA file, never the proxy's password.
    let mut c = Command::new(BIN);
    c.arg("check-config")
        .arg("--cache-dir")
        .arg(work.path().join("c"))
        .args(&args);
    for (k, v) in &env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("https-proxy (env)"));
    let want = format!("http://***@127.0.0.1:{}", proxy.port);
    assert!(line.unwrap_or_default().ends_with(&want), "{text}");
    assert!(
        text.contains("(1 certificates)") && !text.contains("pr0xy-s3cret"),
        "{text}"
    );
}
