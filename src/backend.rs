//! Per-backend shared state: everything an algorithm, a health checker or the admin API
//! reads about one backend, in atomics. Writers: the relay (counters, in batches), the
//! upstream (handshake latency, passive outcomes), health (state), admin (drain).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;

use crate::config::BackendConfig;
use crate::metrics::BackendMetrics;

/// Health/admin state of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendState {
    /// Receives new connections.
    Up = 0,
    /// Failed its checks (or was ejected); receives none.
    Down = 1,
    /// Drained by the admin or removed by a reload; receives none, live ones are closed.
    Draining = 2,
}

impl BackendState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => BackendState::Up,
            1 => BackendState::Down,
            _ => BackendState::Draining,
        }
    }

    /// Name used in the admin API.
    pub fn name(self) -> &'static str {
        match self {
            BackendState::Up => "up",
            BackendState::Down => "down",
            BackendState::Draining => "draining",
        }
    }
}

/// Value stored in `custom_load` when the backend never reported (or reported garbage).
pub const LOAD_UNKNOWN: u32 = u32::MAX;

/// `last_check_ok`: no active check has finished yet (or none is configured).
pub const CHECK_UNKNOWN: u8 = 0;
/// `last_check_ok`: the last active check passed.
pub const CHECK_OK: u8 = 1;
/// `last_check_ok`: the last active check failed.
pub const CHECK_FAILED: u8 = 2;

/// A float stored in an `AtomicU64` (bit pattern); single writer or last-writer-wins.
#[derive(Debug, Default)]
pub struct AtomicF64(AtomicU64);

impl AtomicF64 {
    /// A new value.
    pub fn new(v: f64) -> Self {
        AtomicF64(AtomicU64::new(v.to_bits()))
    }
    /// Reads it.
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Relaxed))
    }
    /// Writes it.
    pub fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Relaxed)
    }
}

/// Shared state of one backend of one pool.
#[derive(Debug)]
pub struct Backend {
    /// Unique among every backend object of the process (a reload that changes how a
    /// backend is reached makes a new object, with a new id).
    pub id: u64,
    /// `host:port` as configured; its label everywhere.
    pub address: String,
    /// Pool name (for metrics labels).
    pub pool: Arc<str>,
    /// Static config (TLS etc.); replaced only by building a new `Backend`. Its
    /// `discovered_from` is the entry that first found it: [`Backend::discovered_from`] is
    /// the one that finds it now.
    pub config: BackendConfig,
    /// The discovery entry whose answer holds this backend now (a reload or a renamed entry
    /// may find the same address under another name: the backend stays the same).
    found_by: arc_swap::ArcSwapOption<String>,
    weight: AtomicU32,
    max_connections: AtomicU64,
    state: AtomicU8,
    /// Live proxied connections.
    pub active: AtomicU64,
    /// Connections ever established.
    pub total: AtomicU64,
    /// Of `total`, the WebSockets carried by HTTP/2 streams (RFC 8441).
    pub total_h2: AtomicU64,
    /// Bytes relayed client → backend (flushed by the relay in batches).
    pub bytes_c2b: AtomicU64,
    /// Bytes relayed backend → client.
    pub bytes_b2c: AtomicU64,
    /// Data messages client → backend.
    pub msgs_c2b: AtomicU64,
    /// Data messages backend → client.
    pub msgs_b2c: AtomicU64,
    /// EWMA of bytes/s client → backend (written by the pool's sampler).
    pub rate_c2b: AtomicF64,
    /// EWMA of bytes/s backend → client.
    pub rate_b2c: AtomicF64,
    /// Plain HTTP requests answered by this backend (response head received).
    pub http_requests: AtomicU64,
    /// Peak-EWMA of handshake latency (connect → 101), seconds.
    pub latency: AtomicF64,
    /// When `latency` was last updated (ms, process clock).
    pub latency_at_ms: AtomicU64,
    /// Load 0–100 reported by the backend, or [`LOAD_UNKNOWN`].
    pub custom_load: AtomicU32,
    /// When `custom_load` was last reported (ms, process clock; 0 = never).
    pub custom_load_at_ms: AtomicU64,
    /// Start of the slow-start ramp (ms, process clock; 0 = no ramp).
    pub ramp_start_ms: AtomicU64,
    /// Length of the slow-start ramp in ms (0 = none).
    pub slow_start_ms: AtomicU64,
    /// Passive ejection: not picked before this time (ms; 0 = not ejected).
    pub ejected_until_ms: AtomicU64,
    /// Consecutive failures the backend is to blame for ([`crate::blame::Party::Backend`]).
    pub passive_failures: AtomicU32,
    /// Consecutive `5xx` answers (counted with `passive_health.count_5xx`).
    pub passive_5xx: AtomicU32,
    /// Current ejection back-off in ms (doubles, capped).
    pub ejection_backoff_ms: AtomicU64,
    /// Result of the last active check: [`CHECK_UNKNOWN`], [`CHECK_OK`] or [`CHECK_FAILED`].
    pub last_check_ok: AtomicU8,
    /// When the last active check finished (ms, process clock; 0 = never).
    pub last_check_ms: AtomicU64,
    /// The backend's own load report said `down`; active checks do not mark it up meanwhile.
    pub reported_down: AtomicBool,
    /// Registry handles for this backend's event-driven series (its state and counters are
    /// rendered from the atomics above: [`crate::metrics`]).
    pub metrics: BackendMetrics,
}

impl Backend {
    /// A new backend, `up`, with no ramp; its series are rendered while it is alive.
    pub fn new(pool: Arc<str>, config: BackendConfig) -> Arc<Self> {
        let b = Arc::new(Backend::unshared(pool, config));
        crate::metrics::track(&b);
        b
    }

    fn unshared(pool: Arc<str>, config: BackendConfig) -> Self {
        let metrics = BackendMetrics::new();
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Backend {
            id: NEXT_ID.fetch_add(1, Relaxed),
            address: config.address.clone(),
            pool,
            weight: AtomicU32::new(config.weight.max(1)),
            max_connections: AtomicU64::new(config.max_connections.unwrap_or(0)),
            state: AtomicU8::new(BackendState::Up as u8),
            active: AtomicU64::new(0),
            total: AtomicU64::new(0),
            total_h2: AtomicU64::new(0),
            bytes_c2b: AtomicU64::new(0),
            bytes_b2c: AtomicU64::new(0),
            msgs_c2b: AtomicU64::new(0),
            msgs_b2c: AtomicU64::new(0),
            http_requests: AtomicU64::new(0),
            rate_c2b: AtomicF64::new(0.0),
            rate_b2c: AtomicF64::new(0.0),
            latency: AtomicF64::new(0.0),
            latency_at_ms: AtomicU64::new(0),
            custom_load: AtomicU32::new(LOAD_UNKNOWN),
            custom_load_at_ms: AtomicU64::new(0),
            ramp_start_ms: AtomicU64::new(0),
            slow_start_ms: AtomicU64::new(0),
            ejected_until_ms: AtomicU64::new(0),
            passive_failures: AtomicU32::new(0),
            passive_5xx: AtomicU32::new(0),
            ejection_backoff_ms: AtomicU64::new(0),
            last_check_ok: AtomicU8::new(CHECK_UNKNOWN),
            last_check_ms: AtomicU64::new(0),
            reported_down: AtomicBool::new(false),
            metrics,
            found_by: arc_swap::ArcSwapOption::new(config.discovered_from.clone().map(Arc::new)),
            config,
        }
    }

    /// A bare backend for unit tests of the algorithms.
    pub fn for_test(address: &str, weight: u32) -> Arc<Self> {
        Backend::new(
            Arc::from("test"),
            BackendConfig {
                address: address.to_string(),
                weight,
                max_connections: None,
                tls: None,
                discover: None,
                discovered_from: None,
                proxy_protocol: None,
            },
        )
    }

    /// The discovery entry that found it (its name as written), or `None` for a configured
    /// backend.
    pub fn discovered_from(&self) -> Option<Arc<String>> {
        self.found_by.load_full()
    }

    /// Records which entry finds it now (a reload or discovery round kept it).
    pub fn set_discovered_from(&self, entry: Option<&String>) {
        if self.found_by.load().as_deref() != entry {
            self.found_by.store(entry.cloned().map(Arc::new));
        }
    }

    /// Configured weight (≥ 1).
    pub fn weight(&self) -> u32 {
        self.weight.load(Relaxed)
    }

    /// Changes the weight (reload).
    pub fn set_weight(&self, w: u32) {
        self.weight.store(w.max(1), Relaxed)
    }

    /// Per-backend cap (0 = unlimited).
    pub fn max_connections(&self) -> u64 {
        self.max_connections.load(Relaxed)
    }

    /// Changes the cap (reload); `None` = unlimited.
    pub fn set_max_connections(&self, m: Option<u64>) {
        self.max_connections.store(m.unwrap_or(0), Relaxed)
    }

    /// Current state.
    pub fn state(&self) -> BackendState {
        BackendState::from_u8(self.state.load(Relaxed))
    }

    /// Sets the state; a change to `Up` starts the slow-start ramp. Returns the old state.
    pub fn set_state(&self, s: BackendState, now_ms: u64) -> BackendState {
        let old = BackendState::from_u8(self.state.swap(s as u8, Relaxed));
        if s == BackendState::Up && old != BackendState::Up {
            self.start_ramp(now_ms);
        }
        old
    }

    /// Changes the state from `from` to `to` only if it still is `from` (so a health check
    /// never overwrites an admin drain that raced it); same effects as [`Self::set_state`].
    pub fn set_state_if(&self, from: BackendState, to: BackendState, now_ms: u64) -> bool {
        if self.state.compare_exchange(from as u8, to as u8, Relaxed, Relaxed).is_err() {
            return false;
        }
        if to == BackendState::Up && from != BackendState::Up {
            self.start_ramp(now_ms);
        }
        true
    }

    /// Starts the slow-start ramp now (no effect when slow start is off).
    pub fn start_ramp(&self, now_ms: u64) {
        if self.slow_start_ms.load(Relaxed) > 0 {
            self.ramp_start_ms.store(now_ms, Relaxed);
        }
    }

    /// What the backend's health says its state should be when nothing else holds it out:
    /// `down` while its last active check failed or its own load report says `down`.
    pub fn health_says(&self) -> BackendState {
        if self.reported_down.load(Relaxed) || self.last_check_ok.load(Relaxed) == CHECK_FAILED {
            BackendState::Down
        } else {
            BackendState::Up
        }
    }

    /// The one transition back into service, whatever brought the backend back (active
    /// checks pass, checks turned off, a load report no longer says `down`, an admin
    /// undrain): from `from` — compare-and-swap, so it never overwrites a drain or check
    /// that raced it — to what [`Self::health_says`]: `up`, which starts the slow-start
    /// ramp at `now_ms`, or `down` until the checks pass. Returns the new state, or `None`
    /// when the backend was not in `from`. (The end of a passive ejection needs no call: it
    /// ends by time, and [`Self::ramp_factor`] ramps from that moment.)
    pub fn return_to_service(&self, from: BackendState, now_ms: u64) -> Option<BackendState> {
        let to = self.health_says();
        if to == from {
            return (self.state() == from).then_some(to);
        }
        self.set_state_if(from, to, now_ms).then_some(to)
    }

    /// Folds an ended passive ejection into the ramp (the ramp starts when the ejection
    /// ended, not when this noticed it) and clears it; `true` once per ended ejection. Until
    /// it runs, [`Self::ramp_factor`] already ramps from the ejection's end.
    pub fn end_ejection(&self, now_ms: u64) -> bool {
        let until = self.ejected_until_ms.load(Relaxed);
        if until == 0 || now_ms < until {
            return false;
        }
        // Ramp first, clear second: a reader in between sees the same ramp start either way.
        if self.slow_start_ms.load(Relaxed) > 0 {
            self.ramp_start_ms.fetch_max(until, Relaxed);
        }
        self.ejected_until_ms.compare_exchange(until, 0, Relaxed, Relaxed).is_ok()
    }

    /// Is it at its `max_connections`?
    pub fn is_full(&self) -> bool {
        let max = self.max_connections();
        max != 0 && self.active.load(Relaxed) >= max
    }

    /// Is it passively ejected at `now_ms`?
    pub fn is_ejected(&self, now_ms: u64) -> bool {
        now_ms < self.ejected_until_ms.load(Relaxed)
    }

    /// May a new connection go here (up, not ejected, not full)?
    pub fn is_available(&self, now_ms: u64) -> bool {
        self.state() == BackendState::Up && !self.is_ejected(now_ms) && !self.is_full()
    }

    /// Slow-start factor in (0, 1]: ramps linearly from 5 % to 100 % over the window.
    /// The end of a passive ejection is a return to service too: the ramp runs from the
    /// later of its start and the ejection's end, so a backend back from ejection is not
    /// herded onto (one more atomic load, no write, on the pick path).
    pub fn ramp_factor(&self, now_ms: u64) -> f64 {
        let window = self.slow_start_ms.load(Relaxed);
        if window == 0 {
            return 1.0;
        }
        let start = self.ramp_start_ms.load(Relaxed).max(self.ejected_until_ms.load(Relaxed));
        if window == 0 || start == 0 || now_ms >= start + window {
            return 1.0;
        }
        (now_ms.saturating_sub(start) as f64 / window as f64).clamp(0.05, 1.0)
    }

    /// Weight scaled by the slow-start ramp.
    pub fn effective_weight(&self, now_ms: u64) -> f64 {
        self.weight() as f64 * self.ramp_factor(now_ms)
    }

    /// Live connections.
    pub fn active(&self) -> u64 {
        self.active.load(Relaxed)
    }

    /// Records a handshake latency sample into the peak-EWMA (decay time constant
    /// `tau_ms`): a sample above the current value replaces it at once (peak), a lower one
    /// is blended in, so a slow backend is penalised immediately and forgiven gradually.
    pub fn observe_latency(&self, secs: f64, now_ms: u64, tau_ms: f64) {
        let prev = self.latency.get();
        let at = self.latency_at_ms.swap(now_ms, Relaxed);
        let next = if at == 0 || secs > prev {
            secs
        } else {
            let dt = now_ms.saturating_sub(at) as f64;
            let w = (-dt / tau_ms).exp();
            prev * w + secs * (1.0 - w)
        };
        self.latency.set(next);
    }

    /// The latency estimate decayed towards zero-cost by the time since the last sample,
    /// so a backend that was slow once is retried as time passes (seconds).
    pub fn latency_estimate(&self, now_ms: u64, tau_ms: f64) -> f64 {
        let at = self.latency_at_ms.load(Relaxed);
        if at == 0 {
            return 0.0;
        }
        let dt = now_ms.saturating_sub(at) as f64;
        self.latency.get() * exp_neg(dt * (1.0 / tau_ms))
    }

    /// Bytes/s EWMA in both directions.
    pub fn bandwidth(&self) -> f64 {
        self.rate_c2b.get() + self.rate_b2c.get()
    }
}

/// `e^-x` for `x ≥ 0` within 4·10⁻⁶ relative, in less time than libm's `exp`: the least
/// response time pick decays one estimate per backend, which made `exp` most of its cost at
/// 100 backends. `e^-x = 2^-y` with `y = x·log₂e`; `y` is rounded to an integer `k` by the
/// 1.5·2⁵² shift (no float-to-int conversion), `k` goes into the exponent bits, and
/// `2^-(y-k) = e^-u` with `|u| ≤ ln2/2` is a degree-5 Taylor polynomial evaluated in two
/// independent halves (Estrin), so few operations wait on each other.
#[inline]
pub(crate) fn exp_neg(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    if x >= 700.0 {
        // far below any latency that matters
        return 0.0;
    }
    const SHIFT: f64 = 6_755_399_441_055_744.0; // 1.5 × 2^52
    let y = x.max(0.0) * std::f64::consts::LOG2_E;
    let r = y + SHIFT;
    let k = u64::from(r.to_bits() as u32); // round(y): 0..=1010
    let u = (y - (r - SHIFT)) * std::f64::consts::LN_2;
    let u2 = u * u;
    let p = (1.0 - u) + u2 * (0.5 - u * (1.0 / 6.0)) + u2 * u2 * (1.0 / 24.0 - u * (1.0 / 120.0));
    // p in [0.7, 1.42]; k ≤ 1010 keeps the result a normal number
    f64::from_bits(p.to_bits() - (k << 52))
}

/// Keeps `active` right however a connection ends: increments on creation, decrements on drop.
#[derive(Debug)]
pub struct ActiveGuard(Arc<Backend>);

impl ActiveGuard {
    /// Counts one more live connection on `b`.
    pub fn new(b: Arc<Backend>) -> Self {
        b.active.fetch_add(1, Relaxed);
        b.total.fetch_add(1, Relaxed);
        ActiveGuard(b)
    }

    /// Counts one plain HTTP request in flight on `b` (for balancing and caps; not a
    /// connection in `switchyard_connections_total`).
    pub fn request(b: Arc<Backend>) -> Self {
        b.active.fetch_add(1, Relaxed);
        ActiveGuard(b)
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<Backend> {
        &self.0
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_neg_matches_libm() {
        let mut worst = 0f64;
        let mut x = 0.0;
        while x < 60.0 {
            let (fast, exact) = (exp_neg(x), (-x).exp());
            worst = worst.max((fast - exact).abs() / exact);
            x += 0.001_37;
        }
        assert!(worst < 4e-6, "worst relative error {worst}");
        assert_eq!(exp_neg(0.0), 1.0);
        assert_eq!(exp_neg(-1.0), 1.0); // clamped: a sample "from the future" does not grow
        assert_eq!(exp_neg(700.0), 0.0);
        assert_eq!(exp_neg(f64::INFINITY), 0.0);
        assert!(exp_neg(699.9) > 0.0 && exp_neg(699.9) < 1e-300);
        assert!(exp_neg(f64::NAN).is_nan());
    }

    fn ramped(slow_ms: u64) -> Arc<Backend> {
        let b = Backend::for_test("a:1", 1);
        b.slow_start_ms.store(slow_ms, Relaxed);
        b
    }

    #[test]
    fn the_end_of_an_ejection_starts_the_ramp_there() {
        let b = ramped(20_000);
        b.ejected_until_ms.store(10_000, Relaxed);
        assert!(b.is_ejected(9_999));
        // Before anything noticed the end: already ramping from 10 s.
        assert_eq!(b.ramp_factor(10_000), 0.05);
        assert_eq!(b.ramp_factor(20_000), 0.5);
        // Noticed late (at 15 s): the ramp still runs from the end, once.
        assert!(b.end_ejection(15_000));
        assert!(!b.end_ejection(15_000));
        assert_eq!(b.ejected_until_ms.load(Relaxed), 0);
        assert_eq!(b.ramp_factor(20_000), 0.5);
        assert_eq!(b.ramp_factor(30_000), 1.0);
        // Without slow start nothing ramps.
        let plain = ramped(0);
        plain.ejected_until_ms.store(10_000, Relaxed);
        assert!(plain.end_ejection(10_000));
        assert_eq!(plain.ramp_factor(10_000), 1.0);
    }

    #[test]
    fn return_to_service_follows_health_and_ramps() {
        let b = ramped(10_000);
        b.set_state(BackendState::Draining, 1);
        b.last_check_ok.store(CHECK_FAILED, Relaxed);
        assert_eq!(b.return_to_service(BackendState::Draining, 1_000), Some(BackendState::Down));
        assert_eq!(b.state(), BackendState::Down);
        assert_eq!(b.ramp_start_ms.load(Relaxed), 0, "no ramp for a backend still down");
        // Not in `from`: nothing changes.
        assert_eq!(b.return_to_service(BackendState::Draining, 2_000), None);
        b.last_check_ok.store(CHECK_OK, Relaxed);
        assert_eq!(b.return_to_service(BackendState::Down, 3_000), Some(BackendState::Up));
        assert_eq!(b.ramp_factor(4_000), 0.1);
        // A load report saying down holds it down as well.
        b.set_state(BackendState::Draining, 5_000);
        b.reported_down.store(true, Relaxed);
        assert_eq!(b.return_to_service(BackendState::Draining, 6_000), Some(BackendState::Down));
    }
}
