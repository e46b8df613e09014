//! Smooth weighted round robin (nginx's interleaving: weights 3:1 give a a b a, not a a a b).
//!
//! Lock-free: the interleaved schedule is computed once from the configured weights and an
//! atomic cursor walks it; an ineligible backend is skipped by moving on. Slow start is
//! applied by skipping a ramping backend's turn with probability 1 − factor.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use super::{Balancer, PickContext};
use crate::backend::Backend;

/// Longest schedule kept; larger weight sums are scaled down proportionally.
const MAX_SCHEDULE: u64 = 4096;

/// Smooth weighted round robin.
#[derive(Debug)]
pub struct RoundRobin {
    schedule: Vec<u32>,
    cursor: AtomicUsize,
}

impl RoundRobin {
    /// Builds the schedule for the backends' current weights.
    pub fn new(backends: &[Arc<Backend>]) -> Self {
        let mut weights: Vec<u64> = backends.iter().map(|b| b.weight() as u64).collect();
        let sum: u64 = weights.iter().sum();
        if sum > MAX_SCHEDULE {
            for w in &mut weights {
                *w = (*w * MAX_SCHEDULE / sum).max(1);
            }
        }
        RoundRobin {
            schedule: smooth_schedule(&weights),
            cursor: AtomicUsize::new(0),
        }
    }
}

/// nginx's smooth weighted round robin, unrolled into one period.
fn smooth_schedule(weights: &[u64]) -> Vec<u32> {
    let total: i64 = weights.iter().map(|&w| w as i64).sum();
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, &w) in weights.iter().enumerate() {
            current[i] += w as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u32);
    }
    out
}

impl Balancer for RoundRobin {
    fn pick(&self, backends: &[Arc<Backend>], ctx: &PickContext<'_>) -> Option<usize> {
        let len = self.schedule.len();
        if len == 0 || backends.is_empty() {
            return None;
        }
        // Two laps: the first honours slow start, the second takes any eligible backend.
        for lap in 0..2 {
            for _ in 0..len {
                let slot = self.cursor.fetch_add(1, Relaxed) % len;
                let i = self.schedule[slot] as usize;
                let Some(b) = backends.get(i) else { continue };
                if !ctx.eligible(i, b) {
                    continue;
                }
                let f = b.ramp_factor(ctx.now_ms);
                if lap == 0 && f < 1.0 && rand::random::<f64>() >= f {
                    continue;
                }
                return Some(i);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendState;
    use crate::balance::testutil::distribution;

    #[test]
    fn weights_three_to_one_are_exact_and_interleaved() {
        let bs = vec![Backend::for_test("a:1", 3), Backend::for_test("b:1", 1)];
        let rr = RoundRobin::new(&bs);
        let seq: Vec<usize> = (0..8).map(|_| rr.pick(&bs, &PickContext::bare(1)).unwrap()).collect();
        assert_eq!(seq, vec![0, 0, 1, 0, 0, 0, 1, 0]);
        assert_eq!(distribution(&rr, &bs, 4000), vec![3000, 1000]);
    }

    #[test]
    fn equal_weights_alternate() {
        let bs = vec![
            Backend::for_test("a:1", 1),
            Backend::for_test("b:1", 1),
            Backend::for_test("c:1", 1),
        ];
        let rr = RoundRobin::new(&bs);
        assert_eq!(distribution(&rr, &bs, 300), vec![100, 100, 100]);
    }

    #[test]
    fn skips_down_excluded_and_full() {
        let bs = vec![
            Backend::for_test("a:1", 1),
            Backend::for_test("b:1", 1),
            Backend::for_test("c:1", 1),
        ];
        bs[0].set_state(BackendState::Down, 1);
        bs[2].set_max_connections(Some(1));
        bs[2].active.store(1, Relaxed);
        let rr = RoundRobin::new(&bs);
        assert_eq!(distribution(&rr, &bs, 100), vec![0, 100, 0]);
        let ctx = PickContext {
            exclude: &[1],
            ..PickContext::bare(1)
        };
        assert_eq!(rr.pick(&bs, &ctx), None);
    }

    #[test]
    fn huge_weights_are_scaled() {
        let bs = vec![Backend::for_test("a:1", 1_000_000), Backend::for_test("b:1", 1_000_000)];
        let rr = RoundRobin::new(&bs);
        assert!(rr.schedule.len() <= MAX_SCHEDULE as usize);
        assert_eq!(distribution(&rr, &bs, 1000), vec![500, 500]);
    }
}
