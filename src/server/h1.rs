//! The HTTP/1.1 path of a client connection after its first request head: hyper serves it
//! (keep-alive, bodies streamed both ways), each request goes the plain path
//! ([`super::plain::request`]), and an upgrade answered on it leaves hyper for the relay.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;

use super::answer::linger;
use super::client::{ClientConn, PendingUpgrade};
use super::relaying;
use super::upgrade;
use crate::client_addr::Peer;
use crate::http::ClientIo;
use crate::limits::Slot;
use crate::shared::Shared;
use crate::stream::Stream;

/// Serves a plain HTTP connection until it closes, upgrades or the balancer drains.
/// `read` holds what was read while looking at the first request head; `per_request`: the
/// peer is a trusted proxy, and `slot` counts for no client.
pub(super) async fn serve(
    shared: Arc<Shared>,
    (listener, socket): (Arc<str>, u64),
    stream: Stream,
    read: Vec<u8>,
    slot: Slot,
    peer: Peer,
    per_request: bool,
) {
    let limits = shared.runtime.load().config.limits.clone();
    let cx = ClientConn::new(&shared, (listener.clone(), socket), peer, per_request, (stream.is_tls(), false));
    let io = TokioIo::new(ClientIo::new(Bytes::from(read), stream, limits.idle_timeout));
    let svc = cx.clone();
    let service = service_fn(move |req| {
        let cx = svc.clone();
        async move { Ok::<_, Infallible>(super::plain::request(cx, req).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        // Bounds an idle keep-alive connection and each later request head.
        .header_read_timeout(limits.keepalive_timeout)
        // A client that sends its request and then shuts its sending side (a one-shot
        // client) still gets its answer.
        .half_close(true)
        .max_buf_size(limits.max_request_header_bytes.max(8192))
        // Every request of the connection, not only the first (read raw), gets a 431 past
        // `max_request_header_bytes` (start line included).
        .max_header_size(limits.max_request_header_bytes)
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
        tracing::debug!(client = %peer.addr, "plain HTTP connection ended: {e}");
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
            match upgrade::start(&shared, &rt, &listener, socket, stream, *prepared, &early, started) {
                Ok(ready) => relaying::relay(ready).await,
                Err(ns) => relaying::not_started(ns, peer.addr).await,
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
