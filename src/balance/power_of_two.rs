//! Power of two choices (P2C): draw two distinct eligible backends at random (weighted by
//! effective weight), send the connection to the one with fewer live connections per unit
//! of effective weight, `(active + 1) / effective_weight`.
//!
//! Why not plain least connections? When several balancer instances share one backend
//! farm (or one instance reads counters that lag behind its own accepts), they all see the
//! same, or the same stale, "least loaded" backend and all send their next connections to
//! it at once: a herd that overloads it, after which they all move to the next one. P2C
//! only compares two random candidates, so instances with identical views still pick
//! different backends, yet the lighter of each pair wins, which keeps the maximum load
//! exponentially closer to the mean than pure random does (Mitzenmacher, "The Power of Two
//! Choices in Randomized Load Balancing", 2001). It is also O(1) per pick.
//!
//! Lock-free: thread-local RNG and atomics only.

use std::sync::Arc;

use super::select::WeightedSampler;
use super::{Balancer, PickContext};
use crate::backend::Backend;

/// Power of two random choices.
#[derive(Debug)]
pub struct PowerOfTwo {
    sampler: WeightedSampler,
}

impl PowerOfTwo {
    /// A balancer for these backends (their weights bound the rejection sampler).
    pub fn new(backends: &[Arc<Backend>]) -> Self {
        PowerOfTwo {
            sampler: WeightedSampler::new(backends),
        }
    }
}

/// Live connections (counting the one being placed) per unit of effective weight.
fn load(b: &Backend, now_ms: u64) -> f64 {
    (b.active() + 1) as f64 / b.effective_weight(now_ms)
}

impl Balancer for PowerOfTwo {
    fn pick(&self, backends: &[Arc<Backend>], ctx: &PickContext<'_>) -> Option<usize> {
        let first = self.sampler.sample(backends, ctx, None)?;
        let Some(second) = self.sampler.sample(backends, ctx, Some(first)) else {
            return Some(first); // the only eligible one
        };
        // The draw order is random, so preferring `first` on a tie is a fair coin.
        if load(&backends[second], ctx.now_ms) < load(&backends[first], ctx.now_ms) {
            Some(second)
        } else {
            Some(first)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendState;
    use crate::balance::testutil::distribution;
    use std::sync::atomic::Ordering::Relaxed;

    /// Places `n` connections that stay (each pick adds one live connection).
    fn place(p: &PowerOfTwo, bs: &[Arc<Backend>], n: usize) {
        for _ in 0..n {
            let i = p.pick(bs, &PickContext::bare(1)).unwrap();
            bs[i].active.fetch_add(1, Relaxed);
        }
    }

    #[test]
    fn staying_connections_follow_weights() {
        let bs = vec![
            Backend::for_test("a:1", 1),
            Backend::for_test("b:1", 2),
            Backend::for_test("c:1", 3),
        ];
        let p = PowerOfTwo::new(&bs);
        place(&p, &bs, 6_000);
        // Shares within ±3 percentage points of 1/6, 2/6, 3/6.
        for (b, w) in bs.iter().zip([1.0, 2.0, 3.0]) {
            let share = b.active() as f64 / 6_000.0;
            assert!((share - w / 6.0).abs() < 0.03, "{share} for weight {w}");
        }
    }

    #[test]
    fn equal_backends_stay_close_to_even() {
        let bs: Vec<_> = (0..10).map(|i| Backend::for_test(&format!("b{i}:1"), 1)).collect();
        let p = PowerOfTwo::new(&bs);
        place(&p, &bs, 10_000);
        // Two choices keep the spread tiny (pure random would be around ±30 here).
        let max = bs.iter().map(|b| b.active()).max().unwrap();
        let min = bs.iter().map(|b| b.active()).min().unwrap();
        assert!(max - min <= 10, "spread {min}..{max}");
    }

    #[test]
    fn ties_are_shared_fairly() {
        // Static equal state: every pair is a tie, so picks spread evenly (±10 % relative).
        let bs: Vec<_> = (0..3).map(|i| Backend::for_test(&format!("b{i}:1"), 1)).collect();
        let p = PowerOfTwo::new(&bs);
        for c in distribution(&p, &bs, 30_000) {
            assert!((9_000..11_000).contains(&c), "{c}");
        }
    }

    #[test]
    fn lighter_of_a_pair_wins() {
        let bs = vec![Backend::for_test("a:1", 1), Backend::for_test("b:1", 1)];
        bs[0].active.store(10, Relaxed);
        let p = PowerOfTwo::new(&bs);
        assert_eq!(distribution(&p, &bs, 200), vec![0, 200]);
    }

    #[test]
    fn exclusions_respected() {
        let bs: Vec<_> = (0..3).map(|i| Backend::for_test(&format!("b{i}:1"), 1)).collect();
        bs[0].set_state(BackendState::Down, 1);
        bs[1].set_max_connections(Some(1));
        bs[1].active.store(1, Relaxed);
        let p = PowerOfTwo::new(&bs);
        assert_eq!(distribution(&p, &bs, 100), vec![0, 0, 100]);
        let ctx = PickContext {
            exclude: &[2],
            ..PickContext::bare(1)
        };
        assert_eq!(p.pick(&bs, &ctx), None);
    }
}
