//! YAML → typed, validated [`Config`]. Pure: no sockets, no files but the one read.
//!
//! Every default lives in [`defaults`]; every problem found is reported at once, each
//! with its line and column ([`ConfigError`]).

mod backends;
mod cidr;
mod decode;
pub mod defaults;
mod pools;
mod units;
mod validate;
mod yaml;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use cidr::{any_contains, Cidr};
pub use decode::parse;
pub use units::{parse_duration, parse_size};

/// One problem in a config file, with the 1-based position of the offending node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub col: usize,
    /// What is wrong, in one sentence.
    pub message: String,
    /// An optional hint, e.g. "did you mean `algorithm`?".
    pub hint: Option<String>,
}

impl ConfigError {
    /// Renders `FILE:LINE:COL: message (hint)`.
    pub fn render(&self, file: &str) -> String {
        match &self.hint {
            Some(h) => format!("{file}:{}:{}: {} ({h})", self.line, self.col, self.message),
            None => format!("{file}:{}:{}: {}", self.line, self.col, self.message),
        }
    }
}

/// Reads and parses a config file; I/O errors are reported at 1:1.
pub fn load(path: &std::path::Path) -> Result<Config, Vec<ConfigError>> {
    read(path).map(|(_, cfg)| cfg)
}

/// Like [`load`], also returning the text that was parsed (read once).
pub fn read(path: &std::path::Path) -> Result<(String, Config), Vec<ConfigError>> {
    let text = read_text(path).map_err(|e| {
        vec![ConfigError {
            line: 1,
            col: 1,
            message: format!("cannot read {}: {e}", path.display()),
            hint: None,
        }]
    })?;
    let cfg = parse_file(path, &text)?;
    Ok((text, cfg))
}

/// Parses `text` as the contents of the config file at `path` (relative file names in it
/// are resolved from the file's folder).
pub fn parse_file(path: &std::path::Path, text: &str) -> Result<Config, Vec<ConfigError>> {
    let base = path.parent().map(PathBuf::from).unwrap_or_default();
    parse(text, &base)
}

/// Largest config file read (a 20,000-backend config is about 1 MiB).
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Reads a config file safely: only a regular file (a FIFO or device at the path would
/// block the reader or never end), opened non-blocking, at most [`MAX_FILE_BYTES`].
pub fn read_text(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let not_regular = || std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file");
    if !std::fs::metadata(path)?.is_file() {
        return Err(not_regular());
    }
    // O_NONBLOCK: if a FIFO is swapped in between the check and the open, the open (and
    // the reads) return at once instead of waiting for a writer.
    let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)?;
    if !f.metadata()?.is_file() {
        return Err(not_regular());
    }
    let mut bytes = Vec::new();
    f.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {MAX_FILE_BYTES} bytes"),
        ));
    }
    String::from_utf8(bytes).map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8"))
}

/// The whole configuration of a running balancer.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Client-facing listeners, names unique.
    pub listeners: Vec<ListenerConfig>,
    /// Admin/metrics/dashboard listener; absent = none.
    pub admin: Option<AdminConfig>,
    /// Backend pools by name.
    pub pools: BTreeMap<String, PoolConfig>,
    /// Process-wide limits and timers.
    pub limits: Limits,
    /// How shed connections are answered.
    pub shedding: Shedding,
    /// Process settings (threads, access log).
    pub process: ProcessConfig,
    /// Where DNS discovery of backends asks.
    pub resolver: ResolverConfig,
}

/// `resolver:`: the name servers DNS discovery asks (`backends[].discover`, `srv`).
#[derive(Debug, Clone, PartialEq)]
pub struct ResolverConfig {
    /// Name servers, asked over UDP (TCP when an answer is truncated); `None` = the
    /// system's `/etc/resolv.conf`.
    pub servers: Option<Vec<SocketAddr>>,
    /// Timeout of one query to one server.
    pub timeout: Duration,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        Self {
            servers: None,
            timeout: defaults::RESOLVER_TIMEOUT,
        }
    }
}

/// A client-facing listener.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    /// Unique name (used in logs and metrics).
    pub name: String,
    /// Address to bind.
    pub bind: SocketAddr,
    /// TLS termination, if any.
    pub tls: Option<ListenerTls>,
    /// Routes in order; first match wins.
    pub routes: Vec<Route>,
    /// Allowed `Origin` values; `None` = any.
    pub allowed_origins: Option<Vec<String>>,
    /// Every connection starts with a PROXY protocol header (v1 or v2), accepted only from
    /// `limits.trusted_proxies`.
    pub proxy_protocol: bool,
    /// A TLS listener offers HTTP/2 (ALPN `h2`) besides HTTP/1.1.
    pub http2: bool,
    /// Streams one HTTP/2 connection may have open at once.
    pub max_concurrent_streams: u32,
}

/// Certificates a TLS listener serves (`tls: {cert, key}` is one entry with no SNI names).
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerTls {
    /// Certificates; the first one with no `sni` (or the first one) is the default.
    pub certs: Vec<CertConfig>,
}

/// One certificate chain and its key, optionally selected by SNI names.
#[derive(Debug, Clone, PartialEq)]
pub struct CertConfig {
    /// PEM certificate chain (resolved relative to the config file).
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, RSA or EC).
    pub key: PathBuf,
    /// Server names that select this certificate.
    pub sni: Vec<String>,
}

/// A route: when `matcher` matches, the request goes to `pool`.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Conditions, all of which must hold; all `None` = catch-all.
    pub matcher: RouteMatch,
    /// Name of the pool (validated to exist).
    pub pool: String,
    /// What happens to plain HTTP requests (no `Upgrade: websocket`) on this route.
    pub http: HttpMode,
    /// `routes[].limits`: this route's message limits where they differ from `limits:`.
    pub limits: MessageOverride,
}

impl Route {
    /// What tells this route from the listener's others across a reload: its conditions
    /// and pool (a hash), whatever its position.
    pub fn key(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        let m = &self.matcher;
        (&m.path_prefix, &m.host, m.header.as_ref().map(|h| (&h.name, &h.value)), &self.pool).hash(&mut h);
        h.finish()
    }
}

/// What a connection may send and receive once open (`limits:`, each key overridable per
/// route): token buckets per connection, refilled per millisecond; 0 = off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageLimits {
    /// Messages client → backend per second.
    pub client_messages_per_second: u64,
    /// Messages a client may send at once (0: one second's worth).
    pub client_message_burst: u64,
    /// Payload bytes client → backend per second.
    pub client_bytes_per_second: u64,
    /// Payload bytes a client may send at once (0: one second's worth).
    pub client_bytes_burst: u64,
    /// Messages backend → client per second (burst: one second's worth).
    pub backend_messages_per_second: u64,
    /// Messages client → backend per second summed over every connection of one client
    /// address (the per-client table's address), burst one second's worth. Global only.
    pub max_messages_per_second_per_client: u64,
    /// What happens to a client over its rate.
    pub client_limit_action: LimitAction,
    /// With [`LimitAction::Close`]: how long a connection may stay over its rate.
    pub client_limit_grace: Duration,
}

impl MessageLimits {
    /// Any limit on.
    pub fn any(&self) -> bool {
        self.client_messages_per_second != 0
            || self.client_bytes_per_second != 0
            || self.backend_messages_per_second != 0
            || self.max_messages_per_second_per_client != 0
    }

    /// These limits with a route's overrides.
    pub fn with(mut self, o: &MessageOverride) -> MessageLimits {
        let pick = |v: Option<u64>, d: u64| v.unwrap_or(d);
        self.client_messages_per_second = pick(o.client_messages_per_second, self.client_messages_per_second);
        self.client_message_burst = pick(o.client_message_burst, self.client_message_burst);
        self.client_bytes_per_second = pick(o.client_bytes_per_second, self.client_bytes_per_second);
        self.client_bytes_burst = pick(o.client_bytes_burst, self.client_bytes_burst);
        self.backend_messages_per_second = pick(o.backend_messages_per_second, self.backend_messages_per_second);
        self.client_limit_action = o.client_limit_action.unwrap_or(self.client_limit_action);
        self.client_limit_grace = o.client_limit_grace.unwrap_or(self.client_limit_grace);
        self
    }
}

impl Default for MessageLimits {
    fn default() -> Self {
        MessageLimits {
            client_messages_per_second: 0,
            client_message_burst: 0,
            client_bytes_per_second: 0,
            client_bytes_burst: 0,
            backend_messages_per_second: 0,
            max_messages_per_second_per_client: 0,
            client_limit_action: LimitAction::Throttle,
            client_limit_grace: defaults::CLIENT_LIMIT_GRACE,
        }
    }
}

/// `client_limit_action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LimitAction {
    /// Stop reading the client until tokens return (nothing lost).
    #[default]
    Throttle,
    /// Throttle, and close with 1008 a connection over its rate for the grace.
    Close,
}

/// A route's `limits:`: the keys it sets (`None`: as under `limits:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MessageOverride {
    /// See [`MessageLimits`].
    pub client_messages_per_second: Option<u64>,
    /// See [`MessageLimits`].
    pub client_message_burst: Option<u64>,
    /// See [`MessageLimits`].
    pub client_bytes_per_second: Option<u64>,
    /// See [`MessageLimits`].
    pub client_bytes_burst: Option<u64>,
    /// See [`MessageLimits`].
    pub backend_messages_per_second: Option<u64>,
    /// See [`MessageLimits`].
    pub client_limit_action: Option<LimitAction>,
    /// See [`MessageLimits`].
    pub client_limit_grace: Option<Duration>,
}

/// `routes[].http`: plain HTTP on a WebSocket listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HttpMode {
    /// Forwarded to the route's pool (keep-alive, bodies streamed).
    #[default]
    Proxy,
    /// Refused with `400`, as for a malformed upgrade.
    Reject,
}

/// Route conditions.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RouteMatch {
    /// Request path must start with this.
    pub path_prefix: Option<String>,
    /// `Host` (without port) must equal this, case-insensitively.
    pub host: Option<String>,
    /// A header (name case-insensitive) must have exactly this value.
    pub header: Option<HeaderMatch>,
}

/// A header condition of a route.
#[derive(Debug, Clone, PartialEq)]
pub struct HeaderMatch {
    /// Header name.
    pub name: String,
    /// Exact value.
    pub value: String,
}

/// Admin listener.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    /// Address to bind.
    pub bind: SocketAddr,
    /// Host names (lower case, optionally `name:port`) accepted in `Host` besides IP
    /// literals and `localhost`: the defence against DNS rebinding.
    pub hosts: Vec<String>,
    /// Bearer token every admin request needs (but `GET /healthz`, and `/metrics` with
    /// `public_metrics`); from `token` or the file `token_file`. `None` = no authentication.
    pub token: Option<String>,
    /// `/metrics` answers without the token.
    pub public_metrics: bool,
    /// A non-loopback `bind` without a token is allowed.
    pub insecure: bool,
}

/// The balancing algorithms of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Smooth weighted round robin.
    RoundRobin,
    /// Fewest active connections per weight.
    LeastConnections,
    /// Least bytes/s EWMA per weight.
    LeastBandwidth,
    /// Peak-EWMA handshake latency × (active + 1).
    LeastResponseTime,
    /// Two random choices, less loaded wins.
    PowerOfTwo,
    /// Consistent hashing, optionally with bounded loads.
    Hash,
    /// Load reported by the backends themselves.
    CustomLoad,
    /// Weighted random.
    Random,
}

impl Algorithm {
    /// Every algorithm with its config name.
    pub const ALL: [(&'static str, Algorithm); 8] = [
        ("round_robin", Algorithm::RoundRobin),
        ("least_connections", Algorithm::LeastConnections),
        ("least_bandwidth", Algorithm::LeastBandwidth),
        ("least_response_time", Algorithm::LeastResponseTime),
        ("power_of_two", Algorithm::PowerOfTwo),
        ("hash", Algorithm::Hash),
        ("custom_load", Algorithm::CustomLoad),
        ("random", Algorithm::Random),
    ];

    /// The config name.
    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(_, a)| *a == self).map(|(n, _)| *n).unwrap_or("?")
    }
}

/// A pool of interchangeable backends.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    /// How a backend is picked.
    pub algorithm: Algorithm,
    /// Hash settings (only with `algorithm: hash`).
    pub hash: Option<HashConfig>,
    /// Backends; never empty.
    pub backends: Vec<BackendConfig>,
    /// Active health checks; `None` = passive only.
    pub health_check: Option<HealthCheckConfig>,
    /// Ramp for a new or recovered backend's share; `None` = none.
    pub slow_start: Option<Duration>,
    /// Polling of backend-reported load (only with `algorithm: custom_load`).
    pub custom_load: Option<CustomLoadConfig>,
    /// EWMA window of `least_bandwidth` (and the bytes/s shown in the admin API).
    pub bandwidth_window: Duration,
    /// Closing of connections on over-loaded backends when the spread is uneven.
    pub rebalance: RebalanceConfig,
    /// TCP connect timeout (+ backend 101) per attempt.
    pub connect_timeout: Duration,
    /// How many backends are tried for one client before giving up.
    pub max_attempts: u32,
    /// Cookie-based stickiness; `None` = off.
    pub sticky: Option<StickyConfig>,
    /// How far passive health may go on this pool's real traffic.
    pub passive_health: PassiveHealthConfig,
}

/// `passive_health:` settings: what real traffic may do to a backend's standing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassiveHealthConfig {
    /// Most of the pool (percent of its backends) passively ejected at once; never the last
    /// available backend whatever the share. 0 = passive ejection off.
    pub max_ejected_percent: u32,
    /// Count the application's `5xx` answers against the backend.
    pub count_5xx: bool,
    /// Consecutive `5xx` answers that eject (with `count_5xx`).
    pub consecutive_5xx: u32,
}

impl Default for PassiveHealthConfig {
    fn default() -> Self {
        PassiveHealthConfig {
            max_ejected_percent: defaults::MAX_EJECTED_PERCENT,
            count_5xx: defaults::COUNT_5XX,
            consecutive_5xx: defaults::CONSECUTIVE_5XX,
        }
    }
}

/// Where the hash key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// The client's IP address (`client_addr`: the peer, or what a trusted proxy names).
    ClientIp,
    /// A request header.
    Header(String),
    /// A cookie.
    Cookie(String),
    /// A query-string parameter.
    Query(String),
    /// The request path (without query).
    Path,
    /// The N-th segment of the path, counting from 1 (`/a/b/c`: 2 is `b`).
    PathSegment(usize),
}

/// `sticky:` settings: a cookie set by the balancer pins a client to a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StickyConfig {
    /// Cookie name.
    pub cookie: String,
    /// Keys the opaque cookie value, so every instance with the same config agrees
    /// (required: a default would let clients forge cookies).
    pub secret: String,
}

/// `hash:` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct HashConfig {
    /// Key source.
    pub key: HashKey,
    /// Bounded-load factor c (> 1.0); `None` = plain consistent hashing.
    pub bounded_load: Option<f64>,
}

/// One backend, or one entry of backends found by DNS (`discover`).
#[derive(Debug, Clone, PartialEq)]
pub struct BackendConfig {
    /// `host:port` as written (also the backend's label in metrics and the admin API); for
    /// an `srv` entry the SRV name. A backend found by discovery has its `IP:port` here.
    pub address: String,
    /// Relative share, ≥ 1.
    pub weight: u32,
    /// Per-backend connection cap; `None` = unlimited.
    pub max_connections: Option<u64>,
    /// `wss://` to this backend, if set.
    pub tls: Option<BackendTls>,
    /// `Some`: this entry is not a backend but stands for every backend DNS finds; its other
    /// settings apply to each of them.
    pub discover: Option<Discover>,
    /// For a backend found by discovery: the entry it came from as written (the `address` of a
    /// `discover: dns` entry, or the `srv` name); `None` for a configured backend.
    pub discovered_from: Option<String>,
    /// Each connection to it starts with a PROXY protocol header carrying the client.
    pub proxy_protocol: Option<ProxyProtocolVersion>,
}

/// How a backend entry finds its backends in DNS.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Discover {
    /// `address: NAME:PORT` with `discover: dns`: every A and AAAA record of `name`, at `port`.
    Hosts {
        /// The host name asked for.
        name: String,
        /// The port of every backend found.
        port: u16,
        /// How often DNS is asked again.
        refresh: Duration,
    },
    /// `srv: NAME`: every SRV record of `name` (port and weight from the record), each
    /// target's A and AAAA records.
    Srv {
        /// The SRV name asked for (e.g. `_ws._tcp.chat.example.com`).
        name: String,
        /// How often DNS is asked again.
        refresh: Duration,
    },
}

impl Discover {
    /// The name asked for (its label in metrics and the admin API).
    pub fn name(&self) -> &str {
        match self {
            Discover::Hosts { name, .. } | Discover::Srv { name, .. } => name,
        }
    }

    /// Do `self` and `other` ask the same question (whatever their `refresh`)?
    pub fn same_query(&self, other: &Discover) -> bool {
        match (self, other) {
            (Discover::Hosts { name: a, port: p, .. }, Discover::Hosts { name: b, port: q, .. }) => a == b && p == q,
            (Discover::Srv { name: a, .. }, Discover::Srv { name: b, .. }) => a == b,
            _ => false,
        }
    }

    /// How often DNS is asked again.
    pub fn refresh(&self) -> Duration {
        match self {
            Discover::Hosts { refresh, .. } | Discover::Srv { refresh, .. } => *refresh,
        }
    }

    /// `dns` or `srv`.
    pub fn kind(&self) -> &'static str {
        match self {
            Discover::Hosts { .. } => "dns",
            Discover::Srv { .. } => "srv",
        }
    }

    /// The name a discovered backend's TLS certificate is checked against by default: the
    /// host name, or the SRV name without its `_service._proto.` labels.
    pub fn tls_name(&self) -> &str {
        match self {
            Discover::Hosts { name, .. } => name,
            Discover::Srv { name, .. } => {
                let mut rest = name.as_str();
                while let Some((label, tail)) = rest.split_once('.') {
                    if !label.starts_with('_') {
                        break;
                    }
                    rest = tail;
                }
                rest
            }
        }
    }
}

/// The PROXY protocol version the balancer sends to a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProtocolVersion {
    /// The binary header (haproxy.org proxy-protocol.txt §2.2).
    V2,
}

/// TLS to a backend.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BackendTls {
    /// PEM CA bundle to trust instead of the built-in roots.
    pub ca: Option<PathBuf>,
    /// Name to verify (and send as SNI); default = host part of the address.
    pub server_name: Option<String>,
    /// Skip verification (logged as a warning at start).
    pub insecure_skip_verify: bool,
}

/// Kind of active check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckKind {
    /// TCP connect.
    Tcp,
    /// `GET path`, 2xx = healthy.
    Http,
    /// Upgrade on `path`, ping/pong, close 1000.
    WebSocket,
}

/// `health_check:` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheckConfig {
    /// Kind.
    pub kind: CheckKind,
    /// Path for http and websocket checks.
    pub path: String,
    /// Interval between checks of one backend.
    pub interval: Duration,
    /// Timeout of one check.
    pub timeout: Duration,
    /// Consecutive successes to mark up.
    pub rise: u32,
    /// Consecutive failures to mark down.
    pub fall: u32,
}

/// `custom_load:` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomLoadConfig {
    /// Path polled with GET on each backend.
    pub path: String,
    /// Poll interval; a report older than 3 intervals is stale.
    pub interval: Duration,
}

/// `rebalance:` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RebalanceConfig {
    /// Off by default.
    pub enabled: bool,
    /// Upper bound on closes (1012) per second for this pool.
    pub max_moves_per_second: u32,
    /// Allowed relative excess over the target share before moving (e.g. 0.1 = 10 %).
    pub tolerance: f64,
    /// How long a move counts as on its way to the backends below their share: the excess
    /// is computed with moves this recent counted there, so clients that reconnect late or
    /// never do not make the rebalancer close more.
    pub reconnect_window: Duration,
}

/// `limits:`.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Whole-process cap on client connections.
    pub max_connections: u64,
    /// New connections per second (token bucket, burst = one second's worth); 0 = unlimited.
    pub max_connections_per_second: u64,
    /// The client must send its whole request head by then.
    pub handshake_timeout: Duration,
    /// Largest accepted request head.
    pub max_request_header_bytes: usize,
    /// Largest message (sum of its frames); 0 = unlimited.
    pub max_message_bytes: u64,
    /// No data frames either way for this long: close 1001; `None` = never.
    pub idle_timeout: Option<Duration>,
    /// Proxy pings the client this often; `None` = never.
    pub ping_interval: Option<Duration>,
    /// No pong within this after a ping: close.
    pub ping_timeout: Duration,
    /// Spread of closes on shutdown, drain and removal.
    pub drain_timeout: Duration,
    /// TLS handshake must finish by then.
    pub tls_handshake_timeout: Duration,
    /// Plain HTTP: the backend's response head must arrive by then (`504` if not).
    pub request_timeout: Duration,
    /// Plain HTTP: largest request body (`413` over it).
    pub max_request_body_bytes: u64,
    /// Plain HTTP: an idle keep-alive client connection is closed after this.
    pub keepalive_timeout: Duration,
    /// TCP keepalive on client and backend sockets (idle time before the first probe);
    /// `None` = off. A peer host that vanished without a reset is found within about
    /// twice this.
    pub tcp_keepalive: Option<Duration>,
    /// Proxy pings the backend of a relayed connection when it has been silent this long
    /// (a frozen backend process is found: the client gets 1011); `None` = never.
    pub backend_ping_interval: Option<Duration>,
    /// Live connections per client (IPv4 address or IPv6 /64); 0 = no limit.
    pub max_connections_per_client: u64,
    /// New connections per second per client (token bucket, burst = one second's worth);
    /// 0 = no limit.
    pub max_connections_per_client_per_second: u64,
    /// Peers whose `X-Forwarded-For` and PROXY protocol header are believed.
    pub trusted_proxies: Vec<Cidr>,
    /// Message and bandwidth limits of open connections.
    pub messages: MessageLimits,
}

/// `shedding:`.
#[derive(Debug, Clone, PartialEq)]
pub struct Shedding {
    /// Close code sent to shed clients.
    pub close_code: u16,
    /// Mean retry hint carried in the close reason (jittered ±30 %).
    pub retry_hint: Duration,
    /// At the connection ceiling, close the longest-idle connection to admit a new one.
    pub evict_idle: bool,
}

/// `process:` (Switchyard extension).
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessConfig {
    /// Worker threads serving connections; 0 = one per core.
    pub workers: usize,
    /// One log line per finished connection.
    pub access_log: bool,
}

impl Default for RebalanceConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            max_moves_per_second: defaults::REBALANCE_MOVES_PER_SECOND,
            tolerance: defaults::REBALANCE_TOLERANCE,
            reconnect_window: defaults::REBALANCE_RECONNECT_WINDOW,
        }
    }
}

impl Default for CustomLoadConfig {
    fn default() -> Self {
        Self {
            path: defaults::CUSTOM_LOAD_PATH.to_string(),
            interval: defaults::CUSTOM_LOAD_INTERVAL,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: defaults::MAX_CONNECTIONS,
            max_connections_per_second: defaults::MAX_CONNECTIONS_PER_SECOND,
            handshake_timeout: defaults::HANDSHAKE_TIMEOUT,
            max_request_header_bytes: defaults::MAX_REQUEST_HEADER_BYTES,
            max_message_bytes: defaults::MAX_MESSAGE_BYTES,
            idle_timeout: Some(defaults::IDLE_TIMEOUT),
            ping_interval: Some(defaults::PING_INTERVAL),
            ping_timeout: defaults::PING_TIMEOUT,
            drain_timeout: defaults::DRAIN_TIMEOUT,
            tls_handshake_timeout: defaults::TLS_HANDSHAKE_TIMEOUT,
            request_timeout: defaults::REQUEST_TIMEOUT,
            max_request_body_bytes: defaults::MAX_REQUEST_BODY_BYTES,
            keepalive_timeout: defaults::KEEPALIVE_TIMEOUT,
            tcp_keepalive: Some(defaults::TCP_KEEPALIVE),
            backend_ping_interval: None,
            max_connections_per_client: defaults::MAX_CONNECTIONS_PER_CLIENT,
            max_connections_per_client_per_second: defaults::MAX_CONNECTIONS_PER_CLIENT_PER_SECOND,
            trusted_proxies: Vec::new(),
            messages: MessageLimits::default(),
        }
    }
}

impl Default for Shedding {
    fn default() -> Self {
        Self {
            close_code: defaults::SHED_CLOSE_CODE,
            retry_hint: defaults::RETRY_HINT,
            evict_idle: false,
        }
    }
}

impl Default for ProcessConfig {
    fn default() -> Self {
        Self {
            workers: defaults::WORKERS,
            access_log: defaults::ACCESS_LOG,
        }
    }
}
