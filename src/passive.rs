//! Passive health: what real traffic says about a backend. Only the backend's share of an
//! [`Outcome`] counts (and the application's `5xx`, when the pool sets `count_5xx`):
//! `fall` consecutive backend failures (or `consecutive_5xx` counted `5xx`) eject the
//! backend for a back-off that doubles on each ejection (capped); when it ends the backend
//! is picked again, which probes it, and one success resets the counts and the back-off.
//!
//! Ejection is bounded: at most `max_ejected_percent` of the pool is ejected at once (at
//! least one backend when the share is above 0), and never the last available backend —
//! whatever traffic says, a pool is not emptied by it (Envoy's `max_ejection_percent`).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use crate::backend::{Backend, BackendState};
use crate::blame::{Outcome, Party};
use crate::config::{PassiveHealthConfig, PoolConfig};

/// First ejection length.
pub const EJECT_BASE_MS: u64 = 5_000;
/// Longest ejection.
pub const EJECT_MAX_MS: u64 = 120_000;
/// Consecutive failures that eject when the pool has no `health_check.fall`.
pub const DEFAULT_FALL: u32 = 3;

/// A pool's passive health: its settings and the lock under which ejections are decided
/// (so two failing backends cannot both pass the share check at once).
#[derive(Debug)]
pub struct PassiveHealth {
    settings: PassiveHealthConfig,
    fall: u32,
    deciding: Mutex<()>,
    /// `switchyard_passive_ejections_capped_total{pool}`.
    capped: metrics::Counter,
}

impl PassiveHealth {
    /// The passive health of pool `name` configured as `pc`.
    pub fn new(name: &str, pc: &PoolConfig) -> PassiveHealth {
        PassiveHealth {
            settings: pc.passive_health,
            fall: pc.health_check.as_ref().map_or(DEFAULT_FALL, |h| h.fall).max(1),
            deciding: Mutex::new(()),
            capped: crate::metrics::passive_capped_counter(name),
        }
    }

    /// Records how a request or upgrade on backend `b` (one of `backends`) ended.
    pub fn record(&self, backends: &[Arc<Backend>], b: &Backend, outcome: Outcome, now_ms: u64) {
        match outcome.party() {
            Party::None => success(b),
            Party::Application => {
                // The backend answered: its connection-level streak is over.
                reset(&b.passive_failures);
                if self.settings.count_5xx {
                    let n = b.passive_5xx.fetch_add(1, Relaxed) + 1;
                    if n >= self.settings.consecutive_5xx.max(1) {
                        b.passive_5xx.store(0, Relaxed);
                        self.eject(backends, b, outcome, n, now_ms);
                    }
                } else {
                    // Not counted, but the answer is an answer: a 5xx streak resets.
                    success(b);
                }
            }
            Party::Backend => {
                let n = b.passive_failures.fetch_add(1, Relaxed) + 1;
                if n >= self.fall {
                    b.passive_failures.store(0, Relaxed);
                    self.eject(backends, b, outcome, n, now_ms);
                }
            }
            Party::Client | Party::Balancer => {}
        }
    }

    /// Ejects `b` unless it already is, or the pool's share or its last available backend
    /// forbids it (then counted as capped).
    fn eject(&self, backends: &[Arc<Backend>], b: &Backend, outcome: Outcome, failures: u32, now_ms: u64) {
        let Ok(_deciding) = self.deciding.lock() else { return };
        if b.is_ejected(now_ms) {
            return;
        }
        let others = backends.iter().filter(|x| !std::ptr::eq(x.as_ref(), b));
        let ejected = others.clone().filter(|x| x.is_ejected(now_ms)).count();
        let available = others.filter(|x| x.state() == BackendState::Up && !x.is_ejected(now_ms)).count();
        let allowed = max_ejected(self.settings.max_ejected_percent, backends.len());
        if ejected + 1 > allowed || available == 0 {
            self.capped.increment(1);
            tracing::debug!(
                backend = %b.address,
                pool = %b.pool,
                ejected,
                allowed,
                available,
                "ejection capped: the pool keeps this backend in service"
            );
            return;
        }
        let prev = b.ejection_backoff_ms.load(Relaxed);
        let backoff = if prev == 0 { EJECT_BASE_MS } else { (prev * 2).min(EJECT_MAX_MS) };
        b.ejection_backoff_ms.store(backoff, Relaxed);
        b.ejected_until_ms.store(now_ms + backoff, Relaxed);
        b.metrics.ejection();
        tracing::warn!(
            backend = %b.address,
            pool = %b.pool,
            failures,
            last = outcome.name(),
            backoff_ms = backoff,
            "backend ejected after consecutive failures"
        );
    }
}

/// How many of `n` backends may be ejected at once at `percent`: the share rounded down,
/// at least one when the share is above 0.
fn max_ejected(percent: u32, n: usize) -> usize {
    match percent {
        0 => 0,
        p => (n * p.min(100) as usize / 100).max(1),
    }
}

/// The backend answered: its streaks and back-off reset.
fn success(b: &Backend) {
    reset(&b.passive_failures);
    reset(&b.passive_5xx);
    if b.ejection_backoff_ms.load(Relaxed) != 0 {
        b.ejection_backoff_ms.store(0, Relaxed);
        tracing::info!(backend = %b.address, pool = %b.pool, "backend answers again after ejection");
    }
}

/// Zeroes a streak without a write when it already is (most calls: a shared cache line).
fn reset(n: &std::sync::atomic::AtomicU32) {
    if n.load(Relaxed) != 0 {
        n.store(0, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize, passive: PassiveHealthConfig) -> (PassiveHealth, Vec<Arc<Backend>>) {
        let backends: Vec<_> = (0..n).map(|i| Backend::for_test(&format!("127.0.0.1:{}", 9000 + i), 1)).collect();
        let ph = PassiveHealth {
            settings: passive,
            fall: 1,
            deciding: Mutex::new(()),
            capped: metrics::Counter::noop(),
        };
        (ph, backends)
    }

    #[test]
    fn share_and_last_available_bound_ejection() {
        assert_eq!(max_ejected(50, 2), 1);
        assert_eq!(max_ejected(50, 3), 1);
        assert_eq!(max_ejected(10, 3), 1);
        assert_eq!(max_ejected(100, 4), 4);
        assert_eq!(max_ejected(0, 4), 0);
        let (ph, bs) = pool(4, PassiveHealthConfig::default());
        for b in &bs {
            ph.record(&bs, b, Outcome::ConnectFailed, 1_000);
        }
        // 50 % of four: two ejected, the other two kept in service.
        assert_eq!(bs.iter().filter(|b| b.is_ejected(1_000)).count(), 2);
        let (ph, bs) = pool(
            3,
            PassiveHealthConfig {
                max_ejected_percent: 100,
                ..Default::default()
            },
        );
        for b in &bs {
            ph.record(&bs, b, Outcome::NoAnswerInTime, 1_000);
        }
        // Even at 100 %, the last available backend stays.
        assert_eq!(bs.iter().filter(|b| b.is_ejected(1_000)).count(), 2);
        // A backend that is down by its checks is not available: the last one up stays.
        let (ph, bs) = pool(
            2,
            PassiveHealthConfig {
                max_ejected_percent: 100,
                ..Default::default()
            },
        );
        bs[0].set_state(BackendState::Down, 1);
        ph.record(&bs, &bs[1], Outcome::ConnectFailed, 1_000);
        assert!(!bs[1].is_ejected(1_000));
    }

    #[test]
    fn only_the_backends_share_counts_and_5xx_only_when_asked() {
        let (ph, bs) = pool(2, PassiveHealthConfig::default());
        for o in [
            Outcome::ClientBodyStalled,
            Outcome::ClientBodyBroken,
            Outcome::ClientBodyTooLarge,
            Outcome::ClientGone,
            Outcome::LocalResources,
            Outcome::ApplicationError,
            Outcome::UpgradeRefused,
        ] {
            for _ in 0..10 {
                ph.record(&bs, &bs[0], o, 1_000);
            }
            assert!(!bs[0].is_ejected(1_000), "{o:?}");
        }
        let (ph, bs) = pool(
            2,
            PassiveHealthConfig {
                count_5xx: true,
                consecutive_5xx: 3,
                ..Default::default()
            },
        );
        ph.record(&bs, &bs[0], Outcome::ApplicationError, 1_000);
        ph.record(&bs, &bs[0], Outcome::ApplicationError, 1_000);
        ph.record(&bs, &bs[0], Outcome::Answered, 1_000);
        ph.record(&bs, &bs[0], Outcome::ApplicationError, 1_000);
        ph.record(&bs, &bs[0], Outcome::ApplicationError, 1_000);
        assert!(!bs[0].is_ejected(1_000), "a success resets the 5xx streak");
        ph.record(&bs, &bs[0], Outcome::ApplicationError, 1_000);
        assert!(bs[0].is_ejected(1_000));
    }
}
