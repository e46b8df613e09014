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
            let gained = ((now_ms - self.last_ms) as i128 * self.rate as i128).min(i64::MAX as i128) as i64;
            self.milli = self.milli.saturating_add(gained).min(self.cap);
            self.last_ms = now_ms;
        }
    }

    /// Whole tokens now (negative: a debt).
    fn whole(&self) -> i64 {
        self.milli.div_euclid(1000)
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

    fn active(&self) -> bool {
        self.client_msgs.is_some() || self.client_bytes.is_some() || self.backend_msgs.is_some() || self.shared.is_some()
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
            0 => self.shared = None,
            rate => {
                if let Some(s) = &self.shared {
                    s.set_rate(rate);
                }
            }
        }
        self.limits = *limits;
        self.active()
    }

    /// The close action and its grace, when the client is to be closed over its rate.
    pub fn close_grace_ms(&self) -> Option<u64> {
        (self.limits.client_limit_action == LimitAction::Close).then(|| self.limits.client_limit_grace.as_millis() as u64)
    }

    /// What the client may send now (`None`: no client limit).
    pub(super) fn client_allowance(&mut self, now_ms: u64) -> Option<Allowance> {
        if self.client_msgs.is_none() && self.client_bytes.is_none() && self.shared.is_none() {
            return None;
        }
        let mut a = Allowance::UNLIMITED;
        if let Some(b) = &mut self.client_msgs {
            b.refill(now_ms);
            a.messages = b.whole().max(0) as u64;
        }
        if let Some(s) = &self.shared {
            a.messages = a.messages.min(s.available(now_ms));
        }
        if let Some(b) = &mut self.client_bytes {
            b.refill(now_ms);
            a.bytes = b.milli / 1000;
        }
        Some(a)
    }

    /// What the backend may send now (`None`: no limit).
    pub(super) fn backend_allowance(&mut self, now_ms: u64) -> Option<Allowance> {
        let b = self.backend_msgs.as_mut()?;
        b.refill(now_ms);
        Some(Allowance {
            messages: b.whole().max(0) as u64,
            bytes: i64::MAX,
        })
    }

    /// After a pump of the client's direction: takes what passed from `given`, and when it
    /// stopped for its allowance, when it may go on. True when the throttled state changed.
    pub(super) fn after_client(&mut self, given: Allowance, left: Allowance, throttled: bool, now_ms: u64) -> bool {
        let msgs = given.messages.saturating_sub(left.messages);
        let bytes = given.bytes.saturating_sub(left.bytes);
        if let Some(b) = &mut self.client_msgs {
            b.take(msgs as i64);
        }
        if let Some(s) = &self.shared {
            s.take(msgs);
        }
        if let Some(b) = &mut self.client_bytes {
            b.milli = b.milli.saturating_sub(bytes.saturating_mul(1000));
        }
        if !throttled {
            return self.release(true, now_ms);
        }
        // Which limit is short, and the earliest it has enough again.
        let mut wait = 0u64;
        let mut reason = self.reason;
        if left.messages == 0 {
            let own = self.client_msgs.filter(|b| b.whole() < 1).map(|b| b.wait_ms());
            let sum = self.shared.as_ref().filter(|s| s.available(now_ms) == 0).map(|s| s.wait_ms());
            match (own, sum) {
                (Some(o), Some(s)) if s > o => (wait, reason) = (s, LimitReason::ClientSum),
                (Some(o), _) => (wait, reason) = (o, LimitReason::ClientMessages),
                (None, Some(s)) => (wait, reason) = (s, LimitReason::ClientSum),
                (None, None) => {}
            }
        }
        if left.bytes <= 0 {
            if let Some(b) = self.client_bytes.filter(|b| b.milli < 1000) {
                if b.wait_ms() > wait {
                    (wait, reason) = (b.wait_ms(), LimitReason::ClientBytes);
                }
            }
        }
        self.reason = reason;
        self.hold(true, now_ms, now_ms + wait.max(1))
    }

    /// After a pump of the backend's direction (see [`Throttle::after_client`]).
    pub(super) fn after_backend(&mut self, given: Allowance, left: Allowance, throttled: bool, now_ms: u64) -> bool {
        let Some(b) = &mut self.backend_msgs else {
            return self.release(false, now_ms);
        };
        b.take(given.messages.saturating_sub(left.messages) as i64);
        let wait = b.wait_ms();
        match throttled {
            true => self.hold(false, now_ms, now_ms + wait),
            false => self.release(false, now_ms),
        }
    }

    fn held(&mut self, client: bool) -> &mut Held {
        if client {
            &mut self.c2b
        } else {
            &mut self.b2c
        }
    }

    /// A direction waits until `until_ms`; true when it was not throttled before.
    fn hold(&mut self, client: bool, now_ms: u64, until_ms: u64) -> bool {
        self.count(now_ms);
        let h = self.held(client);
        h.until_ms = until_ms;
        let started = h.since_ms == 0;
        if started {
            h.since_ms = now_ms;
        }
        started
    }

    /// A direction is under its rate again; true when it was throttled.
    fn release(&mut self, client: bool, now_ms: u64) -> bool {
        self.count(now_ms);
        let h = self.held(client);
        let was = h.since_ms != 0;
        *h = Held::default();
        was
    }

    /// Adds the time throttled since the last count to the total.
    fn count(&mut self, now_ms: u64) {
        if self.throttled() && now_ms > self.counted_to_ms {
            self.total_ms += now_ms - self.counted_to_ms;
        }
        self.counted_to_ms = now_ms;
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
        assert!(Bucket::new(0, 5, 0).is_none(), "0 = off");
        assert_eq!(Bucket::new(50, 0, 0).unwrap().whole(), 50, "burst 0 = one second's worth");
    }

    #[test]
    fn a_frame_larger_than_the_bytes_left_is_a_debt() {
        let mut l = limits();
        l.client_bytes_per_second = 1000;
        let mut t = Throttle::new(&l, None, 1).unwrap();
        let given = t.client_allowance(1).unwrap();
        assert_eq!(given.bytes, 1000);
        // a 3000-byte frame went (it started with bytes left), then the scan stopped
        let left = Allowance {
            bytes: given.bytes - 3000,
            ..given
        };
        assert!(t.after_client(given, left, true, 1), "throttled from now");
        assert_eq!(t.reason, LimitReason::ClientBytes);
        assert_eq!(t.c2b.until_ms, 1 + 2001, "2000 bytes of debt and one byte more at 1 byte/ms");
        assert_eq!(t.client_allowance(1001).unwrap().bytes, -1000);
        assert!(t.client_allowance(2002).unwrap().bytes > 0);
    }

    #[test]
    fn the_shared_bucket_limits_every_connection_of_a_client() {
        let mut l = limits();
        l.max_messages_per_second_per_client = 10;
        let shared = Arc::new(SharedBucket::new(10, 1));
        let mut a = Throttle::new(&l, Some(shared.clone()), 1).unwrap();
        let mut b = Throttle::new(&l, Some(shared.clone()), 1).unwrap();
        let given = a.client_allowance(1).unwrap();
        assert_eq!(given.messages, 10);
        a.after_client(given, Allowance { messages: 4, ..given }, false, 1);
        assert_eq!(b.client_allowance(1).unwrap().messages, 4, "the other connection sees what is left");
        let g = b.client_allowance(1).unwrap();
        assert!(b.after_client(g, Allowance { messages: 0, ..g }, true, 1));
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
        let g = t.client_allowance(1).unwrap();
        assert!(t.after_client(g, Allowance { messages: 0, ..g }, true, 1));
        assert_eq!(t.deadline(), Some(101));
        assert_eq!(t.due(50), (false, false));
        assert_eq!(t.due(101), (true, false));
        assert_eq!(t.over_grace(1500), None);
        assert_eq!(t.over_grace(2001), Some(LimitReason::ClientMessages));
        assert_eq!(t.total_at(1001), 1000);
        // under its rate again: no longer throttled, the stretch is over
        let g = t.client_allowance(1001).unwrap();
        assert!(t.after_client(g, g, false, 1001));
        assert!(!t.throttled());
        assert_eq!(t.total_at(5000), 1000);
        assert_eq!(t.over_grace(5000), None);
    }

    #[test]
    fn a_reload_changes_the_rates_and_keeps_the_tokens() {
        let mut l = limits();
        l.client_messages_per_second = 10;
        let mut t = Throttle::new(&l, None, 1).unwrap();
        let g = t.client_allowance(1).unwrap();
        t.after_client(g, Allowance { messages: 7, ..g }, false, 1);
        l.client_messages_per_second = 1000;
        assert!(t.update(&l, 1));
        assert_eq!(t.client_allowance(1).unwrap().messages, 7, "what it held, not a fresh burst");
        assert_eq!(t.client_allowance(2).unwrap().messages, 8, "at the new rate");
        l.client_messages_per_second = 0;
        assert!(!t.update(&l, 2), "no limit left");
        assert!(Throttle::new(&limits(), None, 1).is_none());
    }
}
