//! Decoding of `pools:`: algorithms, hashing, health checks, custom load and rebalancing
//! (backends: `backends.rs`), with the same error collection as the rest of the decoder.

use std::collections::BTreeMap;
use std::path::Path;

use super::backends::decode_backends;
use super::decode::{optional, set};
use super::validate::{did_you_mean, Ctx, Fields};
use super::yaml::{Node, NodeKind};
use super::*;

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
    "sticky",
    "passive_health",
];
const CHECK_KINDS: [(&str, CheckKind); 3] = [
    ("tcp", CheckKind::Tcp),
    ("http", CheckKind::Http),
    ("websocket", CheckKind::WebSocket),
];

/// The names of the pools as written, for route checks (even when a pool is invalid).
pub(super) fn pool_names(node: &Node) -> Vec<String> {
    match &node.kind {
        NodeKind::Map(pairs) => pairs.iter().filter_map(|(k, _)| k.as_str().map(String::from)).collect(),
        _ => Vec::new(),
    }
}

pub(super) fn decode_pools(ctx: &mut Ctx, node: &Node, base: &Path) -> Option<BTreeMap<String, PoolConfig>> {
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
        sticky: None,
        passive_health: PassiveHealthConfig::default(),
    };
    if let Some(n) = f.get("passive_health") {
        set(&mut pool.passive_health, decode_passive_health(ctx, n, &what));
    }
    if let Some(n) = f.get("sticky") {
        set(&mut pool.sticky, decode_sticky(ctx, n, &what).map(Some));
    }
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

fn decode_sticky(ctx: &mut Ctx, node: &Node, pool: &str) -> Option<StickyConfig> {
    let what = format!("{pool}.sticky");
    let f = ctx.fields(node, &what, &["cookie", "secret"])?;
    let cookie = ctx
        .required(&f, "cookie", &what)
        .and_then(|n| ctx.name(n, &format!("{what}.cookie")).map(|c| (n, c)))
        .and_then(|(n, c)| {
            // RFC 6265 §4.1.1: a cookie name is an HTTP token.
            let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            if c.bytes().all(token) {
                Some(c)
            } else {
                ctx.error(
                    n,
                    format!("{what}.cookie `{c}` is not a valid cookie name (letters, digits, !#$%&'*+-.^_`|~)"),
                );
                None
            }
        });
    // No default secret: a known one lets any client forge a cookie naming a backend of
    // its choice, and a random one per start would make instances disagree.
    let secret = match f.get("secret") {
        Some(n) => ctx.string(n, &format!("{what}.secret")).and_then(|s| {
            if s.trim().is_empty() {
                ctx.error_hint(n, format!("{what}.secret must not be empty"), Some(SECRET_HINT.to_string()));
                None
            } else {
                Some(s)
            }
        }),
        None => {
            let at = f.key("cookie").unwrap_or(node);
            ctx.error_hint(
                at,
                format!("{what} needs a `secret` (the same on every instance): without one, clients could forge cookies"),
                Some(SECRET_HINT.to_string()),
            );
            None
        }
    };
    Some(StickyConfig {
        cookie: cookie?,
        secret: secret?,
    })
}

/// How to make a sticky secret, shown with a missing or empty one.
const SECRET_HINT: &str = "generate one with `head -c 32 /dev/urandom | base64` and set it on every instance";

fn decode_passive_health(ctx: &mut Ctx, node: &Node, pool: &str) -> Option<PassiveHealthConfig> {
    let what = format!("{pool}.passive_health");
    let f = ctx.fields(node, &what, &["max_ejected_percent", "count_5xx", "consecutive_5xx"])?;
    let mut p = PassiveHealthConfig::default();
    let errors_before = ctx.errors.len();
    if let Some(n) = f.get("max_ejected_percent") {
        match ctx.u32(n, &format!("{what}.max_ejected_percent"), 0) {
            Some(v) if v > 100 => ctx.error(n, format!("{what}.max_ejected_percent is a share of the pool: 0 to 100, found {v}")),
            v => set(&mut p.max_ejected_percent, v),
        }
    }
    if let Some(n) = f.get("count_5xx") {
        set(&mut p.count_5xx, ctx.bool(n, &format!("{what}.count_5xx")));
    }
    if let Some(n) = f.get("consecutive_5xx") {
        set(&mut p.consecutive_5xx, ctx.u32(n, &format!("{what}.consecutive_5xx"), 1));
    }
    (ctx.errors.len() == errors_before).then_some(p)
}

fn hash_key(text: &str) -> Result<HashKey, (String, Option<String>)> {
    let forms = ["client_ip", "path", "path_segment:N", "header:NAME", "cookie:NAME", "query:NAME"];
    if let Some(n) = text.strip_prefix("path_segment:") {
        return match n.trim().parse::<usize>() {
            Ok(n) if n >= 1 => Ok(HashKey::PathSegment(n)),
            _ => Err((
                format!("hash key `{text}` needs a segment number from 1 (e.g. `path_segment:3`)"),
                None,
            )),
        };
    }
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
    let f = ctx.fields(node, &what, &["enabled", "max_moves_per_second", "tolerance", "reconnect_window"])?;
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
    if let Some(n) = f.get("reconnect_window") {
        set(&mut r.reconnect_window, ctx.duration(n, &format!("{what}.reconnect_window")));
    }
    (ctx.errors.len() == errors_before).then_some(r)
}
