//! The admin listener (hyper): `/metrics`, `/healthz`, `/api/*` and the dashboard.
//!
//! One task per admin connection on the control runtime. A slow or idle admin client
//! cannot hold a connection for ever (header read timeout, body timeout, a cap on a
//! connection's lifetime, on the number of admin connections and on those of one client
//! address), and request bodies are bounded. Connections over the caps go to a small
//! reserve ([`reserve`]) that answers only `/healthz`, so a liveness probe is answered
//! whatever the admin load. `Host` is checked ([`host_allowed`]) against DNS rebinding.
//! Routing is one `match` in [`route`], so the endpoint table reads off the code.

mod api;
mod dashboard;
mod reserve;

use std::convert::Infallible;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Semaphore;

use crate::shared::Shared;

/// A client must send a complete request head within this.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// ... and its body within this.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request body accepted (the API takes none that matter; this only bounds memory).
const MAX_BODY_BYTES: usize = 64 * 1024;
/// Largest request head (request line and headers); over it: 431.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Largest read buffer hyper keeps per connection.
const MAX_BUF_BYTES: usize = 64 * 1024;
/// A keep-alive connection is asked to close (gracefully) after this long.
const MAX_CONNECTION_AGE: Duration = Duration::from_secs(300);
/// Admin connections served at once; more go to the reserve.
const MAX_CONNECTIONS: usize = 256;
/// Admin connections served at once for one client address; more go to the reserve.
const MAX_CONNECTIONS_PER_PEER: usize = 32;

/// The response type of every handler.
pub(crate) type Resp = Response<Full<Bytes>>;

/// State the admin handlers share.
pub(crate) struct Admin {
    /// The balancer's shared state.
    pub shared: Arc<Shared>,
}

/// Starts serving the admin API on `listener` (on the current runtime).
pub fn spawn(shared: Arc<Shared>, listener: std::net::TcpListener) {
    let listener = match listener
        .set_nonblocking(true)
        .and_then(|_| tokio::net::TcpListener::from_std(listener))
    {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("admin: cannot register listener: {e}");
            return;
        }
    };
    let admin = Arc::new(Admin { shared });
    tokio::spawn(accept_loop(admin, listener));
}

async fn accept_loop(admin: Arc<Admin>, listener: tokio::net::TcpListener) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let peers = reserve::PeerCount::default();
    let spare = Arc::new(reserve::Reserve::default());
    loop {
        match listener.accept().await {
            Ok((sock, peer)) => {
                let admitted = peers
                    .enter(peer.ip(), MAX_CONNECTIONS_PER_PEER)
                    .and_then(|p| Some((p, permits.clone().try_acquire_owned().ok()?)));
                let admin = admin.clone();
                match admitted {
                    Some(held) => {
                        tokio::spawn(async move {
                            serve_connection(admin, sock).await;
                            drop(held);
                        });
                    }
                    None => {
                        tracing::debug!(%peer, "admin: connection caps reached, serving /healthz only");
                        tokio::spawn(reserve::serve(admin, spare.clone(), sock));
                    }
                }
            }
            Err(e) => {
                tracing::warn!("admin: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

async fn serve_connection(admin: Arc<Admin>, sock: tokio::net::TcpStream) {
    let service = service_fn(move |req| {
        let admin = admin.clone();
        async move { Ok::<_, Infallible>(handle(&admin, req).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_header_size(MAX_HEAD_BYTES)
        .max_buf_size(MAX_BUF_BYTES)
        .serve_connection(TokioIo::new(sock), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!("admin connection ended: {e}");
            }
        }
        _ = tokio::time::sleep(MAX_CONNECTION_AGE) => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(BODY_READ_TIMEOUT, conn).await;
        }
    }
}

/// Reads (bounded in size and time) the body, then routes the request.
async fn handle(admin: &Admin, req: Request<Incoming>) -> Resp {
    let (parts, body) = req.into_parts();
    if parts.uri.path() != "/healthz" {
        let host = parts.headers.get(hyper::header::HOST).map(|h| h.to_str().unwrap_or("\u{0}"));
        let rt = admin.shared.runtime.load();
        let extra = rt.config.admin.as_ref().map(|a| a.hosts.as_slice()).unwrap_or(&[]);
        if !host_allowed(host, extra) {
            return text(
                StatusCode::MISDIRECTED_REQUEST,
                "Host not served here (use an IP address, localhost, or a name in admin.hosts)\n",
            );
        }
    }
    if let Some(r) = cross_origin(&parts) {
        return r;
    }
    if let Some(r) = unauthorized(admin, &parts) {
        return r;
    }
    // No endpoint reads a body; it is still received (bounded) so keep-alive stays in step.
    match tokio::time::timeout(BODY_READ_TIMEOUT, Limited::new(body, MAX_BODY_BYTES).collect()).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return text(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");
        }
        Ok(Err(_)) => return text(StatusCode::BAD_REQUEST, "unreadable request body\n"),
        Err(_) => return text(StatusCode::REQUEST_TIMEOUT, "request body not received in time\n"),
    }
    route(admin, &parts.method, parts.uri.path()).await
}

/// With `admin.token` set, every request needs `Authorization: Bearer TOKEN`, except
/// `/healthz` (a liveness probe carries no secret) and, with `public_metrics`, `/metrics`.
fn unauthorized(admin: &Admin, parts: &hyper::http::request::Parts) -> Option<Resp> {
    let rt = admin.shared.runtime.load();
    let cfg = rt.config.admin.as_ref()?;
    let token = cfg.token.as_deref()?;
    let path = parts.uri.path();
    if path == "/healthz" || (path == "/metrics" && cfg.public_metrics) {
        return None;
    }
    // The dashboard page itself holds no data; its requests carry the token.
    if path == "/" && parts.method == Method::GET {
        return None;
    }
    let given = parts
        .headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_credentials);
    if given.is_some_and(|g| same_secret(g.as_bytes(), token.as_bytes())) {
        return None;
    }
    let mut r = text(StatusCode::UNAUTHORIZED, "admin token required (Authorization: Bearer TOKEN)\n");
    r.headers_mut().insert(
        hyper::header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"switchyard\""),
    );
    Some(r)
}

/// The credentials of an `Authorization` value with the `Bearer` scheme, whose name is
/// case-insensitive (RFC 9110 §11.1: `bearer`, `BEARER` too), separated by one or more spaces.
fn bearer_credentials(v: &str) -> Option<&str> {
    let (scheme, rest) = v.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

/// Compares two secrets in time that depends only on their lengths.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// DNS rebinding: a page of `evil.example`, whose name then resolves to this host, reaches
/// the API as a same-origin page with `Host: evil.example`. Only names an attacker cannot
/// rebind are served: IP literals, `localhost`, and the names listed in `admin.hosts` (an
/// entry with a port matches only that port). No `Host` at all is not a browser: allowed.
/// `/healthz` is exempt: it reveals nothing, and orchestrators probe it by pod IP or name.
fn host_allowed(host: Option<&str>, extra: &[String]) -> bool {
    let Some(host) = host else { return true };
    let host = host.trim().to_ascii_lowercase();
    let name = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((ip, _)) => return ip.parse::<std::net::Ipv6Addr>().is_ok() || extra.contains(&host),
            None => return false,
        },
        None => match host.rsplit_once(':') {
            Some((n, port)) if port.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => host.as_str(),
        },
    };
    name == "localhost" || name.parse::<std::net::Ipv4Addr>().is_ok() || extra.iter().any(|h| *h == host || h == name)
}

/// A browser page of another origin must not drive the API (CSRF): when the request
/// carries an `Origin`, its host must be the `Host` the request was sent to.
fn cross_origin(parts: &hyper::http::request::Parts) -> Option<Resp> {
    let origin = parts.headers.get(hyper::header::ORIGIN)?.to_str().ok().unwrap_or("");
    let host = parts.headers.get(hyper::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    let origin_host = origin.split_once("://").map(|(_, h)| h).unwrap_or("");
    (host.is_empty() || !origin_host.eq_ignore_ascii_case(host)).then(|| text(StatusCode::FORBIDDEN, "cross-origin request refused\n"))
}

/// Every endpoint: path shape → allowed methods → handler.
async fn route(admin: &Admin, method: &Method, path: &str) -> Resp {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (allow, get): (&str, bool) = match segments.as_slice() {
        [""] | ["healthz"] | ["metrics"] | ["api", "pools"] | ["api", "status"] => ("GET, HEAD", true),
        ["api", "reload"] | ["api", "pools", _, "backends", _, "drain" | "undrain"] => ("POST", false),
        _ => return text(StatusCode::NOT_FOUND, "not found\n"),
    };
    let allowed = if get {
        method == Method::GET || method == Method::HEAD
    } else {
        method == Method::POST
    };
    if !allowed {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        r.headers_mut().insert(ALLOW, HeaderValue::from_static(allow));
        return r;
    }
    match segments.as_slice() {
        [""] => dashboard::page(),
        ["healthz"] if admin.shared.draining.load(Relaxed) => text(StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
        ["healthz"] => text(StatusCode::OK, "ok\n"),
        ["metrics"] => {
            let mut body = crate::metrics::render();
            let max = admin.shared.runtime.load().config.limits.max_connections;
            crate::metrics::render_process(&mut body, admin.shared.admission.active(), max);
            with_type(StatusCode::OK, "text/plain; version=0.0.4", crate::metrics::with_help(&body))
        }
        ["api", "pools"] => json(StatusCode::OK, &api::pools(&admin.shared)),
        ["api", "status"] => json(StatusCode::OK, &api::status(admin)),
        ["api", "reload"] => api::reload(admin).await,
        ["api", "pools", pool, "backends", address, action] => match (percent_decode(pool), percent_decode(address)) {
            (Some(pool), Some(address)) => api::set_drain(&admin.shared, &pool, &address, *action == "drain"),
            _ => text(StatusCode::BAD_REQUEST, "bad percent-encoding in path\n"),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Decodes `%XX` escapes of a path segment; `None` for a broken escape or non-UTF-8 result.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A response with a content type.
pub(crate) fn with_type(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(hyper::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// A plain-text response.
pub(crate) fn text(status: StatusCode, body: impl Into<Bytes>) -> Resp {
    with_type(status, "text/plain; charset=utf-8", body)
}

/// A JSON response.
pub(crate) fn json(status: StatusCode, v: &serde_json::Value) -> Resp {
    let mut s = v.to_string();
    s.push('\n');
    with_type(status, "application/json", s)
}

#[cfg(test)]
mod tests {
    use super::{percent_decode, same_secret};

    #[test]
    fn hosts_that_cannot_be_rebound_are_allowed() {
        use super::host_allowed;
        let extra = vec!["admin.internal".to_string(), "lb.example:9090".to_string()];
        for ok in [
            None,
            Some("127.0.0.1:9090"),
            Some("10.1.2.3"),
            Some("[::1]:9090"),
            Some("LOCALHOST:9090"),
            Some("localhost"),
            Some("admin.internal:1234"),
            Some("lb.example:9090"),
        ] {
            assert!(host_allowed(ok, &extra), "{ok:?}");
        }
        for bad in [
            Some("evil.example:9090"),
            Some("evil.example"),
            Some("lb.example:80"),
            Some("localhost.evil.example"),
            Some("127.0.0.1.evil.example:9090"),
            Some("[::1"),
            Some("\u{0}"),
            Some(""),
        ] {
            assert!(!host_allowed(bad, &extra), "{bad:?}");
        }
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!same_secret(b"0123456789abcdef", b"0123456789abcdeX"));
        assert!(!same_secret(b"0123456789abcdef", b"0123456789abcde"));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("127.0.0.1%3A9001").as_deref(), Some("127.0.0.1:9001"));
        assert_eq!(percent_decode("127.0.0.1:9001").as_deref(), Some("127.0.0.1:9001"));
        assert_eq!(percent_decode("%5B%3a%3a1%5D%3A80").as_deref(), Some("[::1]:80"));
        assert_eq!(percent_decode("bad%3"), None);
        assert_eq!(percent_decode("bad%zz"), None);
        assert_eq!(percent_decode("%ff"), None);
        assert_eq!(percent_decode("%"), None);
    }
}
