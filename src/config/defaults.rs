//! Every default of the config schema, in one place (README's config reference mirrors it).

use std::time::Duration;

/// `limits.max_connections`.
pub const MAX_CONNECTIONS: u64 = 100_000;
/// `limits.max_connections_per_second` (0 = unlimited).
pub const MAX_CONNECTIONS_PER_SECOND: u64 = 5_000;
/// `limits.handshake_timeout`.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// `limits.max_request_header_bytes`.
pub const MAX_REQUEST_HEADER_BYTES: usize = 16 * 1024;
/// `limits.max_message_bytes`.
pub const MAX_MESSAGE_BYTES: u64 = 16 * 1024 * 1024;
/// `limits.idle_timeout`.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// `limits.ping_interval`.
pub const PING_INTERVAL: Duration = Duration::from_secs(30);
/// `limits.ping_timeout`.
pub const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// `limits.drain_timeout`.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// `limits.tls_handshake_timeout`.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// `limits.request_timeout` (plain HTTP: wait for the response head).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// `limits.max_request_body_bytes` (plain HTTP).
pub const MAX_REQUEST_BODY_BYTES: u64 = 16 * 1024 * 1024;
/// `limits.keepalive_timeout` (plain HTTP: idle client keep-alive connection).
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);
/// `limits.tcp_keepalive` (idle time before the first TCP keepalive probe).
pub const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// `limits.max_connections_per_client` (0 = no limit).
pub const MAX_CONNECTIONS_PER_CLIENT: u64 = 0;
/// `limits.max_connections_per_client_per_second` (0 = no limit).
pub const MAX_CONNECTIONS_PER_CLIENT_PER_SECOND: u64 = 0;
/// `pools.*.passive_health.max_ejected_percent`.
pub const MAX_EJECTED_PERCENT: u32 = 50;
/// `pools.*.passive_health.count_5xx`.
pub const COUNT_5XX: bool = false;
/// `pools.*.passive_health.consecutive_5xx`.
pub const CONSECUTIVE_5XX: u32 = 5;
/// `shedding.close_code`.
pub const SHED_CLOSE_CODE: u16 = 1013;
/// `shedding.retry_hint`.
pub const RETRY_HINT: Duration = Duration::from_secs(5);
/// `pools.*.backends[].weight`.
pub const WEIGHT: u32 = 1;
/// `pools.*.backends[].refresh` (DNS discovery).
pub const DISCOVERY_REFRESH: Duration = Duration::from_secs(5);
/// Shortest `pools.*.backends[].refresh` accepted.
pub const DISCOVERY_REFRESH_MIN: Duration = Duration::from_millis(100);
/// `resolver.timeout`.
pub const RESOLVER_TIMEOUT: Duration = Duration::from_secs(2);
/// Port of a `resolver.servers` entry written without one.
pub const RESOLVER_PORT: u16 = 53;
/// `pools.*.connect_timeout`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// `pools.*.max_attempts`.
pub const MAX_ATTEMPTS: u32 = 3;
/// `pools.*.bandwidth_window`.
pub const BANDWIDTH_WINDOW: Duration = Duration::from_secs(10);
/// `pools.*.health_check.interval`.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// `pools.*.health_check.timeout`.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(1);
/// `pools.*.health_check.rise`.
pub const CHECK_RISE: u32 = 2;
/// `pools.*.health_check.fall`.
pub const CHECK_FALL: u32 = 3;
/// `pools.*.health_check.path`.
pub const CHECK_PATH: &str = "/";
/// `pools.*.custom_load.path`.
pub const CUSTOM_LOAD_PATH: &str = "/load";
/// `pools.*.custom_load.interval`.
pub const CUSTOM_LOAD_INTERVAL: Duration = Duration::from_secs(2);
/// `pools.*.rebalance.max_moves_per_second`.
pub const REBALANCE_MOVES_PER_SECOND: u32 = 10;
/// `pools.*.rebalance.reconnect_window`.
pub const REBALANCE_RECONNECT_WINDOW: Duration = Duration::from_secs(10);
/// `pools.*.rebalance.tolerance`.
pub const REBALANCE_TOLERANCE: f64 = 0.1;
/// `process.workers` (0 = one per core).
pub const WORKERS: usize = 0;
/// `process.access_log`.
pub const ACCESS_LOG: bool = true;

/// `limits.client_limit_grace`: how long a connection may stay over its message rate
/// before `client_limit_action: close` closes it.
pub const CLIENT_LIMIT_GRACE: Duration = Duration::from_secs(10);
