//! Metric names of the contract. Process-wide series live in the `metrics` registry (the
//! Prometheus exporter's). The per-backend series of the contract (`connections_active`,
//! `connections_total`, `bytes_total`, `messages_total`, `backend_up`) do not: that
//! registry (`metrics-exporter-prometheus` 0.17) cannot remove a series except by its idle
//! timeout, which would also drop a live backend's series that did not change for a while
//! and leave its held handle writing nowhere. They are rendered at scrape time from the
//! backends' own atomics, for every backend object still alive — held by the runtime or by a
//! live connection — so a removed backend's series go when its last connection does.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};

use metrics::{counter, histogram};

use crate::backend::{Backend, BackendState};
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

/// How often histogram samples are folded into their buckets without a scrape.
pub const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Folds the histogram samples recorded since the last scrape or upkeep into their buckets.
/// The exporter keeps every sample (8 bytes each, in blocks) until then, so without this a
/// balancer nobody scrapes would grow by every handshake and plain request it served.
pub fn upkeep() {
    if let Some(h) = HANDLE.get().and_then(|h| h.as_ref()) {
        h.run_upkeep();
    }
}

/// The control thread's task: [`upkeep`] every [`UPKEEP_EVERY`] (what the exporter's own
/// HTTP server would do; this process serves `/metrics` itself).
pub async fn run_upkeep() {
    let mut tick = tokio::time::interval(UPKEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        upkeep();
    }
}

/// Renders the Prometheus text exposition: the registry's series (empty when no recorder
/// could be installed) and the per-backend series of every live backend.
pub fn render() -> String {
    let mut out = HANDLE.get().and_then(|h| h.as_ref()).map(|h| h.render()).unwrap_or_default();
    render_backends(&mut out, crate::clock::now_ms());
    out
}

/// What each family means, for its `# HELP` line (`promtool check metrics` wants one).
fn help(name: &str) -> &'static str {
    match name {
        "switchyard_connections_active" => "Relayed WebSocket connections open now.",
        "switchyard_connections_total" => "Relayed WebSocket connections since start, by how the client spoke.",
        "switchyard_backend_up" => "1 while the backend takes new connections (up and not ejected).",
        "switchyard_backend_state" => "1 for the backend's serving state (up, down, ejected, draining).",
        "switchyard_bytes_total" => "Frame bytes relayed, headers included, by direction.",
        "switchyard_messages_total" => "WebSocket messages relayed, by direction.",
        "switchyard_http_requests_total" => "Plain HTTP answers from backends, by status class and client protocol.",
        "switchyard_health_transitions_total" => "Backend state changes, passive ejections included.",
        "switchyard_backend_protocol_errors_total" => "Connections a backend broke RFC 6455 on (stopped at the edge).",
        "switchyard_custom_load_errors_total" => "Failed custom load reports of a backend.",
        "switchyard_throttled_seconds_total" => "Seconds connections were held back by their message or byte limits.",
        "switchyard_limit_closes_total" => "Connections closed with 1008 for staying over their rate.",
        "switchyard_backend_discovered_from" => "1 for each backend found by DNS discovery, naming its entry.",
        "switchyard_shed_total" => "Connections and requests shed (1013 or 503), by reason.",
        "switchyard_handshake_failures_total" => "Requests the balancer answered itself with an error, by reason.",
        "switchyard_close_codes_total" => "Close codes seen, by who sent them (1006: a peer vanished).",
        "switchyard_config_reloads_total" => "Config reloads, by result.",
        "switchyard_handshake_duration_seconds" => "Client request received to 101 sent.",
        "switchyard_http_request_duration_seconds" => "Plain request received to response head.",
        "switchyard_sticky_total" => "Sticky cookie outcomes.",
        "switchyard_passive_ejections_capped_total" => {
            "Passive ejections refused by max_ejected_percent or for the last available backend."
        }
        "switchyard_rebalance_moves_total" => "Connections moved by rebalancing.",
        "switchyard_rebalance_unreturned_total" => "Rebalance moves whose clients had not come back in the reconnect window.",
        "switchyard_discovery_errors_total" => "DNS discovery rounds that kept the last answer, by reason.",
        "switchyard_discovered_backends" => "Backends the DNS discovery entry's answer in use holds.",
        "switchyard_proxy_protocol_errors_total" => "Connections closed on a proxy_protocol listener before their request.",
        _ => "Switchyard series (see README, Metrics).",
    }
}

/// Gives every family without a `# HELP` line one, before its `# TYPE` line.
pub fn with_help(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 4096);
    let mut last_help: Option<&str> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            last_help = rest.split_whitespace().next();
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split_whitespace().next().unwrap_or("");
            if last_help != Some(name) {
                let _ = writeln!(out, "# HELP {name} {}", help(name));
            }
            last_help = None;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The config file the process runs and a hash of the text it ran from (set at start and
/// by each successful reload), for `switchyard_config_file_matches`.
static RUNNING_CONFIG: Mutex<Option<(std::path::PathBuf, u64)>> = Mutex::new(None);

fn text_hash(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// The config from `path` whose text was `text` now runs.
pub fn config_running(path: &std::path::Path, text: &str) {
    *RUNNING_CONFIG.lock().unwrap_or_else(PoisonError::into_inner) = Some((path.to_path_buf(), text_hash(text.as_bytes())));
}

/// The process-wide gauges of a scrape: admitted connections and the cap, the process's
/// descriptors and their limit, and whether the config file on disk is the one running
/// (an edit not reloaded, or a reload that failed, shows as 0).
pub fn render_process(out: &mut String, admitted: u64, max_connections: u64) {
    let gauge = |out: &mut String, name: &str, help: &str, v: f64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}\n");
    };
    gauge(
        out,
        "switchyard_admitted_connections",
        "Connections admitted now (WebSockets and plain keep-alive connections).",
        admitted as f64,
    );
    gauge(
        out,
        "switchyard_max_connections",
        "limits.max_connections in force.",
        max_connections as f64,
    );
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        gauge(out, "process_open_fds", "Number of open file descriptors.", dir.count() as f64);
    }
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        gauge(
            out,
            "process_max_fds",
            "Maximum number of open file descriptors.",
            lim.rlim_cur as f64,
        );
    }
    let running = RUNNING_CONFIG.lock().unwrap_or_else(PoisonError::into_inner).clone();
    if let Some((path, hash)) = running {
        // A config is small; a file grown past 4 MiB is not the one running either.
        let on_disk = std::fs::read(&path).ok().filter(|b| b.len() <= 4 << 20);
        let matches = on_disk.is_some_and(|b| text_hash(&b) == hash);
        gauge(
            out,
            "switchyard_config_file_matches",
            "1 when the config file on disk is the one running; 0 after an edit not (successfully) reloaded.",
            f64::from(u8::from(matches)),
        );
    }
}

/// Every backend object ever built, weakly: one that upgrades is alive (in the runtime or
/// held by a connection). Pruned at each scrape and whenever the list doubles.
static BACKENDS: Mutex<Vec<Weak<Backend>>> = Mutex::new(Vec::new());

/// Registers a backend's series (they are rendered while it is alive).
pub fn track(b: &Arc<Backend>) {
    let mut all = BACKENDS.lock().unwrap_or_else(PoisonError::into_inner);
    if all.len() >= 64 && all.len().is_power_of_two() {
        all.retain(|w| w.strong_count() > 0);
    }
    all.push(Arc::downgrade(b));
}

/// One backend's values, summed over the objects alive for its labels (a removed backend
/// still draining and its re-added successor are one series, as Prometheus wants).
#[derive(Default)]
struct BackendValues {
    active: u64,
    total: u64,
    total_h2: u64,
    bytes: [u64; 2],
    msgs: [u64; 2],
    up: bool,
    /// By client protocol (`PROTOCOLS`), then status class.
    http: [[u64; 5]; 2],
    transitions: [u64; 4],
    /// Index into [`SERVING_STATES`] of the state shown (a removed object still draining
    /// gives way to its re-added successor).
    serving: Option<usize>,
    protocol_errors: u64,
    custom_load_errors: u64,
    throttled_ms: u64,
    limit_closes: [u64; 3],
    /// The discovery entry it was found by (of the object whose state is shown).
    discovered_from: Option<String>,
}

fn render_backends(out: &mut String, now_ms: u64) {
    let mut values: BTreeMap<(Arc<str>, String), BackendValues> = BTreeMap::new();
    {
        let mut all = BACKENDS.lock().unwrap_or_else(PoisonError::into_inner);
        all.retain(|w| {
            let Some(b) = w.upgrade() else { return false };
            let v = values.entry((b.pool.clone(), b.address.clone())).or_default();
            v.active += b.active.load(Relaxed);
            v.total += b.total.load(Relaxed);
            v.total_h2 += b.total_h2.load(Relaxed);
            v.bytes[0] += b.bytes_c2b.load(Relaxed);
            v.bytes[1] += b.bytes_b2c.load(Relaxed);
            v.msgs[0] += b.msgs_c2b.load(Relaxed);
            v.msgs[1] += b.msgs_b2c.load(Relaxed);
            // Contract: 0 whenever it takes no new connections (down, draining or ejected).
            v.up |= b.state() == BackendState::Up && !b.is_ejected(now_ms);
            let serving = match b.state() {
                BackendState::Draining => 3,
                BackendState::Down => 1,
                BackendState::Up if b.is_ejected(now_ms) => 2,
                BackendState::Up => 0,
            };
            // Of a removed backend still draining and its re-added successor, the
            // successor's state is the one that serves.
            if matches!(v.serving, None | Some(3)) {
                v.serving = Some(serving);
                v.discovered_from = b.discovered_from().map(|n| n.to_string());
            }
            let m = &b.metrics;
            for (sums, counts) in v.http.iter_mut().zip(&m.http) {
                for (sum, c) in sums.iter_mut().zip(counts) {
                    *sum += c.load(Relaxed);
                }
            }
            for (sum, c) in v.transitions.iter_mut().zip(&m.transitions) {
                *sum += c.load(Relaxed);
            }
            v.protocol_errors += m.protocol_errors.load(Relaxed);
            v.custom_load_errors += m.custom_load_errors.load(Relaxed);
            v.throttled_ms += m.throttled_ms.load(Relaxed);
            for (sum, c) in v.limit_closes.iter_mut().zip(&m.limit_closes) {
                *sum += c.load(Relaxed);
            }
            true
        });
    }
    if values.is_empty() {
        return;
    }
    let labels = |(pool, backend): &(Arc<str>, String)| format!("pool=\"{}\",backend=\"{}\"", escape(pool), escape(backend));
    let family = |out: &mut String, name: &str, kind: &str, f: &dyn Fn(&BackendValues) -> u64| {
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (k, v) in &values {
            let _ = writeln!(out, "{name}{{{}}} {}", labels(k), f(v));
        }
        out.push('\n');
    };
    let directions = |out: &mut String, name: &str, f: &dyn Fn(&BackendValues) -> [u64; 2]| {
        let _ = writeln!(out, "# TYPE {name} counter");
        for (k, v) in &values {
            for (d, n) in ["client_to_backend", "backend_to_client"].iter().zip(f(v)) {
                let _ = writeln!(out, "{name}{{{},direction=\"{d}\"}} {n}", labels(k));
            }
        }
        out.push('\n');
    };
    family(out, "switchyard_connections_active", "gauge", &|v| v.active);
    let _ = writeln!(out, "# TYPE switchyard_connections_total counter");
    for (k, v) in &values {
        let by_protocol = [v.total.saturating_sub(v.total_h2), v.total_h2];
        for (protocol, n) in PROTOCOLS.iter().zip(by_protocol) {
            let _ = writeln!(out, "switchyard_connections_total{{{},protocol=\"{protocol}\"}} {n}", labels(k));
        }
    }
    out.push('\n');
    family(out, "switchyard_backend_up", "gauge", &|v| u64::from(v.up));
    let _ = writeln!(out, "# TYPE switchyard_backend_state gauge");
    for (k, v) in &values {
        for (i, state) in SERVING_STATES.iter().enumerate() {
            let _ = writeln!(
                out,
                "switchyard_backend_state{{{},state=\"{state}\"}} {}",
                labels(k),
                u64::from(v.serving == Some(i))
            );
        }
    }
    out.push('\n');
    directions(out, "switchyard_bytes_total", &|v| v.bytes);
    directions(out, "switchyard_messages_total", &|v| v.msgs);
    // Event-driven families: only the label values that counted something.
    let sparse = |out: &mut String, name: &str, extra: &str, values_of: &dyn Fn(&BackendValues) -> Vec<(&'static str, u64)>| {
        let mut lines = String::new();
        for (k, v) in &values {
            for (label, n) in values_of(v).into_iter().filter(|(_, n)| *n > 0) {
                let extra = if extra.is_empty() {
                    String::new()
                } else {
                    format!(",{extra}=\"{label}\"")
                };
                let _ = writeln!(lines, "{name}{{{}{extra}}} {n}", labels(k));
            }
        }
        if !lines.is_empty() {
            let _ = writeln!(out, "# TYPE {name} counter");
            out.push_str(&lines);
            out.push('\n');
        }
    };
    let mut lines = String::new();
    for (k, v) in &values {
        for (protocol, counts) in PROTOCOLS.iter().zip(&v.http) {
            for (class, n) in STATUS_CLASSES.iter().zip(counts).filter(|(_, n)| **n > 0) {
                let _ = writeln!(
                    lines,
                    "switchyard_http_requests_total{{{},status=\"{class}\",protocol=\"{protocol}\"}} {n}",
                    labels(k)
                );
            }
        }
    }
    if !lines.is_empty() {
        out.push_str("# TYPE switchyard_http_requests_total counter\n");
        out.push_str(&lines);
        out.push('\n');
    }
    sparse(out, "switchyard_health_transitions_total", "to", &|v| {
        TRANSITION_STATES.iter().copied().zip(v.transitions).collect()
    });
    sparse(out, "switchyard_backend_protocol_errors_total", "", &|v| {
        vec![("", v.protocol_errors)]
    });
    sparse(out, "switchyard_custom_load_errors_total", "", &|v| {
        vec![("", v.custom_load_errors)]
    });
    // Per pool: the message limits' throttled time and closes.
    let mut pools: BTreeMap<&str, (u64, [u64; 3])> = BTreeMap::new();
    for ((pool, _), v) in &values {
        let p = pools.entry(pool).or_default();
        p.0 += v.throttled_ms;
        for (sum, n) in p.1.iter_mut().zip(v.limit_closes) {
            *sum += n;
        }
    }
    out.push_str("# TYPE switchyard_throttled_seconds_total counter\n");
    for (pool, (ms, _)) in &pools {
        let _ = writeln!(
            out,
            "switchyard_throttled_seconds_total{{pool=\"{}\"}} {}",
            escape(pool),
            *ms as f64 / 1000.0
        );
    }
    out.push('\n');
    let mut lines = String::new();
    for (pool, (_, closes)) in &pools {
        for (reason, n) in LIMIT_REASONS.iter().zip(closes).filter(|(_, n)| **n > 0) {
            let _ = writeln!(
                lines,
                "switchyard_limit_closes_total{{pool=\"{}\",reason=\"{reason}\"}} {n}",
                escape(pool)
            );
        }
    }
    if !lines.is_empty() {
        out.push_str("# TYPE switchyard_limit_closes_total counter\n");
        out.push_str(&lines);
        out.push('\n');
    }
    // An info series per backend found by DNS discovery: which entry it came from.
    let mut lines = String::new();
    for (k, v) in &values {
        if let Some(name) = &v.discovered_from {
            let _ = writeln!(
                lines,
                "switchyard_backend_discovered_from{{{},name=\"{}\"}} 1",
                labels(k),
                escape(name)
            );
        }
    }
    if !lines.is_empty() {
        out.push_str("# TYPE switchyard_backend_discovered_from gauge\n");
        out.push_str(&lines);
        out.push('\n');
    }
}

/// A label value escaped for the text exposition format.
fn escape(v: &str) -> std::borrow::Cow<'_, str> {
    if v.contains(['\\', '"', '\n']) {
        v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n").into()
    } else {
        v.into()
    }
}

/// A backend's event-driven counters, rendered at scrape time like the contract's
/// per-backend series (so they go with the backend too). A family shows only the label
/// values that counted something, as a registry series would appear on first use.
#[derive(Debug, Default)]
pub struct BackendMetrics {
    /// `switchyard_http_requests_total{…,status,protocol}` by client protocol, then status
    /// class (1xx…5xx).
    http: [[AtomicU64; 5]; 2],
    /// `switchyard_health_transitions_total{…,to}` by state (up, down, draining, ejected).
    transitions: [AtomicU64; 4],
    /// `switchyard_backend_protocol_errors_total`.
    protocol_errors: AtomicU64,
    /// `switchyard_custom_load_errors_total`.
    custom_load_errors: AtomicU64,
    /// Milliseconds its connections were throttled by their message limits
    /// (`switchyard_throttled_seconds_total{pool}`, summed over the pool).
    pub throttled_ms: AtomicU64,
    /// Its connections throttled now (the admin API).
    pub throttled_now: AtomicU64,
    /// Connections closed over their rate, by [`crate::relay::LimitReason`]
    /// (`switchyard_limit_closes_total{pool,reason}`).
    pub limit_closes: [AtomicU64; 3],
}

/// `protocol` values: how the client spoke (HTTP/1.1, or HTTP/2 streams).
const PROTOCOLS: [&str; 2] = ["http1", "h2"];
/// Status classes of `switchyard_http_requests_total`.
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// `to` values of `switchyard_health_transitions_total`: `BackendState as usize`, then a
/// passive ejection.
const TRANSITION_STATES: [&str; 4] = ["up", "down", "draining", "ejected"];
/// `reason` values of `switchyard_limit_closes_total`, by [`crate::relay::LimitReason`].
const LIMIT_REASONS: [&str; 3] = ["client_messages", "client_bytes", "client_sum"];
/// `state` values of `switchyard_backend_state`.
const SERVING_STATES: [&str; 4] = ["up", "down", "ejected", "draining"];

impl BackendMetrics {
    /// All zero.
    pub fn new() -> Self {
        BackendMetrics::default()
    }

    /// Counts one plain HTTP answer with `status` from this backend, to a client that
    /// spoke HTTP/2 (`h2`) or HTTP/1.
    pub fn http_request(&self, status: u16, h2: bool) {
        let i = usize::from(status / 100).clamp(1, 5) - 1;
        self.http[usize::from(h2)][i].fetch_add(1, Relaxed);
    }

    /// Counts one health transition to `to`.
    pub fn transition(&self, to: BackendState) {
        self.transitions[to as usize].fetch_add(1, Relaxed);
    }

    /// Counts one passive ejection (as a transition `to="ejected"`).
    pub fn ejection(&self) {
        self.transitions[3].fetch_add(1, Relaxed);
    }

    /// Counts one connection the backend broke RFC 6455 on.
    pub fn protocol_error(&self) {
        self.protocol_errors.fetch_add(1, Relaxed);
    }

    /// Counts one failed or malformed custom-load poll.
    pub fn custom_load_error(&self) {
        self.custom_load_errors.fetch_add(1, Relaxed);
    }
}

/// Who sent a close frame (the `origin` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseOrigin {
    /// The client.
    Client = 0,
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

/// `switchyard_close_codes_total` handles for RFC 6455's own codes (1000–1015) by origin,
/// made on first use once the exporter is installed: every connection's end is counted, and a
/// labelled key costs a formatted code, allocations and a registry lookup each time.
static CLOSE_CODES: [[OnceLock<metrics::Counter>; 3]; 16] = [const { [const { OnceLock::new() }; 3] }; 16];

/// Counts one close frame (once per connection end, never per frame of data).
pub fn close_code(code: u16, origin: CloseOrigin) {
    let make = || counter!("switchyard_close_codes_total", "code" => code.to_string(), "origin" => origin.name());
    let installed = HANDLE.get().is_some_and(Option::is_some);
    match (installed, code.checked_sub(1000).and_then(|i| CLOSE_CODES.get(usize::from(i)))) {
        // Before the exporter exists a handle would count nowhere for good: not kept.
        (true, Some(row)) => row[origin as usize].get_or_init(make).increment(1),
        _ => make().increment(1),
    }
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

/// `switchyard_sticky_total{pool,result}` handle (looked up once per pool and result).
pub fn sticky_counter(pool: &str, result: &'static str) -> metrics::Counter {
    counter!("switchyard_sticky_total", "pool" => pool.to_string(), "result" => result)
}

/// `switchyard_passive_ejections_capped_total{pool}` handle: ejections passive health
/// wanted and the pool's share (or its last available backend) refused. Shown from 0.
pub fn passive_capped_counter(pool: &str) -> metrics::Counter {
    let c = counter!("switchyard_passive_ejections_capped_total", "pool" => pool.to_string());
    c.increment(0);
    c
}

/// Counts one config reload attempt.
pub fn reload(ok: bool) {
    counter!("switchyard_config_reloads_total", "result" => if ok { "ok" } else { "error" }).increment(1);
}

/// Pre-registers the label-free-ish series so `/metrics` shows them from the start.
pub fn describe() {
    for r in [
        "max_connections",
        "rate",
        "no_backend",
        "backend_full",
        "idle",
        "local_resources",
        "per_client",
        "client_table_full",
    ] {
        counter!("switchyard_shed_total", "reason" => r).increment(0);
    }
    for r in ["ok", "error"] {
        counter!("switchyard_config_reloads_total", "result" => r).increment(0);
    }
}

/// Counts a connection closed on a `proxy_protocol` listener before its request: the
/// header was missing, malformed, too long, late, cut short, or came from an untrusted peer.
pub fn proxy_protocol_error(reason: &'static str) {
    counter!("switchyard_proxy_protocol_errors_total", "reason" => reason).increment(1);
}

/// Counts rebalancing moves whose clients did not come back within the reconnect window.
pub fn rebalance_unreturned(pool: &str, n: u64) {
    counter!("switchyard_rebalance_unreturned_total", "pool" => pool.to_string()).increment(n);
}

/// Counts connections closed by the rebalancer.
pub fn rebalance_moves(pool: &str, n: u64) {
    counter!("switchyard_rebalance_moves_total", "pool" => pool.to_string()).increment(n);
}

/// Counts one failed DNS discovery round of entry `name` of `pool`.
pub fn discovery_error(pool: &str, name: &str, reason: &'static str) {
    counter!("switchyard_discovery_errors_total", "pool" => pool.to_string(), "name" => name.to_string(), "reason" => reason).increment(1);
}

/// Sets how many backends entry `name` of `pool` stands for (its last good answer).
pub fn discovered_backends(pool: &str, name: &str, n: usize) {
    metrics::gauge!("switchyard_discovered_backends", "pool" => pool.to_string(), "name" => name.to_string()).set(n as f64);
}

/// Counts one backend stopped at the edge for breaking RFC 6455 (an invalid frame).
pub fn backend_violation(b: &Backend) {
    b.metrics.protocol_error();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_for(address: &str) -> Vec<String> {
        let needle = format!("backend=\"{address}\"");
        render().lines().filter(|l| l.contains(&needle)).map(str::to_string).collect()
    }

    #[test]
    fn a_backend_has_series_while_alive_and_none_after() {
        let b = Backend::for_test("series-test:1", 1);
        b.bytes_c2b.store(7, Relaxed);
        let conn = b.clone(); // a live connection's hold on a removed backend
        let lines = lines_for("series-test:1");
        assert_eq!(lines.len(), 12, "{lines:?}");
        assert!(lines.contains(&"switchyard_backend_up{pool=\"test\",backend=\"series-test:1\"} 1".to_string()));
        assert!(lines
            .iter()
            .any(|l| l.ends_with("direction=\"client_to_backend\"} 7") && l.starts_with("switchyard_bytes_total{")));
        drop(b);
        assert_eq!(lines_for("series-test:1").len(), 12, "kept while a connection holds it");
        conn.set_state(BackendState::Draining, 1);
        assert!(lines_for("series-test:1").contains(&"switchyard_backend_up{pool=\"test\",backend=\"series-test:1\"} 0".to_string()));
        drop(conn);
        assert!(lines_for("series-test:1").is_empty());
    }

    #[test]
    fn event_series_show_what_counted_and_go_with_the_backend() {
        let b = Backend::for_test("event-series:1", 1);
        assert_eq!(lines_for("event-series:1").len(), 12, "nothing counted: no event series");
        b.metrics.http_request(204, false);
        b.metrics.http_request(200, false);
        b.metrics.http_request(503, false);
        b.metrics.http_request(200, true);
        b.metrics.transition(BackendState::Down);
        b.metrics.protocol_error();
        b.metrics.custom_load_error();
        let lines = lines_for("event-series:1");
        let has = |l: &str| lines.iter().any(|x| x == l);
        assert!(
            has("switchyard_http_requests_total{pool=\"test\",backend=\"event-series:1\",status=\"2xx\",protocol=\"http1\"} 2"),
            "{lines:?}"
        );
        assert!(
            has("switchyard_http_requests_total{pool=\"test\",backend=\"event-series:1\",status=\"2xx\",protocol=\"h2\"} 1"),
            "{lines:?}"
        );
        assert!(
            has("switchyard_http_requests_total{pool=\"test\",backend=\"event-series:1\",status=\"5xx\",protocol=\"http1\"} 1"),
            "{lines:?}"
        );
        assert!(
            has("switchyard_health_transitions_total{pool=\"test\",backend=\"event-series:1\",to=\"down\"} 1"),
            "{lines:?}"
        );
        assert!(
            has("switchyard_backend_protocol_errors_total{pool=\"test\",backend=\"event-series:1\"} 1"),
            "{lines:?}"
        );
        assert!(
            has("switchyard_custom_load_errors_total{pool=\"test\",backend=\"event-series:1\"} 1"),
            "{lines:?}"
        );
        assert_eq!(lines.len(), 18, "{lines:?}");
        drop(b);
        assert!(lines_for("event-series:1").is_empty(), "gone with the backend");
    }

    #[test]
    fn the_state_series_says_why_a_backend_takes_no_connections() {
        let b = Backend::for_test("state-series:1", 1);
        let state = |b: &Backend| {
            let _ = b;
            lines_for("state-series:1")
                .into_iter()
                .filter(|l| l.starts_with("switchyard_backend_state{") && l.ends_with(" 1"))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            state(&b),
            vec!["switchyard_backend_state{pool=\"test\",backend=\"state-series:1\",state=\"up\"} 1"]
        );
        b.ejected_until_ms.store(crate::clock::now_ms() + 60_000, Relaxed);
        b.metrics.ejection();
        assert_eq!(
            state(&b),
            vec!["switchyard_backend_state{pool=\"test\",backend=\"state-series:1\",state=\"ejected\"} 1"]
        );
        assert!(lines_for("state-series:1").contains(&"switchyard_backend_up{pool=\"test\",backend=\"state-series:1\"} 0".to_string()));
        assert!(lines_for("state-series:1")
            .contains(&"switchyard_health_transitions_total{pool=\"test\",backend=\"state-series:1\",to=\"ejected\"} 1".to_string()));
        b.set_state(BackendState::Draining, 1);
        assert_eq!(
            state(&b),
            vec!["switchyard_backend_state{pool=\"test\",backend=\"state-series:1\",state=\"draining\"} 1"]
        );
        assert_eq!(
            lines_for("state-series:1")
                .iter()
                .filter(|l| l.starts_with("switchyard_backend_state{"))
                .count(),
            4
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(escape("127.0.0.1:9"), "127.0.0.1:9");
    }
}
