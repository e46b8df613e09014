//! Metric names of the contract, and handles held per backend so the relay never looks a
//! label set up per frame (it adds to these handles when it flushes its local counters).

use std::sync::OnceLock;

use metrics::{counter, gauge, histogram, Counter, Gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder once per process (later calls return the same handle).
/// Must run before any backend is built, or that backend's handles are no-ops.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let buckets = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full("switchyard_handshake_duration_seconds".into()), &buckets)
                .ok()?
                .set_buckets_for_metric(Matcher::Full("switchyard_http_request_duration_seconds".into()), &buckets)
                .ok()?;
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            Some(handle)
        })
        .clone()
}

/// Renders the Prometheus text exposition (empty when no recorder could be installed).
pub fn render() -> String {
    HANDLE.get().and_then(|h| h.as_ref()).map(|h| h.render()).unwrap_or_default()
}

/// Handles for one backend's labelled series.
#[derive(Debug, Clone)]
pub struct BackendMetrics {
    /// `switchyard_connections_active{pool,backend}`
    pub active: Gauge,
    /// `switchyard_connections_total{pool,backend}`
    pub total: Counter,
    /// `switchyard_bytes_total{...,direction="client_to_backend"}`
    pub bytes_c2b: Counter,
    /// `switchyard_bytes_total{...,direction="backend_to_client"}`
    pub bytes_b2c: Counter,
    /// `switchyard_messages_total{...,direction="client_to_backend"}`
    pub msgs_c2b: Counter,
    /// `switchyard_messages_total{...,direction="backend_to_client"}`
    pub msgs_b2c: Counter,
    /// `switchyard_backend_up{pool,backend}`
    pub up: Gauge,
    /// `switchyard_http_requests_total{pool,backend,status}` by status class (1xx…5xx),
    /// registered on first use so WebSocket-only backends get no such series.
    http: [std::sync::OnceLock<Counter>; 5],
}

impl BackendMetrics {
    /// Registers (or finds) the series of `backend` in `pool`.
    pub fn new(pool: &str, backend: &str) -> Self {
        let (p, b) = (pool.to_string(), backend.to_string());
        let dir = |name: &'static str, d: &'static str| counter!(name, "pool" => p.clone(), "backend" => b.clone(), "direction" => d);
        BackendMetrics {
            active: gauge!("switchyard_connections_active", "pool" => p.clone(), "backend" => b.clone()),
            total: counter!("switchyard_connections_total", "pool" => p.clone(), "backend" => b.clone()),
            bytes_c2b: dir("switchyard_bytes_total", "client_to_backend"),
            bytes_b2c: dir("switchyard_bytes_total", "backend_to_client"),
            msgs_c2b: dir("switchyard_messages_total", "client_to_backend"),
            msgs_b2c: dir("switchyard_messages_total", "backend_to_client"),
            up: gauge!("switchyard_backend_up", "pool" => p.clone(), "backend" => b.clone()),
            http: Default::default(),
        }
    }

    /// Counts one plain HTTP answer with `status` from this backend (a label lookup only the
    /// first time each class is seen).
    pub fn http_request(&self, pool: &str, backend: &str, status: u16) {
        const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
        let i = usize::from(status / 100).clamp(1, 5) - 1;
        self.http[i]
            .get_or_init(|| {
                counter!("switchyard_http_requests_total", "pool" => pool.to_string(), "backend" => backend.to_string(), "status" => CLASSES[i])
            })
            .increment(1);
    }
}

/// Who sent a close frame (the `origin` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseOrigin {
    /// The client.
    Client,
    /// The backend.
    Backend,
    /// The balancer itself.
    Proxy,
}

impl CloseOrigin {
    /// Label value.
    pub fn name(self) -> &'static str {
        match self {
            CloseOrigin::Client => "client",
            CloseOrigin::Backend => "backend",
            CloseOrigin::Proxy => "proxy",
        }
    }
}

/// Counts one close frame (once per connection end, never per frame of data).
pub fn close_code(code: u16, origin: CloseOrigin) {
    counter!("switchyard_close_codes_total", "code" => code.to_string(), "origin" => origin.name()).increment(1);
}

/// Counts one shed connection.
pub fn shed(reason: &'static str) {
    counter!("switchyard_shed_total", "reason" => reason).increment(1);
}

/// Counts one refused handshake.
pub fn handshake_failure(reason: &'static str) {
    counter!("switchyard_handshake_failures_total", "reason" => reason).increment(1);
}

/// The handshake-duration histogram of a pool (client request received → 101 sent).
pub fn handshake_histogram(pool: &str) -> metrics::Histogram {
    histogram!("switchyard_handshake_duration_seconds", "pool" => pool.to_string())
}

/// `switchyard_http_request_duration_seconds{pool}` handle (request received → response head).
pub fn request_histogram(pool: &str) -> metrics::Histogram {
    histogram!("switchyard_http_request_duration_seconds", "pool" => pool.to_string())
}

/// `switchyard_sticky_total{pool,result}`.
pub fn sticky(pool: &str, result: &'static str) {
    counter!("switchyard_sticky_total", "pool" => pool.to_string(), "result" => result).increment(1);
}

/// Counts one config reload attempt.
pub fn reload(ok: bool) {
    counter!("switchyard_config_reloads_total", "result" => if ok { "ok" } else { "error" }).increment(1);
}

/// Pre-registers the label-free-ish series so `/metrics` shows them from the start.
pub fn describe() {
    for r in ["max_connections", "rate", "no_backend", "backend_full", "idle", "local_resources"] {
        counter!("switchyard_shed_total", "reason" => r).increment(0);
    }
    for r in ["ok", "error"] {
        counter!("switchyard_config_reloads_total", "result" => r).increment(0);
    }
}

/// Counts connections closed by the rebalancer.
pub fn rebalance_moves(pool: &str, n: u64) {
    counter!("switchyard_rebalance_moves_total", "pool" => pool.to_string()).increment(n);
}

/// Counts one backend stopped at the edge for breaking RFC 6455 (an invalid frame).
pub fn backend_violation(b: &crate::backend::Backend) {
    counter!("switchyard_backend_protocol_errors_total", "pool" => b.pool.to_string(), "backend" => b.address.clone()).increment(1);
}
