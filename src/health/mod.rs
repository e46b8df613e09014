//! Backend health: passive outcomes of real traffic (here), active checks ([`active`]),
//! backend-reported load ([`load_poll`]), all kept in step with reloads by one
//! [`supervisor`] task that also samples byte rates.
//!
//! Passive outcomes are decided in [`crate::blame`] and counted in [`crate::passive`].

pub mod active;
mod http;
pub mod load_poll;
pub mod supervisor;

use std::sync::Arc;
use std::time::Duration;

use crate::backend::{Backend, BackendState};
use crate::runtime::{Pool, Runtime};

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
