//! The one background task that keeps health work in step with the live runtime: every
//! tick it reconciles the checker and poller tasks against `shared.runtime` (a reload may
//! add or remove backends, or turn checks on and off), samples every pool's byte rates
//! about once a second, and notes passive ejections that ended.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::backend::Backend;
use crate::balance::{sample_rates, RateSampler};
use crate::clock;
use crate::config::Algorithm;
use crate::runtime::{Pool, Runtime};
use crate::shared::Shared;

/// How often the runtime is reconciled (bounds how late a reload's changes start).
pub const TICK: Duration = Duration::from_millis(250);
/// How often byte rates are sampled.
const SAMPLE_EVERY_MS: u64 = 1_000;

/// A task working for one backend; aborted when dropped.
#[derive(Debug)]
struct Task {
    /// Keeps the backend's allocation (not the backend) alive, so its address — the map
    /// key — cannot be reused by a new backend while this entry exists.
    backend: Weak<Backend>,
    handle: tokio::task::JoinHandle<()>,
}

impl Drop for Task {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// Per-backend tasks keyed by the backend's address in memory (`Arc::as_ptr`).
type Tasks = HashMap<usize, Task>;

/// Runs forever (until the control runtime stops).
pub async fn run(shared: Arc<Shared>) {
    let mut checkers = Tasks::new();
    let mut pollers = Tasks::new();
    let mut samplers: HashMap<String, RateSampler> = HashMap::new();
    let mut last_sample_ms = 0;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let rt = shared.runtime.load_full();
        reconcile(
            &shared,
            &rt,
            &mut checkers,
            |p| p.config.health_check.is_some(),
            super::active::run,
            super::active::release,
        );
        reconcile(
            &shared,
            &rt,
            &mut pollers,
            |p| p.config.algorithm == Algorithm::CustomLoad,
            super::load_poll::run,
            super::load_poll::release,
        );
        let now = clock::now_ms();
        if now.saturating_sub(last_sample_ms) >= SAMPLE_EVERY_MS {
            last_sample_ms = now;
            sample_all(&rt, &mut samplers, now);
        }
        note_ended_ejections(&rt, now);
    }
}

/// Makes sure exactly one task runs for every backend of the pools `wanted` selects, and
/// none for any other backend (removed by a reload, or its pool no longer wants one).
/// `release` undoes a stopped task's effects on a backend that stays in the runtime.
fn reconcile<F, Fut>(
    shared: &Arc<Shared>,
    rt: &Runtime,
    tasks: &mut Tasks,
    wanted: impl Fn(&Pool) -> bool,
    spawn: F,
    release: impl Fn(&Backend, &Pool),
) where
    F: Fn(Arc<Shared>, Weak<Backend>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut live = HashSet::with_capacity(tasks.len());
    for pool in rt.pools.values().filter(|p| wanted(p)) {
        for b in &pool.backends {
            let key = Arc::as_ptr(b) as usize;
            live.insert(key);
            // A task that ended (it saw a newer runtime than this one) is started again; it
            // ends at once if that runtime really dropped it.
            if tasks.get(&key).is_some_and(|t| !t.handle.is_finished()) {
                continue;
            }
            let handle = tokio::spawn(spawn(shared.clone(), Arc::downgrade(b)));
            tasks.insert(
                key,
                Task {
                    backend: Arc::downgrade(b),
                    handle,
                },
            );
        }
    }
    tasks.retain(|key, task| {
        if live.contains(key) {
            return true;
        }
        if let Some(b) = task.backend.upgrade() {
            if let Some(pool) = super::current_pool(rt, &b) {
                release(&b, &pool);
            }
        }
        false
    });
}

/// One bandwidth-sampler tick for every pool (each keeps its own [`RateSampler`]).
fn sample_all(rt: &Runtime, samplers: &mut HashMap<String, RateSampler>, now_ms: u64) {
    samplers.retain(|name, _| rt.pools.contains_key(name));
    for (name, pool) in &rt.pools {
        let state = samplers.entry(name.clone()).or_default();
        let window_ms = u64::try_from(pool.config.bandwidth_window.as_millis()).unwrap_or(u64::MAX);
        sample_rates(&pool.backends, state, now_ms, window_ms);
    }
}

/// Logs the end of each passive ejection once (the backend is simply picked again, which
/// probes it; `passive_success` then resets the back-off).
fn note_ended_ejections(rt: &Runtime, now_ms: u64) {
    for b in rt.pools.values().flat_map(|p| p.backends.iter()) {
        if b.end_ejection(now_ms) {
            tracing::info!(backend = %b.address, pool = %b.pool, "ejection ended: backend is picked again (slow start from the end)");
        }
    }
}
