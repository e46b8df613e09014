//! The live dashboard: one self-contained page (HTML, CSS and JS; no external resources)
//! that polls `/api/pools`, `/api/status` and `/metrics` and draws them.

use hyper::StatusCode;

use super::{with_type, Resp};

/// The page, embedded at build time.
const PAGE: &str = include_str!("dashboard.html");

/// `GET /`.
pub(crate) fn page() -> Resp {
    let mut r = with_type(StatusCode::OK, "text/html; charset=utf-8", PAGE);
    // Everything the page needs is inline; it talks only to this origin.
    r.headers_mut().insert(
        hyper::header::CONTENT_SECURITY_POLICY,
        hyper::header::HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:",
        ),
    );
    r
}
