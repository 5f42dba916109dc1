//! Reads one request head off the wire (httparse, the parser hyper itself uses) and decides
//! who answers it: the zero-copy NAR path, hyper for this one request, or hyper for the rest of
//! the connection. Pure: no IO, so the framing rules are tested on bytes.
//!
//! Only heads whose framing is beyond doubt stay off hyper's connection: GET or HEAD, no
//! `Transfer-Encoding`, no `Content-Length` other than one `0`, no `Expect` or `Upgrade`.
//! Then the request ends exactly where its head ends, for us and for hyper alike, and the
//! bytes after it belong to the next request. Anything else gives hyper the connection.

use http::{HeaderValue, Uri};

use super::routes::{parse, Target};
use crate::nix::hash::Sha256;
use crate::peers::fleet::FLEET_HEADER;

/// The longest head read here; a longer one goes to hyper, which has its own limit.
pub const MAX_HEAD: usize = 16 << 10;
/// Headers parsed here at most; more go to hyper.
const MAX_HEADERS: usize = 64;

/// A GET or HEAD of a NAR over HTTP/1.1 keep-alive: answered here when it is a cache hit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarAsk {
    pub file_hash: Sha256,
    pub ext: &'static str,
    /// HEAD: headers only.
    pub head: bool,
    /// The `Range` header (visible ASCII, as hyper's path reads it).
    pub range: Option<String>,
    /// Sent by a fleet member (`X-Nixgate-Fleet`): counted as such.
    pub fleet: bool,
    /// The request path, for the status page's events.
    pub path: String,
}

/// What to do with the bytes read so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// The head is not complete yet (and fits): read more.
    Partial,
    /// A NAR request whose head is `len` bytes.
    Nar(usize, NarAsk),
    /// A request without a body whose head is `len` bytes: hyper answers it alone.
    One(usize),
    /// Anything else (a body, odd framing, a parse error, a head too long): hyper takes the
    /// connection from here, bytes read so far included.
    Handoff,
}

/// How a complete head frames its request.
enum Framing {
    /// No body, and nothing that changes the connection.
    Bodiless,
    /// A body, `Expect`, `Upgrade`, or anything unclear.
    Other,
}

fn framing(headers: &[httparse::Header<'_>]) -> Framing {
    let mut lengths = 0;
    for h in headers {
        let n = h.name;
        if n.eq_ignore_ascii_case("transfer-encoding")
            || n.eq_ignore_ascii_case("expect")
            || n.eq_ignore_ascii_case("upgrade")
        {
            return Framing::Other;
        }
        if n.eq_ignore_ascii_case("content-length") {
            lengths += 1;
            if h.value != b"0" || lengths > 1 {
                return Framing::Other;
            }
        }
    }
    Framing::Bodiless
}

/// A header value as `HeaderValue::to_str` would give it (visible ASCII only).
fn text(v: &[u8]) -> Option<String> {
    HeaderValue::from_bytes(v)
        .ok()
        .and_then(|h| h.to_str().ok().map(str::to_owned))
}

/// True when the `Connection` headers leave HTTP/1.1 keep-alive as it is (none, or only
/// `keep-alive`), so hyper's answer would carry no `Connection` header.
fn plain_keep_alive(headers: &[httparse::Header<'_>]) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .all(|h| h.value.eq_ignore_ascii_case(b"keep-alive"))
}

/// Decides what to do with `buf`, the bytes of a connection not consumed yet.
pub fn classify(buf: &[u8]) -> Next {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n <= MAX_HEAD => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Next::Partial,
        _ => return Next::Handoff,
    };
    let head = match req.method {
        Some("GET") => false,
        Some("HEAD") => true,
        _ => return Next::Handoff,
    };
    if matches!(framing(req.headers), Framing::Other) {
        return Next::Handoff;
    }
    if req.version != Some(1) || !plain_keep_alive(req.headers) {
        return Next::One(len);
    }
    match nar_ask(&req, head) {
        Some(ask) => Next::Nar(len, ask),
        None => Next::One(len),
    }
}

/// The NAR request in a complete, bodiless HTTP/1.1 GET or HEAD head, if it is one.
fn nar_ask(req: &httparse::Request<'_, '_>, head: bool) -> Option<NarAsk> {
    let uri: Uri = req.path?.parse().ok()?;
    let Target::Nar { file_hash, ext } = parse(uri.path()) else {
        return None;
    };
    let headers: &[httparse::Header<'_>] = req.headers;
    let named = |name: &'static str| {
        headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
    };
    let mut ranges = named("range");
    let range = ranges.next().and_then(|h| text(h.value));
    if ranges.next().is_some() {
        return None;
    }
    Some(NarAsk {
        file_hash,
        ext,
        head,
        range,
        fleet: named(FLEET_HEADER).next().is_some(),
        path: uri.path().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAR: &str = "/nar/1a1bsj6a88svx7w9zf6k8ly3sinibliwr96pmhyqnxvslaid8s5j.nar.xz";

    fn get(extra: &str) -> String {
        format!("GET {NAR} HTTP/1.1\r\nHost: x\r\n{extra}\r\n")
    }

    #[test]
    fn plain_nar_gets_and_heads_are_ours() {
        let r = get("Range: bytes=1-2\r\n");
        match classify(r.as_bytes()) {
            Next::Nar(n, ask) => {
                assert_eq!(n, r.len());
                assert_eq!(ask.range.as_deref(), Some("bytes=1-2"));
                assert!(!ask.head && !ask.fleet);
            }
            other => panic!("{other:?}"),
        }
        let h = format!("HEAD {NAR} HTTP/1.1\r\nConnection: keep-alive\r\n\r\n");
        assert!(matches!(
            classify(h.as_bytes()),
            Next::Nar(_, NarAsk { head: true, .. })
        ));
        let cl0 = get("Content-Length: 0\r\n");
        assert!(matches!(classify(cl0.as_bytes()), Next::Nar(..)));
    }

    #[test]
    fn pipelined_bytes_are_left_for_the_next_request() {
        let one = get("");
        let two = format!("{one}GET /nix-cache-info HTTP/1.1\r\n\r\n");
        assert!(matches!(classify(two.as_bytes()), Next::Nar(n, _) if n == one.len()));
        assert_eq!(
            classify(&two.as_bytes()[one.len()..]),
            Next::One(two.len() - one.len())
        );
        assert_eq!(classify(&one.as_bytes()[..10]), Next::Partial);
    }

    #[test]
    fn anything_with_a_body_or_odd_framing_goes_to_hyper() {
        for extra in [
            "Content-Length: 5\r\n",
            "Content-Length: 0\r\nContent-Length: 0\r\n",
            "Content-Length: 00\r\n",
            "Transfer-Encoding: chunked\r\n",
            "Expect: 100-continue\r\n",
            "Upgrade: h2c\r\n",
        ] {
            assert_eq!(classify(get(extra).as_bytes()), Next::Handoff, "{extra}");
        }
        let post = format!("POST {NAR} HTTP/1.1\r\n\r\n");
        assert_eq!(classify(post.as_bytes()), Next::Handoff);
        assert_eq!(
            classify(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"),
            Next::Handoff
        );
        let long = get(&format!("X: {}\r\n", "a".repeat(MAX_HEAD)));
        assert_eq!(classify(long.as_bytes()), Next::Handoff);
        assert_eq!(classify(&long.as_bytes()[..MAX_HEAD]), Next::Handoff);
    }

    #[test]
    fn other_routes_and_connection_nuances_go_to_hyper_one_at_a_time() {
        let ni = "GET /6dyjazmc27x71a77v1pcbi549rpk5wh6.narinfo HTTP/1.1\r\n\r\n";
        assert_eq!(classify(ni.as_bytes()), Next::One(ni.len()));
        for r in [
            get("Connection: close\r\n"),
            get("Range: bytes=1-2\r\nRange: bytes=3-4\r\n"),
            format!("GET {NAR} HTTP/1.0\r\n\r\n"),
        ] {
            assert_eq!(classify(r.as_bytes()), Next::One(r.len()), "{r}");
        }
    }
}
