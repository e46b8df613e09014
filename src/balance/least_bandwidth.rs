//! Least bandwidth: the eligible backend carrying the fewest bytes per second per unit of
//! effective weight, for pools where connections differ in traffic far more than in
//! number (a few chatty streams next to many idle subscribers).
//!
//! Score (lower wins):
//!
//! ```text
//! (rate_c2b + rate_b2c + CONNECTION_COST_BPS × (active + 1)) / effective_weight
//! ```
//!
//! The connection term does two jobs: among backends with no traffic (all rates 0) it
//! turns the choice into weighted least connections instead of always the first one, and
//! it makes each new connection count immediately, while the measured rates only move once
//! per sampler tick. Rates come from [`sample_rates`], which the pool's ticker calls about
//! once per second. Lock-free on the pick path: reads atomics only.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Weak};

use super::select::least_score;
use super::{Balancer, PickContext};
use crate::backend::Backend;

/// Bytes/s a connection is assumed to carry on top of what is measured (1 KiB/s): small
/// next to a real stream, large enough to spread connections that are not yet measured.
pub const CONNECTION_COST_BPS: f64 = 1024.0;

/// Weighted least bandwidth.
#[derive(Debug, Default)]
pub struct LeastBandwidth {
    rotor: AtomicUsize,
}

impl Balancer for LeastBandwidth {
    fn pick(&self, backends: &[Arc<Backend>], ctx: &PickContext<'_>) -> Option<usize> {
        let rotor = self.rotor.fetch_add(1, Relaxed);
        least_score(backends, ctx, rotor, |_, b| {
            b.bandwidth() + CONNECTION_COST_BPS * (b.active() + 1) as f64
        })
    }
}

/// Byte totals of one backend at the previous tick.
#[derive(Debug)]
struct Seen {
    backend: Weak<Backend>,
    c2b: u64,
    b2c: u64,
}

/// What [`sample_rates`] remembers between ticks: the time of the last tick and each
/// backend's byte totals then. One per pool, owned by the pool's ticker (not shared).
#[derive(Debug, Default)]
pub struct RateSampler {
    last_ms: u64,
    seen: Vec<Seen>,
}

impl RateSampler {
    /// A sampler that has not ticked yet (its first tick only records totals).
    pub fn new() -> Self {
        Self::default()
    }

    /// The totals seen last tick for `b`, found by identity so that a reload that adds,
    /// removes or reorders backends does not mix their counters up.
    fn previous(&self, i: usize, b: &Arc<Backend>) -> Option<(u64, u64)> {
        let same = |s: &Seen| std::ptr::eq(s.backend.as_ptr(), Arc::as_ptr(b));
        let s = match self.seen.get(i) {
            Some(s) if same(s) => s,
            _ => self.seen.iter().find(|s| same(s))?,
        };
        Some((s.c2b, s.b2c))
    }
}

/// One tick of the bandwidth sampler: reads each backend's `bytes_c2b`/`bytes_b2c` totals,
/// turns the growth since the previous tick into bytes/s and folds it into `rate_c2b` /
/// `rate_b2c` as an exponentially weighted average with time constant `window_ms`:
/// `rate += (1 − e^(−elapsed/window)) × (instant − rate)`, so the weight of a tick follows
/// the real time elapsed, however irregular the ticks. `window_ms = 0` keeps only the
/// latest tick. A backend seen for the first time is only recorded; its rate is left as is.
pub fn sample_rates(backends: &[Arc<Backend>], state: &mut RateSampler, now_ms: u64, window_ms: u64) {
    let elapsed_ms = now_ms.saturating_sub(state.last_ms);
    if state.last_ms != 0 && elapsed_ms == 0 {
        return; // two ticks in the same millisecond: nothing to measure
    }
    let alpha = if window_ms == 0 {
        1.0
    } else {
        1.0 - (-(elapsed_ms as f64) / window_ms as f64).exp()
    };
    let mut seen = Vec::with_capacity(backends.len());
    for (i, b) in backends.iter().enumerate() {
        let c2b = b.bytes_c2b.load(Relaxed);
        let b2c = b.bytes_b2c.load(Relaxed);
        if state.last_ms != 0 {
            if let Some((pc2b, pb2c)) = state.previous(i, b) {
                let per_s = 1000.0 / elapsed_ms as f64;
                fold(&b.rate_c2b, c2b.saturating_sub(pc2b) as f64 * per_s, alpha);
                fold(&b.rate_b2c, b2c.saturating_sub(pb2c) as f64 * per_s, alpha);
            }
        }
        seen.push(Seen {
            backend: Arc::downgrade(b),
            c2b,
            b2c,
        });
    }
    state.seen = seen;
    state.last_ms = now_ms;
}

/// Moves an EWMA a fraction `alpha` of the way towards `instant`.
fn fold(rate: &crate::backend::AtomicF64, instant: f64, alpha: f64) {
    let prev = rate.get();
    rate.set(prev + alpha * (instant - prev));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendState;

    fn place(lb: &LeastBandwidth, bs: &[Arc<Backend>], n: usize) -> Vec<usize> {
        let mut counts = vec![0; bs.len()];
        for _ in 0..n {
            let i = lb.pick(bs, &PickContext::bare(1)).unwrap();
            bs[i].active.fetch_add(1, Relaxed);
            counts[i] += 1;
        }
        counts
    }

    #[test]
    fn one_chatty_connection_outweighs_many_quiet_ones() {
        let bs = vec![Backend::for_test("chatty:1", 1), Backend::for_test("quiet:1", 1)];
        bs[0].active.store(1, Relaxed);
        bs[0].rate_b2c.set(1_000_000.0); // one 1 MB/s stream
        bs[1].active.store(50, Relaxed);
        bs[1].rate_b2c.set(50.0 * 200.0); // fifty 200 B/s subscribers
        let counts = place(&LeastBandwidth::default(), &bs, 200);
        assert!(counts[0] < counts[1], "{counts:?}");
        assert_eq!(counts, vec![0, 200]);
    }

    #[test]
    fn without_traffic_it_is_weighted_least_connections() {
        let bs = vec![
            Backend::for_test("a:1", 1),
            Backend::for_test("b:1", 2),
            Backend::for_test("c:1", 3),
        ];
        let counts = place(&LeastBandwidth::default(), &bs, 600);
        // Exact up to one connection per backend.
        for (c, want) in counts.iter().zip([100, 200, 300]) {
            assert!(c.abs_diff(want) <= 1, "{counts:?}");
        }
    }

    #[test]
    fn ties_are_shared_and_exclusions_respected() {
        let bs: Vec<_> = (0..3).map(|i| Backend::for_test(&format!("b{i}:1"), 1)).collect();
        let lb = LeastBandwidth::default();
        let mut counts = [0; 3];
        for _ in 0..300 {
            counts[lb.pick(&bs, &PickContext::bare(1)).unwrap()] += 1;
        }
        assert_eq!(counts, [100, 100, 100]);
        bs[0].set_state(BackendState::Down, 1);
        bs[1].rate_c2b.set(5_000.0);
        assert_eq!(lb.pick(&bs, &PickContext::bare(1)), Some(2));
        let ctx = PickContext {
            exclude: &[2],
            ..PickContext::bare(1)
        };
        assert_eq!(lb.pick(&bs, &ctx), Some(1));
        let ctx = PickContext {
            exclude: &[1, 2],
            ..PickContext::bare(1)
        };
        assert_eq!(lb.pick(&bs, &ctx), None);
    }

    #[test]
    fn sampler_converges_to_the_byte_rate() {
        let bs = vec![Backend::for_test("a:1", 1), Backend::for_test("b:1", 1)];
        let mut s = RateSampler::new();
        sample_rates(&bs, &mut s, 1_000, 10_000);
        assert_eq!(bs[0].bandwidth(), 0.0);
        // a: 10 kB/s up and 30 kB/s down, for 60 one-second ticks.
        for t in 1..=60u64 {
            bs[0].bytes_c2b.fetch_add(10_000, Relaxed);
            bs[0].bytes_b2c.fetch_add(30_000, Relaxed);
            sample_rates(&bs, &mut s, 1_000 + t * 1_000, 10_000);
            if t == 10 {
                // One time constant: 1 − 1/e ≈ 63 % of the way.
                let r = bs[0].bandwidth();
                assert!((24_000.0..26_500.0).contains(&r), "{r}");
            }
        }
        assert!((bs[0].bandwidth() - 40_000.0).abs() < 200.0, "{}", bs[0].bandwidth());
        assert_eq!(bs[1].bandwidth(), 0.0);
        // Traffic stops: after one window the rate falls to about 1/e of it.
        for t in 61..=70u64 {
            sample_rates(&bs, &mut s, 1_000 + t * 1_000, 10_000);
        }
        let r = bs[0].bandwidth();
        assert!((14_000.0..15_500.0).contains(&r), "{r}");
    }

    #[test]
    fn sampler_weights_ticks_by_elapsed_time_and_survives_reorder() {
        let a = Backend::for_test("a:1", 1);
        let b = Backend::for_test("b:1", 1);
        let mut s = RateSampler::new();
        sample_rates(&[a.clone(), b.clone()], &mut s, 1_000, 0);
        a.bytes_c2b.fetch_add(4_000, Relaxed);
        b.bytes_c2b.fetch_add(1_000, Relaxed);
        // Two seconds elapsed, reordered list, window 0 = latest tick only.
        sample_rates(&[b.clone(), a.clone()], &mut s, 3_000, 0);
        assert_eq!(a.bandwidth(), 2_000.0);
        assert_eq!(b.bandwidth(), 500.0);
        // A new backend with old totals is only recorded on its first tick.
        let c = Backend::for_test("c:1", 1);
        c.bytes_b2c.store(1_000_000, Relaxed);
        sample_rates(&[a.clone(), c.clone()], &mut s, 4_000, 0);
        assert_eq!(c.bandwidth(), 0.0);
        assert_eq!(a.bandwidth(), 0.0);
    }
}
