//! Forwarding one plain HTTP request: pick a backend (sticky cookie first), take a pooled
//! keep-alive connection or open one (a connect failure moves on to the next backend),
//! send, bound the wait for the response head by `request_timeout`, and stream the response
//! back; the backend connection returns to the pool when the response is complete.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};
use std::time::Instant;

use http_body_util::BodyExt;
use hyper::body::Body as _;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, SET_COOKIE, TRANSFER_ENCODING};
use hyper::{Method, Request, Response};

use super::answer::{empty, overloaded, refusal};
use super::client::ClientConn;
use crate::backend::{ActiveGuard, Backend};
use crate::blame::Outcome;
use crate::client_addr::ClientAddr;
use crate::handshake::Refusal;
use crate::http::body::{OnEnd, Relayed, RequestTally};
use crate::http::client::{Conn, Pinned};
use crate::http::headers::{add_forwarded, strip_hop_by_hop};
use crate::http::{Body, ClientPool};
use crate::limits::per_client::ClientSlot;
use crate::limits::ShedReason;
use crate::proxy_protocol::Addresses;
use crate::runtime::{Pool, Runtime};

/// What the balancer knows of a request on its way to a backend.
pub(super) struct Forward<'a> {
    /// The client's request head (what a retry is built from again).
    pub(super) head: &'a hyper::http::request::Parts,
    /// Request target (path and query).
    pub(super) target: &'a str,
    /// The request's `Host`.
    pub(super) host: &'a str,
    /// The client's headers, for picking (sticky cookie, hash keys).
    pub(super) headers: &'a [httparse::Header<'a>],
    /// The request's client.
    pub(super) client: &'a ClientAddr,
    /// Its count against the per-client limits, held until the response ends (a request
    /// through a trusted proxy).
    pub(super) client_slot: Option<ClientSlot>,
    /// What the request body did (bytes passed, over the limit).
    pub(super) tally: Arc<RequestTally>,
}

/// Picks, connects (next backend on a connect failure), sends `out` (hop-by-hop fields
/// removed, forwarding fields added), and returns the response.
pub(super) async fn forward(
    cx: &ClientConn,
    rt: &Runtime,
    pool: &Arc<Pool>,
    mut req: Forward<'_>,
    out: Request<Body>,
    started: Instant,
) -> Response<Body> {
    let limits = &rt.config.limits;
    let clients = &cx.shared.http_clients;
    let for_client = Addresses {
        source: req.client.addr,
        destination: cx.peer.local,
    };
    let retryable = out.body().is_end_stream() && matches!(req.head.method, Method::GET | Method::HEAD | Method::OPTIONS);
    // The request while it has not gone out (a refused send hands it back).
    let mut pending = Some(out);
    let mut tried = crate::runtime::Tried::default();
    for _ in 0..pool.config.max_attempts.max(1) {
        let (i, sticky) = match pool.pick_next(req.client.ip(), req.target, req.headers, &mut tried) {
            Ok(p) => p,
            Err(reason) => return overloaded(rt, reason),
        };
        let backend = pool.backends[i].clone();
        let guard = ActiveGuard::request(backend.clone());
        // A connection that starts with a PROXY header speaks for one client: never shared.
        let pinned = backend.config.proxy_protocol.is_some();
        // Where a connection to this backend is kept: looked up once for taking one and
        // putting it back.
        let key = crate::http::client::conn_key(pool, &backend);
        let kept = match pinned {
            true => cx.pinned.take(&backend, req.client.addr).await,
            false => clients.take(key).await,
        };
        let mut conn = match kept {
            Some(c) => c,
            None => match Box::pin(open(cx, pool, i, for_client)).await {
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
            match answer_within(conn.sender.try_send_request(out), limits.request_timeout, &req.tally).await {
                Err(_) => {
                    // The body still coming from the client is the client's wait; a body
                    // passed on whole (or one the backend stopped reading) is the backend's.
                    let outcome = req.tally.stalled().unwrap_or(Outcome::NoAnswerInTime);
                    pool.record(&backend, outcome);
                    tracing::debug!(backend = %backend.address, outcome = outcome.name(), "no response head within request_timeout");
                    return refusal(failure_answer(outcome));
                }
                Ok(Ok(resp)) => break Ok(resp),
                Ok(Err(mut e)) => {
                    let unsent = e.take_message();
                    // A bodiless idempotent request may be sent again after a reused
                    // connection failed under it: its head is made again (not copied
                    // ahead of every request for the rare retry).
                    if conn.reused && may_retry && (unsent.is_some() || retryable) {
                        may_retry = false;
                        pending = unsent.or_else(|| again(cx, &req));
                        match Box::pin(open(cx, pool, i, for_client)).await {
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
                let outcome = send_failure(&req.tally, e.as_ref());
                pool.record(&backend, outcome);
                tracing::debug!(backend = %backend.address, outcome = outcome.name(), "no valid response: {e:?}");
                return refusal(failure_answer(outcome));
            }
        };
        let status = resp.status();
        // An interim answer as the final one (a `101` to a request that asked for no
        // upgrade): the backend broke HTTP, and nothing can be relayed.
        if status.is_informational() {
            pool.record(&backend, Outcome::InvalidAnswer);
            tracing::debug!(backend = %backend.address, status = status.as_u16(), "interim status as a final answer");
            return refusal(failure_answer(Outcome::InvalidAnswer));
        }
        pool.record(&backend, Outcome::of_status(status.as_u16()));
        backend.http_requests.fetch_add(1, Relaxed);
        pool.request_duration.record(started.elapsed().as_secs_f64());
        backend.metrics.http_request(status.as_u16(), cx.h2);
        if let Some(r) = sticky {
            pool.count_sticky(r);
        }
        let (mut parts, rbody) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        if let Some(c) = pool.sticky_cookie(i, sticky, cx.tls).and_then(|c| HeaderValue::from_str(&c).ok()) {
            parts.headers.append(SET_COOKIE, c);
        }
        let home = match pinned {
            true => Home::Pinned(cx.pinned.clone(), Arc::downgrade(&backend), req.client.addr),
            false => Home::Shared(clients.clone(), key),
        };
        let end = Finished {
            _guard: guard,
            _client_slot: req.client_slot.take(),
            sender: Some((home, conn.sender)),
            log: (rt.config.process.access_log && tracing::enabled!(target: "switchyard::access", tracing::Level::INFO)).then(|| {
                AccessLine {
                    client: req.client.addr,
                    peer: cx.peer.socket,
                    method: req.head.method.clone(),
                    path: req.target.split('?').next().unwrap_or("/").to_string(),
                    status: status.as_u16(),
                    pool: pool.name.clone(),
                    backend: backend.address.clone(),
                    started,
                    tally: req.tally.clone(),
                    protocol: if cx.h2 { "h2" } else { "http1" },
                }
            }),
        };
        return Response::from_parts(parts, Relayed::new(rbody, limits.idle_timeout, end).boxed_unsync());
    }
    overloaded(rt, ShedReason::NoBackend)
}

/// A bodiless request made again from the client's head, for a retry.
fn again(cx: &ClientConn, req: &Forward<'_>) -> Option<Request<Body>> {
    let head = outgoing(req.head, req.target, req.client, cx.reuse(req.client), req.host)?;
    Some(Request::from_parts(head, empty()))
}

/// Waits for the response head at most `limit` after the request body was sent: while the
/// body still moves (a long upload), the wait has not started; a body that stopped moving
/// for `limit`, or `limit` of silence after the whole body was passed on, is a timeout
/// (whose, the tally says: [`RequestTally::stalled`]).
async fn answer_within<F: std::future::Future>(send: F, limit: std::time::Duration, tally: &RequestTally) -> Result<F::Output, ()> {
    tokio::pin!(send);
    let mut seen = tally.bytes.load(Relaxed);
    let mut wait = limit;
    loop {
        if let Ok(out) = tokio::time::timeout(wait, &mut send).await {
            return Ok(out);
        }
        if tally.finished.load(Relaxed) {
            // The backend's wait runs from the end of the body (0: a request without one).
            let since = crate::clock::now_ms().saturating_sub(tally.finished_at_ms.load(Relaxed));
            let since = std::time::Duration::from_millis(since);
            if since >= limit {
                return Err(());
            }
            wait = limit - since;
            continue;
        }
        let now = tally.bytes.load(Relaxed);
        if now == seen {
            return Err(());
        }
        seen = now;
        wait = limit;
    }
}

/// How long the client must have kept its body waiting for a backend that gave up on it to
/// have given up on the client (a backend's body timeout is far longer; an early answer and
/// close comes at once).
const STALL_MS: u64 = 100;

/// Whose failure a request that got no response is: the client's when its body broke off
/// or went over the limit, else the backend's (the connection was lost or its answer was
/// not HTTP).
fn send_failure(tally: &RequestTally, e: Option<&hyper::Error>) -> Outcome {
    let unparsable = e.is_some_and(|e| e.is_parse() || e.is_parse_status());
    if tally.over_limit.load(Relaxed) {
        Outcome::ClientBodyTooLarge
    } else if tally.stalled.load(Relaxed) {
        Outcome::ClientBodyStalled
    } else if tally.failed.load(Relaxed) {
        Outcome::ClientBodyBroken
    } else if !tally.finished.load(Relaxed) && tally.client_waited(STALL_MS) {
        // The backend gave up while waiting for the rest of the client's body (its own
        // body timeout): the client's stall, not the backend's failure.
        Outcome::ClientBodyStalled
    } else if !tally.finished.load(Relaxed) && !unparsable {
        // The backend ended the connection while the body was still flowing: most often an
        // early answer (`413`, `401`) and a close, whose answer the reset took with it. (A
        // backend that crashes mid-upload is not counted either: its next requests and its
        // checks will tell.)
        Outcome::UploadCutShort
    } else if unparsable {
        Outcome::InvalidAnswer
    } else {
        Outcome::ConnectionLost
    }
}

/// The balancer's answer to a plain request that got no response, by whose failure it was.
fn failure_answer(outcome: Outcome) -> Refusal {
    match outcome {
        Outcome::ClientBodyTooLarge => Refusal::BodyTooLarge,
        Outcome::ClientBodyStalled => Refusal::BodyTimeout,
        Outcome::ClientBodyBroken => Refusal::BadRequest("malformed or interrupted request body"),
        Outcome::UploadCutShort => Refusal::BadGateway("the backend closed the connection before taking the whole request body"),
        Outcome::NoAnswerInTime => Refusal::GatewayTimeout,
        _ => Refusal::BadGateway("no valid response from the backend"),
    }
}

/// Opens a new connection to backend `i`; a failure is recorded for passive health with
/// the party to blame (never the backend for the balancer's own lack of descriptors).
async fn open(cx: &ClientConn, pool: &Pool, i: usize, for_client: Addresses) -> Option<Conn> {
    let backend = &pool.backends[i];
    let outcome = match tokio::time::timeout(pool.config.connect_timeout, cx.shared.http_clients.open(pool, backend, for_client)).await {
        Ok(Ok(c)) => return Some(c),
        Ok(Err(e)) => {
            tracing::debug!(backend = %backend.address, "connect failed: {e}");
            crate::upstream::attempt_failure(&e)
        }
        Err(_) => {
            tracing::debug!(backend = %backend.address, "connect timed out");
            Outcome::ConnectTimedOut
        }
    };
    pool.record(backend, outcome);
    None
}

/// The access-log line of one plain request, written when its response body ends.
struct AccessLine {
    client: SocketAddr,
    peer: SocketAddr,
    method: Method,
    path: String,
    status: u16,
    pool: Arc<str>,
    backend: String,
    started: Instant,
    tally: Arc<RequestTally>,
    /// `h2` or `http1`: how the client spoke.
    protocol: &'static str,
}

/// Where a backend connection goes back to once its response is complete.
enum Home {
    /// The shared idle pool, under the connection's key.
    Shared(Arc<ClientPool>, crate::http::client::ConnKey),
    /// The client connection's own slot (a backend with `proxy_protocol`), for this client.
    Pinned(Arc<Pinned>, Weak<Backend>, SocketAddr),
}

/// Held until the response body ends: the request counts on its backend (and for its
/// client, through a trusted proxy) until then.
struct Finished {
    _guard: ActiveGuard,
    _client_slot: Option<ClientSlot>,
    /// The backend connection, back home once the response is complete (a response cut
    /// short leaves the connection mid-message: it is closed instead).
    sender: Option<(Home, SendRequest<Body>)>,
    log: Option<AccessLine>,
}

impl OnEnd for Finished {
    fn ended(&mut self, bytes: u64, complete: bool) {
        match (complete, self.sender.take()) {
            (true, Some((Home::Shared(pool, key), sender))) => pool.put(key, sender),
            (true, Some((Home::Pinned(kept, backend, client), sender))) => {
                if let Some(b) = backend.upgrade() {
                    kept.put(&b, client, sender);
                }
            }
            _ => {}
        }
        let Some(l) = self.log.take() else { return };
        tracing::info!(
            target: "switchyard::access",
            client = %l.client,
            peer = %l.peer,
            method = %l.method,
            path = %l.path,
            protocol = l.protocol,
            status = l.status,
            pool = %l.pool,
            backend = %l.backend,
            duration_ms = l.started.elapsed().as_millis() as u64,
            bytes_in = l.tally.bytes.load(Relaxed),
            bytes_out = bytes,
            complete,
            "request"
        );
    }
}

/// The head of a request as it goes to a backend: the target in origin form, hop-by-hop
/// fields removed, the forwarding fields added. `None` for a target that is not a valid
/// origin-form URI.
pub(super) fn outgoing(
    parts: &hyper::http::request::Parts,
    target: &str,
    client: &crate::client_addr::ClientAddr,
    (tls, reuse): (bool, Option<&crate::http::headers::Forwarding>),
    host: &str,
) -> Option<hyper::http::request::Parts> {
    let mut out = Request::new(()).into_parts().0;
    out.method = parts.method.clone();
    out.version = hyper::Version::HTTP_11;
    // An origin-form target (what clients send to a server) is shared, not parsed again.
    out.uri = match parts.uri.scheme().is_none() && parts.uri.authority().is_none() {
        true => parts.uri.clone(),
        false => target.parse().ok()?,
    };
    out.headers = parts.headers.clone();
    match parts.version {
        // HTTP/2 has no connection-specific fields but `te: trailers` (RFC 9113 §8.2.2; the h2
        // crate refuses the rest): no pass over every name for them.
        hyper::Version::HTTP_2 => drop(out.headers.remove(hyper::header::TE)),
        _ => strip_hop_by_hop(&mut out.headers),
    }
    // A chunked body goes on chunked, whatever the method: hyper's client sends a body of
    // unknown length on GET or HEAD only when told to (else as `Content-Length: 0`, the
    // body silently dropped). The codings before `chunked` go on as they were.
    for te in parts.headers.get_all(TRANSFER_ENCODING) {
        out.headers.append(TRANSFER_ENCODING, te.clone());
    }
    add_forwarded(&mut out.headers, client, tls, host, reuse);
    Some(out)
}
