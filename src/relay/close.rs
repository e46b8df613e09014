//! How a relayed connection ends: what each side's close, end of stream or broken rule
//! means for the other side, which close code the proxy puts in (and only counts once it is
//! on the wire), and when a connection must end at once because no close frame can follow.

use super::half::{HalfEvent, Inject};
use super::Relay;
use crate::clock;
use crate::metrics::{close_code, CloseOrigin};
use crate::ws::CloseCode;

/// Close code for a backend that died mid-stream (the contract allows 1014 or 1011).
pub const BACKEND_LOST: CloseCode = CloseCode::InternalError;

/// How long a client closed over its limits keeps its socket after the close frame.
const LIMIT_CLOSE_LINGER_MS: u64 = 1_000;

/// Which side broke RFC 6455.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Offender {
    Client,
    Backend,
}

impl Relay {
    pub(super) fn on_client_event(&mut self, ev: HalfEvent) {
        let now = clock::now_ms();
        match ev {
            HalfEvent::CloseFrame(code) => {
                self.note_close(code, CloseOrigin::Client);
                self.start_grace(now);
            }
            HalfEvent::Violation(CloseCode::MessageTooBig) => {
                // Not a broken peer, only a big message: an ordinary closing handshake.
                self.begin_close(CloseCode::MessageTooBig.code(), "message too big", now);
            }
            HalfEvent::Violation(code) => {
                let reason = violation_reason(code);
                self.fail(Offender::Client, (code.code(), reason), (code.code(), reason), now);
            }
            HalfEvent::Eof if !self.c2b.close_seen && !self.closing => {
                // The client vanished without a close: tell the backend, unless the client
                // left it inside a frame, where no close can follow (then both connections end
                // at once, see `Relay::stranded`).
                self.note_close(1006, CloseOrigin::Client);
                self.closing = true;
                self.start_grace(now);
                if self.c2b.scan.at_boundary() {
                    self.c2b.inject = Some(Inject::Close(CloseCode::GoingAway.code(), "client went away"));
                }
            }
            HalfEvent::Eof => self.start_grace(now),
            // The backend cannot be written: its read side will report the rest.
            HalfEvent::DstDead => self.start_grace(now),
        }
    }

    pub(super) fn on_backend_event(&mut self, ev: HalfEvent) {
        let now = clock::now_ms();
        match ev {
            HalfEvent::CloseFrame(code) => {
                self.note_close(code, CloseOrigin::Backend);
                self.start_grace(now);
            }
            HalfEvent::Violation(code) if !self.closing => {
                // A WebSocket-aware proxy stops a broken server stream at the edge: the client
                // would fail on it with 1002 and blame the wrong party.
                tracing::warn!(backend = %self.conn.backend.address, pool = %self.conn.pool, code = code.code(), "backend broke RFC 6455");
                crate::metrics::backend_violation(&self.conn.backend);
                self.fail(
                    Offender::Backend,
                    (BACKEND_LOST.code(), "backend protocol error"),
                    (code.code(), violation_reason(code)),
                    now,
                );
            }
            HalfEvent::Eof if !self.b2c.close_seen && !self.closing => {
                // After the client's close reached it, a backend that ends its connection
                // without a close of its own (a server loop that stops on a close frame and
                // drops the socket) only cut the closing handshake short; nothing failed. The
                // client gets the reply it is owed from the proxy: its own code echoed (RFC
                // 6455 §5.5.1), not counted as a close the proxy decided.
                // Otherwise the backend connection died mid-stream: 1011, not 1014, because
                // common client libraries (tungstenite among them) reject 1014 as reserved and
                // would report a protocol error instead (see README). Inside a frame no close
                // can follow: then both connections end at once (`Relay::stranded`).
                let echo = match (self.c2b.close_seen, self.first_close) {
                    (false, _) => None,
                    (true, Some((code, CloseOrigin::Client))) => Some(code),
                    (true, _) => Some(CloseCode::Normal.code()),
                };
                self.closing = true;
                self.start_grace(now);
                match (self.b2c.scan.at_boundary(), echo) {
                    (true, Some(code)) => {
                        self.counted_sent = code;
                        self.b2c.inject = Some(Inject::Close(code, ""));
                    }
                    (true, None) => self.b2c.inject = Some(Inject::Close(BACKEND_LOST.code(), "backend connection lost")),
                    (false, None) => self.note_close(1006, CloseOrigin::Backend),
                    (false, Some(_)) => {}
                }
                self.c2b.discard = true;
            }
            HalfEvent::DstDead if !self.closing => {
                // The client cannot be written: it is gone.
                self.note_close(1006, CloseOrigin::Client);
                self.closing = true;
                self.start_grace(now);
                if !self.c2b.close_seen && self.c2b.scan.at_boundary() {
                    self.c2b.inject = Some(Inject::Close(CloseCode::GoingAway.code(), "client went away"));
                }
            }
            _ => self.start_grace(now),
        }
    }

    /// The backend did not answer the proxy's ping in time: a frozen process or a host that
    /// vanished. The client gets 1011 and the backend is no longer read (its connection is
    /// shut as soon as its close frame is out, or when the close grace ends).
    pub(super) fn backend_unresponsive(&mut self, now: u64) {
        if self.closing {
            return;
        }
        tracing::warn!(backend = %self.conn.backend.address, pool = %self.conn.pool, "backend did not answer a ping: closing the connection");
        self.fail(
            Offender::Backend,
            (BACKEND_LOST.code(), "backend not responding"),
            (CloseCode::GoingAway.code(), "ping timeout"),
            now,
        );
    }

    /// A client over its rate for `client_limit_grace` (with `client_limit_action: close`):
    /// it gets 1008 and a reason it can read, the backend 1001; what it sent over its rate
    /// and was not read is dropped, and it is read no more.
    pub(super) fn limit_close(&mut self, reason: super::LimitReason, now: u64) {
        if self.closing {
            return;
        }
        tracing::info!(pool = %self.conn.pool, backend = %self.conn.backend.address, reason = reason.label(), "client over its rate limit: closing with 1008");
        self.conn.backend.metrics.limit_closes[reason.index()].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.c2b.drop_unscanned();
        // The connection's close, for its log line, is the client's 1008 (whichever of the
        // two frames is written first).
        self.first_close
            .get_or_insert((CloseCode::PolicyViolation.code(), CloseOrigin::Proxy));
        self.fail(
            Offender::Client,
            (CloseCode::PolicyViolation.code(), reason.close_reason()),
            (CloseCode::GoingAway.code(), "client over its rate limit"),
            now,
        );
        // What it sent over its rate lies unread in its socket: closing that socket at once
        // would answer with a reset, which can make the client's kernel drop the close frame
        // before the client reads it. The socket is kept (not read; the close frame and a FIN
        // are out) for a second, then closed.
        self.linger = true;
        self.closing_deadline_ms = now + LIMIT_CLOSE_LINGER_MS;
    }

    /// The proxy closes both sides with `code` (idle, ping timeout, drain, shutdown, 1009).
    /// Each close goes in at the next frame boundary of its direction, or not at all.
    pub(super) fn begin_close(&mut self, code: u16, reason: &'static str, now: u64) {
        if self.closing {
            return;
        }
        self.closing = true;
        self.start_grace(now);
        self.inject_closes((code, reason), (code, reason));
    }

    /// RFC 6455 §7.1.7 "Fail the WebSocket Connection": the offender is no longer read and
    /// its connection is shut as soon as its close frame is out; the other side gets the
    /// close handshake it is owed.
    fn fail(&mut self, offender: Offender, to_client: (u16, &'static str), to_backend: (u16, &'static str), now: u64) {
        self.closing = true;
        self.start_grace(now);
        self.inject_closes(to_client, to_backend);
        // The offending frame starts at a frame boundary, so its reader stops between frames.
        match offender {
            Offender::Client => {
                self.c2b.src_done = true;
                self.b2c.shut_after_close = true;
            }
            Offender::Backend => {
                self.b2c.src_done = true;
                self.c2b.shut_after_close = true;
            }
        }
    }

    fn inject_closes(&mut self, to_client: (u16, &'static str), to_backend: (u16, &'static str)) {
        if !self.b2c.close_seen && !self.b2c.dst_dead {
            self.b2c.inject = Some(Inject::Close(to_client.0, to_client.1));
        }
        if !self.c2b.close_seen && !self.c2b.dst_dead && !self.c2b.src_done {
            self.c2b.inject = Some(Inject::Close(to_backend.0, to_backend.1));
        }
        self.injected = true;
        self.c2b.discard |= self.c2b.inject.is_none();
    }

    /// A close frame the proxy injected went on the wire: only now is it counted and, if it
    /// is the connection's first, logged.
    pub(super) fn on_close_sent(&mut self, code: u16) {
        // Both sides usually get the same code: one close decision, counted once.
        if self.counted_sent != code {
            self.counted_sent = code;
            close_code(code, CloseOrigin::Proxy);
        }
        if self.first_close.is_none() {
            self.first_close = Some((code, CloseOrigin::Proxy));
        }
    }

    /// The closing handshake is over on the client's side: it sent its close frame, which is
    /// written on, and nothing more is to be relayed to it. Its FIN is not waited for: the
    /// proxy, its server, closes the connection first (RFC 6455 §7.1.1), at once; that saves
    /// a wake-up and a `shutdown` and `recvfrom` per connection.
    pub(super) fn client_done(&self) -> bool {
        self.c2b.close_seen && self.c2b.drained()
    }

    /// The client's closing handshake is complete (RFC 6455 §7.1.2): it sent its close
    /// frame, which is written on (the backend has its close), and a close frame — the
    /// backend's or the proxy's — is written to it. Nothing more may be sent to the client,
    /// so the connection ends now, whether or not the backend ever closes its socket (a
    /// server that sends its close reply and keeps the connection would otherwise hold the
    /// client's for the close grace).
    pub(super) fn handshake_done(&self) -> bool {
        self.client_done() && self.b2c.close_passed() && self.b2c.drained()
    }

    /// A source ended inside a frame: its destination can get nothing more, not even a close
    /// frame, so the connection must end now instead of waiting for a boundary.
    pub(super) fn stranded(&self) -> bool {
        (self.c2b.src_done && !self.c2b.scan.at_boundary()) || (self.b2c.src_done && !self.b2c.scan.at_boundary())
    }

    pub(super) fn start_grace(&mut self, now: u64) {
        if self.closing_deadline_ms == 0 {
            self.closing_deadline_ms = now + super::CLOSE_GRACE_MS;
        }
    }

    /// Records a close that a peer sent (or 1006 for a peer that vanished without one).
    pub(super) fn note_close(&mut self, code: u16, origin: CloseOrigin) {
        close_code(code, origin);
        if self.first_close.is_none() {
            self.first_close = Some((code, origin));
        }
    }
}

fn violation_reason(code: CloseCode) -> &'static str {
    match code {
        CloseCode::MessageTooBig => "message too big",
        CloseCode::InvalidPayload => "invalid close reason",
        _ => "protocol error",
    }
}
