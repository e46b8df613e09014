//! Marked YAML tree → typed `Config`, collecting every problem.
//!
//! Each section is decoded by hand (no serde) so that every error keeps the position of
//! the node it is about, and decoding goes on after an error: one run of `switchyard
//! check` lists every problem of the file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use super::validate::{check_address, check_binds, did_you_mean, Ctx, Fields};
use super::yaml::{parse_tree, Node, NodeKind};
use super::*;

const TOP_KEYS: &[&str] = &["listeners", "admin", "pools", "limits", "shedding", "process"];
const LISTENER_KEYS: &[&str] = &["name", "bind", "tls", "routes", "allowed_origins"];
const LIMITS_KEYS: &[&str] = &[
    "max_connections",
    "max_connections_per_second",
    "handshake_timeout",
    "max_request_header_bytes",
    "max_message_bytes",
    "idle_timeout",
    "ping_interval",
    "ping_timeout",
    "drain_timeout",
    "tls_handshake_timeout",
];
/// Close codes a peer must never send (RFC 6455 §7.4.1).
const RESERVED_CLOSE_CODES: [u64; 4] = [1004, 1005, 1006, 1015];

/// Parses and validates a whole config; `base` resolves relative file paths (TLS).
pub fn parse(text: &str, base: &Path) -> Result<Config, Vec<ConfigError>> {
    let root = match parse_tree(text) {
        Ok(Some(root)) if !matches!(root.kind, NodeKind::Null) => root,
        Ok(_) => {
            let message = "the config is empty; it needs at least `listeners` and `pools`";
            return Err(vec![ConfigError {
                line: 1,
                col: 1,
                message: message.into(),
                hint: None,
            }]);
        }
        Err(errors) => return Err(sorted(errors)),
    };
    if !matches!(root.kind, NodeKind::Map(_)) {
        let message = format!(
            "the config must be a mapping with `listeners` and `pools`, found {}",
            root.describe()
        );
        return Err(vec![ConfigError {
            line: 1,
            col: 1,
            message,
            hint: None,
        }]);
    }
    let mut ctx = Ctx::default();
    let config = decode_config(&mut ctx, &root, base);
    match config {
        Some(config) if ctx.errors.is_empty() => Ok(config),
        _ if ctx.errors.is_empty() => Err(vec![root.error("invalid config")]),
        _ => Err(sorted(ctx.errors)),
    }
}

fn sorted(mut errors: Vec<ConfigError>) -> Vec<ConfigError> {
    errors.sort_by_key(|e| (e.line, e.col));
    errors
}

/// Overwrites `slot` when a value was read.
fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
    }
}

/// An optional setting: absent → `Some(None)`, present but invalid → `None` (already
/// reported), valid → `Some(Some(v))`.
fn optional<T>(read: Option<Option<T>>) -> Option<Option<T>> {
    read.map_or(Some(None), |v| v.map(Some))
}

/// Resolves a configured file path against the config file's directory.
fn resolve(base: &Path, path: String) -> std::path::PathBuf {
    base.join(path)
}

fn decode_config(ctx: &mut Ctx, root: &Node, base: &Path) -> Option<Config> {
    let f = ctx.fields(root, "the config", TOP_KEYS)?;
    let mut pool_refs = Vec::new();
    let mut binds = Vec::new();
    let listeners = ctx
        .required(&f, "listeners", "the config")
        .and_then(|n| decode_listeners(ctx, n, base, &mut pool_refs, &mut binds));
    let admin = f.get("admin").map(|n| decode_admin(ctx, n, &mut binds));
    let pools_node = ctx.required(&f, "pools", "the config");
    let pools = pools_node.and_then(|n| decode_pools(ctx, n, base));
    let limits = f.get("limits").map_or_else(Limits::default, |n| decode_limits(ctx, n));
    let shedding = f.get("shedding").map_or_else(Shedding::default, |n| decode_shedding(ctx, n));
    let process = f.get("process").map_or_else(ProcessConfig::default, |n| decode_process(ctx, n));

    check_binds(ctx, &mut binds);
    if let Some(pools_node) = pools_node {
        let defined = pool_names(pools_node);
        for (name, node) in pool_refs {
            if !defined.contains(&name) {
                let hint = did_you_mean(&name, defined.iter().map(String::as_str))
                    .or_else(|| (!defined.is_empty()).then(|| format!("defined pools: {}", defined.join(", "))));
                ctx.error_hint(node, format!("route sends to pool `{name}`, which is not defined"), hint);
            }
        }
    }
    Some(Config {
        listeners: listeners?,
        admin: admin.flatten(),
        pools: pools?,
        limits,
        shedding,
        process,
    })
}

fn bind<'a>(ctx: &mut Ctx, node: &'a Node, what: &str, binds: &mut Vec<(SocketAddr, &'a Node)>) -> Option<SocketAddr> {
    let text = ctx.string(node, what)?;
    match text.parse::<SocketAddr>() {
        Ok(addr) => {
            binds.push((addr, node));
            Some(addr)
        }
        Err(_) => {
            let hint = Some("write IP:port, e.g. `127.0.0.1:8080`, `0.0.0.0:443` or `[::1]:8080`".to_string());
            ctx.error_hint(node, format!("{what} `{text}` is not an IP:port address"), hint);
            None
        }
    }
}

fn decode_admin<'a>(ctx: &mut Ctx, node: &'a Node, binds: &mut Vec<(SocketAddr, &'a Node)>) -> Option<AdminConfig> {
    let f = ctx.fields(node, "`admin`", &["bind"])?;
    let addr = ctx
        .required(&f, "bind", "`admin`")
        .and_then(|n| bind(ctx, n, "`admin.bind`", binds))?;
    Some(AdminConfig { bind: addr })
}

fn decode_listeners<'a>(
    ctx: &mut Ctx,
    node: &'a Node,
    base: &Path,
    pool_refs: &mut Vec<(String, &'a Node)>,
    binds: &mut Vec<(SocketAddr, &'a Node)>,
) -> Option<Vec<ListenerConfig>> {
    let items = ctx.seq(node, "`listeners`")?;
    if items.is_empty() {
        ctx.error(node, "`listeners` must list at least one listener");
        return None;
    }
    let mut names: Vec<(String, usize)> = Vec::new();
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let what = format!("listeners[{i}]");
        let Some(f) = ctx.fields(item, &what, LISTENER_KEYS) else {
            continue;
        };
        let name_node = ctx.required(&f, "name", &what);
        let name = name_node.and_then(|n| ctx.name(n, &format!("{what}.name")));
        if let (Some(name), Some(node)) = (&name, name_node) {
            match names.iter().find(|(n, _)| n == name) {
                Some((_, line)) => ctx.error(node, format!("listener name `{name}` is already used on line {line}")),
                None => names.push((name.clone(), node.line)),
            }
        }
        let addr = ctx
            .required(&f, "bind", &what)
            .and_then(|n| bind(ctx, n, &format!("{what}.bind"), binds));
        let tls = f.get("tls").map(|n| decode_listener_tls(ctx, n, &format!("{what}.tls"), base));
        let routes = ctx
            .required(&f, "routes", &what)
            .and_then(|n| decode_routes(ctx, n, &what, pool_refs));
        let origins = f.get("allowed_origins").map(|n| ctx.strings(n, &format!("{what}.allowed_origins")));
        if let (Some(name), Some(bind), Some(routes)) = (name, addr, routes) {
            let (Some(tls), Some(allowed_origins)) = (optional(tls), optional(origins)) else {
                continue;
            };
            out.push(ListenerConfig {
                name,
                bind,
                tls,
                routes,
                allowed_origins,
            });
        }
    }
    (out.len() == items.len()).then_some(out)
}

fn decode_listener_tls(ctx: &mut Ctx, node: &Node, what: &str, base: &Path) -> Option<ListenerTls> {
    let f = ctx.fields(node, what, &["cert", "key", "certs"])?;
    let Some(certs_node) = f.get("certs") else {
        return Some(ListenerTls {
            certs: vec![decode_cert(ctx, &f, what, base)?],
        });
    };
    if let Some(key) = f.key("cert").or_else(|| f.key("key")) {
        ctx.error(key, format!("{what}: use either `cert`/`key` or a list of `certs`, not both"));
    }
    let items = ctx.seq(certs_node, &format!("{what}.certs"))?;
    if items.is_empty() {
        ctx.error(certs_node, format!("{what}.certs must list at least one certificate"));
        return None;
    }
    let mut certs = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let what = format!("{what}.certs[{i}]");
        let Some(f) = ctx.fields(item, &what, &["cert", "key", "sni"]) else {
            continue;
        };
        let sni = f.get("sni").map(|n| ctx.strings(n, &format!("{what}.sni")));
        if let (Some(mut cert), Some(sni)) = (decode_cert(ctx, &f, &what, base), sni.unwrap_or(Some(Vec::new()))) {
            cert.sni = sni;
            certs.push(cert);
        }
    }
    (certs.len() == items.len()).then_some(ListenerTls { certs })
}

fn decode_cert(ctx: &mut Ctx, f: &Fields, what: &str, base: &Path) -> Option<CertConfig> {
    let cert = ctx.required(f, "cert", what).and_then(|n| ctx.name(n, &format!("{what}.cert")));
    let key = ctx.required(f, "key", what).and_then(|n| ctx.name(n, &format!("{what}.key")));
    Some(CertConfig {
        cert: resolve(base, cert?),
        key: resolve(base, key?),
        sni: Vec::new(),
    })
}

fn decode_routes<'a>(ctx: &mut Ctx, node: &'a Node, listener: &str, pool_refs: &mut Vec<(String, &'a Node)>) -> Option<Vec<Route>> {
    let items = ctx.seq(node, &format!("{listener}.routes"))?;
    if items.is_empty() {
        ctx.error(node, format!("{listener}.routes must list at least one route"));
        return None;
    }
    let mut routes = Vec::new();
    let mut catch_all: Option<usize> = None;
    for (i, item) in items.iter().enumerate() {
        let what = format!("{listener}.routes[{i}]");
        let Some(f) = ctx.fields(item, &what, &["match", "pool"]) else {
            continue;
        };
        if let Some(line) = catch_all {
            ctx.error(
                item,
                format!("{what} is unreachable: the route on line {line} has no `match` and catches all"),
            );
        }
        let pool_node = ctx.required(&f, "pool", &what);
        let pool = pool_node.and_then(|n| ctx.name(n, &format!("{what}.pool")));
        if let (Some(pool), Some(node)) = (&pool, pool_node) {
            pool_refs.push((pool.clone(), node));
        }
        let matcher = match f.get("match") {
            Some(n) => decode_match(ctx, n, &format!("{what}.match")),
            None => Some(RouteMatch::default()),
        };
        if matcher.as_ref().is_some_and(|m| *m == RouteMatch::default()) && catch_all.is_none() {
            catch_all = Some(item.line);
        }
        if let (Some(matcher), Some(pool)) = (matcher, pool) {
            routes.push(Route { matcher, pool });
        }
    }
    (routes.len() == items.len()).then_some(routes)
}

fn decode_match(ctx: &mut Ctx, node: &Node, what: &str) -> Option<RouteMatch> {
    let f = ctx.fields(node, what, &["path_prefix", "host", "header"])?;
    let mut ok = true;
    let mut m = RouteMatch::default();
    if let Some(n) = f.get("path_prefix") {
        m.path_prefix = ctx.name(n, &format!("{what}.path_prefix"));
        match &m.path_prefix {
            Some(p) if !p.starts_with('/') => ctx.error(n, format!("{what}.path_prefix `{p}` must start with `/`")),
            Some(_) => {}
            None => ok = false,
        }
    }
    if let Some(n) = f.get("host") {
        m.host = ctx.name(n, &format!("{what}.host"));
        ok &= m.host.is_some();
    }
    if let Some(n) = f.get("header") {
        let what = format!("{what}.header");
        let h = ctx.fields(n, &what, &["name", "value"]);
        let name = h
            .as_ref()
            .and_then(|h| ctx.required(h, "name", &what))
            .and_then(|n| ctx.name(n, &what));
        let value = h
            .as_ref()
            .and_then(|h| ctx.required(h, "value", &what))
            .and_then(|n| ctx.string(n, &what));
        match (name, value) {
            (Some(name), Some(value)) => m.header = Some(HeaderMatch { name, value }),
            _ => ok = false,
        }
    }
    ok.then_some(m)
}

fn decode_limits(ctx: &mut Ctx, node: &Node) -> Limits {
    let mut l = Limits::default();
    let Some(f) = ctx.fields(node, "`limits`", LIMITS_KEYS) else {
        return l;
    };
    let get = |key: &str| f.get(key).map(|n| (n, format!("`limits.{key}`")));
    if let Some((n, w)) = get("max_connections") {
        set(&mut l.max_connections, ctx.int(n, &w, 1, u64::MAX));
    }
    if let Some((n, w)) = get("max_connections_per_second") {
        set(&mut l.max_connections_per_second, ctx.int(n, &w, 0, u64::MAX));
    }
    if let Some((n, w)) = get("handshake_timeout") {
        set(&mut l.handshake_timeout, ctx.positive_duration(n, &w));
    }
    if let Some((n, w)) = get("max_request_header_bytes") {
        match ctx.size(n, &w) {
            Some(v @ 1024..=1_048_576) => l.max_request_header_bytes = v as usize,
            Some(v) => ctx.error(n, format!("{w} must be between 1KiB and 1MiB, found {v} bytes")),
            None => {}
        }
    }
    if let Some((n, w)) = get("max_message_bytes") {
        set(&mut l.max_message_bytes, ctx.size(n, &w));
    }
    if let Some((n, w)) = get("idle_timeout") {
        set(&mut l.idle_timeout, ctx.optional_duration(n, &w));
    }
    if let Some((n, w)) = get("ping_interval") {
        set(&mut l.ping_interval, ctx.optional_duration(n, &w));
    }
    if let Some((n, w)) = get("ping_timeout") {
        set(&mut l.ping_timeout, ctx.positive_duration(n, &w));
    }
    if let Some((n, w)) = get("drain_timeout") {
        set(&mut l.drain_timeout, ctx.duration(n, &w));
    }
    if let Some((n, w)) = get("tls_handshake_timeout") {
        set(&mut l.tls_handshake_timeout, ctx.positive_duration(n, &w));
    }
    l
}

fn decode_shedding(ctx: &mut Ctx, node: &Node) -> Shedding {
    let mut s = Shedding::default();
    let Some(f) = ctx.fields(node, "`shedding`", &["close_code", "retry_hint", "evict_idle"]) else {
        return s;
    };
    if let Some(n) = f.get("close_code") {
        match ctx.int(n, "`shedding.close_code`", 1000, 4999) {
            Some(code) if RESERVED_CLOSE_CODES.contains(&code) => ctx.error(
                n,
                format!("close code {code} is reserved and may not be sent (RFC 6455 §7.4.1); 1013 means try again later"),
            ),
            // In range 1000..=4999, so it fits.
            Some(code) => s.close_code = code as u16,
            None => {}
        }
    }
    if let Some(n) = f.get("retry_hint") {
        set(&mut s.retry_hint, ctx.duration(n, "`shedding.retry_hint`"));
    }
    if let Some(n) = f.get("evict_idle") {
        set(&mut s.evict_idle, ctx.bool(n, "`shedding.evict_idle`"));
    }
    s
}

fn decode_process(ctx: &mut Ctx, node: &Node) -> ProcessConfig {
    let mut p = ProcessConfig::default();
    let Some(f) = ctx.fields(node, "`process`", &["workers", "access_log"]) else {
        return p;
    };
    if let Some(n) = f.get("workers") {
        let max = usize::MAX as u64;
        set(
            &mut p.workers,
            ctx.int(n, "`process.workers`", 0, max).and_then(|w| usize::try_from(w).ok()),
        );
    }
    if let Some(n) = f.get("access_log") {
        set(&mut p.access_log, ctx.bool(n, "`process.access_log`"));
    }
    p
}

const POOL_KEYS: &[&str] = &[
    "algorithm",
    "hash",
    "backends",
    "health_check",
    "slow_start",
    "custom_load",
    "bandwidth_window",
    "rebalance",
    "connect_timeout",
    "max_attempts",
];
const CHECK_KINDS: [(&str, CheckKind); 3] = [
    ("tcp", CheckKind::Tcp),
    ("http", CheckKind::Http),
    ("websocket", CheckKind::WebSocket),
];

/// The names of the pools as written, for route checks (even when a pool is invalid).
fn pool_names(node: &Node) -> Vec<String> {
    match &node.kind {
        NodeKind::Map(pairs) => pairs.iter().filter_map(|(k, _)| k.as_str().map(String::from)).collect(),
        _ => Vec::new(),
    }
}

fn decode_pools(ctx: &mut Ctx, node: &Node, base: &Path) -> Option<BTreeMap<String, PoolConfig>> {
    let NodeKind::Map(pairs) = &node.kind else {
        ctx.error(
            node,
            format!("`pools` must be a mapping of pool names to pools, found {}", node.describe()),
        );
        return None;
    };
    if pairs.is_empty() {
        ctx.error(node, "`pools` must define at least one pool");
        return None;
    }
    let mut pools = BTreeMap::new();
    for (key, value) in pairs {
        let name = ctx.name(key, "a pool name");
        let pool = decode_pool(ctx, value, name.as_deref().unwrap_or("?"), base);
        if let (Some(name), Some(pool)) = (name, pool) {
            pools.insert(name, pool);
        }
    }
    (pools.len() == pairs.len()).then_some(pools)
}

fn decode_pool(ctx: &mut Ctx, node: &Node, name: &str, base: &Path) -> Option<PoolConfig> {
    let what = format!("pools.{name}");
    let f = ctx.fields(node, &what, POOL_KEYS)?;
    let algorithm = match f.get("algorithm") {
        Some(n) => ctx.choice(n, "algorithm", &Algorithm::ALL),
        None => Some(Algorithm::LeastConnections),
    };
    let hash = only_with(ctx, &f, "hash", algorithm, Algorithm::Hash).map(|n| decode_hash(ctx, n, &what));
    let custom = only_with(ctx, &f, "custom_load", algorithm, Algorithm::CustomLoad).map(|n| decode_custom_load(ctx, n, &what));
    let backends = ctx
        .required(&f, "backends", &what)
        .and_then(|n| decode_backends(ctx, n, &what, base));
    let health_check = f.get("health_check").map(|n| decode_health_check(ctx, n, &what));
    let mut pool = PoolConfig {
        algorithm: algorithm?,
        hash: None,
        backends: Vec::new(),
        health_check: None,
        slow_start: None,
        custom_load: None,
        bandwidth_window: defaults::BANDWIDTH_WINDOW,
        rebalance: RebalanceConfig::default(),
        connect_timeout: defaults::CONNECT_TIMEOUT,
        max_attempts: defaults::MAX_ATTEMPTS,
    };
    if let Some(n) = f.get("slow_start") {
        set(&mut pool.slow_start, ctx.optional_duration(n, &format!("{what}.slow_start")));
    }
    if let Some(n) = f.get("bandwidth_window") {
        set(
            &mut pool.bandwidth_window,
            ctx.positive_duration(n, &format!("{what}.bandwidth_window")),
        );
    }
    if let Some(n) = f.get("rebalance") {
        set(&mut pool.rebalance, decode_rebalance(ctx, n, &what));
    }
    if let Some(n) = f.get("connect_timeout") {
        set(
            &mut pool.connect_timeout,
            ctx.positive_duration(n, &format!("{what}.connect_timeout")),
        );
    }
    if let Some(n) = f.get("max_attempts") {
        set(&mut pool.max_attempts, ctx.u32(n, &format!("{what}.max_attempts"), 1));
    }
    // An algorithm that needs its section gets the defaults when it is absent.
    pool.hash = match hash {
        Some(h) => Some(h?),
        None if pool.algorithm == Algorithm::Hash => Some(HashConfig {
            key: HashKey::ClientIp,
            bounded_load: None,
        }),
        None => None,
    };
    pool.custom_load = match custom {
        Some(c) => Some(c?),
        None if pool.algorithm == Algorithm::CustomLoad => Some(CustomLoadConfig::default()),
        None => None,
    };
    pool.health_check = optional(health_check)?;
    pool.backends = backends?;
    Some(pool)
}

/// The `key` section, reporting it when the pool's algorithm does not use it.
fn only_with<'a>(ctx: &mut Ctx, f: &Fields<'a>, key: &str, algo: Option<Algorithm>, needs: Algorithm) -> Option<&'a Node> {
    let node = f.get(key)?;
    if let (Some(algo), Some(key_node)) = (algo, f.key(key)) {
        if algo != needs {
            let msg = format!(
                "`{key}` only applies to algorithm `{}`; this pool uses `{}`",
                needs.name(),
                algo.name()
            );
            ctx.error(key_node, msg);
        }
    }
    Some(node)
}

fn decode_hash(ctx: &mut Ctx, node: &Node, pool: &str) -> Option<HashConfig> {
    let what = format!("{pool}.hash");
    let f = ctx.fields(node, &what, &["key", "bounded_load"])?;
    let key = match f.get("key") {
        None => Some(HashKey::ClientIp),
        Some(n) => ctx.string(n, &format!("{what}.key")).and_then(|text| match hash_key(&text) {
            Ok(key) => Some(key),
            Err((message, hint)) => {
                ctx.error_hint(n, message, hint);
                None
            }
        }),
    };
    let bounded_load = match f.get("bounded_load") {
        None => Some(None),
        Some(n) => match ctx.float(n, &format!("{what}.bounded_load")) {
            Some(c) if c > 1.0 => Some(Some(c)),
            Some(c) => {
                ctx.error(n, format!("{what}.bounded_load must be greater than 1.0 (e.g. 1.25), found {c}"));
                None
            }
            None => None,
        },
    };
    Some(HashConfig {
        key: key?,
        bounded_load: bounded_load?,
    })
}

fn hash_key(text: &str) -> Result<HashKey, (String, Option<String>)> {
    let forms = ["client_ip", "path", "header:NAME", "cookie:NAME", "query:NAME"];
    if let Some((source, name)) = text.split_once(':') {
        let make: Option<fn(String) -> HashKey> = match source {
            "header" => Some(HashKey::Header),
            "cookie" => Some(HashKey::Cookie),
            "query" => Some(HashKey::Query),
            _ => None,
        };
        return match make {
            Some(_) if name.trim().is_empty() => Err((format!("hash key `{text}` needs a name after `{source}:`"), None)),
            Some(make) => Ok(make(name.to_string())),
            None => {
                let hint = did_you_mean(source, ["header", "cookie", "query"]);
                Err((
                    format!("unknown hash key source `{source}`; expected one of {}", forms.join(", ")),
                    hint,
                ))
            }
        };
    }
    match text {
        "client_ip" => Ok(HashKey::ClientIp),
        "path" => Ok(HashKey::Path),
        _ => {
            let hint = did_you_mean(text, forms.iter().map(|f| f.trim_end_matches(":NAME")));
            Err((format!("unknown hash key `{text}`; expected one of {}", forms.join(", ")), hint))
        }
    }
}

fn decode_backends(ctx: &mut Ctx, node: &Node, pool: &str, base: &Path) -> Option<Vec<BackendConfig>> {
    let items = ctx.seq(node, &format!("{pool}.backends"))?;
    if items.is_empty() {
        ctx.error(node, format!("{pool}.backends must list at least one backend"));
        return None;
    }
    let mut seen: Vec<(String, usize)> = Vec::new();
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let what = format!("{pool}.backends[{i}]");
        let Some(f) = ctx.fields(item, &what, &["address", "weight", "max_connections", "tls"]) else {
            continue;
        };
        let address = ctx.required(&f, "address", &what).and_then(|n| {
            let text = ctx.string(n, &format!("{what}.address"))?;
            if let Err(e) = check_address(&text) {
                ctx.error(n, e);
                return None;
            }
            let lower = text.to_ascii_lowercase();
            match seen.iter().find(|(a, _)| *a == lower) {
                Some((_, line)) => ctx.error(n, format!("backend `{text}` is already listed on line {line}")),
                None => seen.push((lower, n.line)),
            }
            Some(text)
        });
        let weight = f
            .get("weight")
            .map_or(Some(defaults::WEIGHT), |n| ctx.u32(n, &format!("{what}.weight"), 1));
        let max_connections = f
            .get("max_connections")
            .map(|n| ctx.int(n, &format!("{what}.max_connections"), 1, u64::MAX));
        let tls = f.get("tls").map(|n| decode_backend_tls(ctx, n, &format!("{what}.tls"), base));
        let (Some(address), Some(weight)) = (address, weight) else {
            continue;
        };
        let (Some(max_connections), Some(tls)) = (optional(max_connections), tls.unwrap_or(Some(None))) else {
            continue;
        };
        out.push(BackendConfig {
            address,
            weight,
            max_connections,
            tls,
        });
    }
    (out.len() == items.len()).then_some(out)
}

fn decode_backend_tls(ctx: &mut Ctx, node: &Node, what: &str, base: &Path) -> Option<Option<BackendTls>> {
    if node.as_str().is_some() {
        return ctx.bool(node, what).map(|on| on.then(BackendTls::default));
    }
    let f = ctx.fields(node, what, &["ca", "server_name", "insecure_skip_verify"])?;
    let ca = f.get("ca").map(|n| ctx.name(n, &format!("{what}.ca")).map(|p| resolve(base, p)));
    let server_name = f.get("server_name").map(|n| ctx.name(n, &format!("{what}.server_name")));
    let skip = f
        .get("insecure_skip_verify")
        .map_or(Some(false), |n| ctx.bool(n, &format!("{what}.insecure_skip_verify")));
    Some(Some(BackendTls {
        ca: optional(ca)?,
        server_name: optional(server_name)?,
        insecure_skip_verify: skip?,
    }))
}

fn decode_health_check(ctx: &mut Ctx, node: &Node, pool: &str) -> Option<HealthCheckConfig> {
    let what = format!("{pool}.health_check");
    let f = ctx.fields(node, &what, &["kind", "path", "interval", "timeout", "rise", "fall"])?;
    let kind = ctx
        .required(&f, "kind", &what)
        .and_then(|n| ctx.choice(n, "health check kind", &CHECK_KINDS));
    let path = f.get("path").map_or(Some(defaults::CHECK_PATH.to_string()), |n| {
        http_path(ctx, n, &format!("{what}.path"))
    });
    let interval = f.get("interval").map_or(Some(defaults::CHECK_INTERVAL), |n| {
        ctx.positive_duration(n, &format!("{what}.interval"))
    });
    let timeout = f.get("timeout").map_or(Some(defaults::CHECK_TIMEOUT), |n| {
        ctx.positive_duration(n, &format!("{what}.timeout"))
    });
    let rise = f
        .get("rise")
        .map_or(Some(defaults::CHECK_RISE), |n| ctx.u32(n, &format!("{what}.rise"), 1));
    let fall = f
        .get("fall")
        .map_or(Some(defaults::CHECK_FALL), |n| ctx.u32(n, &format!("{what}.fall"), 1));
    let (interval, timeout) = (interval?, timeout?);
    if timeout > interval {
        let at = f.get("timeout").or(f.get("interval")).unwrap_or(node);
        ctx.error(
            at,
            format!("{what}.timeout ({timeout:?}) must not exceed the interval ({interval:?})"),
        );
        return None;
    }
    Some(HealthCheckConfig {
        kind: kind?,
        path: path?,
        interval,
        timeout,
        rise: rise?,
        fall: fall?,
    })
}

/// A request path: non-empty and starting with `/`.
fn http_path(ctx: &mut Ctx, node: &Node, what: &str) -> Option<String> {
    let path = ctx.name(node, what)?;
    if !path.starts_with('/') {
        ctx.error(node, format!("{what} `{path}` must start with `/`"));
        return None;
    }
    Some(path)
}

fn decode_custom_load(ctx: &mut Ctx, node: &Node, pool: &str) -> Option<CustomLoadConfig> {
    let what = format!("{pool}.custom_load");
    let f = ctx.fields(node, &what, &["path", "interval"])?;
    let mut c = CustomLoadConfig::default();
    let errors_before = ctx.errors.len();
    if let Some(n) = f.get("path") {
        set(&mut c.path, http_path(ctx, n, &format!("{what}.path")));
    }
    if let Some(n) = f.get("interval") {
        set(&mut c.interval, ctx.positive_duration(n, &format!("{what}.interval")));
    }
    (ctx.errors.len() == errors_before).then_some(c)
}

fn decode_rebalance(ctx: &mut Ctx, node: &Node, pool: &str) -> Option<RebalanceConfig> {
    let what = format!("{pool}.rebalance");
    let f = ctx.fields(node, &what, &["enabled", "max_moves_per_second", "tolerance"])?;
    let mut r = RebalanceConfig::default();
    let errors_before = ctx.errors.len();
    if let Some(n) = f.get("enabled") {
        set(&mut r.enabled, ctx.bool(n, &format!("{what}.enabled")));
    }
    if let Some(n) = f.get("max_moves_per_second") {
        set(&mut r.max_moves_per_second, ctx.u32(n, &format!("{what}.max_moves_per_second"), 1));
    }
    if let Some(n) = f.get("tolerance") {
        match ctx.float(n, &format!("{what}.tolerance")) {
            Some(t) if t < 0.0 => ctx.error(n, format!("{what}.tolerance must not be negative, found {t}")),
            t => set(&mut r.tolerance, t),
        }
    }
    (ctx.errors.len() == errors_before).then_some(r)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;

    /// The example of the contract (spec/contract.md, "Config file").
    const CONTRACT_EXAMPLE: &str = r#"
listeners:
  - name: public                 # unique
    bind: "127.0.0.1:8080"
    tls:                         # optional: terminate TLS (wss://)
      cert: certs/server.pem
      key: certs/server.key
    routes:                      # first match wins; a route with no `match` catches all
      - match: { path_prefix: /chat, host: chat.example.com, header: { name: X-Tenant, value: a } }
        pool: chat
      - pool: default
    allowed_origins: ["https://app.example.com"]   # optional; absent = any Origin

admin:
  bind: "127.0.0.1:9090"         # /metrics, /healthz, /api/..., dashboard at /

pools:
  chat:
    algorithm: hash
    hash:
      key: cookie:user_id
      bounded_load: 1.25
    backends:
      - address: "127.0.0.1:9101"
  default:
    algorithm: least_connections
    backends:
      - address: "127.0.0.1:9001"   # host:port; ws:// implied, `tls: true` for wss to the backend
        weight: 1                   # default 1
        max_connections: 10000      # optional per-backend cap
      - address: "127.0.0.1:9002"
    health_check:                # optional; absent = passive checks only
      kind: websocket            # tcp | http | websocket
      path: /health              # for http and websocket
      interval: 2s
      timeout: 1s
      rise: 2                    # consecutive successes to mark up
      fall: 3                    # consecutive failures to mark down
    slow_start: 30s              # optional: ramp a recovered/new backend's share

limits:
  max_connections: 100000                # whole process
  max_connections_per_second: 5000       # new-connection rate (token bucket)
  handshake_timeout: 10s                 # client must send the full request head by then
  max_request_header_bytes: 16KiB
  max_message_bytes: 16MiB               # 0 = unlimited; over it: close 1009
  idle_timeout: 10m                      # no data frames either way: close 1001
  ping_interval: 30s                     # proxy pings the client; no pong in `ping_timeout`: close
  ping_timeout: 10s
  drain_timeout: 30s                     # on shutdown or backend drain

shedding:
  close_code: 1013                       # sent after completing the handshake
  retry_hint: 5s                         # jittered hint carried in the close reason
"#;

    const MINIMAL: &str = "listeners:\n  - name: a\n    bind: 127.0.0.1:8080\n    routes:\n      - pool: p\npools:\n  p:\n    backends:\n      - address: 127.0.0.1:9001\n";

    fn errors(text: &str) -> Vec<ConfigError> {
        match parse(text, Path::new("/etc/sy")) {
            Ok(c) => panic!("expected errors, got {c:?}"),
            Err(e) => e,
        }
    }

    /// Asserts one error at `line:col` whose message contains `msg`.
    fn has(errs: &[ConfigError], line: usize, col: usize, msg: &str) -> ConfigError {
        errs.iter()
            .find(|e| e.line == line && e.col == col && e.message.contains(msg))
            .cloned()
            .unwrap_or_else(|| panic!("no error at {line}:{col} containing {msg:?} in {errs:#?}"))
    }

    /// MINIMAL with `extra` appended to the pool `p` (indented 4).
    fn pool_with(extra: &str) -> String {
        format!("{MINIMAL}{extra}")
    }

    #[test]
    fn contract_example_parses() {
        let c = parse(CONTRACT_EXAMPLE, Path::new("/etc/sy")).unwrap_or_else(|e| panic!("{e:#?}"));
        let l = &c.listeners[0];
        assert_eq!(l.name, "public");
        assert_eq!(l.bind, "127.0.0.1:8080".parse().unwrap());
        let tls = l.tls.as_ref().unwrap();
        assert_eq!(tls.certs[0].cert, PathBuf::from("/etc/sy/certs/server.pem"));
        assert_eq!(tls.certs[0].key, PathBuf::from("/etc/sy/certs/server.key"));
        assert!(tls.certs[0].sni.is_empty());
        assert_eq!(l.routes.len(), 2);
        assert_eq!(l.routes[0].matcher.path_prefix.as_deref(), Some("/chat"));
        assert_eq!(l.routes[0].matcher.host.as_deref(), Some("chat.example.com"));
        assert_eq!(
            l.routes[0].matcher.header,
            Some(HeaderMatch {
                name: "X-Tenant".into(),
                value: "a".into()
            })
        );
        assert_eq!(l.routes[0].pool, "chat");
        assert_eq!(
            l.routes[1],
            Route {
                matcher: RouteMatch::default(),
                pool: "default".into()
            }
        );
        assert_eq!(l.allowed_origins, Some(vec!["https://app.example.com".to_string()]));
        assert_eq!(
            c.admin,
            Some(AdminConfig {
                bind: "127.0.0.1:9090".parse().unwrap()
            })
        );

        let chat = &c.pools["chat"];
        assert_eq!(chat.algorithm, Algorithm::Hash);
        assert_eq!(
            chat.hash,
            Some(HashConfig {
                key: HashKey::Cookie("user_id".into()),
                bounded_load: Some(1.25)
            })
        );
        let d = &c.pools["default"];
        assert_eq!(d.algorithm, Algorithm::LeastConnections);
        assert_eq!(d.hash, None);
        assert_eq!(d.backends[0].address, "127.0.0.1:9001");
        assert_eq!(d.backends[0].max_connections, Some(10_000));
        assert_eq!(d.backends[1].weight, 1);
        assert_eq!(d.backends[1].max_connections, None);
        let hc = d.health_check.as_ref().unwrap();
        assert_eq!((hc.kind, hc.path.as_str()), (CheckKind::WebSocket, "/health"));
        assert_eq!(
            (hc.interval, hc.timeout, hc.rise, hc.fall),
            (Duration::from_secs(2), Duration::from_secs(1), 2, 3)
        );
        assert_eq!(d.slow_start, Some(Duration::from_secs(30)));
        assert_eq!(d.connect_timeout, defaults::CONNECT_TIMEOUT);
        assert_eq!(d.max_attempts, defaults::MAX_ATTEMPTS);
        assert_eq!(d.rebalance, RebalanceConfig::default());

        // Every limit written in the example is the default.
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.shedding, Shedding::default());
        assert_eq!(c.process, ProcessConfig::default());
    }

    #[test]
    fn minimal_gets_defaults() {
        let c = parse(MINIMAL, Path::new("")).unwrap_or_else(|e| panic!("{e:#?}"));
        assert_eq!(c.admin, None);
        let p = &c.pools["p"];
        assert_eq!(p.algorithm, Algorithm::LeastConnections);
        assert_eq!(p.health_check, None);
        assert_eq!(p.bandwidth_window, defaults::BANDWIDTH_WINDOW);
        assert_eq!(c.listeners[0].allowed_origins, None);
    }

    #[test]
    fn empty_and_non_mapping_files() {
        for text in ["", "# nothing\n", "~\n", "- a\n- b\n", "just text\n"] {
            let e = errors(text);
            assert_eq!((e.len(), e[0].line, e[0].col), (1, 1, 1), "{text:?}: {e:?}");
        }
    }

    #[test]
    fn empty_section_is_reported_at_its_key() {
        let e = errors(&format!("admin:\n{MINIMAL}"));
        has(&e, 1, 1, "`admin` is missing required key `bind`");
        // Empty optional sections mean "all defaults".
        assert!(parse(&format!("{MINIMAL}limits:\nshedding:\n"), Path::new("")).is_ok());
    }

    #[test]
    fn unknown_keys_with_hints() {
        let e = errors(&pool_with("    algoritm: round_robin\n"));
        let err = has(&e, 10, 5, "unknown key `algoritm`");
        assert_eq!(err.hint.as_deref(), Some("did you mean `algorithm`?"));
        let e = errors(&format!("{MINIMAL}limit:\n  max_connections: 1\n"));
        assert_eq!(
            has(&e, 10, 1, "unknown key `limit`").hint.as_deref(),
            Some("did you mean `limits`?")
        );
    }

    #[test]
    fn enum_values_with_hints() {
        let e = errors(&pool_with("    algorithm: round-robin\n"));
        assert_eq!(
            has(&e, 10, 16, "unknown algorithm `round-robin`").hint.as_deref(),
            Some("did you mean `round_robin`?")
        );
        let e = errors(&pool_with("    health_check:\n      kind: websockets\n"));
        assert_eq!(
            has(&e, 11, 13, "health check kind").hint.as_deref(),
            Some("did you mean `websocket`?")
        );
    }

    #[test]
    fn undefined_pool_in_route() {
        let text = MINIMAL.replace("- pool: p", "- pool: q");
        let e = errors(&text);
        let err = has(&e, 5, 15, "pool `q`, which is not defined");
        assert_eq!(err.hint.as_deref(), Some("did you mean `p`?"));
    }

    #[test]
    fn wrong_types_and_ranges() {
        let e = errors(&pool_with(
            "    max_attempts: {a: 1}\n    connect_timeout: 30\n    bandwidth_window: 0s\n",
        ));
        has(&e, 10, 19, "must be an integer, found a mapping");
        has(&e, 11, 22, "`30` needs a unit, e.g. `30s`");
        has(&e, 12, 23, "must be greater than 0");
        let e = errors(&MINIMAL.replace("127.0.0.1:9001", "127.0.0.1:9001\n        weight: 0\n        max_connections: -5"));
        has(&e, 10, 17, "weight must be at least 1");
        has(&e, 11, 26, "must be at least 1, found -5");
    }

    #[test]
    fn bad_addresses() {
        let e = errors(
            &MINIMAL
                .replace("bind: 127.0.0.1:8080", "bind: localhost:80")
                .replace("127.0.0.1:9001", "10.0.0.1"),
        );
        has(&e, 3, 11, "not an IP:port address");
        has(&e, 9, 18, "needs a port");
    }

    #[test]
    fn duplicates() {
        let text = format!("{MINIMAL}      - address: 127.0.0.1:9001\nadmin:\n  bind: 127.0.0.1:8080\n");
        let e = errors(&text.replace(
            "listeners:\n",
            "listeners:\n  - {name: a, bind: \"[::1]:0\", routes: [{pool: p}]}\n",
        ));
        has(&e, 3, 11, "listener name `a` is already used on line 2");
        has(&e, 11, 18, "backend `127.0.0.1:9001` is already listed on line 10");
        has(&e, 13, 9, "address 127.0.0.1:8080 is already bound on line 4");
    }

    #[test]
    fn health_check_rules() {
        let e = errors(&pool_with(
            "    health_check:\n      kind: http\n      path: health\n      interval: 1s\n      timeout: 2s\n      rise: 0\n",
        ));
        has(&e, 12, 13, "must start with `/`");
        has(&e, 14, 16, "must not exceed the interval");
        has(&e, 15, 13, "must be at least 1");
        let e = errors(&pool_with("    health_check:\n      path: /x\n"));
        has(&e, 11, 7, "missing required key `kind`");
    }

    #[test]
    fn hash_rules() {
        let e = errors(&pool_with("    hash:\n      key: \"cookie:\"\n"));
        has(&e, 10, 5, "`hash` only applies to algorithm `hash`");
        has(&e, 11, 12, "needs a name after `cookie:`");
        let e = errors(&pool_with("    algorithm: hash\n    hash: {key: headr:X, bounded_load: 1.0}\n"));
        assert_eq!(
            has(&e, 11, 17, "unknown hash key source").hint.as_deref(),
            Some("did you mean `header`?")
        );
        has(&e, 11, 40, "greater than 1.0");
        let c = parse(&pool_with("    algorithm: hash\n"), Path::new("")).unwrap();
        assert_eq!(
            c.pools["p"].hash,
            Some(HashConfig {
                key: HashKey::ClientIp,
                bounded_load: None
            })
        );
        let c = parse(&pool_with("    algorithm: custom_load\n"), Path::new("")).unwrap();
        assert_eq!(c.pools["p"].custom_load, Some(CustomLoadConfig::default()));
    }

    #[test]
    fn limits_and_shedding() {
        let text = format!(
            "{MINIMAL}limits:\n  idle_timeout: off\n  ping_interval: 0s\n  max_request_header_bytes: 100\n  max_message_bytes: 0\nshedding:\n  close_code: 1005\n  evict_idle: yes\nprocess:\n  workers: -1\n"
        );
        let e = errors(&text);
        has(&e, 13, 29, "between 1KiB and 1MiB");
        has(&e, 16, 15, "reserved");
        has(&e, 17, 15, "must be `true` or `false`");
        has(&e, 19, 12, "must not be negative");
        assert_eq!(e.len(), 4, "{e:#?}");
        let ok = parse(
            &text
                .replace("100\n", "8KiB\n")
                .replace("1005", "4000")
                .replace("yes", "true")
                .replace("-1", "2"),
            Path::new(""),
        )
        .unwrap_or_else(|e| panic!("{e:#?}"));
        assert_eq!((ok.limits.idle_timeout, ok.limits.ping_interval), (None, None));
        assert_eq!((ok.limits.max_request_header_bytes, ok.limits.max_message_bytes), (8192, 0));
        assert_eq!(
            (ok.shedding.close_code, ok.shedding.evict_idle, ok.process.workers),
            (4000, true, 2)
        );
    }

    #[test]
    fn listener_tls_forms_and_routes() {
        let text = MINIMAL.replace(
            "    routes:",
            "    tls:\n      certs:\n        - {cert: /abs/a.pem, key: a.key, sni: [a.example]}\n        - {cert: b.pem, key: b.key}\n    routes:",
        );
        let c = parse(&text, Path::new("base")).unwrap_or_else(|e| panic!("{e:#?}"));
        let certs = &c.listeners[0].tls.as_ref().unwrap().certs;
        assert_eq!(
            (certs[0].cert.clone(), certs[0].key.clone()),
            (PathBuf::from("/abs/a.pem"), PathBuf::from("base/a.key"))
        );
        assert_eq!(certs[0].sni, vec!["a.example".to_string()]);
        let e = errors(&MINIMAL.replace(
            "      - pool: p",
            "      - pool: p\n      - match: {path_prefix: chat}\n        pool: p",
        ));
        has(&e, 6, 9, "unreachable");
        has(&e, 6, 30, "must start with `/`");
    }

    #[test]
    fn all_errors_are_reported_in_order() {
        let text = "listeners:\n  - name: a\n    bnd: 1.2.3.4:5\n    routes: []\npools:\n  p:\n    algorithm: fastest\n    backends: []\nshedding: {close_code: 999}\n";
        let e = errors(text);
        let positions: Vec<_> = e.iter().map(|e| (e.line, e.col)).collect();
        let mut sorted = positions.clone();
        sorted.sort();
        assert_eq!(positions, sorted);
        has(&e, 2, 5, "missing required key `bind`");
        has(&e, 3, 5, "unknown key `bnd`");
        has(&e, 4, 13, "at least one route");
        has(&e, 7, 16, "unknown algorithm `fastest`");
        has(&e, 8, 15, "at least one backend");
        has(&e, 9, 24, "between 1000 and 4999");
        assert_eq!(e.len(), 6, "{e:#?}");
    }
}
