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
//!
//! Bounded, in episodes. An episode starts when the pool is out of balance and gets a budget:
//! the excess it found. Its moves never exceed that budget, whether clients come back in
//! 100 ms, in 5 s or never. It ends when the pool is in balance again, when the set of
//! available backends changes (a new imbalance, a new budget), or ten reconnect windows after
//! it began. Within an episode, moves whose clients have not come back yet count as on their
//! way for `rebalance.reconnect_window` (how many came back is estimated from the pool's
//! connection count), so the rebalancer does not close more while they reconnect. When a
//! window ends, the moves whose clients did not come back are counted in
//! `switchyard_rebalance_unreturned_total{pool}`.

use std::collections::{HashMap, VecDeque};
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
/// `in_flight` moves are on their way back: they count in the total the shares are taken of.
pub fn excess(backends: &[Arc<Backend>], pending: &[u64], in_flight: u64, tolerance: f64, now_ms: u64) -> Vec<u64> {
    let live: Vec<u64> = backends.iter().zip(pending).map(|(b, p)| b.active().saturating_sub(*p)).collect();
    let total: u64 = live.iter().sum::<u64>() + in_flight;
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

/// A batch of moves still counted as on its way back.
struct Batch {
    /// When the batch stops counting (ms, process clock).
    until_ms: u64,
    /// Connections closed.
    moves: u64,
    /// The pool's connections just before the batch.
    before: u64,
}

/// One rebalancing episode of a pool.
struct Episode {
    /// Which backends were available (and their weights) when it began.
    signature: Vec<u64>,
    /// Moves it may still make.
    budget: u64,
    /// When it ends at the latest (ms, process clock).
    until_ms: u64,
}

/// Which backends can take connections, and with what weight: a change is a new imbalance.
fn signature(backends: &[Arc<Backend>], now_ms: u64) -> Vec<u64> {
    backends
        .iter()
        .map(|b| {
            if b.is_available(now_ms) || b.is_full() {
                u64::from(b.weight())
            } else {
                0
            }
        })
        .collect()
}

/// Moves of the live batches whose clients have not come back yet: the pool should have
/// `before − moves` connections without returns; what it has above that came back.
fn on_their_way(recent: &VecDeque<Batch>, in_pool: u64) -> u64 {
    let Some(first) = recent.front() else { return 0 };
    let moves: u64 = recent.iter().map(|b| b.moves).sum();
    let without_returns = first.before.saturating_sub(moves);
    moves - in_pool.saturating_sub(without_returns).min(moves)
}

/// Runs forever on the control runtime.
pub async fn run(shared: Arc<Shared>) {
    let mut budget: HashMap<String, f64> = HashMap::new();
    let mut batches: HashMap<String, VecDeque<Batch>> = HashMap::new();
    let mut episodes: HashMap<String, Episode> = HashMap::new();
    loop {
        tokio::time::sleep(TICK).await;
        let rt = shared.runtime.load_full();
        for pool in rt.pools.values() {
            let rb = &pool.config.rebalance;
            if !rb.enabled || pool.config.algorithm == Algorithm::Hash {
                continue;
            }
            let now = clock::now_ms();
            let in_pool = || pool.backends.iter().map(|b| b.active()).sum::<u64>();
            let recent = batches.entry(pool.name.to_string()).or_default();
            while recent.front().is_some_and(|b| b.until_ms <= now) {
                if let Some(b) = recent.pop_front() {
                    let unreturned = b.before.saturating_sub(in_pool()).min(b.moves);
                    crate::metrics::rebalance_unreturned(&pool.name, unreturned);
                }
            }
            let in_flight = on_their_way(recent, in_pool());
            let tokens = budget.entry(pool.name.to_string()).or_insert(0.0);
            let rate = rb.max_moves_per_second.max(1) as f64;
            *tokens = (*tokens + rate * TICK.as_secs_f64()).min(rate);
            if *tokens < 1.0 {
                continue;
            }
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
            // The episode: ended by balance, by a change of available backends, or by time.
            let balanced = excess(&pool.backends, &pending, 0, rb.tolerance, now).iter().all(|&n| n == 0);
            let sig = signature(&pool.backends, now);
            let name = pool.name.to_string();
            if balanced || episodes.get(&name).is_some_and(|e| e.signature != sig || e.until_ms <= now) {
                episodes.remove(&name);
            }
            if balanced {
                continue;
            }
            let ex = excess(&pool.backends, &pending, in_flight, rb.tolerance, now);
            let window_ms = u64::try_from(rb.reconnect_window.as_millis()).unwrap_or(u64::MAX);
            let episode = episodes.entry(name).or_insert_with(|| Episode {
                signature: sig,
                budget: ex.iter().sum(),
                until_ms: now.saturating_add(window_ms.saturating_mul(10)),
            });
            let mut moves: Vec<Arc<ConnShared>> = Vec::new();
            // The most over-loaded first: with few tokens a tick, the excess shrinks evenly.
            let mut order: Vec<(&Arc<Backend>, &u64)> = pool.backends.iter().zip(&ex).collect();
            order.sort_by(|x, y| y.1.cmp(x.1));
            for (b, &n) in order {
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
            let k = (moves.len() as f64).min(tokens.floor()).min(episode.budget as f64) as usize;
            if k == 0 {
                continue;
            }
            moves.truncate(k);
            *tokens -= k as f64;
            episode.budget -= k as u64;
            recent.push_back(Batch {
                until_ms: now.saturating_add(window_ms),
                moves: k as u64,
                before: in_pool(),
            });
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
        assert_eq!(excess(&bs, &[0, 0], 0, 0.1, 1), vec![5, 0]);
        // already asked to close count as gone
        assert_eq!(excess(&bs, &[3, 0], 0, 0.1, 1), vec![3, 0]);
        // within tolerance: nothing
        bs[1].active.store(9, Relaxed);
        assert_eq!(excess(&bs, &[0, 0], 0, 0.1, 1), vec![0, 0]);
        // a down backend has no share
        bs[1].set_state(BackendState::Down, 1);
        bs[1].active.store(0, Relaxed);
        assert_eq!(excess(&bs, &[0, 0], 0, 0.1, 1), vec![0, 0]);
        // weights
        let ws = vec![Backend::for_test("a:1", 1), Backend::for_test("b:1", 3)];
        ws[0].active.store(8, Relaxed);
        assert_eq!(excess(&ws, &[0, 0], 0, 0.0, 1), vec![6, 0]);
    }

    #[test]
    fn moves_on_their_way_back_count_against_the_excess() {
        // 30 connections on two of three backends; the third came up: excess 5 + 5.
        let bs = vec![
            Backend::for_test("a:1", 1),
            Backend::for_test("b:1", 1),
            Backend::for_test("c:1", 1),
        ];
        bs[0].active.store(15, Relaxed);
        bs[1].active.store(15, Relaxed);
        assert_eq!(excess(&bs, &[0, 0, 0], 0, 0.1, 1), vec![5, 5, 0]);
        // Ten closed, their clients not back yet: nothing more to move.
        bs[0].active.store(10, Relaxed);
        bs[1].active.store(10, Relaxed);
        assert_eq!(excess(&bs, &[0, 0, 0], 10, 0.1, 1), vec![0, 0, 0]);
        // Without counting them the rebalancer would chase them (the fault).
        assert_eq!(excess(&bs, &[0, 0, 0], 0, 0.1, 1), vec![3, 3, 0]);
    }

    #[test]
    fn returns_are_estimated_from_the_pool_count() {
        let batch = |moves, before| Batch {
            until_ms: u64::MAX,
            moves,
            before,
        };
        let recent: VecDeque<Batch> = [batch(4, 30), batch(6, 26)].into_iter().collect();
        assert_eq!(on_their_way(&recent, 20), 10, "nobody back");
        assert_eq!(on_their_way(&recent, 24), 6, "four back");
        assert_eq!(on_their_way(&recent, 31), 0, "all back (and one more)");
        assert_eq!(on_their_way(&VecDeque::new(), 31), 0);
    }
}
