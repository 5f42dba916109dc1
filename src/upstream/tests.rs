//! Who gets the netrc credentials: only upstream requests, never peers or fleet members.

use super::*;
use crate::metrics::Metrics;
use http::StatusCode;

fn creds() -> Netrc {
    Netrc::parse("default login ci password hunter2").unwrap()
}

#[test]
fn credentials_go_to_upstreams_only() {
    let url = Url::parse("http://127.0.0.1:1/x.narinfo").unwrap();
    let netrc = creds();
    let c = netrc.lookup("127.0.0.1");
    let m = Metrics::default();
    let up = build_request(Method::GET, &url, Asker::Upstream(&m), c).unwrap();
    assert!(up.headers().contains_key(http::header::AUTHORIZATION));
    for asker in [Asker::Peer, Asker::Fleet] {
        let r = build_request(Method::GET, &url, asker, c).unwrap();
        assert!(!r.headers().contains_key(http::header::AUTHORIZATION));
    }
}

#[test]
fn auth_failures_are_classified() {
    assert_eq!(
        classify(StatusCode::UNAUTHORIZED, false),
        UpstreamStatus::AuthFailed
    );
    assert_eq!(
        classify(StatusCode::FORBIDDEN, true),
        UpstreamStatus::AuthFailed
    );
    // Without credentials a 403 stays "not found", as Nix reads it (S3 answers 403).
    assert_eq!(
        classify(StatusCode::FORBIDDEN, false),
        UpstreamStatus::ClientError
    );
    assert_eq!(
        classify(StatusCode::NOT_FOUND, true),
        UpstreamStatus::NotFound
    );
}
