//! Least response time (tower's `PeakEwma`, Finagle's "peak EWMA" balancer): the eligible
//! backend with the lowest
//!
//! ```text
//! latency_estimate × (active + 1) / effective_weight
//! ```
//!
//! `latency_estimate` is the peak-EWMA of handshake latency (connect → 101) kept in
//! `backend.rs`: a slow handshake raises it at once, faster ones lower it gradually, and
//! without new samples it decays towards zero with time constant [`DECAY_MS`] (10 s), so a
//! backend that was slow once is tried again after a while instead of being shunned for
//! ever. Two floors keep the product meaningful:
//!
//! - a backend with no sample yet gets the mean estimate of the sampled eligible backends
//!   (or [`DEFAULT_LATENCY_S`] when none is sampled): neutral, so it is tried without
//!   attracting every new connection;
//! - no estimate goes below [`MIN_LATENCY_S`], so a long-unsampled backend still competes
//!   on connections rather than winning every pick until its first new sample arrives.
//!
//! Lock-free: reads atomics only (one pass, plus one when an unsampled backend is met).

use std::cell::OnceCell;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use super::select::least_score;
use super::{Balancer, PickContext};
use crate::backend::Backend;

/// Decay time constant of the latency estimate (ms); the upstream passes the same value to
/// `Backend::observe_latency`.
pub const DECAY_MS: f64 = 10_000.0;
/// Latency assumed when no backend has a sample yet (s).
pub const DEFAULT_LATENCY_S: f64 = 0.05;
/// Lowest latency estimate used in a score (s).
pub const MIN_LATENCY_S: f64 = 0.001;

/// Peak-EWMA least response time.
#[derive(Debug, Default)]
pub struct LeastResponseTime {
    rotor: AtomicUsize,
}

/// Has `b` ever reported a handshake latency?
fn sampled(b: &Backend) -> bool {
    b.latency_at_ms.load(Relaxed) != 0
}

impl Balancer for LeastResponseTime {
    fn pick(&self, backends: &[Arc<Backend>], ctx: &PickContext<'_>) -> Option<usize> {
        let estimate = |b: &Backend| b.latency_estimate(ctx.now_ms, DECAY_MS).max(MIN_LATENCY_S);
        // The neutral latency costs a pass of its own: computed only when an unsampled
        // backend is met (a local cache, not shared state).
        let neutral = OnceCell::new();
        let neutral = || {
            *neutral.get_or_init(|| {
                let (mut sum, mut n) = (0.0, 0u32);
                for (i, b) in backends.iter().enumerate() {
                    if sampled(b) && ctx.eligible(i, b) {
                        sum += estimate(b);
                        n += 1;
                    }
                }
                if n == 0 {
                    DEFAULT_LATENCY_S
                } else {
                    sum / n as f64
                }
            })
        };
        let rotor = self.rotor.fetch_add(1, Relaxed);
        least_score(backends, ctx, rotor, |_, b| {
            let latency = if sampled(b) { estimate(b) } else { neutral() };
            latency * (b.active() + 1) as f64
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendState;

    #[test]
    fn slow_backend_gets_less_then_recovers_after_decay() {
        let bs = vec![Backend::for_test("slow:1", 1), Backend::for_test("fast:1", 1)];
        let lrt = LeastResponseTime::default();
        let mut now = 1_000;
        bs[0].observe_latency(1.0, now, DECAY_MS);
        bs[1].observe_latency(0.010, now, DECAY_MS);
        // One new connection per 10 ms, each staying; the fast one keeps getting samples.
        let mut counts = [0; 2];
        for _ in 0..500 {
            now += 10;
            let i = lrt.pick(&bs, &PickContext::bare(now)).unwrap();
            bs[i].active.fetch_add(1, Relaxed);
            if i == 1 {
                bs[1].observe_latency(0.010, now, DECAY_MS);
            }
            counts[i] += 1;
        }
        assert!(counts[0] * 10 < counts[1], "{counts:?}");
        // A minute without samples: the slow one's estimate has decayed below the fast
        // one's (e^-6 of 1 s ≈ 2.5 ms), so it is tried again.
        now += 60_000;
        bs[1].observe_latency(0.010, now, DECAY_MS);
        bs.iter().for_each(|b| b.active.store(0, Relaxed));
        assert_eq!(lrt.pick(&bs, &PickContext::bare(now)), Some(0));
    }

    #[test]
    fn unsampled_backend_is_tried_but_not_flooded() {
        let bs = vec![
            Backend::for_test("a:1", 1),
            Backend::for_test("b:1", 1),
            Backend::for_test("new:1", 1),
        ];
        let lrt = LeastResponseTime::default();
        bs[0].observe_latency(0.020, 1, DECAY_MS);
        bs[1].observe_latency(0.040, 1, DECAY_MS);
        bs[0].active.store(10, Relaxed);
        bs[1].active.store(10, Relaxed);
        let mut counts = [0; 3];
        for _ in 0..30 {
            let i = lrt.pick(&bs, &PickContext::bare(1)).unwrap();
            bs[i].active.fetch_add(1, Relaxed);
            counts[i] += 1;
        }
        // Neutral 30 ms: the new one is tried first, then shares with the 20 ms one.
        assert!(counts[2] >= 10 && counts[2] < 25, "{counts:?}");
        assert!(counts[0] > counts[1], "{counts:?}");
    }

    #[test]
    fn weights_and_ties() {
        // Equal latency: weighted least connections, exact up to one.
        let bs = vec![Backend::for_test("a:1", 1), Backend::for_test("b:1", 3)];
        bs.iter().for_each(|b| b.observe_latency(0.010, 1, DECAY_MS));
        let lrt = LeastResponseTime::default();
        for _ in 0..400 {
            let i = lrt.pick(&bs, &PickContext::bare(1)).unwrap();
            bs[i].active.fetch_add(1, Relaxed);
        }
        assert!(bs[0].active().abs_diff(100) <= 1 && bs[1].active().abs_diff(300) <= 1);
        // Static ties rotate evenly.
        let bs: Vec<_> = (0..4).map(|i| Backend::for_test(&format!("b{i}:1"), 1)).collect();
        let mut counts = [0; 4];
        for _ in 0..400 {
            counts[lrt.pick(&bs, &PickContext::bare(1)).unwrap()] += 1;
        }
        assert_eq!(counts, [100; 4]);
    }

    #[test]
    fn exclusions_respected() {
        let bs: Vec<_> = (0..3).map(|i| Backend::for_test(&format!("b{i}:1"), 1)).collect();
        let lrt = LeastResponseTime::default();
        bs[0].set_state(BackendState::Down, 1);
        bs[2].observe_latency(5.0, 1, DECAY_MS);
        assert_eq!(lrt.pick(&bs, &PickContext::bare(1)), Some(1));
        let ctx = PickContext {
            exclude: &[1],
            ..PickContext::bare(1)
        };
        assert_eq!(lrt.pick(&bs, &ctx), Some(2));
        let ctx = PickContext {
            exclude: &[1, 2],
            ..PickContext::bare(1)
        };
        assert_eq!(lrt.pick(&bs, &ctx), None);
    }
}
