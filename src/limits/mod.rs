//! Admission: the process-wide connection cap, the new-connection rate (token bucket), the
//! hard ceiling past which connections are refused before their handshake, and the
//! per-client limits ([`per_client`]).
//!
//! Order, for a connection whose request head was read: the client's own limits first (so a
//! client over them does not use up the process-wide rate others need), then the
//! process-wide rate, then `max_connections`.

pub mod per_client;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::{Limits, Shedding};
use crate::conns::ConnTable;
use per_client::{ClientSlot, ClientTable, Refused};

/// Why a connection is shed (the `reason` label of `switchyard_shed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShedReason {
    /// Over `limits.max_connections`.
    MaxConnections,
    /// Over `limits.max_connections_per_second`.
    RateLimited,
    /// Every backend down (or every attempt failed).
    NoBackend,
    /// Backends up but all at their `max_connections`.
    BackendFull,
    /// Closed as the longest idle to admit a new one (`shedding.evict_idle`).
    Idle,
    /// A backend connection could not be opened for lack of local resources (descriptors,
    /// socket buffers, ports): the balancer's own limit, not a backend's fault.
    LocalResources,
    /// Over `limits.max_connections_per_client` or `max_connections_per_client_per_second`.
    PerClient,
    /// A new client while the per-client table is full of clients with live connections.
    ClientTableFull,
}

impl ShedReason {
    /// Label value.
    pub fn label(self) -> &'static str {
        match self {
            ShedReason::MaxConnections => "max_connections",
            ShedReason::RateLimited => "rate",
            ShedReason::NoBackend => "no_backend",
            ShedReason::BackendFull => "backend_full",
            ShedReason::Idle => "idle",
            ShedReason::LocalResources => "local_resources",
            ShedReason::PerClient => "per_client",
            ShedReason::ClientTableFull => "client_table_full",
        }
    }

    /// From a balancer exhaustion label.
    pub fn from_label(l: &str) -> ShedReason {
        if l == "backend_full" {
            ShedReason::BackendFull
        } else {
            ShedReason::NoBackend
        }
    }
}

/// Token bucket: `rate` tokens per second, burst of one second's worth, plus what
/// [`TokenBucket::refund`] gave back (never more than a second's worth on top).
#[derive(Debug)]
pub struct TokenBucket {
    /// tokens, last refill
    state: Mutex<(f64, Instant)>,
}

impl Default for TokenBucket {
    fn default() -> Self {
        TokenBucket {
            state: Mutex::new((f64::NAN, Instant::now())),
        }
    }
}

impl TokenBucket {
    /// Takes one token at `rate`/s (0 = unlimited); false when empty.
    pub fn take(&self, rate: u64, now: Instant) -> bool {
        if rate == 0 {
            return true;
        }
        let Ok(mut s) = self.state.lock() else { return true };
        let burst = rate as f64;
        let (tokens, last) = *s;
        let tokens = if tokens.is_nan() {
            burst
        } else if tokens >= burst {
            // refunded tokens above the burst wait to be used; refill adds nothing
            tokens.min(2.0 * burst)
        } else {
            (tokens + now.duration_since(last).as_secs_f64() * rate as f64).min(burst)
        };
        let ok = tokens >= 1.0;
        *s = (if ok { tokens - 1.0 } else { tokens }, now);
        ok
    }

    /// Gives one token back (`take` counts at most twice the burst): a connection the
    /// balancer closed because its backend failed, whose client will be back at once.
    pub fn refund(&self) {
        let Ok(mut s) = self.state.lock() else { return };
        // NaN: nothing taken yet (or the rate is unlimited), so nothing to give back
        s.0 += 1.0;
    }
}

/// Process-wide admission state.
#[derive(Debug, Default)]
pub struct Admission {
    /// Client connections admitted and not yet ended.
    active: AtomicU64,
    /// TCP connections accepted and not yet admitted or refused, and refused or shed ones
    /// still lingering.
    pending: AtomicU64,
    bucket: TokenBucket,
    /// Live connections and rates per client.
    pub clients: Arc<ClientTable>,
    /// Refunds of the new-connection rate per client, bounded.
    refunds: Refunds,
    /// `limits.max_connections_per_client_per_second` at the last admission (the refund
    /// allowance of a client; 0: one a second).
    client_rate: AtomicU64,
    /// Tokens of the new-connection rate given back so far.
    refunded: AtomicU64,
}

/// Most clients whose refunds are tracked at once; past it (and once refilled entries are
/// swept), a refund is simply not given.
const MAX_REFUND_CLIENTS: usize = 65_536;

/// Per-client buckets of refunds: a client gets back at most its own rate of new
/// connections per second (one a second without a per-client rate), so a client looping
/// against a backend that drops it cannot turn refunds into a way past the global rate.
#[derive(Debug, Default)]
struct Refunds(Mutex<HashMap<u64, (f64, u64)>>);

impl Refunds {
    /// Takes one refund of client `key` at `rate`/s (burst of one second's worth).
    fn take(&self, key: u64, rate: u64, now_ms: u64) -> bool {
        let rate = rate.max(1) as f64;
        let refill = |(tokens, last): (f64, u64)| (tokens + now_ms.saturating_sub(last) as f64 * rate / 1000.0).min(rate);
        let Ok(mut map) = self.0.lock() else { return false };
        if map.len() >= MAX_REFUND_CLIENTS && !map.contains_key(&key) {
            map.retain(|_, e| refill(*e) < rate);
            if map.len() >= MAX_REFUND_CLIENTS {
                return false;
            }
        }
        let e = map.entry(key).or_insert((rate, now_ms));
        let tokens = refill(*e);
        let ok = tokens >= 1.0;
        *e = (if ok { tokens - 1.0 } else { tokens }, now_ms);
        ok
    }
}

/// Holds one unit of a counter until dropped (and the client's, when it was counted).
#[derive(Debug)]
pub struct Slot {
    admission: Arc<Admission>,
    active: bool,
    _client: Option<ClientSlot>,
    /// The client's key ([`per_client::key`]), when the connection is one client's.
    client: Option<u64>,
}

impl Slot {
    /// The connection was closed because its backend failed (died, broke the protocol or
    /// stopped answering pings): its client will reconnect at once, and that reconnect is
    /// not new load, so its token of the new-connection rate is given back
    /// ([`TokenBucket::refund`]). Without this, the clients of one killed backend were paced
    /// by `max_connections_per_second` like a storm: with 1,000/s and 3,800 clients on one
    /// backend, the last were back after more than 5 s. Bounded per client ([`Refunds`]):
    /// a connection whose client is not known gets none.
    pub fn refund_rate(&self) {
        let Some(key) = self.client.filter(|_| self.active) else { return };
        let rate = self.admission.client_rate.load(Relaxed);
        if self.admission.refunds.take(key, rate, crate::clock::now_ms()) {
            self.admission.bucket.refund();
            self.admission.refunded.fetch_add(1, Relaxed);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let c = if self.active {
            &self.admission.active
        } else {
            &self.admission.pending
        };
        c.fetch_sub(1, Relaxed);
    }
}

impl Admission {
    /// Counts an accepted TCP connection; `None` when past the hard ceiling
    /// (2 × `max_connections` admitted-or-pending): refuse with 503 before reading anything.
    pub fn accept(self: &Arc<Self>, limits: &Limits) -> Option<Slot> {
        let pending = self.pending.fetch_add(1, Relaxed) + 1;
        let slot = Slot {
            admission: self.clone(),
            active: false,
            _client: None,
            client: None,
        };
        if pending + self.active.load(Relaxed) > limits.max_connections.saturating_mul(2) {
            return None;
        }
        Some(slot)
    }

    /// Admits a connection that completed a valid request, or says why it is shed: the
    /// limits of `client` (when the connection belongs to one client; a proxy's keep-alive
    /// connection does not), then the process-wide ones. With `evict_idle`, a full process
    /// closes its longest-idle connection to make room.
    pub fn admit(
        self: &Arc<Self>,
        pending: Slot,
        client: Option<std::net::IpAddr>,
        limits: &Limits,
        shedding: &Shedding,
        conns: &ConnTable,
        now_ms: u64,
    ) -> Result<Slot, ShedReason> {
        let key = client.map(per_client::key);
        let client = match client {
            Some(ip) => self.admit_client(ip, limits, true, now_ms)?,
            None => None,
        };
        self.client_rate.store(limits.max_connections_per_client_per_second, Relaxed);
        if !self.bucket.take(limits.max_connections_per_second, Instant::now()) {
            return Err(ShedReason::RateLimited);
        }
        let active = self.active.fetch_add(1, Relaxed);
        drop(pending);
        let slot = Slot {
            admission: self.clone(),
            active: true,
            _client: client,
            client: key,
        };
        if active >= limits.max_connections {
            if shedding.evict_idle && evict_longest_idle(conns, now_ms) {
                crate::metrics::shed(ShedReason::Idle.label());
                return Ok(slot);
            }
            return Err(ShedReason::MaxConnections);
        }
        Ok(slot)
    }

    /// Counts one connection of the client at `ip` against its limits (`new_connection`:
    /// and takes a token of its rate); `None` when per-client limits are off.
    pub fn admit_client(
        &self,
        ip: std::net::IpAddr,
        limits: &Limits,
        new_connection: bool,
        now_ms: u64,
    ) -> Result<Option<ClientSlot>, ShedReason> {
        self.clients.admit(ip, limits, new_connection, now_ms).map_err(|r| match r {
            Refused::OverLimit => ShedReason::PerClient,
            Refused::TableFull => ShedReason::ClientTableFull,
        })
    }

    /// The message allowance shared by the connections of the client at `ip`
    /// (`limits.max_messages_per_second_per_client`, `rate`); `None` when the client is not
    /// counted (a trusted proxy's keep-alive connection).
    pub fn message_bucket(&self, ip: std::net::IpAddr, rate: u64, now_ms: u64) -> Option<Arc<per_client::SharedBucket>> {
        self.clients.message_bucket(ip, rate, now_ms)
    }

    /// Tokens of the new-connection rate given back so far (connections whose backend
    /// failed).
    pub fn refunded(&self) -> u64 {
        self.refunded.load(Relaxed)
    }

    /// Admitted connections now.
    pub fn active(&self) -> u64 {
        self.active.load(Relaxed)
    }

    /// Accepted connections not yet admitted or refused (request heads still coming).
    pub fn pending(&self) -> u64 {
        self.pending.load(Relaxed)
    }
}

/// Asks the connection idle the longest to close now (1001); false when there is none.
fn evict_longest_idle(conns: &ConnTable, now_ms: u64) -> bool {
    let all = conns.select(|c| c.close_request().is_none());
    match all.iter().min_by_key(|c| c.last_data_ms.load(Relaxed)) {
        Some(c) => {
            c.request_close(now_ms, 1001);
            true
        }
        None => false,
    }
}

/// The reason text of a shed close: a retry hint jittered ±30 % around `hint`.
pub fn retry_reason(hint: Duration) -> String {
    format!("try again in {:.1}s", jittered_secs(hint.as_secs_f64().max(0.1)))
}

/// `Retry-After` seconds for a plain HTTP `503`: the retry hint jittered ±30 %, at least 1.
pub fn retry_after_secs(hint: Duration) -> u64 {
    (jittered_secs(hint.as_secs_f64().max(1.0)).round() as u64).max(1)
}

/// `secs` ±30 %, so the clients told to come back do not come back together.
fn jittered_secs(secs: f64) -> f64 {
    secs * rand::random_range(0.7..1.3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_bursts_one_second_then_refills() {
        let b = TokenBucket::default();
        let t0 = Instant::now();
        assert_eq!((0..15).filter(|_| b.take(10, t0)).count(), 10);
        assert!(!b.take(10, t0 + Duration::from_millis(50)));
        assert!(b.take(10, t0 + Duration::from_millis(200)));
        assert!(b.take(0, t0), "0 = unlimited");
    }

    #[test]
    fn refunds_come_on_top_of_the_burst_up_to_twice_it() {
        let b = TokenBucket::default();
        b.refund(); // nothing taken yet: nothing to give back
        let t0 = Instant::now();
        assert_eq!((0..15).filter(|_| b.take(10, t0)).count(), 10);
        // 4 connections closed by failed backends: 4 more at once, no refill needed
        (0..4).for_each(|_| b.refund());
        assert_eq!((0..10).filter(|_| b.take(10, t0)).count(), 4);
        // a second later the bucket is full (10); 25 refunds stop at 20 in all
        let t1 = t0 + Duration::from_secs(1);
        assert!(b.take(10, t1));
        (0..25).for_each(|_| b.refund());
        assert_eq!((0..40).filter(|_| b.take(10, t1)).count(), 20);
        // and refill goes back to its usual burst
        let t2 = t1 + Duration::from_secs(5);
        assert_eq!((0..40).filter(|_| b.take(10, t2)).count(), 10);
    }

    #[test]
    fn refunds_are_bounded_per_client() {
        let r = Refunds::default();
        // Without a per-client rate: one a second per client, each client its own.
        assert!(r.take(1, 0, 1_000));
        assert!(!r.take(1, 0, 1_000));
        assert!(!r.take(1, 0, 1_900));
        assert!(r.take(2, 0, 1_900));
        assert!(r.take(1, 0, 2_000));
        // With one: at most that rate, a second's worth at once.
        assert_eq!((0..10).filter(|_| r.take(3, 5, 10_000)).count(), 5);
        assert_eq!((0..10).filter(|_| r.take(3, 5, 10_400)).count(), 2);
    }

    #[test]
    fn retry_hint_is_jittered_around_the_hint() {
        for _ in 0..100 {
            let r = retry_reason(Duration::from_secs(5));
            let v: f64 = r.trim_start_matches("try again in ").trim_end_matches('s').parse().unwrap();
            assert!((3.4..=6.6).contains(&v), "{r}");
        }
    }
}
