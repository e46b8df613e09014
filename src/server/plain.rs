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

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body as _, Incoming};
use hyper::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER, SET_COOKIE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;

use super::connection::{self, linger, shed_close, shed_head};
use super::upgrade::{self, Admit, Answer, Prepared};
use super::Shared;
use crate::backend::ActiveGuard;
use crate::balance::{exhaustion_reason, PickContext};
use crate::clock;
use crate::config::{HttpMode, ListenerConfig};
use crate::handshake::{header, wants_websocket, Refusal};
use crate::http::body::{Limited, OnEnd, Relayed, RequestTally};
use crate::http::client::Conn;
use crate::http::headers::{add_forwarded, strip_hop_by_hop};
use crate::http::{Body, ClientIo, ClientPool};
use crate::limits::{retry_after_secs, ShedReason, Slot};
use crate::route::route;
use crate::runtime::{Pool, Runtime};
use crate::stream::Stream;
use hyper::client::conn::http1::SendRequest;

/// One client connection on the plain path, as every request on it sees it.
struct ClientConn {
    shared: Arc<Shared>,
    listener: Arc<str>,
    peer: SocketAddr,
    tls: bool,
    /// Set by a request that upgraded: what to do with the connection once hyper lets go.
    upgrade: Mutex<Option<PendingUpgrade>>,
}

/// An upgrade answered with a 101 through hyper, finished after hyper hands the socket back.
enum PendingUpgrade {
    /// Relay to the backend that answered the 101.
    Relay(OnUpgrade, Box<Prepared>, Instant),
    /// Shed: send this close frame and go.
    Shed(OnUpgrade, Vec<u8>),
}

/// Serves a plain HTTP connection until it closes, upgrades or the balancer drains.
/// `read` holds what was read while looking at the first request head.
pub(super) async fn serve(shared: Arc<Shared>, listener: Arc<str>, stream: Stream, read: Vec<u8>, slot: Slot, peer: SocketAddr) {
    let limits = shared.runtime.load().config.limits.clone();
    let cx = Arc::new(ClientConn {
        shared: shared.clone(),
        listener: listener.clone(),
        peer,
        tls: stream.is_tls(),
        upgrade: Mutex::new(None),
    });
    let io = TokioIo::new(ClientIo::new(Bytes::from(read), stream));
    let svc = cx.clone();
    let service = service_fn(move |req| {
        let cx = svc.clone();
        async move { Ok::<_, Infallible>(request(cx, req).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        // Bounds an idle keep-alive connection and each later request head.
        .header_read_timeout(limits.keepalive_timeout)
        .max_buf_size(limits.max_request_header_bytes.max(8192))
        .serve_connection(io, service)
        .with_upgrades();
    tokio::pin!(conn);
    let drain = shared.drain_started.notified();
    tokio::pin!(drain);
    let draining = shared.draining.load(std::sync::atomic::Ordering::Relaxed);
    if draining {
        conn.as_mut().graceful_shutdown();
    }
    let ended = tokio::select! {
        r = &mut conn => r,
        _ = &mut drain, if !draining => {
            conn.as_mut().graceful_shutdown();
            tokio::time::timeout(limits.drain_timeout, &mut conn).await.unwrap_or(Ok(()))
        }
    };
    if let Err(e) = ended {
        tracing::debug!(client = %peer, "plain HTTP connection ended: {e}");
    }
    let pending = cx.upgrade.lock().ok().and_then(|mut u| u.take());
    match pending {
        None => {}
        Some(PendingUpgrade::Shed(on, close)) => {
            if let Some((mut stream, _)) = upgraded(on).await {
                let _ = stream.write_all(&close).await;
                linger(&mut stream).await;
            }
        }
        Some(PendingUpgrade::Relay(on, prepared, started)) => {
            let Some((stream, early)) = upgraded(on).await else { return };
            let rt = shared.runtime.load_full();
            match upgrade::start(&shared, &rt, &listener, stream, *prepared, &early, started) {
                Ok(ready) => connection::relay(ready, peer, &listener).await,
                Err(ns) => connection::not_started(ns, peer).await,
            }
        }
    }
    drop(slot);
}

/// The client socket back from hyper after a 101, with the bytes read past the request.
async fn upgraded(on: OnUpgrade) -> Option<(Stream, Vec<u8>)> {
    let up = on.await.ok()?;
    let parts = up.downcast::<TokioIo<ClientIo>>().ok()?;
    let (stream, rest) = parts.io.into_inner().into_parts();
    let mut early = parts.read_buf.to_vec();
    early.extend_from_slice(&rest);
    Some((stream, early))
}

/// Answers one request.
async fn request(cx: Arc<ClientConn>, mut req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let rt = cx.shared.runtime.load_full();
    let Some(lcfg) = rt.config.listeners.iter().find(|l| *l.name == *cx.listener) else {
        return refusal(Refusal::Overloaded { retry_after_s: 1 });
    };
    let on_upgrade = {
        let hs = headers_of(&req);
        wants_websocket(&hs)
    }
    .then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut hs = headers_of_map(&parts.headers);
    if let Some(on) = on_upgrade {
        return upgrade_request(&cx, &rt, lcfg, &parts, target, &mut hs, on, started).await;
    }
    let Some(host) = header(&hs, "host")
        .and_then(|v| std::str::from_utf8(v).ok())
        .map(str::trim)
        .filter(|h| !h.is_empty())
    else {
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
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_request_body_bytes) {
        return refusal(Refusal::BodyTooLarge);
    }
    let out = Request::builder()
        .method(parts.method.clone())
        .uri(target)
        .body(())
        .map(|r| r.into_parts().0);
    let Ok(mut out) = out else {
        return refusal(Refusal::BadRequest("malformed request target"));
    };
    out.headers = parts.headers.clone();
    strip_hop_by_hop(&mut out.headers);
    add_forwarded(&mut out.headers, cx.peer.ip(), cx.tls, host);
    let tally = Arc::new(RequestTally::default());
    let mut body = Limited::new(body, limits.max_request_body_bytes, tally.clone()).boxed_unsync();
    if parts.headers.contains_key(hyper::header::TRANSFER_ENCODING) {
        // A chunked body is checked up to its first chunk before anything is forwarded: a
        // malformed chunk size (the usual smuggling probe) never reaches a backend.
        match tokio::time::timeout(limits.request_timeout, body.frame()).await {
            Ok(Some(Ok(first))) => body = http_body_util::StreamBody::new(PrependFrame(Some(first), body)).boxed_unsync(),
            Ok(None) => body = empty(),
            Ok(Some(Err(_))) if tally.over_limit.load(std::sync::atomic::Ordering::Relaxed) => return refusal(Refusal::BodyTooLarge),
            Ok(Some(Err(_))) => return refusal(Refusal::BadRequest("malformed chunked body")),
            Err(_) => return refusal(Refusal::Timeout),
        }
    }
    let req = Forward {
        method: &parts.method,
        target,
        headers: &hs,
        tally,
    };
    forward(&cx, &rt, pool, req, Request::from_parts(out, body), started).await
}

/// What the balancer knows of a request on its way to a backend.
struct Forward<'a> {
    method: &'a Method,
    target: &'a str,
    /// The client's headers, for picking (sticky cookie, hash keys).
    headers: &'a [httparse::Header<'a>],
    tally: Arc<RequestTally>,
}

/// Picks, connects (next backend on a connect failure), sends `out` (hop-by-hop fields
/// removed, forwarding fields added), and returns the response.
async fn forward(
    cx: &ClientConn,
    rt: &Runtime,
    pool: &Arc<Pool>,
    req: Forward<'_>,
    out: Request<Body>,
    started: Instant,
) -> Response<Body> {
    let limits = &rt.config.limits;
    let clients = &cx.shared.http_clients;
    let retryable = out.body().is_end_stream() && matches!(*req.method, Method::GET | Method::HEAD | Method::OPTIONS);
    // The request while it has not gone out (a refused send hands it back).
    let mut pending = Some(out);
    let mut tried: Vec<usize> = Vec::new();
    for _ in 0..pool.config.max_attempts.max(1) {
        let now = clock::now_ms();
        let ctx = PickContext {
            now_ms: now,
            client_ip: cx.peer.ip(),
            target: req.target,
            headers: req.headers,
            exclude: &tried,
        };
        let Some((i, sticky)) = pool.pick(&ctx) else {
            let reason = if tried.is_empty() {
                ShedReason::from_label(exhaustion_reason(&pool.backends, now))
            } else {
                ShedReason::NoBackend
            };
            return overloaded(rt, reason);
        };
        tried.push(i);
        let backend = pool.backends[i].clone();
        let guard = ActiveGuard::request(backend.clone());
        let mut conn = match clients.take(&backend).await {
            Some(c) => c,
            None => match open(cx, pool, i).await {
                Some(c) => c,
                None => continue,
            },
        };
        // One retry on a fresh connection when a reused one turns out closed before the
        // request went out (or, for a bodiless idempotent request, at any point).
        let mut may_retry = true;
        let sent = loop {
            let Some(out) = pending.take() else {
                return refusal(Refusal::BadGateway("request body already sent"));
            };
            // A bodiless idempotent request may be sent again after a reused connection
            // failed under it: keep its head (only then is it copied).
            let spare = (conn.reused && may_retry && retryable).then(|| {
                let mut r = Request::new(empty());
                *r.method_mut() = out.method().clone();
                *r.uri_mut() = out.uri().clone();
                *r.headers_mut() = out.headers().clone();
                r
            });
            let deadline = tokio::time::Instant::now() + limits.request_timeout;
            match tokio::time::timeout_at(deadline, conn.sender.try_send_request(out)).await {
                Err(_) => {
                    crate::health::passive_failure(&backend, pool, clock::now_ms());
                    tracing::debug!(backend = %backend.address, "no response head within request_timeout");
                    return refusal(Refusal::GatewayTimeout);
                }
                Ok(Ok(resp)) => break Ok(resp),
                Ok(Err(mut e)) => {
                    let unsent = e.take_message();
                    if conn.reused && may_retry && (unsent.is_some() || spare.is_some()) {
                        may_retry = false;
                        pending = unsent.or(spare);
                        match open(cx, pool, i).await {
                            Some(c) => conn = c,
                            None => break Err(None),
                        }
                        continue;
                    }
                    pending = unsent;
                    break Err(Some(e.into_error()));
                }
            }
        };
        let resp = match sent {
            Ok(r) => r,
            // A fresh connection could not be opened: the next backend, if the body is still here.
            Err(None) if pending.is_some() => continue,
            Err(e) => {
                if req.tally.over_limit.load(std::sync::atomic::Ordering::Relaxed) {
                    return refusal(Refusal::BodyTooLarge);
                }
                crate::health::passive_failure(&backend, pool, clock::now_ms());
                tracing::debug!(backend = %backend.address, "no valid response: {e:?}");
                return refusal(Refusal::BadGateway("no valid response from the backend"));
            }
        };
        let status = resp.status();
        if status.is_server_error() {
            crate::health::passive_failure(&backend, pool, clock::now_ms());
        } else {
            crate::health::passive_success(&backend);
        }
        backend.http_requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        pool.request_duration.record(started.elapsed().as_secs_f64());
        backend.metrics.http_request(&pool.name, &backend.address, status.as_u16());
        if let Some(r) = sticky {
            crate::metrics::sticky(&pool.name, r.label());
        }
        let (mut parts, rbody) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        if let Some(c) = pool.sticky_cookie(i, sticky, cx.tls).and_then(|c| HeaderValue::from_str(&c).ok()) {
            parts.headers.append(SET_COOKIE, c);
        }
        let end = Finished {
            _guard: guard,
            sender: Some((clients.clone(), backend.address.clone(), conn.sender)),
            log: (rt.config.process.access_log && tracing::enabled!(target: "switchyard::access", tracing::Level::INFO)).then(|| {
                AccessLine {
                    client: cx.peer,
                    method: req.method.clone(),
                    path: req.target.split('?').next().unwrap_or("/").to_string(),
                    status: status.as_u16(),
                    pool: pool.name.clone(),
                    backend: backend.address.clone(),
                    started,
                    tally: req.tally.clone(),
                }
            }),
        };
        return Response::from_parts(parts, Relayed::new(rbody, limits.idle_timeout, end).boxed_unsync());
    }
    overloaded(rt, ShedReason::NoBackend)
}

/// Opens a new connection to backend `i`, counting a failure the backend is responsible for.
async fn open(cx: &ClientConn, pool: &Pool, i: usize) -> Option<Conn> {
    let backend = &pool.backends[i];
    match tokio::time::timeout(pool.config.connect_timeout, cx.shared.http_clients.open(pool, backend)).await {
        Ok(Ok(c)) => Some(c),
        Ok(Err(e)) => {
            tracing::debug!(backend = %backend.address, "connect failed: {e}");
            if !crate::upstream::is_local_error(&e) {
                crate::health::passive_failure(backend, pool, clock::now_ms());
            }
            None
        }
        Err(_) => {
            tracing::debug!(backend = %backend.address, "connect timed out");
            crate::health::passive_failure(backend, pool, clock::now_ms());
            None
        }
    }
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
        version: Some(1),
        headers: hs,
    };
    let result = upgrade::prepare(&cx.shared, rt, lcfg, &head, cx.peer, cx.tls, Admit::Held).await;
    let (answer, pending) = match result {
        Ok(prepared) => {
            let raw = prepared.response_head();
            (switching(&raw), PendingUpgrade::Relay(on, Box::new(prepared), started))
        }
        Err(Answer::Refuse(r)) => return refusal(r),
        Err(Answer::Shed(reason)) => (
            switching(&shed_head(&key, head.headers)),
            PendingUpgrade::Shed(on, shed_close(reason, &rt.config.shedding)),
        ),
    };
    if let Ok(mut u) = cx.upgrade.lock() {
        *u = Some(pending);
    }
    answer
}

/// A hyper 101 response carrying the headers of a raw 101 head.
fn switching(raw: &[u8]) -> Response<Body> {
    let mut hs = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Response::new(&mut hs);
    let _ = parsed.parse(raw);
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    for h in parsed.headers.iter() {
        if let (Ok(n), Ok(v)) = (
            hyper::header::HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) {
            resp.headers_mut().append(n, v);
        }
    }
    resp
}

/// The request's headers as the handshake and balancing code reads them.
fn headers_of<B>(req: &Request<B>) -> Vec<httparse::Header<'_>> {
    headers_of_map(req.headers())
}

fn headers_of_map(map: &hyper::HeaderMap) -> Vec<httparse::Header<'_>> {
    map.iter()
        .map(|(n, v)| httparse::Header {
            name: n.as_str(),
            value: v.as_bytes(),
        })
        .collect()
}

/// `503` with a jittered `Retry-After`: the plain-HTTP twin of a shed `1013`.
fn overloaded(rt: &Runtime, reason: ShedReason) -> Response<Body> {
    crate::metrics::shed(reason.label());
    refusal(Refusal::Overloaded {
        retry_after_s: retry_after_secs(rt.config.shedding.retry_hint),
    })
}

/// The balancer's own answer. `400` and `413` close the connection: the request's body
/// was not read, or its framing cannot be trusted.
fn refusal(r: Refusal) -> Response<Body> {
    crate::metrics::handshake_failure(r.metric_reason());
    let (code, _) = r.status();
    let mut resp = Response::new(Full::new(Bytes::from(r.body())).map_err(|e| match e {}).boxed_unsync());
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY);
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    if let Refusal::Overloaded { retry_after_s } = r {
        h.insert(RETRY_AFTER, HeaderValue::from(retry_after_s));
    }
    if matches!(r, Refusal::BadRequest(_) | Refusal::BodyTooLarge) {
        h.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    resp
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

fn empty() -> Body {
    Empty::new().map_err(|e| match e {}).boxed_unsync()
}

/// The access-log line of one plain request, written when its response body ends.
struct AccessLine {
    client: SocketAddr,
    method: Method,
    path: String,
    status: u16,
    pool: Arc<str>,
    backend: String,
    started: Instant,
    tally: Arc<RequestTally>,
}

/// Held until the response body ends: the request counts on its backend until then.
struct Finished {
    _guard: ActiveGuard,
    /// The backend connection, back to the idle pool once the response is complete (a
    /// response cut short leaves the connection mid-message: it is closed instead).
    sender: Option<(Arc<ClientPool>, String, SendRequest<Body>)>,
    log: Option<AccessLine>,
}

impl OnEnd for Finished {
    fn ended(&mut self, bytes: u64, complete: bool) {
        if let (true, Some((pool, address, sender))) = (complete, self.sender.take()) {
            pool.put(address, sender);
        }
        let Some(l) = self.log.take() else { return };
        tracing::info!(
            target: "switchyard::access",
            client = %l.client,
            method = %l.method,
            path = %l.path,
            status = l.status,
            pool = %l.pool,
            backend = %l.backend,
            duration_ms = l.started.elapsed().as_millis() as u64,
            bytes_in = l.tally.bytes.load(std::sync::atomic::Ordering::Relaxed),
            bytes_out = bytes,
            complete,
            "request"
        );
    }
}
