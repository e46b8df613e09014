//! Bidirectional, frame-aware relay of an established WebSocket connection.
//!
//! One task drives both directions ([`half::Half`]) and one timer. Buffers are held only
//! while bytes are in flight. The single deadline is the earliest of: idle timeout, ping
//! due / pong overdue, a requested close (drain, shutdown), the end of the close grace, and
//! the next counter flush; activity never re-arms the timer, it only moves the stored
//! stamps, and the deadline is recomputed when the timer fires.

pub mod buf;
mod close;
mod half;
#[cfg(test)]
mod tests;
mod throttle;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Sleep;

use crate::clock;
use crate::conns::ConnShared;
use crate::metrics::CloseOrigin;
use crate::stream::Stream;
use crate::ws::stream::{Allowance, Scanner, Side};
use crate::ws::CloseCode;
pub use close::BACKEND_LOST;
pub use half::MAX_EARLY_BYTES;
use half::{Half, Inject};
use throttle::Step;
pub use throttle::{LimitReason, Throttle};

/// How long both sides get to finish a closing handshake once one started.
const CLOSE_GRACE_MS: u64 = 5_000;
/// Local counters are flushed to the shared ones at least this often while active.
const FLUSH_EVERY_MS: u64 = 1_000;

/// Per-connection knobs, copied from the config at connection start.
#[derive(Debug, Clone, Copy)]
pub struct RelaySettings {
    /// Close after this long without data frames.
    pub idle_timeout: Option<Duration>,
    /// Ping the client when it has been silent this long.
    pub ping_interval: Option<Duration>,
    /// Close when a ping is not answered within this (either side).
    pub ping_timeout: Duration,
    /// Ping the backend when it has been silent this long.
    pub backend_ping_interval: Option<Duration>,
    /// Client message limit (0 = none).
    pub max_message: u64,
    /// RSV bits the negotiated extensions use.
    pub rsv_allowed: u8,
}

/// The relay's timer settings in milliseconds, 0 = off: a quarter of the size of the
/// `Option<Duration>`s they come from, in every connection's state.
#[derive(Debug, Clone, Copy)]
struct Timers {
    idle: u32,
    ping: u32,
    ping_timeout: u32,
    backend_ping: u32,
}

impl Timers {
    fn from(s: &RelaySettings) -> Timers {
        // Longer than 49 days is as good as never for a timer; a zero timeout would fire at once.
        let ms = |d: Option<Duration>| d.map_or(0, |d| d.as_millis().clamp(1, u32::MAX as u128) as u32);
        Timers {
            idle: ms(s.idle_timeout),
            ping: ms(s.ping_interval),
            ping_timeout: ms(Some(s.ping_timeout)),
            backend_ping: ms(s.backend_ping_interval),
        }
    }

    fn idle(&self) -> Option<u64> {
        (self.idle != 0).then_some(self.idle as u64)
    }

    fn ping(&self) -> Option<u64> {
        (self.ping != 0).then_some(self.ping as u64)
    }

    fn ping_timeout(&self) -> u64 {
        self.ping_timeout as u64
    }

    fn backend_ping(&self) -> Option<u64> {
        (self.backend_ping != 0).then_some(self.backend_ping as u64)
    }
}

/// One side's keepalive: the proxy's own ping, and the answer it waits for (a pong carrying
/// its token, or any bytes at all: anything from the peer proves it is alive).
#[derive(Debug, Clone, Copy)]
struct Pinger {
    /// A ping waits for a frame boundary (not yet on the wire).
    queued: bool,
    /// When the ping on the wire was written, still unanswered (0: none).
    awaiting_ms: u64,
    /// When the peer last sent anything. A ping is answered by bytes from the peer, so
    /// this is never earlier than the last answered ping: the next one is due from here.
    last_rx_ms: u64,
}

impl Pinger {
    fn new(now: u64) -> Pinger {
        Pinger {
            queued: false,
            awaiting_ms: 0,
            last_rx_ms: now,
        }
    }

    /// Bytes arrived from the peer.
    fn heard(&mut self, now: u64) {
        self.last_rx_ms = now;
        self.awaiting_ms = 0;
    }

    /// The peer's side is held back by its limits: its answer waits unread behind what it
    /// sent, and what it sent proves it alive. The ping on the wire counts as answered when
    /// it was written, so the next one goes out an interval later (its pong, when it comes,
    /// is cut out like any other).
    fn held_back(&mut self) {
        if self.awaiting_ms != 0 {
            self.last_rx_ms = self.last_rx_ms.max(self.awaiting_ms);
            self.awaiting_ms = 0;
        }
    }

    /// The queued ping went on the wire.
    fn sent(&mut self, now: u64) {
        self.queued = false;
        self.awaiting_ms = now;
    }

    fn timed_out(&self, now: u64, timeout: u64) -> bool {
        self.awaiting_ms != 0 && now >= self.awaiting_ms + timeout
    }

    fn due(&self, now: u64, interval: u64) -> bool {
        self.awaiting_ms == 0 && !self.queued && now >= self.last_rx_ms + interval
    }

    /// When this side next needs the timer: its ping timeout, or its next ping (none while
    /// one is queued).
    fn deadline(&self, interval: u64, timeout: u64) -> Option<u64> {
        if self.awaiting_ms != 0 {
            Some(self.awaiting_ms + timeout)
        } else {
            (!self.queued).then_some(self.last_rx_ms + interval)
        }
    }
}

/// How a relayed connection ended, for the access log.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// The first close code of the connection (1006 when a side vanished without one).
    pub code: u16,
    /// Who sent it.
    pub origin: CloseOrigin,
    /// Bytes client → backend.
    pub bytes_c2b: u64,
    /// Bytes backend → client.
    pub bytes_b2c: u64,
    /// Messages client → backend.
    pub msgs_c2b: u64,
    /// Messages backend → client.
    pub msgs_b2c: u64,
    /// Milliseconds either direction was held back by its message or byte limits.
    pub throttled_ms: u64,
}

impl Outcome {
    /// Did the connection end because its backend failed? The balancer closed the client with
    /// 1011 (backend lost, broke the protocol, did not answer pings), or the backend vanished
    /// inside a frame, where no close frame can follow.
    pub fn backend_failed(&self) -> bool {
        match self.origin {
            CloseOrigin::Proxy => self.code == BACKEND_LOST.code(),
            CloseOrigin::Backend => self.code == 1006,
            _ => false,
        }
    }
}

/// A relay that could not start: the early bytes of a side did not fit in a buffer. The
/// streams are handed back so the caller can close them with a code.
pub struct NotStarted {
    /// The client connection.
    pub client: Stream,
    /// The backend connection.
    pub backend: Stream,
}

/// The future of a relayed connection ([`Relay::run`]).
pub struct Run(Relay);

impl Future for Run {
    type Output = Outcome;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        self.0.poll_relay(cx)
    }
}

/// A connection being relayed.
pub struct Relay {
    client: Stream,
    backend: Stream,
    c2b: Half,
    b2c: Half,
    timer: Pin<Box<Sleep>>,
    conn: Arc<ConnShared>,
    timers: Timers,
    ping_token: [u8; 8],
    /// The proxy's keepalive pings to the client.
    client_ping: Pinger,
    /// The proxy's pings to the backend (their payload is the client token with its first
    /// bit flipped).
    backend_ping: Pinger,
    last_data_ms: u64,
    last_flush_ms: u64,
    closing_deadline_ms: u64,
    closing: bool,
    injected: bool,
    dirty: bool,
    seen_close_req: Option<u64>,
    first_close: Option<(u16, CloseOrigin)>,
    /// The last close code the proxy sent and counted (0: none).
    counted_sent: u16,
    totals: [u64; 4],
    /// Message and bandwidth limits, when any is on.
    throttle: Option<Box<Throttle>>,
    /// A throttled direction's tokens are back: pump again.
    repump: bool,
    /// Closed over its limits: the client's socket is kept until the close grace ends
    /// (see [`Relay::limit_close`]).
    linger: bool,
}

impl Relay {
    /// Prepares a relay; `client_early`/`backend_early` are bytes already read past the
    /// handshake heads. Fails when they do not fit in a buffer (more than [`MAX_EARLY_BYTES`];
    /// callers check that before answering the 101).
    pub fn new(
        client: Stream,
        backend: Stream,
        conn: Arc<ConnShared>,
        settings: RelaySettings,
        client_early: &[u8],
        backend_early: &[u8],
        throttle: Option<Box<Throttle>>,
    ) -> Result<Self, NotStarted> {
        let now = clock::now_ms();
        let mut c2b = Half::new(Scanner::new(Side::Client, settings.rsv_allowed, settings.max_message), true);
        let mut b2c = Half::new(Scanner::new(Side::Backend, settings.rsv_allowed, 0), false);
        if !c2b.preload(client_early) || !b2c.preload(backend_early) {
            return Err(NotStarted { client, backend });
        }
        let token = rand::random::<u64>().to_be_bytes();
        let mut r = Relay {
            client,
            backend,
            c2b,
            b2c,
            timer: Box::pin(tokio::time::sleep(Duration::from_secs(3600))),
            conn,
            timers: Timers::from(&settings),
            ping_token: token,
            client_ping: Pinger::new(now),
            backend_ping: Pinger::new(now),
            last_data_ms: now,
            last_flush_ms: now,
            closing_deadline_ms: 0,
            closing: false,
            injected: false,
            dirty: true,
            seen_close_req: None,
            first_close: None,
            counted_sent: 0,
            totals: [0; 4],
            throttle,
            repump: false,
            linger: false,
        };
        r.rearm(now, true);
        Ok(r)
    }

    /// Relays until both sides are closed (or the close grace ends).
    ///
    /// A named future holding the relay once: an `async fn run(mut self)` stores `self`
    /// twice (the argument and the body's local), which doubled what every idle connection's
    /// task holds (1,200 bytes instead of 592).
    pub fn run(self) -> Run {
        Run(self)
    }

    fn poll_relay(&mut self, cx: &mut Context<'_>) -> Poll<Outcome> {
        self.conn.waker.register(cx.waker());
        if self.conn.limits_changed() {
            self.apply_limits();
        }
        let mut fired = false;
        'outer: loop {
            loop {
                // The token is random per connection, so a pong carrying it answers our ping
                // whenever it arrives; it is always cut out.
                let token = self.ping_token;
                let own = self.timers.ping().is_some().then_some(&token[..]);
                let btoken = self.timers.backend_ping().map(|_| self.backend_token());
                let own_b = btoken.as_ref().map(|t| &t[..]);
                let had_unflushed = self.has_unflushed();
                // The limits' allowances, once per pump (none while closing: a close
                // waits for nothing).
                let (mut ca, mut ba) = match self.throttle.as_deref_mut() {
                    Some(t) if !self.closing => (t.client_allowance(), t.backend_allowance()),
                    Some(t) if t.throttled() => {
                        // Closing: nothing is held back any more.
                        self.unthrottle(clock::now_ms());
                        (None, None)
                    }
                    _ => (None, None),
                };
                let given = (ca, ba);
                let a = self.c2b.pump(&mut self.client, &mut self.backend, cx, own, ca.as_mut());
                let b = self.b2c.pump(&mut self.backend, &mut self.client, cx, own_b, ba.as_mut());
                let again = given != (None, None) && self.after_pumps(given, (ca, ba), (a.throttled, b.throttled));
                if a.rx || b.rx {
                    let now = clock::now_ms();
                    if let Some(t) = self.throttle.as_deref_mut() {
                        t.tick(now);
                    }
                    if a.rx {
                        self.client_ping.heard(now);
                    }
                    if b.rx {
                        self.backend_ping.heard(now);
                    }
                    if a.data_seen || b.data_seen {
                        self.last_data_ms = now;
                        self.conn.last_data_ms.store(now, std::sync::atomic::Ordering::Relaxed);
                    }
                    if now >= self.last_flush_ms + FLUSH_EVERY_MS {
                        self.flush(now);
                    } else if !had_unflushed {
                        self.dirty = true; // the flush deadline may be the earliest now
                    }
                }
                // Only a ping on the wire is awaited: one queued behind a long frame has not
                // been sent, and its peer cannot answer it yet.
                if b.ping_sent {
                    self.client_ping.sent(clock::now_ms());
                    self.dirty = true;
                }
                if a.ping_sent {
                    self.backend_ping.sent(clock::now_ms());
                    self.dirty = true;
                }
                for code in [a.sent_close, b.sent_close].into_iter().flatten() {
                    self.on_close_sent(code);
                }
                // A side whose peer already ended needs no shutdown(2) before the close; nor
                // does a plain TCP client that sent its close frame (TLS ends with close_notify).
                self.c2b.peer_gone = self.b2c.src_done;
                self.b2c.peer_gone = self.c2b.src_done || (self.c2b.close_seen && !self.client.is_tls());
                if let Some(ev) = a.event {
                    self.dirty = true;
                    self.on_client_event(ev);
                }
                if let Some(ev) = b.event {
                    self.dirty = true;
                    self.on_backend_event(ev);
                }
                if self.stranded() {
                    return Poll::Ready(self.finish());
                }
                if !self.linger && ((self.b2c.finished() && (self.c2b.finished() || self.client_done())) || self.handshake_done()) {
                    return Poll::Ready(self.finish());
                }
                if !(a.progress || b.progress || a.event.is_some() || b.event.is_some() || again) {
                    break;
                }
            }
            // Timers run only when the timer fired or something that moves a deadline
            // earlier happened, so a busy connection reads no clock here per message.
            loop {
                let close_req = self.conn.close_request().map(|(at, _)| at);
                if fired || self.dirty || close_req != self.seen_close_req {
                    self.seen_close_req = close_req;
                    self.dirty = false;
                    self.injected = false;
                    let now = clock::now_ms();
                    if self.on_time(now) {
                        return Poll::Ready(self.finish());
                    }
                    self.rearm(now, fired);
                    fired = false;
                    if self.injected || std::mem::take(&mut self.repump) {
                        continue 'outer; // a frame to put in, or tokens back: let the pumps run
                    }
                }
                if self.timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                fired = true;
            }
        }
    }

    /// Acts on whatever is due at `now`; true when the connection must end now.
    fn on_time(&mut self, now: u64) -> bool {
        if self.closing_deadline_ms != 0 && now >= self.closing_deadline_ms {
            return true;
        }
        if let Some((at, code)) = self.conn.close_request() {
            if now >= at {
                let reason = if code == CloseCode::GoingAway.code() {
                    "server shutting down"
                } else {
                    "backend restarting"
                };
                self.begin_close(code, reason, now);
            }
        }
        // Before the idle and ping checks: a throttled side is active and alive.
        if self.throttle.is_some() && !self.closing {
            self.on_throttle_time(now);
            if self.closing {
                return false; // closed over its rate: the closes are on their way
            }
        }
        if let Some(idle) = self.timers.idle() {
            if now >= self.last_data_ms + idle {
                self.begin_close(CloseCode::GoingAway.code(), "idle timeout", now);
            }
        }
        let timeout = self.timers.ping_timeout();
        if let Some(interval) = self.timers.ping() {
            if self.client_ping.timed_out(now, timeout) {
                self.begin_close(CloseCode::GoingAway.code(), "ping timeout", now);
            } else if !self.closing && self.client_ping.due(now, interval) && self.b2c.inject.is_none() {
                // Awaited from the moment it is written (see `poll_relay`), not from now.
                self.b2c.inject = Some(Inject::Ping(self.ping_token));
                self.client_ping.queued = true;
                self.injected = true;
            }
        }
        if let Some(interval) = self.timers.backend_ping() {
            if self.backend_ping.timed_out(now, timeout) {
                self.backend_unresponsive(now);
            } else if !self.closing && self.backend_ping.due(now, interval) && self.c2b.inject.is_none() {
                self.c2b.inject = Some(Inject::Ping(self.backend_token()));
                self.backend_ping.queued = true;
                self.injected = true;
            }
        }
        if self.has_unflushed() && now >= self.last_flush_ms + FLUSH_EVERY_MS {
            self.flush(now);
        }
        false
    }

    /// The limits' part of [`Relay::on_time`]: a client over its rate for the grace is
    /// closed (with `close`); directions whose tokens are back are pumped again; a throttled
    /// side is alive and not idle (what it sent waits unread, its pongs among it).
    fn on_throttle_time(&mut self, now: u64) {
        let Some(t) = self.throttle.as_deref_mut() else { return };
        t.tick(now);
        if let Some(reason) = t.over_grace(now) {
            self.limit_close(reason, now);
            return;
        }
        let (c, b) = t.due(now);
        self.repump |= c || b;
        let (held_c, held_b) = (t.c2b.since_ms != 0, t.b2c.since_ms != 0);
        if held_c {
            self.client_ping.held_back();
            self.last_data_ms = now;
            self.conn.last_data_ms.store(now, std::sync::atomic::Ordering::Relaxed);
        }
        if held_b {
            self.backend_ping.held_back();
            self.last_data_ms = now;
        }
        if held_c || held_b {
            self.report_throttled(now);
        }
    }

    /// Takes what the pumps passed from the buckets and notes which direction is held back;
    /// true when a direction that stopped for its allowance has tokens again (pump again).
    fn after_pumps(
        &mut self,
        given: (Option<Allowance>, Option<Allowance>),
        left: (Option<Allowance>, Option<Allowance>),
        throttled: (bool, bool),
    ) -> bool {
        let Some(t) = self.throttle.as_deref_mut() else { return false };
        let before = t.throttled();
        // Most pumps pass nothing in a direction, or pass what the allowance had room for.
        let quiet = |g: Option<Allowance>, l: Option<Allowance>, held: bool| g == l && !held;
        if !before && quiet(given.0, left.0, throttled.0) && quiet(given.1, left.1, throttled.1) {
            return false;
        }
        let mut steps = [Step::Same; 2];
        if let (Some(g), Some(l)) = (given.0, left.0) {
            steps[0] = t.after_client(g, l, throttled.0, clock::now_ms);
        }
        if let (Some(g), Some(l)) = (given.1, left.1) {
            steps[1] = t.after_backend(g, l, throttled.1, clock::now_ms);
        }
        if steps.iter().all(|s| *s == Step::Same) {
            return false;
        }
        // A new wait: its deadline may be the earliest now.
        self.dirty = true;
        let after = t.throttled();
        let now = t.now();
        if before != after {
            self.throttled_changed(after);
            if !after {
                self.report_throttled(now);
            }
        }
        steps.contains(&Step::Again)
    }

    /// The connection entered or left the throttled state (the admin API's count).
    fn throttled_changed(&self, now_throttled: bool) {
        let m = &self.conn.backend.metrics.throttled_now;
        match now_throttled {
            true => m.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            false => m.fetch_sub(1, std::sync::atomic::Ordering::Relaxed),
        };
    }

    /// Adds the throttled time not yet counted to the pool's counter.
    fn report_throttled(&mut self, now: u64) {
        if let Some(t) = self.throttle.as_deref_mut() {
            throttle::add_throttled(&self.conn.backend, t.unreported(now));
        }
    }

    /// Nothing is held back any more (closing, ending, or no limit left): both directions
    /// released, the admin API's count and the pool's throttled time brought up to date.
    fn unthrottle(&mut self, now: u64) {
        if let Some(t) = self.throttle.as_deref_mut().filter(|t| t.throttled()) {
            t.release_all(now);
            self.throttled_changed(false);
        }
        self.report_throttled(now);
    }

    /// A reload's limits for this connection.
    fn apply_limits(&mut self) {
        let Some(limits) = self.conn.take_limits() else { return };
        let now = clock::now_ms();
        let keep = match self.throttle.as_deref_mut() {
            Some(t) => t.update(&limits, now),
            None => {
                self.throttle = Throttle::new(&limits, None, now);
                self.throttle.is_some()
            }
        };
        if !keep {
            // No limit left: nothing is held back (the buckets stay, empty, for the totals).
            self.unthrottle(now);
        }
        self.dirty = true;
        self.repump = true;
    }

    /// The payload of the proxy's pings to the backend.
    fn backend_token(&self) -> [u8; 8] {
        let mut t = self.ping_token;
        t[0] ^= 0x80;
        t
    }

    fn next_deadline(&self) -> u64 {
        let mut d = u64::MAX;
        if self.closing_deadline_ms != 0 {
            d = d.min(self.closing_deadline_ms);
        }
        if let Some((at, _)) = self.conn.close_request() {
            if !self.closing {
                d = d.min(at);
            }
        }
        if !self.closing {
            if let Some(idle) = self.timers.idle() {
                d = d.min(self.last_data_ms + idle);
            }
            let timeout = self.timers.ping_timeout();
            let sides = [
                (self.timers.ping(), &self.client_ping),
                (self.timers.backend_ping(), &self.backend_ping),
            ];
            for (interval, pinger) in sides {
                if let Some(at) = interval.and_then(|i| pinger.deadline(i, timeout)) {
                    d = d.min(at);
                }
            }
        }
        if self.has_unflushed() {
            d = d.min(self.last_flush_ms + FLUSH_EVERY_MS);
        }
        if let Some(at) = self.throttle.as_ref().filter(|_| !self.closing).and_then(|t| t.deadline()) {
            d = d.min(at);
        }
        d
    }

    /// Re-arms the timer when the next deadline moved earlier or the timer fired: activity
    /// pushes deadlines later on every message, and touching the timer wheel per message
    /// would cost more than an early wake-up that finds nothing due.
    fn rearm(&mut self, now: u64, fired: bool) {
        let d = self.next_deadline().max(now + 1).min(now + 3_600_000);
        let at = tokio::time::Instant::from_std(clock::instant_at(d));
        if fired || at < self.timer.deadline() {
            self.timer.as_mut().reset(at);
        }
    }

    fn has_unflushed(&self) -> bool {
        self.c2b.unflushed_bytes != 0 || self.b2c.unflushed_bytes != 0
    }

    /// Adds local counters to the backend's atomics.
    fn flush(&mut self, now: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.last_flush_ms = now;
        let b = &self.conn.backend;
        let (bc, bb) = (
            std::mem::take(&mut self.c2b.unflushed_bytes),
            std::mem::take(&mut self.b2c.unflushed_bytes),
        );
        let (mc, mb) = (self.c2b.scan.take_messages(), self.b2c.scan.take_messages());
        b.bytes_c2b.fetch_add(bc, Relaxed);
        b.bytes_b2c.fetch_add(bb, Relaxed);
        b.msgs_c2b.fetch_add(mc, Relaxed);
        b.msgs_b2c.fetch_add(mb, Relaxed);
        for (t, v) in self.totals.iter_mut().zip([bc, bb, mc, mb]) {
            *t += v;
        }
    }

    fn finish(&mut self) -> Outcome {
        let now = clock::now_ms();
        self.flush(now);
        self.unthrottle(now);
        let throttled_ms = self.throttle.as_ref().map_or(0, |t| t.total_ms);
        let (code, origin) = self.first_close.unwrap_or((1006, CloseOrigin::Proxy));
        Outcome {
            code,
            origin,
            bytes_c2b: self.totals[0],
            bytes_b2c: self.totals[1],
            msgs_c2b: self.totals[2],
            msgs_b2c: self.totals[3],
            throttled_ms,
        }
    }
}
