//! The life of one client connection: admission, TLS, the handshake, the backend, the
//! relay, and the access-log line at the end. Every client-visible refusal goes through
//! [`refuse`] (an HTTP status) or [`shed`] (a completed handshake and a close code).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::conns::Registration;
use super::Shared;
use crate::backend::ActiveGuard;
use crate::clock;
use crate::config::Shedding;
use crate::handshake::{accept_key, header, origin_allowed, read_head, validate, HeadError, Refusal, MAX_HEADERS};
use crate::limits::{retry_reason, ShedReason, Slot};
use crate::metrics::{self, CloseOrigin};
use crate::relay::{NotStarted, Relay, RelaySettings, MAX_EARLY_BYTES};
use crate::route::route;
use crate::runtime::Runtime;
use crate::stream::Stream;
use crate::upstream::{self, ClientRequest, UpstreamError};
use crate::ws::frame::ControlFrame;

/// After a refusal or a shed close, how long the client gets to read it and go.
const LINGER: Duration = Duration::from_secs(2);

/// A connection whose handshake succeeded on both sides.
struct Ready {
    relay: Relay,
    reg: Registration,
    _slot: Slot,
    _guard: ActiveGuard,
    started: Instant,
    access_log: bool,
}

/// Serves one accepted TCP connection to its end.
pub async fn handle(shared: Arc<Shared>, listener: Arc<str>, sock: TcpStream, peer: SocketAddr) {
    let _ = sock.set_nodelay(true);
    // The handshake future is boxed: its buffers and header table must not stay in the
    // long-lived task's allocation while the connection relays for hours.
    let Some(ready) = Box::pin(handshake(&shared, &listener, sock, peer)).await else {
        return;
    };
    let Ready {
        relay,
        reg,
        started,
        access_log,
        ..
    } = ready;
    let out = relay.run().await;
    if access_log {
        tracing::info!(
            target: "switchyard::access",
            client = %peer,
            listener = %listener,
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

async fn handshake(shared: &Arc<Shared>, listener: &Arc<str>, sock: TcpStream, peer: SocketAddr) -> Option<Ready> {
    let started = Instant::now();
    let rt: Arc<Runtime> = shared.runtime.load_full();
    let limits = &rt.config.limits;
    let Some(pending) = shared.admission.accept(limits) else {
        let mut s = Stream::Tcp(sock);
        refuse(
            &mut s,
            Refusal::Overloaded {
                retry_after_s: rt.config.shedding.retry_hint.as_secs().max(1),
            },
        )
        .await;
        return None;
    };
    let lcfg = rt.config.listeners.iter().find(|l| *l.name == **listener)?;
    let deadline = tokio::time::Instant::now() + limits.handshake_timeout;
    let mut stream = match rt.tls_acceptor(listener) {
        None => Stream::Tcp(sock),
        Some(acceptor) => match tokio::time::timeout(limits.tls_handshake_timeout, acceptor.accept(sock)).await {
            Ok(Ok(s)) => Stream::TlsServer(Box::new(s)),
            Ok(Err(e)) => {
                tracing::debug!(client = %peer, "TLS handshake failed: {e}");
                metrics::handshake_failure("tls");
                return None;
            }
            Err(_) => {
                metrics::handshake_failure("tls_timeout");
                return None;
            }
        },
    };
    let (buf, end) = match tokio::time::timeout_at(deadline, read_head(&mut stream, limits.max_request_header_bytes)).await {
        Ok(Ok(h)) => h,
        Ok(Err(HeadError::TooLarge(_))) => return refuse(&mut stream, Refusal::HeadTooLarge).await,
        Ok(Err(_)) => {
            metrics::handshake_failure("closed");
            return None;
        }
        Err(_) => return refuse(&mut stream, Refusal::Timeout).await,
    };
    let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut hs);
    match req.parse(&buf[..end]) {
        Ok(httparse::Status::Complete(_)) => {}
        Err(httparse::Error::TooManyHeaders) => return refuse(&mut stream, Refusal::HeadTooLarge).await,
        _ => return refuse(&mut stream, Refusal::BadRequest("malformed request head")).await,
    }
    let up = match validate(&req) {
        Ok(u) => u,
        Err(r) => return refuse(&mut stream, r).await,
    };
    // RFC 6455 §4.1: a client waits for the 101 before sending frames. A little pipelining is
    // tolerated, but only what the relay can hold: refused here, never after the 101.
    if buf.len() - end > MAX_EARLY_BYTES {
        return refuse(&mut stream, Refusal::BadRequest("too much data sent before the 101")).await;
    }
    if !origin_allowed(lcfg.allowed_origins.as_deref(), up.origin) {
        return refuse(&mut stream, Refusal::ForbiddenOrigin).await;
    }
    let headers: &[httparse::Header<'_>] = req.headers;
    let Some(pool) = route(&lcfg.routes, up.target, up.host, headers).and_then(|p| rt.pools.get(p)) else {
        return refuse(&mut stream, Refusal::NoRoute).await;
    };
    let slot = match shared
        .admission
        .admit(pending, limits, &rt.config.shedding, &shared.conns, clock::now_ms())
    {
        Ok(s) => s,
        Err(reason) => return shed(&mut stream, up.key, headers, reason, &rt.config.shedding).await,
    };
    let creq = ClientRequest {
        headers,
        target: up.target,
        host: up.host,
        key: up.key,
        peer,
        tls: stream.is_tls(),
    };
    let upstream = match upstream::open(pool, &creq).await {
        Ok(u) => u,
        Err(UpstreamError::Exhausted(reason)) => return shed(&mut stream, up.key, headers, reason, &rt.config.shedding).await,
        Err(UpstreamError::BadGateway(why)) => return refuse(&mut stream, Refusal::BadGateway(why)).await,
    };
    if upstream.response.len() - upstream.head_len > MAX_EARLY_BYTES {
        return refuse(&mut stream, Refusal::BadGateway("backend sent too much data right after its 101")).await;
    }
    if stream.write_all(&upstream.response[..upstream.head_len]).await.is_err() {
        return None;
    }
    pool.handshake_duration.record(started.elapsed().as_secs_f64());
    let now = clock::now_ms();
    let reg = shared.conns.register(upstream.guard.backend().clone(), listener.clone(), now);
    if shared.draining.load(std::sync::atomic::Ordering::Relaxed) {
        reg.shared.request_close(now, crate::ws::CloseCode::GoingAway.code());
    }
    let settings = RelaySettings {
        idle_timeout: limits.idle_timeout,
        ping_interval: limits.ping_interval,
        ping_timeout: limits.ping_timeout,
        max_message: limits.max_message_bytes,
        rsv_allowed: upstream.rsv_allowed,
    };
    let relay = match Relay::new(
        stream,
        upstream.stream,
        reg.shared.clone(),
        settings,
        &buf[end..],
        &upstream.response[upstream.head_len..],
    ) {
        Ok(r) => r,
        Err(ns) => {
            not_started(ns, peer).await;
            return None;
        }
    };
    Some(Ready {
        relay,
        reg,
        _slot: slot,
        _guard: upstream.guard,
        started,
        access_log: rt.config.process.access_log,
    })
}

/// After a 101, a relay that cannot start (checked before the 101, so this is a bug guard)
/// still ends with a close frame on both sides, a log line and a metric.
async fn not_started(ns: NotStarted, peer: SocketAddr) {
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

/// Answers with an HTTP error and closes (after letting the client read it).
async fn refuse(stream: &mut Stream, r: Refusal) -> Option<Ready> {
    metrics::handshake_failure(r.metric_reason());
    tracing::debug!(status = r.status().0, "handshake refused");
    let _ = stream.write_all(r.response().as_bytes()).await;
    linger(stream).await;
    None
}

/// Completes the handshake itself and closes with `shedding.close_code` and a jittered
/// retry hint, so well-behaved clients back off with spread.
async fn shed(stream: &mut Stream, key: &str, headers: &[httparse::Header<'_>], reason: ShedReason, shedding: &Shedding) -> Option<Ready> {
    metrics::shed(reason.label());
    metrics::close_code(shedding.close_code, CloseOrigin::Proxy);
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
    let reason_text = retry_reason(shedding.retry_hint);
    out.extend_from_slice(ControlFrame::close(shedding.close_code, &reason_text, None).as_bytes());
    tracing::debug!(reason = reason.label(), "connection shed");
    let _ = stream.write_all(&out).await;
    linger(stream).await;
    None
}

/// Half-closes and reads what the client still sends for a bounded time, so the kernel
/// does not reset the connection under the answer we just wrote.
async fn linger(stream: &mut Stream) {
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
