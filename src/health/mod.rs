//! Backend health: passive outcomes of real traffic (here), active checks ([`active`]),
//! backend-reported load ([`load_poll`]), all kept in step with reloads by one
//! [`supervisor`] task that also samples byte rates.
//!
//! Passive: `fall` consecutive failures the backend is responsible for (connect errors,
//! timeouts, a `5xx` or an invalid 101; never a `4xx`, nor a local EMFILE) eject a
//! backend for a back-off that doubles on each ejection (capped); when it ends the backend
//! is picked again, which probes it; one success resets the count and the back-off.

pub mod active;
mod http;
pub mod load_poll;
pub mod supervisor;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::{Backend, BackendState};
use crate::runtime::{Pool, Runtime};

/// First ejection length.
pub const EJECT_BASE_MS: u64 = 5_000;
/// Longest ejection.
pub const EJECT_MAX_MS: u64 = 120_000;
/// Consecutive failures that eject when the pool has no `health_check.fall`.
pub const DEFAULT_FALL: u32 = 3;

/// A real connection got its 101.
pub fn passive_success(b: &Backend) {
    if b.passive_failures.load(Relaxed) != 0 {
        b.passive_failures.store(0, Relaxed);
    }
    if b.ejection_backoff_ms.load(Relaxed) != 0 {
        b.ejection_backoff_ms.store(0, Relaxed);
        tracing::info!(backend = %b.address, pool = %b.pool, "backend answers again after ejection");
    }
}

/// A real connection attempt failed before (or at) its 101 through the backend's fault.
pub fn passive_failure(b: &Backend, pool: &Pool, now_ms: u64) {
    let fall = pool.config.health_check.as_ref().map(|h| h.fall).unwrap_or(DEFAULT_FALL).max(1);
    let n = b.passive_failures.fetch_add(1, Relaxed) + 1;
    if n >= fall && !b.is_ejected(now_ms) {
        let prev = b.ejection_backoff_ms.load(Relaxed);
        let backoff = if prev == 0 { EJECT_BASE_MS } else { (prev * 2).min(EJECT_MAX_MS) };
        b.ejection_backoff_ms.store(backoff, Relaxed);
        b.ejected_until_ms.store(now_ms + backoff, Relaxed);
        b.passive_failures.store(0, Relaxed);
        b.metrics.ejection();
        tracing::warn!(backend = %b.address, pool = %b.pool, failures = n, backoff_ms = backoff, "backend ejected after consecutive failures");
    }
}

/// Starts the active checks and samplers of every pool (on the current runtime): one
/// supervisor task that starts and stops the per-backend tasks as reloads change the pools.
pub fn spawn_all(shared: &Arc<crate::shared::Shared>) {
    tokio::spawn(supervisor::run(shared.clone()));
}

/// The pool of `rt` that holds this very backend (not just one with its address).
pub(crate) fn current_pool(rt: &Runtime, b: &Arc<Backend>) -> Option<Arc<Pool>> {
    let pool = rt.pools.get(&*b.pool)?;
    pool.backends.iter().any(|x| Arc::ptr_eq(x, b)).then(|| pool.clone())
}

/// Waits for the next run of a periodic per-backend task (health check, load poll): a
/// random point of the first interval, then the interval ± 10 %. Returns the backend and
/// its current pool, or `None` once the backend has left the runtime or `interval_of` says
/// its pool no longer wants the task. Holds only a weak reference while it sleeps.
pub(crate) async fn next_run(
    shared: &crate::shared::Shared,
    backend: &std::sync::Weak<Backend>,
    first: &mut bool,
    interval_of: impl Fn(&Pool) -> Option<Duration>,
) -> Option<(Arc<Backend>, Arc<Pool>)> {
    let interval = {
        let b = backend.upgrade()?;
        let rt = shared.runtime.load();
        interval_of(&*current_pool(&rt, &b)?)?
    };
    let wait = if std::mem::take(first) {
        interval.mul_f64(rand::random::<f64>())
    } else {
        jittered(interval)
    };
    tokio::time::sleep(wait).await;
    let b = backend.upgrade()?;
    let pool = current_pool(&shared.runtime.load(), &b)?;
    interval_of(&pool)?;
    Some((b, pool))
}

/// `d` ± 10 %, so the checks of many backends drift apart instead of firing together.
pub(crate) fn jittered(d: Duration) -> Duration {
    d.mul_f64(rand::random_range(0.9..=1.1))
}

/// Counts one health transition in `switchyard_health_transitions_total{pool,backend,to}`.
pub(crate) fn transition_metric(b: &Backend, to: BackendState) {
    b.metrics.transition(to);
}
