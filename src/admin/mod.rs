//! The admin listener (hyper): `/metrics`, `/healthz`, `/api/*` and the dashboard.

use std::sync::Arc;

use crate::server::Shared;

/// Starts serving the admin API on `listener` (on the current runtime).
pub fn spawn(shared: Arc<Shared>, listener: std::net::TcpListener) {
    let _ = (shared, listener);
}
