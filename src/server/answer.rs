//! The balancer's own answers, below every path that gives them: an HTTP status as a hyper
//! response ([`refusal`], [`overloaded`]) or written raw ([`refuse`]), a shed handshake
//! completed and closed ([`shed`], [`shed_head`], [`shed_close`]), and the linger after it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::header::{HeaderValue, CONNECTION, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::{Limits, Shedding};
use crate::handshake::{accept_key, header, Refusal};
use crate::http::Body;
use crate::limits::{retry_after_secs, retry_reason, Admission, ShedReason};
use crate::metrics::{self, CloseOrigin};
use crate::runtime::Runtime;
use crate::stream::Stream;
use crate::ws::frame::ControlFrame;

/// After a refusal or a shed close, how long the client gets to read it and go.
const LINGER: Duration = Duration::from_secs(2);

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
pub(super) async fn close_now(stream: &mut Stream) {
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
}

/// Answers with an HTTP error and closes (after letting the client read it).
pub(super) async fn refuse<T>(stream: &mut Stream, r: Refusal, linger: Linger<'_>) -> Option<T> {
    metrics::handshake_failure(r.metric_reason());
    tracing::debug!(status = r.status().0, "request refused");
    let _ = stream.write_all(r.response().as_bytes()).await;
    linger.run(stream).await;
    None
}

/// A response with `status` and the fields of a raw HTTP/1.1 response head, but those named
/// in `dropped` (lower case); no body.
pub(super) fn from_raw_head(raw: &[u8], status: StatusCode, dropped: &[&str]) -> Response<Body> {
    let mut hs = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Response::new(&mut hs);
    let _ = parsed.parse(raw);
    let mut resp = Response::new(empty());
    *resp.status_mut() = status;
    for h in parsed
        .headers
        .iter()
        .filter(|h| !dropped.iter().any(|d| h.name.eq_ignore_ascii_case(d)))
    {
        if let (Ok(n), Ok(v)) = (
            hyper::header::HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) {
            resp.headers_mut().append(n, v);
        }
    }
    resp
}

/// The subprotocol a shed handshake echoes: the first one offered. Browsers fail a handshake
/// that drops it, and then they would see 1006 instead of the balancer's close code.
pub(super) fn first_subprotocol<'a>(headers: &[httparse::Header<'a>]) -> Option<&'a [u8]> {
    header(headers, "sec-websocket-protocol")
        .and_then(|v| v.split(|&b| b == b',').next())
        .map(<[u8]>::trim_ascii)
}

/// The 101 with which the balancer completes a shed handshake itself.
pub(super) fn shed_head(key: &str, headers: &[httparse::Header<'_>]) -> Vec<u8> {
    let accept = accept_key(key);
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ");
    out.extend_from_slice(&accept);
    out.extend_from_slice(b"\r\n");
    if let Some(p) = first_subprotocol(headers) {
        out.extend_from_slice(b"Sec-WebSocket-Protocol: ");
        out.extend_from_slice(p);
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
pub(super) async fn shed<T>(
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

/// `503` with a jittered `Retry-After`: the plain-HTTP twin of a shed `1013`.
pub(super) fn overloaded(rt: &Runtime, reason: ShedReason) -> Response<Body> {
    crate::metrics::shed(reason.label());
    refusal(Refusal::Overloaded {
        retry_after_s: retry_after_secs(rt.config.shedding.retry_hint),
    })
}

/// The balancer's own answer. `400`, `405`, `408`, `413` and `431` close the connection:
/// the request's body was not read (or not all of it), or its framing cannot be trusted.
pub(super) fn refusal(r: Refusal) -> Response<Body> {
    crate::metrics::handshake_failure(r.metric_reason());
    let (code, _) = r.status();
    let mut resp = Response::new(Full::new(Bytes::from(r.body())).map_err(|e| match e {}).boxed_unsync());
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY);
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    if let Some((name, value)) = r.extra_header() {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    }
    if matches!(
        r,
        Refusal::BadRequest(_) | Refusal::BodyTooLarge | Refusal::BodyTimeout | Refusal::MethodNotAllowed | Refusal::HeadTooLarge
    ) {
        h.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

pub(super) fn empty() -> Body {
    Empty::new().map_err(|e| match e {}).boxed_unsync()
}
