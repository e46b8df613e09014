//! The WebSocket path of a connection: an upgrade request is validated (RFC 6455 §4.2.1),
//! routed, admitted and opened on a backend ([`prepare`]); once its 101 is written to the
//! client, the connection is registered and its relay built ([`start`]). The same two
//! steps serve an upgrade that is the first request of a connection (written raw) and one
//! that follows plain requests on a keep-alive connection (answered through hyper).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use super::relaying::{Logged, Ready};
use crate::client_addr::{resolve, Peer};
use crate::clock;
use crate::config::ListenerConfig;
use crate::config::MessageLimits;
use crate::handshake::{origin_allowed, validate, Refusal};
use crate::limits::per_client::{ClientSlot, SharedBucket};
use crate::limits::{ShedReason, Slot};
use crate::relay::{Relay, RelaySettings};
use crate::route::route;
use crate::runtime::{Pool, Runtime};
use crate::shared::Shared;
use crate::stream::Stream;
use crate::upstream::{self, ClientRequest, Upstream, UpstreamError};

/// How the connection stands with admission.
pub(super) enum Admit {
    /// Accepted, not yet admitted: the upgrade takes a slot (or is shed).
    Pending(Slot),
    /// Already admitted (a keep-alive connection that held plain requests first).
    /// `client_counted`: the connection counts for its client already (it is not a trusted
    /// proxy's, whose requests each name their own client).
    Held { client_counted: bool },
}

/// Why an upgrade is answered by the balancer itself.
pub(super) enum Answer {
    /// An HTTP error status.
    Refuse(Refusal),
    /// A completed handshake closed with `shedding.close_code`.
    Shed(ShedReason),
}

/// An upgrade whose backend answered a valid 101.
pub(super) struct Prepared {
    upstream: Upstream,
    slot: Option<Slot>,
    client_slot: Option<ClientSlot>,
    logged: Logged,
    pool: Arc<Pool>,
    /// `Set-Cookie` for a sticky pool that (re)assigned the backend.
    pub set_cookie: Option<String>,
    /// The connection's message limits, its route's key, and the allowance its client's
    /// connections share.
    messages: Box<(MessageLimits, u64, Option<Arc<SharedBucket>>)>,
}

impl Prepared {
    /// The backend's 101 head, with the sticky cookie added when there is one.
    pub fn response_head(&self) -> Vec<u8> {
        let head = &self.upstream.response[..self.upstream.head_len];
        match &self.set_cookie {
            None => head.to_vec(),
            Some(c) => {
                let mut out = Vec::with_capacity(head.len() + c.len() + 16);
                out.extend_from_slice(&head[..head.len() - 2]);
                out.extend_from_slice(b"Set-Cookie: ");
                out.extend_from_slice(c.as_bytes());
                out.extend_from_slice(b"\r\n\r\n");
                out
            }
        }
    }
}

/// Validates, routes, admits and opens a backend for an upgrade request.
pub(super) async fn prepare(
    shared: &Arc<Shared>,
    rt: &Runtime,
    lcfg: &ListenerConfig,
    req: &httparse::Request<'_, '_>,
    peer: &Peer,
    tls: bool,
    admit: Admit,
) -> Result<Prepared, Answer> {
    let up = validate(req).map_err(Answer::Refuse)?;
    if !origin_allowed(lcfg.allowed_origins.as_deref(), up.origin) {
        return Err(Answer::Refuse(Refusal::ForbiddenOrigin));
    }
    let headers: &[httparse::Header<'_>] = req.headers;
    let found = route(&lcfg.routes, up.target, up.host, headers).ok_or(Answer::Refuse(Refusal::NoRoute))?;
    let pool = rt.pools.get(&found.pool).ok_or(Answer::Refuse(Refusal::NoRoute))?;
    let route_key = found.key();
    let limits = &rt.config.limits;
    let messages = limits.messages.with(&found.limits);
    let client = resolve(peer, headers, &limits.trusted_proxies);
    let now = clock::now_ms();
    let (slot, client_slot) = match admit {
        Admit::Pending(pending) => {
            let slot = shared
                .admission
                .admit(pending, Some(client.ip()), limits, &rt.config.shedding, &shared.conns, now)
                .map_err(Answer::Shed)?;
            (Some(slot), None)
        }
        // A WebSocket on a proxy's keep-alive connection is a new connection of its client.
        Admit::Held { client_counted: false } => {
            let counted = shared
                .admission
                .admit_client(client.ip(), limits, true, now)
                .map_err(Answer::Shed)?;
            (None, counted)
        }
        Admit::Held { client_counted: true } => (None, None),
    };
    // The allowance the client's connections share, once it is counted as one of them.
    let shared_messages = match limits.messages.max_messages_per_second_per_client {
        0 => None,
        rate => shared.admission.message_bucket(client.ip(), rate, now),
    };
    let creq = ClientRequest {
        headers,
        target: up.target,
        host: up.host,
        key: up.key,
        client: &client,
        local: peer.local,
        tls,
    };
    let upstream = match upstream::open(pool, &creq).await {
        Ok(u) => u,
        Err(UpstreamError::Exhausted(reason)) => return Err(Answer::Shed(reason)),
        Err(UpstreamError::BadGateway(why)) => return Err(Answer::Refuse(Refusal::BadGateway(why))),
    };
    if upstream.response.len() - upstream.head_len > crate::relay::MAX_EARLY_BYTES {
        return Err(Answer::Refuse(Refusal::BadGateway(
            "backend sent too much data right after its 101",
        )));
    }
    if let Some(r) = upstream.sticky {
        pool.count_sticky(r);
    }
    let set_cookie = pool.sticky_cookie(upstream.index, upstream.sticky, tls);
    Ok(Prepared {
        upstream,
        slot,
        client_slot,
        logged: Logged::new(&client, peer),
        pool: pool.clone(),
        set_cookie,
        messages: Box::new((messages, route_key, shared_messages)),
    })
}

/// After the 101 reached the client: records the handshake, registers the connection and
/// builds its relay. `client_early` holds frames the client sent behind its request. When
/// the relay cannot start, the sockets come back to be closed with a code.
#[allow(clippy::too_many_arguments)]
pub(super) fn start(
    shared: &Arc<Shared>,
    rt: &Runtime,
    listener: &Arc<str>,
    socket: u64,
    stream: Stream,
    prepared: Prepared,
    client_early: &[u8],
    started: Instant,
) -> Result<Ready, crate::relay::NotStarted> {
    let Prepared {
        upstream,
        slot,
        client_slot,
        logged,
        pool,
        messages,
        ..
    } = prepared;
    let (messages, route_key, shared_messages) = *messages;
    let limits = &rt.config.limits;
    pool.handshake_duration.record(started.elapsed().as_secs_f64());
    let mut logged = logged;
    if matches!(stream, Stream::H2(_)) {
        upstream.guard.backend().total_h2.fetch_add(1, Relaxed);
        logged.h2 = true;
    }
    let now = clock::now_ms();
    let reg = shared
        .conns
        .register(upstream.guard.backend().clone(), (listener.clone(), route_key), socket, now);
    // Registered first, checked second: a shutdown, reload or drain that ran between this
    // connection's pick and its registration did not see it, so it closes itself. Its
    // listener is the socket that accepted it, whatever a reload renamed it to meanwhile.
    if shared.draining.load(Relaxed) || !shared.socket_open(socket) {
        reg.shared.request_close(now, crate::ws::CloseCode::GoingAway.code());
    } else if !shared.runtime.load().serves(&reg.shared.backend) {
        reg.shared.request_close(now, crate::ws::CloseCode::ServiceRestart.code());
    }
    let settings = RelaySettings {
        idle_timeout: limits.idle_timeout,
        ping_interval: limits.ping_interval,
        ping_timeout: limits.ping_timeout,
        backend_ping_interval: limits.backend_ping_interval,
        max_message: limits.max_message_bytes,
        rsv_allowed: upstream.rsv_allowed,
    };
    let relay = Relay::new(
        stream,
        upstream.stream,
        reg.shared.clone(),
        settings,
        client_early,
        &upstream.response[upstream.head_len..],
        crate::relay::Throttle::new(&messages, shared_messages, now),
    )?;
    Ok(Ready {
        relay,
        reg,
        _slot: slot,
        _client_slot: client_slot,
        _guard: upstream.guard,
        started,
        access_log: rt.config.process.access_log,
        client: logged,
    })
}
