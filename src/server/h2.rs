//! The HTTP/2 path of a TLS connection whose client chose `h2` by ALPN: hyper's HTTP/2
//! server (no framing here) with extended CONNECT enabled (RFC 8441). Each stream is one
//! request: a plain one goes the plain path ([`super::plain::request`]) exactly as an
//! HTTP/1.1 request would; an extended CONNECT with `:protocol websocket` is checked like
//! an upgrade, opened towards the backend as an HTTP/1.1 upgrade, answered `200` for the
//! backend's `101`, and relayed frame by frame over the stream ([`Stream::H2`]) by the same
//! relay as any WebSocket.
//!
//! Bounds: at most `max_concurrent_streams` streams; the header list at most
//! `max_request_header_bytes`; a connection with no open stream for `keepalive_timeout` is
//! sent GOAWAY; resets and errors the client provokes are bounded by the h2 crate's
//! counters (rapid reset, CONTINUATION floods) and end the connection with GOAWAY.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::header::HeaderValue;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;

use super::answer::{empty, first_subprotocol, from_raw_head, refusal, shed_close};
use super::client::ClientConn;
use super::plain;
use super::relaying;
use super::upgrade::{self, Admit, Answer};
use crate::client_addr::Peer;
use crate::config::ListenerConfig;
use crate::handshake::{Refusal, MAX_HEADERS};
use crate::http::floods::FloodWatch;
use crate::http::{Body, BoxError, ClientIo};
use crate::limits::Slot;
use crate::runtime::Runtime;
use crate::shared::Shared;
use crate::stream::Stream;

/// Each stream's receive window: what one stream's client may send ahead of the relay or
/// the backend reading it.
const STREAM_WINDOW: u32 = 256 * 1024;
/// The connection's receive window: what all its streams together may send ahead.
const CONN_WINDOW: u32 = 1024 * 1024;
/// What one stream may have queued towards the client beyond its flow-control window.
const SEND_BUF: usize = 64 * 1024;
/// Stream resets a client may provoke (protocol errors of its own) before the connection
/// ends with GOAWAY.
const MAX_LOCAL_ERROR_RESETS: usize = 256;
/// Streams the client reset before the server saw them, pending at once (rapid reset).
const MAX_PENDING_RESETS: usize = 20;

/// Runs each stream's task boxed: tokio moves a spawned future several times while it sets
/// the task up (callgrind: nine copies a request), and a stream's future is kilobytes; boxed,
/// it is copied once.
#[derive(Clone, Copy)]
struct Boxed;

impl<F: Future + Send + 'static> hyper::rt::Executor<F> for Boxed
where
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(Box::pin(fut));
    }
}

/// How long a connection cut off for abuse (a flood, a window never opened) lives after its
/// GOAWAY.
const GOODBYE: Duration = Duration::from_millis(500);

/// How many streams of a connection are open, and when the last one ended: a connection
/// with no stream for `keepalive_timeout` is told to go. Counted in the process's gauges
/// too while it lives.
struct Streams {
    open: AtomicUsize,
    last_end_ms: AtomicU64,
    shared: Arc<Shared>,
    /// The plain responses being sent, watched for a client that never opens their window.
    sending: std::sync::Mutex<Vec<Arc<Progress>>>,
}

/// How a plain response's sending stands, as the connection's task checks it.
#[derive(Default)]
struct Progress {
    /// When hyper last took a frame of it.
    took_ms: AtomicU64,
    /// `WAITING_ON_BACKEND`, `WAITING_ON_CLIENT` or `SENT`.
    state: std::sync::atomic::AtomicU8,
}

/// The response's body has nothing ready: the backend's time (bounded by the body's own idle
/// timer).
const WAITING_ON_BACKEND: u8 = 0;
/// hyper took a frame and has not asked for the next: it waits for the stream's window.
const WAITING_ON_CLIENT: u8 = 1;
/// Finished or dropped.
const SENT: u8 = 2;

impl Streams {
    fn new(shared: &Arc<Shared>) -> Streams {
        shared.h2.connections.fetch_add(1, Ordering::Relaxed);
        Streams {
            open: AtomicUsize::new(0),
            last_end_ms: AtomicU64::new(crate::clock::now_ms()),
            shared: shared.clone(),
            sending: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Watches a plain response being sent.
    fn watch(&self) -> Arc<Progress> {
        let p = Arc::new(Progress::default());
        if let Ok(mut all) = self.sending.lock() {
            all.push(p.clone());
        }
        p
    }

    /// Whether a response has waited on the client's window for `patience`: a client that
    /// never opens it would hold the stream, its backend connection and the backend's slot for
    /// ever (hyper asks a body for its next frame only once the window has room, so the
    /// body's own timers never run). Forgets the responses that were sent.
    fn stalled(&self, now: u64, patience: u64) -> bool {
        let Ok(mut all) = self.sending.lock() else { return false };
        all.retain(|p| p.state.load(Ordering::Relaxed) != SENT);
        all.iter().any(|p| {
            p.state.load(Ordering::Relaxed) == WAITING_ON_CLIENT && now.saturating_sub(p.took_ms.load(Ordering::Relaxed)) >= patience
        })
    }
}

impl Drop for Streams {
    fn drop(&mut self) {
        self.shared.h2.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One open stream, counted until dropped (the response body finished, or the WebSocket
/// relay ended).
struct StreamGuard(Arc<Streams>);

impl StreamGuard {
    fn new(s: &Arc<Streams>) -> StreamGuard {
        s.open.fetch_add(1, Ordering::Relaxed);
        s.shared.h2.streams.fetch_add(1, Ordering::Relaxed);
        StreamGuard(s.clone())
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.last_end_ms.store(crate::clock::now_ms(), Ordering::Relaxed);
        self.0.open.fetch_sub(1, Ordering::Relaxed);
        self.0.shared.h2.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves an HTTP/2 connection until it closes or the balancer drains.
pub(super) async fn serve(
    shared: Arc<Shared>,
    (listener, socket): (Arc<str>, u64),
    lcfg: &ListenerConfig,
    stream: Stream,
    slot: Slot,
    peer: Peer,
    per_request: bool,
) {
    let limits = shared.runtime.load().config.limits.clone();
    let cx = ClientConn::new(&shared, (listener, socket), peer, per_request, (true, true));
    let streams = Arc::new(Streams::new(&shared));
    let flooded = Arc::new(AtomicBool::new(false));
    let io = TokioIo::new(FloodWatch::new(
        ClientIo::new(Bytes::new(), stream, limits.idle_timeout),
        flooded.clone(),
    ));
    let svc = (cx.clone(), streams.clone());
    let service = service_fn(move |req| {
        let (cx, streams) = svc.clone();
        async move { Ok::<_, Infallible>(stream_request(cx, &streams, req).await) }
    });
    let conn = http2::Builder::new(Boxed)
        .timer(TokioTimer::new())
        .enable_connect_protocol()
        .max_concurrent_streams(lcfg.max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_request_header_bytes).unwrap_or(u32::MAX))
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONN_WINDOW)
        .max_send_buf_size(SEND_BUF)
        .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
        .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESETS)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let drain = shared.drain_started.notified();
    tokio::pin!(drain);
    let draining = shared.draining.load(Ordering::Relaxed);
    if draining {
        conn.as_mut().graceful_shutdown();
    }
    let keepalive = limits.keepalive_timeout.as_millis() as u64;
    let patience = limits.idle_timeout.map(|d| d.as_millis() as u64);
    // One timer for the connection's own checks, a quarter of the shortest bound apart.
    let every = Duration::from_millis((keepalive.min(patience.unwrap_or(u64::MAX)) / 4).clamp(50, 5_000));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut going = false;
    let ended = loop {
        tokio::select! {
            r = &mut conn => break r,
            _ = &mut drain, if !draining => {
                conn.as_mut().graceful_shutdown();
                // Live WebSocket streams are closed by the drain (`1001`/`1012`) over its window.
                break tokio::time::timeout(limits.drain_timeout + Duration::from_secs(1), &mut conn).await.unwrap_or(Ok(()));
            }
            _ = std::future::poll_fn(|_| match flooded.load(Ordering::Relaxed) {
                true => Poll::Ready(()),
                false => Poll::Pending,
            }) => {
                // A flood (see `FloodWatch`): GOAWAY, a moment to write it, and the end.
                tracing::debug!(client = %cx.peer.addr, "HTTP/2 flood: connection closed");
                crate::metrics::handshake_failure("h2_flood");
                conn.as_mut().graceful_shutdown();
                break tokio::time::timeout(GOODBYE, &mut conn).await.unwrap_or(Ok(()));
            }
            _ = tick.tick() => {
                let now = crate::clock::now_ms();
                if patience.is_some_and(|p| streams.stalled(now, p)) {
                    // A response waited `idle_timeout` on a window the client never opened:
                    // the client's doing; GOAWAY, and the connection ends with its streams.
                    tracing::debug!(client = %cx.peer.addr, "HTTP/2 stream window closed for idle_timeout: connection closed");
                    crate::metrics::handshake_failure("h2_stalled");
                    conn.as_mut().graceful_shutdown();
                    break tokio::time::timeout(GOODBYE, &mut conn).await.unwrap_or(Ok(()));
                }
                let idle = streams.open.load(Ordering::Relaxed) == 0
                    && now.saturating_sub(streams.last_end_ms.load(Ordering::Relaxed)) >= keepalive;
                // No stream for `keepalive_timeout`, or the connection's listener was removed
                // by a reload: GOAWAY; the streams in flight finish (WebSockets are closed
                // `1001` by the reload), then the connection ends.
                if !going && (idle || !shared.socket_open(cx.socket())) {
                    going = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    };
    if let Err(e) = ended {
        tracing::debug!(client = %cx.peer.addr, "HTTP/2 connection ended: {e}");
    }
    drop(slot);
}

/// Answers one stream: an extended CONNECT for a WebSocket, or a plain request.
async fn stream_request(cx: Arc<ClientConn>, streams: &Arc<Streams>, req: Request<Incoming>) -> Response<Body> {
    let guard = StreamGuard::new(streams);
    let websocket = req.method() == hyper::Method::CONNECT && req.extensions().get::<hyper::ext::Protocol>().is_some();
    if !websocket {
        let resp = plain::request(cx, req).await;
        // Only a body with something to send can wait on the client's window.
        let progress = (!resp.body().is_end_stream()).then(|| streams.watch());
        return resp.map(|body| {
            Counted {
                body,
                progress,
                _guard: guard,
            }
            .boxed_unsync()
        });
    }
    // Boxed: the WebSocket path's future (a backend opened, TLS included) would otherwise set
    // the size of every stream's task, which hyper moves into place for each plain request too.
    Box::pin(websocket_stream(cx, req, guard)).await
}

/// A response body that keeps its stream counted until it is finished or dropped.
struct Counted {
    body: Body,
    /// How its sending stands (a body with something to send).
    progress: Option<Arc<Progress>>,
    _guard: StreamGuard,
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(p) = &self.progress {
            p.state.store(SENT, Ordering::Relaxed);
        }
    }
}

impl hyper::body::Body for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let r = std::pin::Pin::new(&mut this.body).poll_frame(cx);
        if let Some(p) = &this.progress {
            let state = match &r {
                Poll::Pending => WAITING_ON_BACKEND,
                Poll::Ready(Some(Ok(_))) => {
                    p.took_ms.store(crate::clock::now_ms(), Ordering::Relaxed);
                    WAITING_ON_CLIENT
                }
                Poll::Ready(_) => SENT,
            };
            p.state.store(state, Ordering::Relaxed);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// An extended CONNECT (RFC 8441 §4): checked like an HTTP/1.1 upgrade, whose form it is
/// given for the checks, the routes and the backend (`GET`, `Host` from `:authority`,
/// `Upgrade`, `Connection` and a key of the balancer's own: the backend's `101` is checked
/// against that key). Each WebSocket stream is admitted as a connection of its own.
async fn websocket_stream(cx: Arc<ClientConn>, mut req: Request<Incoming>, guard: StreamGuard) -> Response<Body> {
    let started = Instant::now();
    let rt = cx.shared.runtime.load_full();
    let name = cx.listener_name();
    let Some(lcfg) = rt.config.listeners.iter().find(|l| *l.name == *name) else {
        return refusal(Refusal::Overloaded { retry_after_s: 1 });
    };
    let protocol = req
        .extensions()
        .get::<hyper::ext::Protocol>()
        .map(|p| p.as_str().to_ascii_lowercase());
    if protocol.as_deref() != Some("websocket") {
        return refusal(Refusal::BadRequest("extended CONNECT is served for :protocol websocket only"));
    }
    let on = hyper::upgrade::on(&mut req);
    let (mut parts, _body) = req.into_parts();
    if let Err(r) = plain::from_h2(&mut parts) {
        return refusal(r);
    }
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    if !target.starts_with('/') {
        return refusal(Refusal::BadRequest("a WebSocket's :path is an absolute path"));
    }
    // The backend side's key (a client on HTTP/2 sends none).
    let key = crate::handshake::new_key();
    let mut hs: Vec<httparse::Header<'_>> = plain::headers_of_map(&parts.headers)
        .into_iter()
        // RFC 8441 §5: no key on HTTP/2; the balancer's own goes to the backend.
        .filter(|h| !h.name.eq_ignore_ascii_case("sec-websocket-key"))
        .collect();
    if hs.len() > MAX_HEADERS {
        return refusal(Refusal::HeadTooLarge);
    }
    if parts.headers.get_all(hyper::header::HOST).iter().nth(1).is_some() {
        return refusal(Refusal::BadRequest("duplicated Host header"));
    }
    hs.push(httparse::Header {
        name: "Upgrade",
        value: b"websocket",
    });
    hs.push(httparse::Header {
        name: "Connection",
        value: b"Upgrade",
    });
    hs.push(httparse::Header {
        name: "Sec-WebSocket-Key",
        value: key.as_bytes(),
    });
    let head = httparse::Request {
        method: Some("GET"),
        path: Some(&target),
        version: Some(1),
        headers: &mut hs,
    };
    let limits = &rt.config.limits;
    // A WebSocket stream is a connection of its client for caps, the connection rate and
    // the per-client limits, like the TCP connection an HTTP/1.1 client would open for it.
    let admit = match cx.shared.admission.accept(limits) {
        Some(pending) => Admit::Pending(pending),
        None => return shed_stream(&rt, &head, on, crate::limits::ShedReason::MaxConnections, guard),
    };
    let (shared, peer) = (cx.shared.clone(), cx.peer);
    match upgrade::prepare(&shared, &rt, lcfg, &head, &peer, true, admit).await {
        Err(Answer::Refuse(r)) => refusal(r),
        Err(Answer::Shed(reason)) => shed_stream(&rt, &head, on, reason, guard),
        Ok(prepared) => {
            // RFC 8441 §5: the `200` carries the `101`'s fields but those of the HTTP/1.1
            // upgrade itself (no `Sec-WebSocket-Accept`, no connection-specific fields).
            const DROPPED: &[&str] = &[
                "upgrade",
                "connection",
                "sec-websocket-accept",
                "keep-alive",
                "proxy-connection",
                "transfer-encoding",
                "content-length",
            ];
            let resp = from_raw_head(&prepared.response_head(), StatusCode::OK, DROPPED);
            let (listener, socket) = (name.clone(), cx.socket());
            // Opening is a boxed future dropped once the relay starts, so what it held does not
            // stay in the stream's task for the WebSocket's life (as with a TCP connection).
            let opening: Pin<Box<dyn Future<Output = Option<relaying::Ready>> + Send>> = Box::pin(async move {
                let stream = upgraded(on).await?;
                let rt = shared.runtime.load_full();
                match upgrade::start(&shared, &rt, &listener, socket, stream, prepared, &[], started) {
                    Ok(ready) => Some(ready),
                    Err(ns) => {
                        relaying::not_started(ns, peer.addr).await;
                        None
                    }
                }
            });
            tokio::spawn(Guarded {
                _guard: guard,
                task: relaying::Connection::Handshake(opening),
            });
            resp
        }
    }
}

/// A WebSocket stream's task, its stream counted while it lives.
struct Guarded {
    _guard: StreamGuard,
    task: relaying::Connection,
}

impl Future for Guarded {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.get_mut().task).poll(cx)
    }
}

/// The stream of an answered extended CONNECT, as the relay's client side.
async fn upgraded(on: OnUpgrade) -> Option<Stream> {
    let up = on.await.ok()?;
    Some(Stream::H2(Box::new(TokioIo::new(up))))
}

/// A shed WebSocket stream: `200` (with the first offered subprotocol, so a browser does not
/// fail the handshake), then the close frame with the jittered retry hint, and the stream
/// ends.
fn shed_stream(
    rt: &Runtime,
    head: &httparse::Request<'_, '_>,
    on: OnUpgrade,
    reason: crate::limits::ShedReason,
    guard: StreamGuard,
) -> Response<Body> {
    let close = shed_close(reason, &rt.config.shedding);
    let mut resp = Response::new(empty());
    if let Some(p) = first_subprotocol(head.headers) {
        if let Ok(v) = HeaderValue::from_bytes(p) {
            resp.headers_mut().insert("sec-websocket-protocol", v);
        }
    }
    tokio::spawn(async move {
        let _guard = guard;
        if let Some(mut stream) = upgraded(on).await {
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                let _ = stream.write_all(&close).await;
                let _ = stream.shutdown().await;
            })
            .await;
        }
    });
    resp
}
