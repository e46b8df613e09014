//! Weighted random: each pick draws an eligible backend with probability proportional to
//! its effective (slow-start scaled) weight; uniform when weights are equal.
//!
//! Lock-free: a thread-local RNG and atomics only (see [`WeightedSampler`]). No state is
//! shared between picks, so many balancer instances never synchronise into a herd.

use std::sync::Arc;

use super::select::WeightedSampler;
use super::{Balancer, PickContext};
use crate::backend::Backend;

/// Weighted random selection.
#[derive(Debug)]
pub struct Random {
    sampler: WeightedSampler,
}

impl Random {
    /// A balancer for these backends (their weights bound the rejection sampler).
    pub fn new(backends: &[Arc<Backend>]) -> Self {
        Random {
            sampler: WeightedSampler::new(backends),
        }
    }
}

impl Balancer for Random {
    fn pick(&self, backends: &[Arc<Backend>], ctx: &PickContext<'_>) -> Option<usize> {
        self.sampler.sample(backends, ctx, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendState;
    use crate::balance::testutil::distribution;
    use std::sync::atomic::Ordering::Relaxed;

    /// Shares within ±1.5 percentage points of the weight share over 60,000 picks (the
    /// binomial standard deviation is below 0.2 points).
    fn assert_shares(counts: &[usize], weights: &[f64]) {
        let n: usize = counts.iter().sum();
        let w: f64 = weights.iter().sum();
        for (c, wi) in counts.iter().zip(weights) {
            let got = *c as f64 / n as f64;
            assert!((got - wi / w).abs() < 0.015, "{counts:?} vs {weights:?}");
        }
    }

    #[test]
    fn equal_weights_are_uniform() {
        let bs: Vec<_> = (0..4).map(|i| Backend::for_test(&format!("b{i}:1"), 1)).collect();
        let r = Random::new(&bs);
        assert_shares(&distribution(&r, &bs, 60_000), &[1.0; 4]);
    }

    #[test]
    fn shares_follow_weights() {
        let bs = vec![
            Backend::for_test("a:1", 1),
            Backend::for_test("b:1", 2),
            Backend::for_test("c:1", 5),
        ];
        let r = Random::new(&bs);
        assert_shares(&distribution(&r, &bs, 60_000), &[1.0, 2.0, 5.0]);
    }

    #[test]
    fn slow_start_scales_the_share() {
        let bs = vec![Backend::for_test("a:1", 1), Backend::for_test("b:1", 1)];
        bs[1].slow_start_ms.store(10_000, Relaxed);
        bs[1].ramp_start_ms.store(1_000, Relaxed);
        let r = Random::new(&bs);
        // At t = 3.5 s the ramp is at 25 %: shares 1 : 0.25.
        let ctx = PickContext::bare(3_500);
        let mut counts = vec![0; 2];
        for _ in 0..60_000 {
            counts[r.pick(&bs, &ctx).unwrap()] += 1;
        }
        assert_shares(&counts, &[1.0, 0.25]);
    }

    #[test]
    fn exclusions_respected_and_none_when_nothing_eligible() {
        let bs = vec![
            Backend::for_test("a:1", 1),
            Backend::for_test("b:1", 1),
            Backend::for_test("c:1", 1),
        ];
        bs[0].set_state(BackendState::Draining, 1);
        bs[1].ejected_until_ms.store(u64::MAX, Relaxed);
        let r = Random::new(&bs);
        assert_eq!(distribution(&r, &bs, 100), vec![0, 0, 100]);
        let ctx = PickContext {
            exclude: &[2],
            ..PickContext::bare(1)
        };
        assert_eq!(r.pick(&bs, &ctx), None);
        assert_eq!(r.pick(&[], &PickContext::bare(1)), None);
    }
}
