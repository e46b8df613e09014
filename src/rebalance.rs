//! Rebalancing of long-lived connections. When a backend comes up (added, recovered,
//! undrained) the connections stay piled on the old ones; for pools with
//! `rebalance.enabled`, this task closes a measured fraction of the connections on
//! over-loaded backends with 1012, rate-limited and spread, so that reconnecting clients
//! land where the algorithm now sends them.
//!
//! Target share of backend i: `total × w_i / Σw` over available backends (effective weights,
//! so slow start is honoured). A backend is over-loaded when its connections (minus those
//! already asked to close) exceed `target × (1 + tolerance)`; only the excess is moved.
//! Hash pools are skipped: their clients would hash back to the same backend.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::Backend;
use crate::clock;
use crate::config::Algorithm;
use crate::conns::{ConnShared, ConnTable};
use crate::shared::Shared;
use crate::ws::CloseCode;

/// How often the spread is looked at.
const TICK: Duration = Duration::from_millis(250);

/// How many connections each backend should shed now (by index), before the rate limit.
pub fn excess(backends: &[Arc<Backend>], pending: &[u64], tolerance: f64, now_ms: u64) -> Vec<u64> {
    let live: Vec<u64> = backends.iter().zip(pending).map(|(b, p)| b.active().saturating_sub(*p)).collect();
    let total: u64 = live.iter().sum();
    let weights: Vec<f64> = backends
        .iter()
        .map(|b| {
            if b.is_available(now_ms) || b.is_full() {
                b.effective_weight(now_ms)
            } else {
                0.0
            }
        })
        .collect();
    let wsum: f64 = weights.iter().sum();
    if total == 0 || wsum <= 0.0 {
        return vec![0; backends.len()];
    }
    live.iter()
        .zip(&weights)
        .map(|(&n, &w)| {
            let target = total as f64 * w / wsum;
            if (n as f64) > target * (1.0 + tolerance) && n as f64 - target >= 1.0 {
                (n as f64 - target.ceil()).max(0.0) as u64
            } else {
                0
            }
        })
        .collect()
}

/// Runs forever on the control runtime.
pub async fn run(shared: Arc<Shared>) {
    let mut budget: HashMap<String, f64> = HashMap::new();
    loop {
        tokio::time::sleep(TICK).await;
        let rt = shared.runtime.load_full();
        for pool in rt.pools.values() {
            let rb = &pool.config.rebalance;
            if !rb.enabled || pool.config.algorithm == Algorithm::Hash {
                continue;
            }
            let tokens = budget.entry(pool.name.to_string()).or_insert(0.0);
            let rate = rb.max_moves_per_second.max(1) as f64;
            *tokens = (*tokens + rate * TICK.as_secs_f64()).min(rate);
            if *tokens < 1.0 {
                continue;
            }
            let now = clock::now_ms();
            let conns = shared.conns.select(|c| *c.pool == *pool.name);
            let pending: Vec<u64> = pool
                .backends
                .iter()
                .map(|b| {
                    conns
                        .iter()
                        .filter(|c| Arc::ptr_eq(&c.backend, b) && c.close_request().is_some())
                        .count() as u64
                })
                .collect();
            let ex = excess(&pool.backends, &pending, rb.tolerance, now);
            let mut moves: Vec<Arc<ConnShared>> = Vec::new();
            for (b, &n) in pool.backends.iter().zip(&ex) {
                if n == 0 {
                    continue;
                }
                let mut on_b: Vec<_> = conns
                    .iter()
                    .filter(|c| Arc::ptr_eq(&c.backend, b) && c.close_request().is_none())
                    .cloned()
                    .collect();
                // Move the most recently active ones last: idle connections first.
                on_b.sort_by_key(|c| c.last_data_ms.load(std::sync::atomic::Ordering::Relaxed));
                moves.extend(on_b.into_iter().take(n as usize));
            }
            let k = (moves.len() as f64).min(tokens.floor()) as usize;
            if k == 0 {
                continue;
            }
            moves.truncate(k);
            *tokens -= k as f64;
            crate::metrics::rebalance_moves(&pool.name, k as u64);
            tracing::info!(pool = %pool.name, moves = k, "rebalancing: closing connections on over-loaded backends");
            // Spread over the next tick so the reconnects do not arrive together.
            ConnTable::spread_close(&moves, now, TICK.as_millis() as u64, CloseCode::ServiceRestart.code());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendState;
    use std::sync::atomic::Ordering::Relaxed;

    #[test]
    fn excess_is_what_is_over_the_weighted_share() {
        let bs = vec![Backend::for_test("a:1", 1), Backend::for_test("b:1", 1)];
        bs[0].active.store(10, Relaxed);
        assert_eq!(excess(&bs, &[0, 0], 0.1, 1), vec![5, 0]);
        // already asked to close count as gone
        assert_eq!(excess(&bs, &[3, 0], 0.1, 1), vec![3, 0]);
        // within tolerance: nothing
        bs[1].active.store(9, Relaxed);
        assert_eq!(excess(&bs, &[0, 0], 0.1, 1), vec![0, 0]);
        // a down backend has no share
        bs[1].set_state(BackendState::Down, 1);
        bs[1].active.store(0, Relaxed);
        assert_eq!(excess(&bs, &[0, 0], 0.1, 1), vec![0, 0]);
        // weights
        let ws = vec![Backend::for_test("a:1", 1), Backend::for_test("b:1", 3)];
        ws[0].active.store(8, Relaxed);
        assert_eq!(excess(&ws, &[0, 0], 0.0, 1), vec![6, 0]);
    }
}
