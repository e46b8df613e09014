//! The life of one client connection up to the fork: admission, TLS, the first request
//! head, then either the WebSocket path ([`super::upgrade`]: a backend's 101 and the
//! frame relay) or the plain HTTP path ([`super::plain`]: hyper, keep-alive, requests
//! forwarded one by one, possibly an upgrade later). Every raw client-visible refusal goes
//! through [`refuse`] (an HTTP status) or [`shed`] (a completed handshake and a close code).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::upgrade::{self, Admit, Answer};
use crate::backend::ActiveGuard;
use crate::client_addr::{ClientAddr, Peer};
use crate::config::{any_contains, Limits, Shedding};
use crate::conns::Registration;
use crate::handshake::{accept_key, header, read_head, wants_websocket, HeadError, Refusal, MAX_HEADERS};
use crate::limits::per_client::ClientSlot;
use crate::limits::{retry_reason, Admission, ShedReason, Slot};
use crate::metrics::{self, CloseOrigin};
use crate::relay::{NotStarted, Relay, MAX_EARLY_BYTES};
use crate::runtime::Runtime;
use crate::shared::Shared;
use crate::stream::Stream;
use crate::ws::frame::ControlFrame;

/// After a refusal or a shed close, how long the client gets to read it and go.
const LINGER: Duration = Duration::from_secs(2);

/// A connection whose handshake succeeded on both sides.
pub(super) struct Ready {
    pub relay: Relay,
    pub reg: Registration,
    /// The admission slot (held by the plain HTTP path instead when it upgraded).
    pub _slot: Option<Slot>,
    /// The client's count, when the connection was not admitted as its own: an upgrade on
    /// a trusted proxy's keep-alive connection.
    pub _client_slot: Option<ClientSlot>,
    pub _guard: ActiveGuard,
    pub started: Instant,
    pub access_log: bool,
    /// Who the connection is for, for the access log.
    pub client: Logged,
}

/// The addresses an access-log line names: the client, and the TCP peer it came through.
#[derive(Debug, Clone, Copy)]
pub(super) struct Logged {
    pub client: SocketAddr,
    pub peer: SocketAddr,
    /// The WebSocket is an HTTP/2 stream (RFC 8441).
    pub h2: bool,
}

impl Logged {
    pub(super) fn new(client: &ClientAddr, peer: &Peer) -> Logged {
        Logged {
            client: client.addr,
            peer: peer.socket,
            h2: false,
        }
    }
}

/// A connection as the accept loop hands it over.
pub struct Accepted {
    /// The socket.
    pub sock: TcpStream,
    /// Its peer.
    pub peer: SocketAddr,
    /// Its local address, when the listener's tells it (bound to one address).
    pub local: Option<SocketAddr>,
    /// It already has the socket options of the running config (from its listener).
    pub tuned: bool,
    /// The listening socket that accepted it ([`crate::listeners::BoundListener::sockets`]).
    pub socket: u64,
    /// `Shared::listener_epoch` when it was accepted under its listener's name.
    pub epoch: u64,
}

/// Serves one accepted TCP connection to its end: the task of every client connection.
pub fn handle(shared: Arc<Shared>, listener: Arc<str>, accepted: Accepted) -> Connection {
    // The handshake is a boxed future that owns what it needs and is dropped once it is
    // done: its buffers, header table and the accept-time arguments must not stay in the
    // long-lived task's allocation while the connection relays for hours. A plain HTTP
    // connection is served to its end inside it.
    Connection::Handshake(Box::pin(async move { first_request(&shared, &listener, accepted).await }))
}

/// A client connection's task: first its handshake, then (for a WebSocket) its relay.
///
/// Written out as two states rather than one `async fn`, because an `async fn` keeps its
/// arguments and every moved-from local in the task's state for its whole life: 816 bytes
/// per idle connection where the relay state alone needs 688.
// The large variant is the one a connection lives in; boxing it would add an allocation to
// every connection to save bytes only during the handshake.
#[allow(clippy::large_enum_variant)]
pub enum Connection {
    /// Reading the first request and, for an upgrade, opening the backend.
    Handshake(Pin<Box<dyn Future<Output = Option<Ready>> + Send>>),
    /// Relaying frames.
    Relaying(Relaying),
    /// Ended.
    Done,
}

/// What a relayed connection holds until it ends.
pub struct Relaying {
    run: crate::relay::Run,
    reg: Registration,
    started: Instant,
    access_log: bool,
    client: Logged,
    /// Released when the connection ends; the admission slot also gives its rate token back
    /// when the backend failed.
    held: (Option<Slot>, Option<ClientSlot>, ActiveGuard),
}

impl Future for Connection {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            match this {
                Connection::Handshake(first) => match first.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(None) => {
                        *this = Connection::Done;
                        return Poll::Ready(());
                    }
                    Poll::Ready(Some(ready)) => *this = Connection::Relaying(Relaying::from(ready)),
                },
                Connection::Relaying(r) => {
                    let Poll::Ready(out) = Pin::new(&mut r.run).poll(cx) else {
                        return Poll::Pending;
                    };
                    if r.access_log {
                        access_line(&out, &r.reg, r.started, r.client, &r.reg.shared.listener);
                    }
                    if out.backend_failed() {
                        if let Some(slot) = &r.held.0 {
                            slot.refund_rate();
                        }
                    }
                    *this = Connection::Done;
                    return Poll::Ready(());
                }
                Connection::Done => return Poll::Ready(()),
            }
        }
    }
}

impl From<Ready> for Relaying {
    fn from(ready: Ready) -> Relaying {
        let Ready {
            relay,
            reg,
            started,
            access_log,
            client,
            _slot,
            _client_slot,
            _guard,
        } = ready;
        Relaying {
            run: relay.run(),
            reg,
            started,
            access_log,
            client,
            held: (_slot, _client_slot, _guard),
        }
    }
}

/// Relays frames until the connection ends, then writes its access-log line (an upgrade
/// that followed plain requests on the same connection).
pub(super) async fn relay(ready: Ready) {
    Connection::Relaying(Relaying::from(ready)).await
}

/// The access-log line of a finished WebSocket connection.
fn access_line(out: &crate::relay::Outcome, reg: &Registration, started: Instant, who: Logged, listener: &str) {
    {
        tracing::info!(
            target: "switchyard::access",
            client = %who.client,
            peer = %who.peer,
            listener = %listener,
            protocol = if who.h2 { "h2" } else { "http1" },
            pool = %reg.shared.pool,
            backend = %reg.shared.backend.address,
            duration_ms = started.elapsed().as_millis() as u64,
            bytes_c2b = out.bytes_c2b,
            bytes_b2c = out.bytes_b2c,
            msgs_c2b = out.msgs_c2b,
            msgs_b2c = out.msgs_b2c,
            close_code = out.code,
            closed_by = out.origin.name(),
            "connection closed"
        );
    }
}

async fn first_request(shared: &Arc<Shared>, listener: &Arc<str>, accepted: Accepted) -> Option<Ready> {
    let started = Instant::now();
    let rt: Arc<Runtime> = shared.runtime.load_full();
    let limits = &rt.config.limits;
    let Accepted {
        mut sock,
        peer: socket,
        local,
        tuned,
        socket: listener_socket,
        epoch,
    } = accepted;
    // A reload may have renamed, moved or swapped listeners since this connection was
    // accepted: then the socket's current name is the one its settings are under.
    let renamed;
    let listener = match shared.listener_epoch.load(std::sync::atomic::Ordering::Acquire) == epoch {
        true => listener,
        false => {
            renamed = shared.socket_name(listener_socket)?;
            &renamed
        }
    };
    if !tuned {
        crate::stream::tune_accepted(&sock, limits.tcp_keepalive);
    }
    let Some(pending) = shared.admission.accept(limits) else {
        if rt.tls_acceptor(listener).is_some() {
            // A TLS client cannot read a clear-text 503; close without a word.
            metrics::handshake_failure("overloaded");
            return None;
        }
        let mut s = Stream::Tcp(sock);
        let retry_after_s = rt.config.shedding.retry_hint.as_secs().max(1);
        // Past the hard ceiling nothing lingers: the answer, and the socket closed at once.
        return refuse(&mut s, Refusal::Overloaded { retry_after_s }, Linger::Never).await;
    };
    let lcfg = rt.config.listeners.iter().find(|l| *l.name == **listener)?;
    let deadline = tokio::time::Instant::now() + limits.handshake_timeout;
    let local = local.unwrap_or_else(|| sock.local_addr().unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))));
    // Who the connection is from is settled before anything else is read (TLS included).
    let peer = if lcfg.proxy_protocol {
        super::proxied::read_peer(&mut sock, socket, local, &limits.trusted_proxies, deadline).await?
    } else {
        Peer::socket(socket, local)
    };
    let mut stream = match rt.tls_acceptor(listener) {
        None => Stream::Tcp(sock),
        Some(acceptor) => match tokio::time::timeout(limits.tls_handshake_timeout, acceptor.accept(sock)).await {
            Ok(Ok(s)) => Stream::TlsServer(Box::new(s)),
            Ok(Err(e)) => {
                tracing::debug!(client = %peer.addr, "TLS handshake failed: {e}");
                metrics::handshake_failure("tls");
                return None;
            }
            Err(_) => {
                metrics::handshake_failure("tls_timeout");
                return None;
            }
        },
    };
    if let Stream::TlsServer(tls) = &stream {
        if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
            // The fork before any request: HTTP/2. Its streams are admitted one by one (a
            // WebSocket stream as a connection of its own); the connection is admitted like a
            // plain HTTP/1.1 one.
            let per_request = any_contains(&limits.trusted_proxies, peer.addr.ip());
            let own = (!per_request).then_some(peer.addr.ip());
            let now = crate::clock::now_ms();
            return match shared
                .admission
                .admit(pending, own, limits, &rt.config.shedding, &shared.conns, now)
            {
                Ok(slot) => {
                    let at = (listener.clone(), listener_socket);
                    super::h2::serve(shared.clone(), at, lcfg, stream, slot, peer, per_request).await;
                    None
                }
                Err(reason) => {
                    // Refused before any stream: the client sees the connection end.
                    metrics::shed(reason.label());
                    close_now(&mut stream).await;
                    None
                }
            };
        }
    }
    let (buf, end) = match tokio::time::timeout_at(deadline, read_head(&mut stream, limits.max_request_header_bytes)).await {
        Ok(Ok(h)) => h,
        Ok(Err(HeadError::TooLarge(_))) => return refuse(&mut stream, Refusal::HeadTooLarge, Linger::Held).await,
        Ok(Err(_)) => {
            metrics::handshake_failure("closed");
            return None;
        }
        Err(_) => return refuse(&mut stream, Refusal::Timeout, Linger::Held).await,
    };
    let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut hs);
    match req.parse(&buf[..end]) {
        Ok(httparse::Status::Complete(_)) => {}
        Err(httparse::Error::TooManyHeaders) => return refuse(&mut stream, Refusal::HeadTooLarge, Linger::Held).await,
        _ => return refuse(&mut stream, Refusal::BadRequest("malformed request head"), Linger::Held).await,
    }
    if !wants_websocket(req.headers) {
        // The fork: plain HTTP. Ambiguous framing is refused before anything is forwarded;
        // the rest (routing, `http: reject`, bodies) is per request, in `plain`.
        if let Err(s) = crate::http::headers::check_framing(req.headers) {
            return refuse(&mut stream, Refusal::BadRequest(s.reason()), Linger::Held).await;
        }
        // A keep-alive connection from a trusted proxy carries requests of many clients:
        // each request is counted for its own client instead (`plain`).
        let per_request = any_contains(&limits.trusted_proxies, peer.addr.ip());
        let own = (!per_request).then_some(peer.addr.ip());
        return match shared
            .admission
            .admit(pending, own, limits, &rt.config.shedding, &shared.conns, crate::clock::now_ms())
        {
            Ok(slot) => {
                super::plain::serve(
                    shared.clone(),
                    (listener.clone(), listener_socket),
                    stream,
                    buf,
                    slot,
                    peer,
                    per_request,
                )
                .await;
                None
            }
            Err(reason) => {
                metrics::shed(reason.label());
                let retry_after_s = crate::limits::retry_after_secs(rt.config.shedding.retry_hint);
                refuse(
                    &mut stream,
                    Refusal::Overloaded { retry_after_s },
                    Linger::Take(&shared.admission, limits),
                )
                .await
            }
        };
    }
    // RFC 6455 §4.1: a client waits for the 101 before sending frames. A little pipelining is
    // tolerated, but only what the relay can hold: refused here, never after the 101.
    if buf.len() - end > MAX_EARLY_BYTES {
        return refuse(&mut stream, Refusal::BadRequest("too much data sent before the 101"), Linger::Held).await;
    }
    let key = header(req.headers, "sec-websocket-key")
        .and_then(|k| std::str::from_utf8(k).ok())
        .unwrap_or("")
        .trim();
    let prepared = match upgrade::prepare(shared, &rt, lcfg, &req, &peer, stream.is_tls(), Admit::Pending(pending)).await {
        Ok(p) => p,
        // The connection's slot went with the refusal: lingering takes one of its own.
        Err(Answer::Refuse(r)) => return refuse(&mut stream, r, Linger::Take(&shared.admission, limits)).await,
        Err(Answer::Shed(reason)) => {
            let linger = Linger::Take(&shared.admission, limits);
            return shed(&mut stream, key, req.headers, reason, &rt.config.shedding, linger).await;
        }
    };
    let head = prepared.response_head();
    if stream.write_all(&head).await.is_err() {
        return None;
    }
    match upgrade::start(shared, &rt, listener, listener_socket, stream, prepared, &buf[end..], started) {
        Ok(ready) => Some(ready),
        Err(ns) => {
            not_started(ns, peer.addr).await;
            None
        }
    }
}

/// After a 101, a relay that cannot start (checked before the 101, so this is a bug guard)
/// still ends with a close frame on both sides, a log line and a metric.
pub(super) async fn not_started(ns: NotStarted, peer: SocketAddr) {
    let NotStarted { mut client, mut backend } = ns;
    let code = crate::ws::CloseCode::InternalError.code();
    tracing::warn!(client = %peer, "relay could not start after the 101: early data over {MAX_EARLY_BYTES} bytes");
    metrics::handshake_failure("relay_start");
    metrics::close_code(code, CloseOrigin::Proxy);
    let reason = "relay could not start";
    let _ = backend
        .write_all(ControlFrame::close(code, reason, Some(rand::random())).as_bytes())
        .await;
    let _ = backend.shutdown().await;
    let _ = client.write_all(ControlFrame::close(code, reason, None).as_bytes()).await;
    linger(&mut client).await;
}

/// How a refused or shed connection's linger counts against the hard ceiling (2 ×
/// `max_connections` admitted, pending or lingering), so connections the balancer is done
/// with cannot hold descriptors past it.
pub(super) enum Linger<'a> {
    /// The connection still holds its accept slot: linger under it.
    Held,
    /// The connection holds nothing now: linger under a slot of its own, or, past the
    /// ceiling, close at once.
    Take(&'a Arc<Admission>, &'a Limits),
    /// Close at once (the connection was refused for being past the ceiling).
    Never,
}

impl Linger<'_> {
    /// Lingers (see [`linger`]) while counted, or only closes.
    pub(super) async fn run(self, stream: &mut Stream) {
        let held = match self {
            Linger::Held => None,
            Linger::Take(admission, limits) => match admission.accept(limits) {
                Some(slot) => Some(slot),
                None => return close_now(stream).await,
            },
            Linger::Never => return close_now(stream).await,
        };
        linger(stream).await;
        drop(held);
    }
}

/// Sends what was written and closes without waiting for the client.
async fn close_now(stream: &mut Stream) {
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
}

/// Answers with an HTTP error and closes (after letting the client read it).
async fn refuse<T>(stream: &mut Stream, r: Refusal, linger: Linger<'_>) -> Option<T> {
    metrics::handshake_failure(r.metric_reason());
    tracing::debug!(status = r.status().0, "request refused");
    let _ = stream.write_all(r.response().as_bytes()).await;
    linger.run(stream).await;
    None
}

/// The 101 with which the balancer completes a shed handshake itself.
pub(super) fn shed_head(key: &str, headers: &[httparse::Header<'_>]) -> Vec<u8> {
    let accept = accept_key(key);
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ");
    out.extend_from_slice(&accept);
    out.extend_from_slice(b"\r\n");
    // Echo the first offered subprotocol: browsers fail a handshake that drops it, and then
    // they would see 1006 instead of our close code.
    if let Some(p) = header(headers, "sec-websocket-protocol").and_then(|v| v.split(|&b| b == b',').next()) {
        out.extend_from_slice(b"Sec-WebSocket-Protocol: ");
        out.extend_from_slice(p.trim_ascii());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// The close frame of a shed connection, with a jittered retry hint.
pub(super) fn shed_close(reason: ShedReason, shedding: &Shedding) -> Vec<u8> {
    metrics::shed(reason.label());
    metrics::close_code(shedding.close_code, CloseOrigin::Proxy);
    tracing::debug!(reason = reason.label(), "connection shed");
    let reason_text = retry_reason(shedding.retry_hint);
    ControlFrame::close(shedding.close_code, &reason_text, None).as_bytes().to_vec()
}

/// Completes the handshake itself and closes with `shedding.close_code` and a jittered
/// retry hint, so well-behaved clients back off with spread.
async fn shed<T>(
    stream: &mut Stream,
    key: &str,
    headers: &[httparse::Header<'_>],
    reason: ShedReason,
    shedding: &Shedding,
    linger: Linger<'_>,
) -> Option<T> {
    let mut out = shed_head(key, headers);
    out.extend_from_slice(&shed_close(reason, shedding));
    let _ = stream.write_all(&out).await;
    linger.run(stream).await;
    None
}

/// Half-closes and reads what the client still sends for a bounded time, so the kernel
/// does not reset the connection under the answer we just wrote.
pub(super) async fn linger(stream: &mut Stream) {
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 512];
    let mut budget: usize = 64 * 1024;
    let _ = tokio::time::timeout(LINGER, async {
        while budget > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => budget = budget.saturating_sub(n),
            }
        }
    })
    .await;
}
