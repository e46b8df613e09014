//! A WebSocket whose handshake succeeded on both sides, from the moment it is ready to relay
//! to its end (access-log line, rate refund), whatever path opened it: the first request of a
//! connection, an upgrade on a keep-alive HTTP/1.1 connection, or an HTTP/2 stream.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::AsyncWriteExt;

use super::answer::linger;
use crate::backend::ActiveGuard;
use crate::client_addr::{ClientAddr, Peer};
use crate::conns::Registration;
use crate::limits::per_client::ClientSlot;
use crate::limits::Slot;
use crate::metrics::{self, CloseOrigin};
use crate::relay::{NotStarted, Relay, MAX_EARLY_BYTES};
use crate::ws::frame::ControlFrame;

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

impl Future for Relaying {
    type Output = ();

    /// Relays until the connection ends, then writes its access-log line and, when the
    /// backend failed, gives the admission's rate token back.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let r = self.get_mut();
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
        Poll::Ready(())
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
    Relaying::from(ready).await
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
            throttled_ms = out.throttled_ms,
            close_code = out.code,
            closed_by = out.origin.name(),
            "connection closed"
        );
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

/// A client connection's task, or an HTTP/2 WebSocket stream's: first its handshake, then
/// its relay.
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
                    if Pin::new(r).poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    *this = Connection::Done;
                    return Poll::Ready(());
                }
                Connection::Done => return Poll::Ready(()),
            }
        }
    }
}
