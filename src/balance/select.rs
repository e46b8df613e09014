//! Selection helpers shared by several algorithms: weighted random sampling of eligible
//! backends (`random`, `power_of_two`) and an index-aware "least score per weight" scan.
//!
//! Lock-free: the only shared state is an atomic upper bound on the configured weights.

use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::Arc;

use rand::Rng;

use super::PickContext;
use crate::backend::Backend;

/// Rejection-sampling attempts before the exact two-pass scan. With equal weights and all
/// backends eligible the first attempt always succeeds, so a pick is O(1).
const REJECTION_TRIALS: usize = 8;

/// Draws an eligible backend with probability proportional to its effective weight.
///
/// Fast path: rejection sampling (uniform index, accepted with probability
/// `effective_weight / max_weight`), O(1) expected when weights are similar and most
/// backends are eligible. Slow path after [`REJECTION_TRIALS`] misses: an exact O(n) scan.
/// Both draw from the same distribution, so mixing them keeps the shares exact.
#[derive(Debug)]
pub(crate) struct WeightedSampler {
    /// Upper bound on every backend's configured weight; raised if a reload raises one.
    max_weight: AtomicU32,
}

impl WeightedSampler {
    /// A sampler for the backends' current weights.
    pub(crate) fn new(backends: &[Arc<Backend>]) -> Self {
        let max = backends.iter().map(|b| b.weight()).max().unwrap_or(1).max(1);
        WeightedSampler {
            max_weight: AtomicU32::new(max),
        }
    }

    /// An eligible backend other than `skip`, weighted by effective weight; `None` when
    /// there is none.
    pub(crate) fn sample(&self, backends: &[Arc<Backend>], ctx: &PickContext<'_>, skip: Option<usize>) -> Option<usize> {
        let n = backends.len();
        if n == 0 {
            return None;
        }
        let mut rng = rand::rng();
        let max = self.max_weight.load(Relaxed) as f64;
        for _ in 0..REJECTION_TRIALS {
            let i = rng.random_range(0..n);
            let b = &backends[i];
            if skip == Some(i) || !ctx.eligible(i, b) {
                continue;
            }
            let w = b.weight();
            if w as f64 > max {
                // A reload raised a weight: the bound was wrong, so this draw is biased;
                // fix the bound and let the exact scan decide.
                self.max_weight.fetch_max(w, Relaxed);
                break;
            }
            if rng.random::<f64>() * max < b.effective_weight(ctx.now_ms) {
                return Some(i);
            }
        }
        exact(backends, ctx, skip, rng.random::<f64>())
    }
}

/// Exact weighted draw: `u` in [0, 1) picks a point on the line of eligible weights.
fn exact(backends: &[Arc<Backend>], ctx: &PickContext<'_>, skip: Option<usize>, u: f64) -> Option<usize> {
    let ok = |i: usize, b: &Backend| skip != Some(i) && ctx.eligible(i, b);
    let total: f64 = backends
        .iter()
        .enumerate()
        .filter(|(i, b)| ok(*i, b))
        .map(|(_, b)| b.effective_weight(ctx.now_ms))
        .sum();
    if total <= 0.0 {
        return None;
    }
    let mut point = u * total;
    let mut last = None;
    for (i, b) in backends.iter().enumerate() {
        if !ok(i, b) {
            continue;
        }
        last = Some(i);
        point -= b.effective_weight(ctx.now_ms);
        if point < 0.0 {
            return Some(i);
        }
    }
    // Rounding, or a backend turned ineligible between the passes.
    last
}

/// The eligible backend with the lowest `score(i, b) / effective_weight`.
///
/// The score also gets the backend's index, and ties are shared fairly even when some
/// backends are ineligible: the winner among `t` tied backends is the
/// `rotor % t`-th of them (a second pass, only when there is a tie). A rotating scan start
/// would hand the turns of an ineligible backend to its neighbour.
pub(crate) fn least_score<F>(backends: &[Arc<Backend>], ctx: &PickContext<'_>, rotor: usize, score: F) -> Option<usize>
where
    F: Fn(usize, &Backend) -> f64,
{
    let scored = |i: usize, b: &Backend| ctx.eligible(i, b).then(|| score(i, b) / b.effective_weight(ctx.now_ms));
    let mut best: Option<(usize, f64)> = None;
    let mut ties = 0usize;
    for (i, b) in backends.iter().enumerate() {
        let Some(s) = scored(i, b) else { continue };
        match best {
            Some((_, bs)) if s == bs => ties += 1,
            Some((_, bs)) if s > bs => {}
            _ => {
                best = Some((i, s));
                ties = 1;
            }
        }
    }
    let (first, best_score) = best?;
    if ties > 1 {
        let mut turn = rotor % ties;
        for (i, b) in backends.iter().enumerate().skip(first) {
            if scored(i, b) == Some(best_score) {
                if turn == 0 {
                    return Some(i);
                }
                turn -= 1;
            }
        }
        // The scores moved between the passes; the first best is as good as any.
    }
    Some(first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendState;

    #[test]
    fn weighted_draws_match_weights_and_skip() {
        let bs = vec![
            Backend::for_test("a:1", 1),
            Backend::for_test("b:1", 3),
            Backend::for_test("c:1", 6),
        ];
        let s = WeightedSampler::new(&bs);
        let ctx = PickContext::bare(1);
        let mut counts = [0usize; 3];
        for _ in 0..50_000 {
            counts[s.sample(&bs, &ctx, Some(2)).unwrap()] += 1;
        }
        assert_eq!(counts[2], 0);
        // 1:3 among the two left, ±10 % relative.
        let ratio = counts[1] as f64 / counts[0] as f64;
        assert!((2.7..3.3).contains(&ratio), "{counts:?}");
        bs[0].set_state(BackendState::Down, 1);
        assert_eq!(s.sample(&bs, &ctx, Some(1)), Some(2));
        assert_eq!(s.sample(&bs, &ctx, Some(2)), Some(1));
        bs[1].set_state(BackendState::Down, 1);
        assert_eq!(s.sample(&bs, &ctx, Some(2)), None);
    }

    #[test]
    fn raised_weight_is_noticed() {
        let bs = vec![Backend::for_test("a:1", 1), Backend::for_test("b:1", 1)];
        let s = WeightedSampler::new(&bs);
        bs[1].set_weight(9);
        let ctx = PickContext::bare(1);
        let mut counts = [0usize; 2];
        for _ in 0..20_000 {
            counts[s.sample(&bs, &ctx, None).unwrap()] += 1;
        }
        assert_eq!(s.max_weight.load(Relaxed), 9);
        let share = counts[1] as f64 / 20_000.0;
        assert!((0.87..0.93).contains(&share), "{counts:?}");
    }

    #[test]
    fn ties_are_shared_fairly_around_ineligible_backends() {
        let bs: Vec<_> = (0..4).map(|i| Backend::for_test(&format!("b{i}:1"), 1)).collect();
        bs[1].set_state(BackendState::Down, 1);
        let ctx = PickContext::bare(1);
        let mut counts = [0; 4];
        for rotor in 0..300 {
            counts[least_score(&bs, &ctx, rotor, |_, _| 1.0).unwrap()] += 1;
        }
        assert_eq!(counts, [100, 0, 100, 100]);
        // A strictly lower score wins whatever the rotor.
        assert_eq!(least_score(&bs, &ctx, 7, |i, _| if i == 3 { 0.5 } else { 1.0 }), Some(3));
        let ctx = PickContext {
            exclude: &[0, 2, 3],
            ..ctx
        };
        assert_eq!(least_score(&bs, &ctx, 0, |_, _| 1.0), None);
    }
}
