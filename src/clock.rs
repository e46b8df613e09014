//! A cheap monotonic millisecond clock shared by the relay, the balancers and health.

use std::sync::OnceLock;
use std::time::Instant;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// The process epoch (first call wins).
pub fn epoch() -> Instant {
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds since the process epoch; never 0 after the first millisecond is awkward,
/// so callers treat 0 as "unset" only where documented.
pub fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64 + 1
}

/// Converts a process-epoch millisecond stamp back to an `Instant`.
pub fn instant_at(ms: u64) -> Instant {
    epoch() + std::time::Duration::from_millis(ms.saturating_sub(1))
}
