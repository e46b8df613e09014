//! The plain HTTP path of a connection: hyper serves it (keep-alive, bodies streamed both
//! ways) and each request is routed, balanced and forwarded over a pooled keep-alive
//! connection to a backend of its pool. An upgrade request on the same connection leaves
//! hyper for the WebSocket path ([`super::upgrade`]) and its relay.
//!
//! What a plain client gets, one place each: `400` (`http: reject`, no Host, ambiguous
//! framing), `404` (no route), `413` (body over the limit), `502` (no valid response),
//! `503` + jittered `Retry-After` (nothing available or shed), `504` (no response head
//! within `request_timeout`). Connect failures move on to the next backend; failures the
//! backend is responsible for feed passive health.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use hyper::header::{HeaderValue, CONTENT_LENGTH};
use hyper::upgrade::OnUpgrade;
use hyper::{Request, Response, StatusCode};

use super::answer::{empty, from_raw_head, overloaded, refusal, shed_close, shed_head};
use super::client::{ClientConn, PendingUpgrade};
use super::forward::outgoing;
use super::upgrade::{self, Admit, Answer};
use crate::client_addr::resolve;
use crate::config::{HttpMode, ListenerConfig};
use crate::handshake::{header, wants_websocket, Refusal, MAX_HEADERS};
use crate::http::body::{Limited, RequestTally};
use crate::http::Body;
use crate::route::route;
use crate::runtime::Runtime;

/// Answers one request (of an HTTP/1.1 connection, or one stream of an HTTP/2 one).
pub(super) async fn request(cx: Arc<ClientConn>, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let rt = cx.shared.runtime.load_full();
    // The listener's settings under the name its socket has now.
    let name = cx.listener_name();
    let Some(lcfg) = rt.config.listeners.iter().find(|l| *l.name == *name) else {
        return refusal(Refusal::Overloaded { retry_after_s: 1 });
    };
    let (mut parts, body) = req.into_parts();
    if let Err(r) = from_h2(&mut parts) {
        return refusal(r);
    }
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut hs = headers_of_map(&parts.headers);
    // The checks of the first request (read raw) hold for every request of the connection.
    if let Err(r) = check_request(&parts, &hs) {
        return refusal(r);
    }
    if wants_websocket(&hs) {
        // What `hyper::upgrade::on` takes from a request; hyper leaves none for a request
        // without `Upgrade` (then an empty one: the handshake is refused before it is used).
        let on = parts.extensions.remove::<OnUpgrade>();
        let on = on.unwrap_or_else(|| hyper::upgrade::on(Request::new(())));
        return upgrade_request(&cx, &rt, lcfg, &parts, target, &mut hs, on, started).await;
    }
    // RFC 9112 §3.2: a request without Host is refused (an HTTP/1.0 one too: it would go
    // out as HTTP/1.1, which must carry one).
    let Some(host) = crate::handshake::host(&hs) else {
        return refusal(Refusal::BadRequest("missing Host header"));
    };
    let Some(route) = route(&lcfg.routes, target, host, &hs) else {
        return refusal(Refusal::NoRoute);
    };
    if route.http == HttpMode::Reject {
        return refusal(Refusal::BadRequest(
            "plain HTTP is not served on this route (WebSocket upgrades only)",
        ));
    }
    let Some(pool) = rt.pools.get(&route.pool) else {
        return refusal(Refusal::NoRoute);
    };
    let limits = &rt.config.limits;
    // A request that names no client is the connection's own client (its forwarding
    // values made once per connection).
    let resolved;
    let client = match crate::handshake::header(&hs, "x-forwarded-for") {
        None => &cx.direct,
        Some(_) => {
            resolved = resolve(&cx.peer, &hs, &limits.trusted_proxies);
            &resolved
        }
    };
    // Through a trusted proxy, the request is its client's connection while in flight (no
    // rate token: a proxy's keep-alive requests are not new connections).
    let client_slot = match cx.per_request {
        false => None,
        true => match cx.shared.admission.admit_client(client.ip(), limits, false, crate::clock::now_ms()) {
            Ok(s) => s,
            Err(reason) => return overloaded(&rt, reason),
        },
    };
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_request_body_bytes) {
        return refusal(Refusal::BodyTooLarge);
    }
    let Some(out) = outgoing(&parts, target, client, cx.reuse(client), host) else {
        return refusal(Refusal::BadRequest("malformed request target"));
    };
    // Most requests have no body: they share one finished tally and an empty body (a boxed
    // empty body allocates nothing), instead of two allocations each.
    let (tally, mut body) = match body.is_end_stream() {
        true => (no_body_tally(), empty()),
        false => {
            let tally = Arc::new(RequestTally::default());
            let limited = Limited::new(body, limits.max_request_body_bytes, tally.clone(), limits.request_timeout);
            (tally, limited.boxed_unsync())
        }
    };
    if parts.headers.contains_key(hyper::header::TRANSFER_ENCODING) {
        // A chunked body is checked up to its first chunk before anything is forwarded: a
        // malformed chunk size (the usual smuggling probe) never reaches a backend. The body
        // bounds its own wait (`Limited`: a first chunk that does not come in
        // `request_timeout` is the client's stall).
        match body.frame().await {
            Some(Ok(first)) => body = http_body_util::StreamBody::new(PrependFrame(Some(first), body)).boxed_unsync(),
            None => body = empty(),
            Some(Err(_)) if tally.over_limit.load(std::sync::atomic::Ordering::Relaxed) => return refusal(Refusal::BodyTooLarge),
            Some(Err(_)) if tally.stalled.load(std::sync::atomic::Ordering::Relaxed) => return refusal(Refusal::BodyTimeout),
            Some(Err(_)) => return refusal(Refusal::BadRequest("malformed chunked body")),
        }
    }
    let req = super::forward::Forward {
        head: &parts,
        target,
        host,
        headers: &hs,
        client,
        client_slot,
        tally,
    };
    super::forward::forward(&cx, &rt, pool, req, Request::from_parts(out, body), started).await
}

/// An HTTP/2 request as an HTTP/1.1 backend must see it. Its host is named in `:authority`
/// (RFC 9113 §8.3.1): it becomes the `Host` the routes, the checks and the backend see; a
/// `Host` field that disagrees with it, or an authority with user information, is refused.
/// Cookies split over several fields (RFC 9113 §8.2.3) are joined into one with `; `, as
/// HTTP/1.1 wants them. HTTP/1.1 requests are left as they are.
pub(super) fn from_h2(parts: &mut hyper::http::request::Parts) -> Result<(), Refusal> {
    if parts.version != hyper::Version::HTTP_2 {
        return Ok(());
    }
    let cookies = parts.headers.get_all(hyper::header::COOKIE);
    if cookies.iter().nth(1).is_some() {
        let mut joined = Vec::new();
        for c in cookies {
            if !joined.is_empty() {
                joined.extend_from_slice(b"; ");
            }
            joined.extend_from_slice(c.as_bytes());
        }
        let v = HeaderValue::from_bytes(&joined).map_err(|_| Refusal::BadRequest("malformed cookie"))?;
        parts.headers.insert(hyper::header::COOKIE, v);
    }
    let Some(authority) = parts.uri.authority() else {
        return Ok(());
    };
    if authority.as_str().contains('@') {
        return Err(Refusal::BadRequest(":authority must not carry user information"));
    }
    match parts.headers.get(hyper::header::HOST) {
        Some(h) if !h.as_bytes().eq_ignore_ascii_case(authority.as_str().as_bytes()) => {
            Err(Refusal::BadRequest("Host disagrees with :authority"))
        }
        Some(_) => Ok(()),
        None => {
            let v = HeaderValue::from_str(authority.as_str()).map_err(|_| Refusal::BadRequest("malformed :authority"))?;
            parts.headers.insert(hyper::header::HOST, v);
            Ok(())
        }
    }
}

/// What every request of a connection must pass before it is routed: `CONNECT` is not a
/// reverse proxy's to carry (`405`); one `Host` that `Connection` does not name; at most
/// [`MAX_HEADERS`] fields; unambiguous framing (RFC 9112 §6.1, §6.3). The head's size is
/// hyper's (`max_header_size`).
pub(super) fn check_request(parts: &hyper::http::request::Parts, hs: &[httparse::Header<'_>]) -> Result<(), Refusal> {
    if parts.method == hyper::Method::CONNECT {
        return Err(Refusal::MethodNotAllowed);
    }
    if hs.len() > MAX_HEADERS {
        return Err(Refusal::HeadTooLarge);
    }
    if parts.headers.get_all(hyper::header::HOST).iter().nth(1).is_some() {
        return Err(Refusal::BadRequest("duplicated Host header"));
    }
    if crate::handshake::host_is_hop_by_hop(hs) {
        return Err(Refusal::BadRequest(crate::handshake::HOST_IN_CONNECTION));
    }
    crate::http::headers::check_framing(hs).map_err(|s| Refusal::BadRequest(s.reason()))
}

/// An upgrade on a keep-alive connection: the WebSocket path, answered through hyper.
#[allow(clippy::too_many_arguments)]
async fn upgrade_request<'h>(
    cx: &ClientConn,
    rt: &Runtime,
    lcfg: &ListenerConfig,
    parts: &'h hyper::http::request::Parts,
    target: &'h str,
    hs: &mut [httparse::Header<'h>],
    on: OnUpgrade,
    started: Instant,
) -> Response<Body> {
    let key = header(hs, "sec-websocket-key")
        .and_then(|k| std::str::from_utf8(k).ok())
        .unwrap_or("")
        .trim()
        .to_string();
    let head = httparse::Request {
        method: Some(parts.method.as_str()),
        path: Some(target),
        // An HTTP/1.0 upgrade is refused by `validate` (hyper would not switch anyway).
        version: Some(u8::from(parts.version == hyper::Version::HTTP_11)),
        headers: hs,
    };
    let admit = Admit::Held {
        client_counted: !cx.per_request,
    };
    let result = upgrade::prepare(&cx.shared, rt, lcfg, &head, &cx.peer, cx.tls, admit).await;
    let (answer, pending) = match result {
        Ok(prepared) => {
            let raw = prepared.response_head();
            (
                from_raw_head(&raw, StatusCode::SWITCHING_PROTOCOLS, &[]),
                PendingUpgrade::Relay(on, Box::new(prepared), started),
            )
        }
        Err(Answer::Refuse(r)) => return refusal(r),
        Err(Answer::Shed(reason)) => (
            from_raw_head(&shed_head(&key, head.headers), StatusCode::SWITCHING_PROTOCOLS, &[]),
            PendingUpgrade::Shed(on, shed_close(reason, &rt.config.shedding)),
        ),
    };
    if let Ok(mut u) = cx.upgrade.lock() {
        *u = Some(pending);
    }
    answer
}

/// The request's headers as the handshake and balancing code reads them.
pub(super) fn headers_of_map(map: &hyper::HeaderMap) -> Vec<httparse::Header<'_>> {
    map.iter()
        .map(|(n, v)| httparse::Header {
            name: n.as_str(),
            value: v.as_bytes(),
        })
        .collect()
}

/// The tally of every request without a body: nothing passed, finished. Shared (never
/// written: only a request body's [`Limited`] writes its tally).
fn no_body_tally() -> Arc<RequestTally> {
    static NONE: std::sync::OnceLock<Arc<RequestTally>> = std::sync::OnceLock::new();
    NONE.get_or_init(|| {
        let t = RequestTally::default();
        t.finished.store(true, std::sync::atomic::Ordering::Relaxed);
        Arc::new(t)
    })
    .clone()
}

/// A body whose first frame was already read: that frame, then the rest.
struct PrependFrame(Option<hyper::body::Frame<Bytes>>, Body);

impl futures_util::Stream for PrependFrame {
    type Item = Result<hyper::body::Frame<Bytes>, crate::http::BoxError>;

    fn poll_next(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(f) = this.0.take() {
            return std::task::Poll::Ready(Some(Ok(f)));
        }
        std::pin::Pin::new(&mut this.1).poll_frame(cx)
    }
}
