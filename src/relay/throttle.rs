//! Message and bandwidth limits of one relayed connection (`limits.client_messages_per_second`
//! and the rest): token buckets per direction, refilled from the relay's clock, and the
//! shared bucket of the client's address. A direction over its allowance is throttled by
//! backpressure (its source is not read until tokens return: nothing lost, no memory
//! grows); with `client_limit_action: close`, a client over its rate for the grace is closed.
//!
//! Nothing here runs per message: an allowance is computed once per pump, the scanner takes
//! from it, and what was taken goes back to the buckets after the pump.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use crate::config::{LimitAction, MessageLimits};
use crate::limits::per_client::SharedBucket;
use crate::ws::stream::Allowance;

/// Ids of the connections sharing a client's allowance ([`SharedBucket::turn`]).
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A token bucket in thousandths of a token, refilled per millisecond.
#[derive(Debug, Clone, Copy)]
pub(super) struct Bucket {
    /// Tokens per second.
    rate: u64,
    /// Most thousandths it holds (the burst).
    cap: i64,
    /// Thousandths now; below zero after a frame larger than what was left (a debt).
    milli: i64,
    last_ms: u64,
}

impl Bucket {
    /// A full bucket; `burst` 0 is one second's worth. `None` for a rate of 0 (off).
    fn new(rate: u64, burst: u64, now_ms: u64) -> Option<Bucket> {
        (rate != 0).then(|| {
            let cap = Self::cap(rate, burst);
            Bucket {
                rate,
                cap,
                milli: cap,
                last_ms: now_ms,
            }
        })
    }

    fn cap(rate: u64, burst: u64) -> i64 {
        let burst = if burst == 0 { rate } else { burst };
        (burst.min(i64::MAX as u64 / 1000) as i64) * 1000
    }

    fn refill(&mut self, now_ms: u64) {
        if now_ms > self.last_ms {
            // Rates are at most 2^40 a second: 2^20 ms of them fit in an i64.
            let gained = (now_ms - self.last_ms).min(1 << 20) as i64 * self.rate as i64;
            self.milli = self.milli.saturating_add(gained).min(self.cap);
            self.last_ms = now_ms;
        }
    }

    /// Whole tokens now (negative: a debt).
    fn whole(&self) -> i64 {
        match self.milli >= 0 {
            true => self.milli / 1000,
            false => self.milli.div_euclid(1000),
        }
    }

    fn take(&mut self, n: i64) {
        self.milli = self.milli.saturating_sub(n.saturating_mul(1000));
    }

    /// Milliseconds until it holds a whole token again (at least 1).
    fn wait_ms(&self) -> u64 {
        let missing = (1000 - self.milli).max(1) as u64;
        missing.div_ceil(self.rate.max(1)).max(1)
    }

    /// Another rate and burst (a reload), keeping what it holds up to the new burst.
    fn with(self, rate: u64, burst: u64, now_ms: u64) -> Option<Bucket> {
        let mut b = Bucket::new(rate, burst, now_ms)?;
        b.milli = self.milli.min(b.cap);
        Some(b)
    }
}

/// Which limit held a client back (the `reason` of `switchyard_limit_closes_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitReason {
    /// `client_messages_per_second`.
    ClientMessages,
    /// `client_bytes_per_second`.
    ClientBytes,
    /// `max_messages_per_second_per_client`.
    ClientSum,
}

impl LimitReason {
    /// Its label value.
    pub fn label(self) -> &'static str {
        match self {
            LimitReason::ClientMessages => "client_messages",
            LimitReason::ClientBytes => "client_bytes",
            LimitReason::ClientSum => "client_sum",
        }
    }

    /// The close reason the client reads.
    pub fn close_reason(self) -> &'static str {
        match self {
            LimitReason::ClientMessages => "message rate limit exceeded",
            LimitReason::ClientBytes => "byte rate limit exceeded",
            LimitReason::ClientSum => "message rate limit of this address exceeded",
        }
    }

    /// Index into [`crate::metrics::BackendMetrics`]' limit closes.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// What a direction does after a pump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Nothing changed.
    Same,
    /// It entered or left the throttled state.
    Changed,
    /// Still throttled, with a new wait.
    Waits,
    /// It stopped for its allowance, and tokens are back already: pump again.
    Again,
}

/// One direction's throttling: when it started (0: not throttled) and until when it waits.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Held {
    /// Start of the current stretch over the rate (ms; 0: none).
    pub since_ms: u64,
    /// When tokens return (ms; 0: not waiting).
    pub until_ms: u64,
}

/// The limits of one connection and their buckets.
#[derive(Debug)]
pub struct Throttle {
    limits: MessageLimits,
    client_msgs: Option<Bucket>,
    client_bytes: Option<Bucket>,
    backend_msgs: Option<Bucket>,
    /// The allowance shared by the client's connections.
    shared: Option<Arc<SharedBucket>>,
    /// Its id among the connections sharing `shared`, and whether it waits for a turn
    /// there (with how many turns ahead of it).
    id: u64,
    queued: bool,
    ahead: u64,
    /// The clock at the last [`Throttle::tick`].
    now_ms: u64,
    /// Client → backend.
    pub(super) c2b: Held,
    /// Backend → client.
    pub(super) b2c: Held,
    /// The limit that stopped the client last.
    pub(super) reason: LimitReason,
    /// Milliseconds throttled (either direction) so far, and up to when they were counted.
    pub(super) total_ms: u64,
    counted_to_ms: u64,
    /// Of `total_ms`, what the pool's counter has.
    reported_ms: u64,
}

impl Throttle {
    /// The buckets for `limits` (`None` when every limit is off and there is no shared one).
    pub fn new(limits: &MessageLimits, shared: Option<Arc<SharedBucket>>, now_ms: u64) -> Option<Box<Throttle>> {
        let shared = shared.filter(|_| limits.max_messages_per_second_per_client != 0);
        let t = Throttle {
            limits: *limits,
            client_msgs: Bucket::new(limits.client_messages_per_second, limits.client_message_burst, now_ms),
            client_bytes: Bucket::new(limits.client_bytes_per_second, limits.client_bytes_burst, now_ms),
            backend_msgs: Bucket::new(limits.backend_messages_per_second, 0, now_ms),
            id: NEXT_ID.fetch_add(1, Relaxed),
            queued: false,
            ahead: 0,
            now_ms,
            shared,
            c2b: Held::default(),
            b2c: Held::default(),
            reason: LimitReason::ClientMessages,
            total_ms: 0,
            counted_to_ms: 0,
            reported_ms: 0,
        };
        t.active().then(|| Box::new(t))
    }

    /// Any limit of the client's direction on.
    fn client_limited(&self) -> bool {
        self.client_msgs.is_some() || self.client_bytes.is_some() || self.shared.is_some()
    }

    fn active(&self) -> bool {
        self.client_limited() || self.backend_msgs.is_some()
    }

    /// Out of the queue for turns at the shared allowance (nothing more to send, no shared
    /// allowance any more, or gone).
    fn leave_turns(&mut self, now_ms: u64) {
        if let (true, Some(s)) = (self.queued, &self.shared) {
            s.turn(self.id, false, now_ms);
        }
        self.queued = false;
    }

    /// New limits (a reload): the buckets keep what they hold. False when none is left on.
    pub fn update(&mut self, limits: &MessageLimits, now_ms: u64) -> bool {
        let keep = |b: Option<Bucket>, rate, burst| match b {
            Some(b) => b.with(rate, burst, now_ms),
            None => Bucket::new(rate, burst, now_ms),
        };
        self.client_msgs = keep(self.client_msgs, limits.client_messages_per_second, limits.client_message_burst);
        self.client_bytes = keep(self.client_bytes, limits.client_bytes_per_second, limits.client_bytes_burst);
        self.backend_msgs = keep(self.backend_msgs, limits.backend_messages_per_second, 0);
        match limits.max_messages_per_second_per_client {
            0 => {
                self.leave_turns(now_ms);
                self.shared = None;
            }
            rate => {
                if let Some(s) = &self.shared {
                    s.set_rate(rate);
                }
            }
        }
        // Closing over the rate is new (or its grace changed): the stretch counts from now,
        // not from when the old limits began to hold the client back.
        let close_was = (self.limits.client_limit_action, self.limits.client_limit_grace);
        if close_was != (limits.client_limit_action, limits.client_limit_grace) && self.c2b.since_ms != 0 {
            self.c2b.since_ms = now_ms;
        }
        self.limits = *limits;
        self.now_ms = now_ms;
        self.active()
    }

    /// The close action and its grace, when the client is to be closed over its rate.
    pub fn close_grace_ms(&self) -> Option<u64> {
        (self.limits.client_limit_action == LimitAction::Close).then_some(self.limits.client_limit_grace.as_millis() as u64)
    }

    /// Refills the buckets up to `now_ms`: called with the clock the relay reads anyway
    /// (bytes arrived, the timer fired); the allowances are taken from what it left.
    pub(super) fn tick(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
        for b in [&mut self.client_msgs, &mut self.client_bytes, &mut self.backend_msgs]
            .into_iter()
            .flatten()
        {
            b.refill(now_ms);
        }
    }

    /// What the client may send (`None`: no client limit), as of the last [`Throttle::tick`].
    #[inline]
    pub(super) fn client_allowance(&mut self) -> Option<Allowance> {
        if !self.client_limited() {
            return None;
        }
        let mut a = Allowance::UNLIMITED;
        if let Some(b) = &self.client_msgs {
            a.messages = b.whole().max(0) as u64;
        }
        if let Some(s) = &self.shared {
            a.messages = a.messages.min(s.available_for(self.id, self.now_ms));
        }
        if let Some(b) = &self.client_bytes {
            a.bytes = b.whole();
        }
        Some(a)
    }

    /// What the backend may send (`None`: no limit), as of the last [`Throttle::tick`].
    pub(super) fn backend_allowance(&self) -> Option<Allowance> {
        let b = self.backend_msgs.as_ref()?;
        Some(Allowance {
            messages: b.whole().max(0) as u64,
            bytes: i64::MAX,
        })
    }

    /// After a pump of the client's direction: takes what passed from `given`. When it
    /// stopped for its allowance, the buckets are refilled from a fresh clock (`now`): with
    /// tokens back, [`Step::Again`] (pump again at once); else the direction waits for them
    /// ([`Step::Changed`] when it was not held back before, [`Step::Waits`] when it was).
    #[inline]
    pub(super) fn after_client(&mut self, given: Allowance, left: Allowance, throttled: bool, now: impl Fn() -> u64) -> Step {
        let msgs = given.messages.saturating_sub(left.messages);
        let bytes = given.bytes.saturating_sub(left.bytes);
        if msgs > 0 {
            if let Some(b) = &mut self.client_msgs {
                b.take(msgs as i64);
            }
            if let Some(s) = &self.shared {
                s.take(msgs);
            }
        }
        if let Some(b) = &mut self.client_bytes {
            b.take(bytes);
        }
        if !throttled {
            // Nothing more to send: its turns go to the others.
            self.leave_turns(self.now_ms);
            return match self.c2b.since_ms {
                0 => Step::Same,
                _ => self.release(true, self.now_ms),
            };
        }
        let now_ms = now();
        self.tick(now_ms);
        // Held back by the client's shared allowance: it takes turns with the others.
        let sum_short = self.shared.as_ref().is_some_and(|s| s.available_for(self.id, now_ms) == 0);
        if let Some(s) = self.shared.as_ref().filter(|_| sum_short || self.queued) {
            self.ahead = s.turn(self.id, sum_short, now_ms);
            self.queued = sum_short;
        }
        if self.client_allowance().is_some_and(|a| a.messages > 0 && a.bytes > 0) {
            return Step::Again;
        }
        // Which limit is short, and the earliest it has enough again.
        let mut wait = 0u64;
        let mut reason = self.reason;
        let own = self.client_msgs.filter(|b| b.whole() < 1).map(|b| b.wait_ms());
        let sum = self.shared.as_ref().filter(|_| sum_short).map(|s| s.turn_wait_ms(self.ahead));
        match (own, sum) {
            (Some(o), Some(s)) if s > o => (wait, reason) = (s, LimitReason::ClientSum),
            (Some(o), _) => (wait, reason) = (o, LimitReason::ClientMessages),
            (None, Some(s)) => (wait, reason) = (s, LimitReason::ClientSum),
            (None, None) => {}
        }
        if let Some(b) = self.client_bytes.filter(|b| b.milli < 1000) {
            if b.wait_ms() > wait {
                (wait, reason) = (b.wait_ms(), LimitReason::ClientBytes);
            }
        }
        self.reason = reason;
        self.hold(true, now_ms, now_ms + wait.max(1))
    }

    /// After a pump of the backend's direction (see [`Throttle::after_client`]).
    pub(super) fn after_backend(&mut self, given: Allowance, left: Allowance, throttled: bool, now: impl Fn() -> u64) -> Step {
        let Some(b) = &mut self.backend_msgs else {
            return Step::Same;
        };
        b.take(given.messages.saturating_sub(left.messages) as i64);
        if !throttled {
            return match self.b2c.since_ms {
                0 => Step::Same,
                _ => self.release(false, self.now_ms),
            };
        }
        let now_ms = now();
        self.tick(now_ms);
        let Some(b) = self.backend_msgs else { return Step::Same };
        if b.whole() >= 1 {
            return Step::Again;
        }
        self.hold(false, now_ms, now_ms + b.wait_ms())
    }

    fn held(&mut self, client: bool) -> &mut Held {
        if client {
            &mut self.c2b
        } else {
            &mut self.b2c
        }
    }

    /// A direction waits until `until_ms`.
    fn hold(&mut self, client: bool, now_ms: u64, until_ms: u64) -> Step {
        self.count(now_ms);
        let h = self.held(client);
        h.until_ms = until_ms;
        if h.since_ms == 0 {
            h.since_ms = now_ms;
            return Step::Changed;
        }
        Step::Waits
    }

    /// A direction is under its rate again.
    fn release(&mut self, client: bool, now_ms: u64) -> Step {
        self.count(now_ms);
        let h = self.held(client);
        let was = h.since_ms != 0;
        *h = Held::default();
        match was {
            true => Step::Changed,
            false => Step::Same,
        }
    }

    /// Adds the time throttled since the last count to the total.
    fn count(&mut self, now_ms: u64) {
        if self.throttled() && now_ms > self.counted_to_ms {
            self.total_ms += now_ms - self.counted_to_ms;
        }
        self.counted_to_ms = now_ms;
    }

    /// The clock at the last [`Throttle::tick`].
    pub(super) fn now(&self) -> u64 {
        self.now_ms
    }

    /// Neither direction is held back any more (the connection is closing).
    pub(super) fn release_all(&mut self, now_ms: u64) {
        self.release(true, now_ms);
        self.release(false, now_ms);
    }

    /// Either direction throttled now.
    pub fn throttled(&self) -> bool {
        self.c2b.since_ms != 0 || self.b2c.since_ms != 0
    }

    /// Milliseconds throttled until `now_ms` (for the access log and the metric).
    pub(super) fn total_at(&mut self, now_ms: u64) -> u64 {
        self.count(now_ms);
        self.total_ms
    }

    /// Throttled milliseconds until `now_ms` not yet given to the pool's counter.
    pub(super) fn unreported(&mut self, now_ms: u64) -> u64 {
        let total = self.total_at(now_ms);
        std::mem::replace(&mut self.reported_ms, total).min(total).abs_diff(total)
    }

    /// The earliest deadline it needs the timer for: tokens returning, the close grace.
    pub(super) fn deadline(&self) -> Option<u64> {
        let mut d: Option<u64> = None;
        for h in [&self.c2b, &self.b2c] {
            if h.until_ms != 0 {
                d = Some(d.map_or(h.until_ms, |d| d.min(h.until_ms)));
            }
        }
        if let (Some(grace), true) = (self.close_grace_ms(), self.c2b.since_ms != 0) {
            let at = self.c2b.since_ms + grace;
            d = Some(d.map_or(at, |d| d.min(at)));
        }
        d
    }

    /// The client has been over its rate for the grace (with `close`): why.
    pub(super) fn over_grace(&self, now_ms: u64) -> Option<LimitReason> {
        let grace = self.close_grace_ms()?;
        (self.c2b.since_ms != 0 && now_ms >= self.c2b.since_ms + grace).then_some(self.reason)
    }

    /// The directions whose tokens are back at `now_ms` (their wait is over; they stay
    /// throttled until a pump passes everything): (client, backend).
    pub(super) fn due(&mut self, now_ms: u64) -> (bool, bool) {
        let mut out = (false, false);
        if self.c2b.until_ms != 0 && now_ms >= self.c2b.until_ms {
            self.c2b.until_ms = 0;
            out.0 = true;
        }
        if self.b2c.until_ms != 0 && now_ms >= self.b2c.until_ms {
            self.b2c.until_ms = 0;
            out.1 = true;
        }
        out
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        self.leave_turns(self.now_ms);
    }
}

/// Adds `ms` throttled milliseconds to a backend's pool counter.
pub(super) fn add_throttled(backend: &crate::backend::Backend, ms: u64) {
    if ms > 0 {
        backend.metrics.throttled_ms.fetch_add(ms, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> MessageLimits {
        MessageLimits::default()
    }

    #[test]
    fn a_bucket_refills_per_millisecond_up_to_its_burst() {
        let mut b = Bucket::new(100, 10, 0).unwrap();
        assert_eq!(b.whole(), 10);
        b.take(10);
        assert_eq!(b.whole(), 0);
        assert_eq!(b.wait_ms(), 10, "a token every 10 ms at 100/s");
        b.refill(25);
        assert_eq!(b.whole(), 2);
        b.refill(10_000);
        assert_eq!(b.whole(), 10, "never more than the burst");
        b.take(13);
        assert_eq!(b.whole(), -3, "a debt rounds down");
        assert!(Bucket::new(0, 5, 0).is_none(), "0 = off");
        assert_eq!(Bucket::new(50, 0, 0).unwrap().whole(), 50, "burst 0 = one second's worth");
    }

    #[test]
    fn a_frame_larger_than_the_bytes_left_is_a_debt() {
        let mut l = limits();
        l.client_bytes_per_second = 1000;
        let mut t = Throttle::new(&l, None, 1).unwrap();
        let given = t.client_allowance().unwrap();
        assert_eq!(
            given,
            Allowance {
                messages: u64::MAX,
                bytes: 1000
            }
        );
        // a 3000-byte frame went (it started with bytes left), then the scan stopped
        let left = Allowance {
            bytes: given.bytes - 3000,
            ..given
        };
        assert_eq!(t.after_client(given, left, true, || 1), Step::Changed, "throttled from now");
        assert_eq!(t.reason, LimitReason::ClientBytes);
        assert_eq!(t.c2b.until_ms, 1 + 2001, "2000 bytes of debt and one byte more at 1 byte/ms");
        t.tick(1001);
        assert_eq!(t.client_allowance().unwrap().bytes, -1000);
        t.tick(2002);
        assert!(t.client_allowance().unwrap().bytes > 0);
    }

    #[test]
    fn tokens_already_back_mean_pump_again_not_wait() {
        let mut l = limits();
        l.client_messages_per_second = 1000;
        let mut t = Throttle::new(&l, None, 1).unwrap();
        let g = t.client_allowance().unwrap();
        // the allowance was taken at the last tick; the fresh clock says 5 ms passed
        assert_eq!(t.after_client(g, Allowance { messages: 0, ..g }, true, || 6), Step::Again);
        assert!(!t.throttled());
        assert_eq!(t.client_allowance().unwrap().messages, 5);
    }

    #[test]
    fn the_shared_bucket_limits_every_connection_of_a_client() {
        let mut l = limits();
        l.max_messages_per_second_per_client = 10;
        let shared = Arc::new(SharedBucket::new(10, 1));
        let mut a = Throttle::new(&l, Some(shared.clone()), 1).unwrap();
        let mut b = Throttle::new(&l, Some(shared.clone()), 1).unwrap();
        let given = a.client_allowance().unwrap();
        assert_eq!(given.messages, 10);
        assert_eq!(a.after_client(given, Allowance { messages: 4, ..given }, false, || 1), Step::Same);
        assert_eq!(b.client_allowance().unwrap().messages, 4, "the other connection sees what is left");
        let g = b.client_allowance().unwrap();
        assert_eq!(b.after_client(g, Allowance { messages: 0, ..g }, true, || 1), Step::Changed);
        assert_eq!(b.reason, LimitReason::ClientSum);
        assert_eq!(b.c2b.until_ms, 1 + 100, "a token every 100 ms at 10/s");
    }

    #[test]
    fn throttled_time_is_counted_and_the_grace_ends_in_a_close() {
        let mut l = limits();
        l.client_messages_per_second = 10;
        l.client_limit_action = LimitAction::Close;
        l.client_limit_grace = std::time::Duration::from_secs(2);
        let mut t = Throttle::new(&l, None, 1).unwrap();
        let g = t.client_allowance().unwrap();
        assert_eq!(t.after_client(g, Allowance { messages: 0, ..g }, true, || 1), Step::Changed);
        assert_eq!(t.deadline(), Some(101));
        assert_eq!(t.due(50), (false, false));
        assert_eq!(t.due(101), (true, false));
        let g = t.client_allowance().unwrap();
        assert_eq!(t.after_client(g, Allowance { messages: 0, ..g }, true, || 101), Step::Again);
        t.tick(101);
        let g = t.client_allowance().unwrap();
        assert_eq!(
            t.after_client(g, Allowance { messages: 0, ..g }, true, || 101),
            Step::Waits,
            "still over its rate"
        );
        assert_eq!(t.over_grace(1500), None);
        assert_eq!(t.over_grace(2001), Some(LimitReason::ClientMessages));
        assert_eq!(t.total_at(1001), 1000);
        // under its rate again: no longer throttled, the stretch is over
        t.tick(1001);
        let g = t.client_allowance().unwrap();
        assert_eq!(t.after_client(g, g, false, || 1001), Step::Changed);
        assert!(!t.throttled());
        assert_eq!(t.total_at(5000), 1000);
        assert_eq!(t.unreported(5000), 1000);
        assert_eq!(t.unreported(6000), 0);
        assert_eq!(t.over_grace(5000), None);
    }

    #[test]
    fn the_backends_direction_has_its_own_bucket() {
        let mut l = limits();
        l.backend_messages_per_second = 100;
        let mut t = Throttle::new(&l, None, 1).unwrap();
        assert_eq!(t.client_allowance(), None, "the client is not limited");
        let g = t.backend_allowance().unwrap();
        assert_eq!(g.messages, 100);
        assert_eq!(t.after_backend(g, Allowance { messages: 0, ..g }, true, || 1), Step::Changed);
        assert_eq!(t.b2c.until_ms, 1 + 10);
        assert_eq!(t.close_grace_ms(), None, "throttle is the default action");
    }

    #[test]
    fn a_reload_changes_the_rates_and_keeps_the_tokens() {
        let mut l = limits();
        l.client_messages_per_second = 10;
        let mut t = Throttle::new(&l, None, 1).unwrap();
        let g = t.client_allowance().unwrap();
        t.after_client(g, Allowance { messages: 7, ..g }, false, || 1);
        l.client_messages_per_second = 1000;
        assert!(t.update(&l, 1));
        assert_eq!(t.client_allowance().unwrap().messages, 7, "what it held, not a fresh burst");
        t.tick(2);
        assert_eq!(t.client_allowance().unwrap().messages, 8, "at the new rate");
        l.client_messages_per_second = 0;
        assert!(!t.update(&l, 2), "no limit left");
        assert_eq!(t.client_allowance(), None);
        assert!(Throttle::new(&limits(), None, 1).is_none());
    }
}
