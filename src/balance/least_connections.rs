//! Weighted least connections: the eligible backend with the fewest live connections per
//! unit of (slow-start scaled) weight. Ties are broken by a rotating scan start, so equal
//! backends share new connections evenly. Lock-free: reads atomics only.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use super::select::least_score;
use super::{Balancer, PickContext};
use crate::backend::Backend;

/// Weighted least connections.
#[derive(Debug, Default)]
pub struct LeastConnections {
    rotor: AtomicUsize,
}

impl Balancer for LeastConnections {
    fn pick(&self, backends: &[Arc<Backend>], ctx: &PickContext<'_>) -> Option<usize> {
        let rotor = self.rotor.fetch_add(1, Relaxed);
        // +1: the connection being placed, so weight matters even when all are empty.
        least_score(backends, ctx, rotor, |_, b| (b.active() + 1) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendState;

    #[test]
    fn fills_the_emptiest_by_weight() {
        let bs = vec![Backend::for_test("a:1", 1), Backend::for_test("b:1", 2)];
        let lc = LeastConnections::default();
        // Simulate connections that stay: every pick adds one live connection.
        for _ in 0..300 {
            let i = lc.pick(&bs, &PickContext::bare(1)).unwrap();
            bs[i].active.fetch_add(1, Relaxed);
        }
        assert_eq!(bs[0].active(), 100);
        assert_eq!(bs[1].active(), 200);
    }

    #[test]
    fn ties_are_shared_and_exclusions_respected() {
        let bs = vec![
            Backend::for_test("a:1", 1),
            Backend::for_test("b:1", 1),
            Backend::for_test("c:1", 1),
        ];
        let lc = LeastConnections::default();
        let mut counts = [0; 3];
        for _ in 0..300 {
            counts[lc.pick(&bs, &PickContext::bare(1)).unwrap()] += 1;
        }
        assert_eq!(counts, [100, 100, 100]);
        bs[1].set_state(BackendState::Draining, 1);
        bs[2].active.store(50, Relaxed);
        assert_eq!(lc.pick(&bs, &PickContext::bare(1)), Some(0));
        let ctx = PickContext {
            exclude: &[0],
            ..PickContext::bare(1)
        };
        assert_eq!(lc.pick(&bs, &ctx), Some(2));
    }
}
