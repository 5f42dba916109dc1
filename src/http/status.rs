//! `/` (the status page, one self-contained HTML file with the current data inlined so it
//! renders at once) and `/_status/v1` (the same data as JSON, see `status::report`).

use std::sync::Arc;

use bytes::Bytes;
use http::{header, Response, StatusCode};

use super::body;
use super::error::ServeError;
use super::state::App;
use crate::metrics::Outcome;
use crate::status::report::{Parts, Report};

/// The page: HTML, CSS and a small script drawing SVG plots; nothing is loaded from elsewhere.
pub const PAGE: &str = include_str!("status.html");
/// Where the page's HTML takes the initial JSON.
const SLOT: &str = "\"__NIXGATE_STATUS__\"";
/// Nothing but this origin's JSON may be fetched; no other script, style or font may load.
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                   connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'";

type Handled = Result<(Outcome, Response<body::Body>), ServeError>;

/// The report as JSON that is also safe inside a `<script>` element (no `<` at all).
async fn report_json(app: &Arc<App>) -> String {
    let mut report = Report::build(&parts(app));
    report.name_events(&app.store).await;
    serde_json::to_string(&report)
        .expect("the report serializes")
        .replace('<', "\\u003c")
}

fn respond(ctype: &'static str, text: String) -> Handled {
    let b = Bytes::from(text);
    let resp = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, ctype)
        .header(header::CONTENT_LENGTH, b.len())
        .header(header::CACHE_CONTROL, "no-store")
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(header::CONTENT_SECURITY_POLICY, CSP)
        // For operators: not counted as served bytes (a page view is not egress saved).
        .body(body::small(b))
        .expect("valid headers");
    Ok((Outcome::Hit, resp))
}

/// `/`: the status page.
pub async fn page(app: &Arc<App>) -> Handled {
    let html = PAGE.replacen(SLOT, &report_json(app).await, 1);
    respond("text/html; charset=utf-8", html)
}

/// `/_status/v1`: the status data.
pub async fn json(app: &Arc<App>) -> Handled {
    respond("application/json", report_json(app).await)
}

/// The appliance's parts a status report reads.
fn parts(app: &App) -> Parts<'_> {
    Parts {
        metrics: &app.metrics,
        status: &app.status,
        store: &app.store,
        fetcher: &app.fetcher,
        peers: &app.peers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_is_self_contained() {
        assert!(PAGE.contains(SLOT));
        for external in ["https:", "<link", "@import", "src=", "url(", "@font-face"] {
            assert!(!PAGE.contains(external), "{external}");
        }
        // The one http: URL is the SVG namespace, which is a name, never fetched.
        let http = PAGE.matches("http:").count();
        assert_eq!(http, PAGE.matches("http://www.w3.org/2000/svg").count());
    }
}
