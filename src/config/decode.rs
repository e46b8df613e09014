//! Marked YAML tree → typed `Config`, collecting every problem.
//!
//! Each section is decoded by hand (no serde) so that every error keeps the position of
//! the node it is about, and decoding goes on after an error: one run of `switchyard
//! check` lists every problem of the file.

use std::net::SocketAddr;
use std::path::Path;

use super::pools::{decode_pools, pool_names};
use super::validate::{check_binds, did_you_mean, Ctx, Fields};
use super::yaml::{parse_tree, Node, NodeKind};
use super::*;

const TOP_KEYS: &[&str] = &["listeners", "admin", "pools", "limits", "shedding", "process", "resolver"];
/// Streams an HTTP/2 connection may have open at once when the listener does not say.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 100;

const LISTENER_KEYS: &[&str] = &[
    "name",
    "bind",
    "tls",
    "routes",
    "allowed_origins",
    "proxy_protocol",
    "http2",
    "max_concurrent_streams",
];
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
    "request_timeout",
    "max_request_body_bytes",
    "keepalive_timeout",
    "tcp_keepalive",
    "backend_ping_interval",
    "max_connections_per_client",
    "max_connections_per_client_per_second",
    "trusted_proxies",
    "client_messages_per_second",
    "client_message_burst",
    "client_bytes_per_second",
    "client_bytes_burst",
    "backend_messages_per_second",
    "max_messages_per_second_per_client",
    "client_limit_action",
    "client_limit_grace",
];
/// The keys of a route's `limits:` (the per-connection message limits).
const ROUTE_LIMITS_KEYS: &[&str] = &[
    "client_messages_per_second",
    "client_message_burst",
    "client_bytes_per_second",
    "client_bytes_burst",
    "backend_messages_per_second",
    "client_limit_action",
    "client_limit_grace",
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
pub(super) fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
    }
}

/// An optional setting: absent → `Some(None)`, present but invalid → `None` (already
/// reported), valid → `Some(Some(v))`.
pub(super) fn optional<T>(read: Option<Option<T>>) -> Option<Option<T>> {
    read.map_or(Some(None), |v| v.map(Some))
}

/// Resolves a configured file path against the config file's directory.
pub(super) fn resolve(base: &Path, path: String) -> std::path::PathBuf {
    base.join(path)
}

fn decode_config(ctx: &mut Ctx, root: &Node, base: &Path) -> Option<Config> {
    let f = ctx.fields(root, "the config", TOP_KEYS)?;
    let mut pool_refs = Vec::new();
    let mut binds = Vec::new();
    let mut proxied = Vec::new();
    let listeners = ctx
        .required(&f, "listeners", "the config")
        .and_then(|n| decode_listeners(ctx, n, base, &mut pool_refs, &mut binds, &mut proxied));
    let admin = f.get("admin").map(|n| decode_admin(ctx, n, base, &mut binds));
    let pools_node = ctx.required(&f, "pools", "the config");
    let pools = pools_node.and_then(|n| decode_pools(ctx, n, base));
    let limits = f.get("limits").map_or_else(Limits::default, |n| decode_limits(ctx, n));
    let shedding = f.get("shedding").map_or_else(Shedding::default, |n| decode_shedding(ctx, n));
    let process = f.get("process").map_or_else(ProcessConfig::default, |n| decode_process(ctx, n));
    let resolver = f.get("resolver").map_or_else(ResolverConfig::default, |n| decode_resolver(ctx, n));

    check_binds(ctx, &mut binds);
    if limits.trusted_proxies.is_empty() {
        // PROXY headers are only believed from trusted peers: with none, every connection
        // to such a listener would be closed.
        for n in proxied {
            ctx.error_hint(
                n,
                "`proxy_protocol: true` needs `limits.trusted_proxies`: headers are only accepted from those peers",
                Some("list the addresses of the load balancers in front, e.g. `trusted_proxies: [\"10.0.0.0/8\"]`".into()),
            );
        }
    }
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
        resolver,
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

fn decode_admin<'a>(ctx: &mut Ctx, node: &'a Node, base: &Path, binds: &mut Vec<(SocketAddr, &'a Node)>) -> Option<AdminConfig> {
    let f = ctx.fields(
        node,
        "`admin`",
        &["bind", "hosts", "token", "token_file", "public_metrics", "insecure"],
    )?;
    let bind_node = ctx.required(&f, "bind", "`admin`");
    let addr = bind_node.and_then(|n| bind(ctx, n, "`admin.bind`", binds));
    let flag = |ctx: &mut Ctx, key: &str| match f.get(key) {
        None => Some(false),
        Some(n) => ctx.bool(n, &format!("`admin.{key}`")),
    };
    let public_metrics = flag(ctx, "public_metrics");
    let insecure = flag(ctx, "insecure");
    let token = match (f.get("token"), f.get("token_file")) {
        (Some(_), Some(n)) => {
            ctx.error(n, "set `admin.token` or `admin.token_file`, not both");
            None
        }
        (Some(n), None) => ctx.string(n, "`admin.token`").map(Some),
        (None, Some(n)) => ctx.string(n, "`admin.token_file`").and_then(|file| {
            let path = resolve(base, file);
            match std::fs::read_to_string(&path) {
                Ok(t) => Some(Some(t.trim().to_string())),
                Err(e) => {
                    ctx.error(n, format!("`admin.token_file` {}: {e}", path.display()));
                    None
                }
            }
        }),
        (None, None) => Some(None),
    };
    let token = match token {
        Some(Some(t)) if t.len() < 16 => {
            if let Some(n) = f.get("token").or(f.get("token_file")) {
                ctx.error(n, "the admin token must be at least 16 characters");
            }
            None
        }
        other => other,
    };
    // Off loopback, anyone who reaches the port could drain every backend: a token is
    // required unless the operator says otherwise.
    if let (Some(addr), Some(None), Some(false), Some(n)) = (addr, &token, insecure, bind_node) {
        if !addr.ip().is_loopback() {
            ctx.error(
                n,
                format!("`admin.bind` {addr} is not a loopback address: set `admin.token` or `admin.token_file` (or `insecure: true`)"),
            );
        }
    }
    let hosts = match f.get("hosts") {
        None => Some(Vec::new()),
        Some(n) => ctx
            .strings(n, "`admin.hosts`")
            .map(|v| v.into_iter().map(|h| h.to_ascii_lowercase()).collect()),
    };
    Some(AdminConfig {
        bind: addr?,
        hosts: hosts?,
        token: token?,
        public_metrics: public_metrics?,
        insecure: insecure?,
    })
}

fn decode_listeners<'a>(
    ctx: &mut Ctx,
    node: &'a Node,
    base: &Path,
    pool_refs: &mut Vec<(String, &'a Node)>,
    binds: &mut Vec<(SocketAddr, &'a Node)>,
    proxied: &mut Vec<&'a Node>,
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
        let proxy_protocol = match f.get("proxy_protocol") {
            None => Some(false),
            Some(n) => {
                let on = ctx.bool(n, &format!("{what}.proxy_protocol"));
                if on == Some(true) {
                    proxied.push(n);
                }
                on
            }
        };
        let http2 = f.get("http2").map(|n| ctx.bool(n, &format!("{what}.http2")));
        let streams = f
            .get("max_concurrent_streams")
            .map(|n| ctx.int(n, &format!("{what}.max_concurrent_streams"), 1, 10_000).map(|v| v as u32));
        if let (Some(name), Some(bind), Some(routes), Some(proxy_protocol)) = (name, addr, routes, proxy_protocol) {
            let (Some(tls), Some(allowed_origins), Some(http2), Some(max_concurrent_streams)) =
                (optional(tls), optional(origins), optional(http2), optional(streams))
            else {
                continue;
            };
            out.push(ListenerConfig {
                name,
                bind,
                tls,
                routes,
                allowed_origins,
                proxy_protocol,
                http2: http2.unwrap_or(true),
                max_concurrent_streams: max_concurrent_streams.unwrap_or(DEFAULT_MAX_CONCURRENT_STREAMS),
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
        let Some(f) = ctx.fields(item, &what, &["match", "pool", "http", "limits"]) else {
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
        let http = match f.get("http") {
            Some(n) => ctx.choice(n, "http", &[("proxy", HttpMode::Proxy), ("reject", HttpMode::Reject)]),
            None => Some(HttpMode::Proxy),
        };
        let limits = match f.get("limits") {
            Some(n) => ctx
                .fields(n, &format!("{what}.limits"), ROUTE_LIMITS_KEYS)
                .map(|lf| message_limits(ctx, &lf, &format!("{what}.limits"))),
            None => Some(MessageOverride::default()),
        };
        if let (Some(matcher), Some(pool), Some(http), Some(limits)) = (matcher, pool, http, limits) {
            routes.push(Route {
                matcher,
                pool,
                http,
                limits,
            });
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
    if let Some((n, w)) = get("request_timeout") {
        set(&mut l.request_timeout, ctx.positive_duration(n, &w));
    }
    if let Some((n, w)) = get("max_request_body_bytes") {
        set(&mut l.max_request_body_bytes, ctx.size(n, &w));
    }
    if let Some((n, w)) = get("keepalive_timeout") {
        set(&mut l.keepalive_timeout, ctx.positive_duration(n, &w));
    }
    if let Some((n, w)) = get("tcp_keepalive") {
        match ctx.optional_duration(n, &w) {
            Some(Some(d)) if d < Duration::from_secs(1) => ctx.error(n, format!("{w} must be at least 1s (or `off`)")),
            Some(v) => l.tcp_keepalive = v,
            None => {}
        }
    }
    if let Some((n, w)) = get("backend_ping_interval") {
        set(&mut l.backend_ping_interval, ctx.optional_duration(n, &w));
    }
    if let Some((n, w)) = get("max_connections_per_client") {
        set(&mut l.max_connections_per_client, ctx.int(n, &w, 0, u64::from(u32::MAX)));
    }
    if let Some((n, w)) = get("max_connections_per_client_per_second") {
        set(&mut l.max_connections_per_client_per_second, ctx.int(n, &w, 0, u64::from(u32::MAX)));
    }
    if let Some((n, w)) = get("trusted_proxies") {
        set(&mut l.trusted_proxies, trusted_proxies(ctx, n, &w));
    }
    l.messages = l.messages.with(&message_limits(ctx, &f, "`limits`"));
    if let Some((n, w)) = get("max_messages_per_second_per_client") {
        set(&mut l.messages.max_messages_per_second_per_client, ctx.int(n, &w, 0, MAX_RATE));
    }
    l
}

/// Most a message rate (or burst) may be: what a `u32` holds.
const MAX_RATE: u64 = u32::MAX as u64;
/// Most a byte rate (or burst) may be.
const MAX_BYTE_RATE: u64 = 1 << 40;

/// The per-connection message limits set in `fields` (of `limits:` or a route's `limits:`,
/// named `what`).
fn message_limits(ctx: &mut Ctx, f: &Fields<'_>, what: &str) -> MessageOverride {
    let mut o = MessageOverride::default();
    let what = what.trim_matches('`');
    let name = |key: &str| format!("`{what}.{key}`");
    let int = |ctx: &mut Ctx, key: &str, out: &mut Option<u64>| {
        if let Some(n) = f.get(key) {
            if let Some(v) = ctx.int(n, &name(key), 0, MAX_RATE) {
                *out = Some(v);
            }
        }
    };
    int(ctx, "client_messages_per_second", &mut o.client_messages_per_second);
    int(ctx, "client_message_burst", &mut o.client_message_burst);
    // Byte rates are sizes (`1MiB`, or plain bytes).
    for (key, out) in [
        ("client_bytes_per_second", &mut o.client_bytes_per_second),
        ("client_bytes_burst", &mut o.client_bytes_burst),
    ] {
        if let Some(n) = f.get(key) {
            match ctx.size(n, &name(key)) {
                Some(v) if v > MAX_BYTE_RATE => ctx.error(n, format!("{} must be at most 1TiB", name(key))),
                Some(v) => *out = Some(v),
                None => {}
            }
        }
    }
    int(ctx, "backend_messages_per_second", &mut o.backend_messages_per_second);
    if let Some(n) = f.get("client_limit_action") {
        o.client_limit_action = ctx.choice(
            n,
            &name("client_limit_action"),
            &[("throttle", LimitAction::Throttle), ("close", LimitAction::Close)],
        );
    }
    if let Some(n) = f.get("client_limit_grace") {
        o.client_limit_grace = ctx.positive_duration(n, &name("client_limit_grace"));
    }
    o
}

/// `limits.trusted_proxies`: a list of networks, each error at its own item.
fn trusted_proxies(ctx: &mut Ctx, node: &Node, what: &str) -> Option<Vec<Cidr>> {
    let items = ctx.seq(node, what)?;
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Some(text) = ctx.string(item, &format!("each of {what}")) else {
            continue;
        };
        match Cidr::parse(&text) {
            Ok(c) => out.push(c),
            Err(e) => ctx.error(item, format!("{what}: {e}")),
        }
    }
    (out.len() == items.len()).then_some(out)
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

fn decode_resolver(ctx: &mut Ctx, node: &Node) -> ResolverConfig {
    let mut r = ResolverConfig::default();
    let Some(f) = ctx.fields(node, "`resolver`", &["servers", "timeout"]) else {
        return r;
    };
    if let Some(n) = f.get("servers") {
        if let Some(items) = ctx.seq(n, "`resolver.servers`") {
            if items.is_empty() {
                ctx.error(
                    n,
                    "`resolver.servers` must list at least one server (or leave it out for /etc/resolv.conf)",
                );
            }
            let servers: Vec<SocketAddr> = items.iter().filter_map(|item| name_server(ctx, item)).collect();
            if servers.len() == items.len() && !servers.is_empty() {
                r.servers = Some(servers);
            }
        }
    }
    if let Some(n) = f.get("timeout") {
        set(&mut r.timeout, ctx.positive_duration(n, "`resolver.timeout`"));
    }
    r
}

/// One `resolver.servers` entry: `IP:PORT`, `[IPv6]:PORT`, or an IP alone (port 53).
fn name_server(ctx: &mut Ctx, node: &Node) -> Option<SocketAddr> {
    let text = ctx.string(node, "each of `resolver.servers`")?;
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some(addr);
    }
    if let Ok(ip) = text.parse::<std::net::IpAddr>() {
        return Some(SocketAddr::new(ip, defaults::RESOLVER_PORT));
    }
    let hint = Some("write an IP address with an optional port, e.g. `10.96.0.10:53` or `[fd00::10]:53`".to_string());
    ctx.error_hint(node, format!("name server `{text}` is not an IP address"), hint);
    None
}

#[cfg(test)]
#[path = "decode_tests.rs"]
mod tests;
