//! How upstream requests leave the appliance: through the proxy that `HTTPS_PROXY`,
//! `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY` name (as curl reads them: an `https://` upstream is
//! reached through a `CONNECT` tunnel, an `http://` one by sending the absolute URL to the
//! proxy), and trusting the Mozilla roots plus the CAs of `--ca-file` (or `SSL_CERT_FILE`), for
//! networks behind a TLS-inspecting proxy. Peers, fleet members and runners never go through
//! the proxy: the appliance asks them with a client of its own (`UpstreamClient::direct`).

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::net::TcpStream;
use tower_service::Service;

/// The proxy variables (as set, credentials included: never print them unredacted) and the
/// extra trusted CAs. `Default`: direct, Mozilla roots only.
#[derive(Clone, Default)]
pub struct Egress {
    pub https_proxy: Option<String>,
    pub http_proxy: Option<String>,
    pub no_proxy: Option<String>,
    /// The file the extra CAs came from, and the certificates in it.
    pub ca_file: Option<PathBuf>,
    pub extra_roots: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for Egress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = |v: &Option<String>| v.as_deref().map(crate::redact::redact_all);
        f.debug_struct("Egress")
            .field("https_proxy", &r(&self.https_proxy))
            .field("http_proxy", &r(&self.http_proxy))
            .field("no_proxy", &self.no_proxy)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// A CA file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CaFileError {
    #[error("{path}: {error}")]
    Read { path: PathBuf, error: String },
    #[error("{0}: no PEM certificate in it")]
    Empty(PathBuf),
}

fn var(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|n| std::env::var(n).ok())
        .filter(|v| !v.trim().is_empty())
}

impl Egress {
    /// Reads the proxy variables of this process and the CA file (`ca_file`, else
    /// `SSL_CERT_FILE` when set).
    pub fn from_env(ca_file: Option<&Path>) -> Result<Egress, CaFileError> {
        let all = var(&["ALL_PROXY", "all_proxy"]);
        let ca_file = ca_file
            .map(Path::to_owned)
            .or_else(|| var(&["SSL_CERT_FILE"]).map(PathBuf::from));
        let extra_roots = match &ca_file {
            Some(p) => read_pem(p)?,
            None => Vec::new(),
        };
        Ok(Egress {
            https_proxy: var(&["HTTPS_PROXY", "https_proxy"]).or_else(|| all.clone()),
            http_proxy: var(&["HTTP_PROXY", "http_proxy"]).or(all),
            no_proxy: var(&["NO_PROXY", "no_proxy"]),
            ca_file,
            extra_roots,
        })
    }

    /// The proxy rules, when any proxy is set.
    pub fn matcher(&self) -> Option<Matcher> {
        if self.https_proxy.is_none() && self.http_proxy.is_none() {
            return None;
        }
        let b = Matcher::builder()
            .https(self.https_proxy.clone().unwrap_or_default())
            .http(self.http_proxy.clone().unwrap_or_default())
            .no(self.no_proxy.clone().unwrap_or_default());
        Some(b.build())
    }

    /// The TLS client configuration: Mozilla's roots and the extra CAs.
    pub fn tls_config(&self) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        for c in &self.extra_roots {
            // Checked when the file was read; a certificate rustls refuses is skipped.
            let _ = roots.add(c.clone());
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth()
    }
}

fn read_pem(path: &Path) -> Result<Vec<CertificateDer<'static>>, CaFileError> {
    let err = |e: &dyn std::fmt::Display| CaFileError::Read {
        path: path.to_owned(),
        error: e.to_string(),
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(&e))?;
    let mut roots = rustls::RootCertStore::empty();
    let (_, bad) = roots.add_parsable_certificates(certs.iter().cloned());
    if certs.is_empty() || bad == certs.len() {
        return Err(CaFileError::Empty(path.to_owned()));
    }
    Ok(certs)
}

/// Connects to upstreams directly or through the proxy the rules name.
#[derive(Clone)]
pub struct EgressConnector {
    http: HttpConnector,
    proxies: Option<Arc<Matcher>>,
}

impl EgressConnector {
    pub fn new(http: HttpConnector, proxies: Option<Matcher>) -> Self {
        EgressConnector {
            http,
            proxies: proxies.map(Arc::new),
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Service<Uri> for EgressConnector {
    type Response = Conn;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Conn, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let mut http = self.http.clone();
        let intercept = self.proxies.as_ref().and_then(|m| m.intercept(&dst));
        Box::pin(async move {
            let Some(proxy) = intercept else {
                let io = http.call(dst).await?;
                return Ok(Conn { io, proxied: false });
            };
            if dst.scheme() == Some(&http::uri::Scheme::HTTPS) {
                // TLS end to end, through a CONNECT tunnel: the proxy sees only the host.
                let mut tunnel = Tunnel::new(proxy.uri().clone(), http);
                if let Some(auth) = proxy.basic_auth() {
                    tunnel = tunnel.with_auth(auth.clone());
                }
                let io = tunnel.call(dst).await?;
                return Ok(Conn { io, proxied: false });
            }
            // Plain HTTP: to the proxy, with the absolute URL as the request target.
            let io = http.call(proxy.uri().clone()).await?;
            Ok(Conn { io, proxied: true })
        })
    }
}

/// A connection to an upstream, or to the proxy that forwards plain-HTTP requests to it.
pub struct Conn {
    io: TokioIo<TcpStream>,
    proxied: bool,
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        self.io.connected().proxy(self.proxied)
    }
}

impl Read for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl Write for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Whether `url` is sent through a plain-HTTP proxy, and that proxy's credentials.
pub fn proxy_auth(m: &Matcher, url: &url::Url) -> Option<http::HeaderValue> {
    if url.scheme() != "http" {
        return None;
    }
    let uri: Uri = url.as_str().parse().ok()?;
    m.intercept(&uri)?.basic_auth().cloned()
}
