//! The life of one client connection up to the fork, the one place that decides what a
//! connection and its first request are: admission, PROXY header, TLS, then by ALPN the
//! HTTP/2 path ([`super::h2`]), or the first request head read raw: an upgrade goes the
//! WebSocket path ([`super::upgrade`], then the relay), anything else the HTTP/1.1 path
//! ([`super::h1`]: hyper, keep-alive, each request the plain path, possibly an upgrade
//! later). The paths below do not call back up; what they share (the balancer's own answers,
//! the relay's life) sits below them ([`super::answer`], [`super::relaying`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::answer::{close_now, refuse, shed, Linger};
pub use super::relaying::Connection;
use super::relaying::{not_started, Ready};
use super::upgrade::{self, Admit, Answer};
use crate::client_addr::Peer;
use crate::config::any_contains;
use crate::handshake::{header, read_head, wants_websocket, HeadError, Refusal, MAX_HEADERS};
use crate::metrics;
use crate::relay::MAX_EARLY_BYTES;
use crate::runtime::Runtime;
use crate::shared::Shared;
use crate::stream::Stream;

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
                super::h1::serve(
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
