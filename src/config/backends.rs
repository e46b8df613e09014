//! Decoding of `pools.*.backends`: plain backends, and entries that stand for every backend
//! DNS finds (`discover: dns`, `srv`), with the same error collection as the rest of the
//! decoder.

use std::path::Path;

use super::decode::{optional, resolve};
use super::validate::{check_address, is_srv_name, Ctx, Fields};
use super::yaml::Node;
use super::*;

const BACKEND_KEYS: &[&str] = &[
    "address",
    "srv",
    "discover",
    "refresh",
    "weight",
    "max_connections",
    "tls",
    "proxy_protocol",
];

pub(super) fn decode_backends(ctx: &mut Ctx, node: &Node, pool: &str, base: &Path) -> Option<Vec<BackendConfig>> {
    let items = ctx.seq(node, &format!("{pool}.backends"))?;
    if items.is_empty() {
        ctx.error(node, format!("{pool}.backends must list at least one backend"));
        return None;
    }
    let mut seen: Vec<(String, usize)> = Vec::new();
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let what = format!("{pool}.backends[{i}]");
        let Some(f) = ctx.fields(item, &what, BACKEND_KEYS) else {
            continue;
        };
        let target = decode_target(ctx, &f, &what);
        if let Some((address, n)) = &target {
            let lower = address.to_ascii_lowercase();
            match seen.iter().find(|(a, _)| *a == lower) {
                Some((_, line)) => ctx.error(n, format!("backend `{address}` is already listed on line {line}")),
                None => seen.push((lower, n.line)),
            }
        }
        let weight = match (f.get("weight"), f.get("srv")) {
            (Some(n), Some(_)) => {
                ctx.error(
                    n,
                    format!("{what}.weight does not apply to an `srv` entry: each record's weight is used"),
                );
                None
            }
            (Some(n), None) => ctx.u32(n, &format!("{what}.weight"), 1),
            (None, _) => Some(defaults::WEIGHT),
        };
        let max_connections = f
            .get("max_connections")
            .map(|n| ctx.int(n, &format!("{what}.max_connections"), 1, u64::MAX));
        let tls = f.get("tls").map(|n| decode_backend_tls(ctx, n, &format!("{what}.tls"), base));
        let discover = target.as_ref().and_then(|(a, _)| decode_discover(ctx, &f, &what, a));
        let proxy_protocol = f
            .get("proxy_protocol")
            .map(|n| ctx.choice(n, &format!("{what}.proxy_protocol version"), &[("v2", ProxyProtocolVersion::V2)]));
        let (Some((address, _)), Some(weight), Some(discover)) = (target, weight, discover) else {
            continue;
        };
        let Some(proxy_protocol) = optional(proxy_protocol) else {
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
            discover,
            discovered_from: None,
            proxy_protocol,
        });
    }
    (out.len() == items.len()).then_some(out)
}

/// The entry's `address` (checked) or `srv` name, exactly one of them, with its node.
fn decode_target<'a>(ctx: &mut Ctx, f: &Fields<'a>, what: &str) -> Option<(String, &'a Node)> {
    match (f.get("address"), f.get("srv")) {
        (Some(_), Some(n)) => {
            ctx.error(
                n,
                format!("{what}: set `address` (with `discover: dns` for every A/AAAA record) or `srv`, not both"),
            );
            None
        }
        (None, None) => {
            ctx.error(f.node, format!("{what} is missing required key `address` (or `srv`)"));
            None
        }
        (Some(n), None) => {
            let text = ctx.string(n, &format!("{what}.address"))?;
            if let Err(e) = check_address(&text) {
                ctx.error(n, e);
                return None;
            }
            Some((text, n))
        }
        (None, Some(n)) => {
            let text = ctx.name(n, &format!("{what}.srv"))?;
            if !is_srv_name(&text) {
                ctx.error_hint(
                    n,
                    format!("{what}.srv `{text}` is not a valid DNS name"),
                    Some("e.g. `_ws._tcp.chat.example.com`".into()),
                );
                return None;
            }
            Some((text, n))
        }
    }
}

/// `discover` and `refresh`: `Some(None)` for a plain backend, `Some(Some(_))` for an entry
/// found by DNS, `None` when invalid (reported).
fn decode_discover(ctx: &mut Ctx, f: &Fields, what: &str, address: &str) -> Option<Option<Discover>> {
    let srv = f.get("srv").is_some();
    let dns = match f.get("discover") {
        None => false,
        Some(n) if srv => {
            ctx.error(
                n,
                format!("{what}.discover does not apply to an `srv` entry (it is always discovered)"),
            );
            return None;
        }
        Some(n) => {
            ctx.choice(n, "discovery", &[("dns", ())])?;
            let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
            if host.starts_with('[') || host.parse::<std::net::Ipv4Addr>().is_ok() {
                ctx.error(
                    n,
                    format!("{what}: `discover: dns` needs a host name; `{host}` is an IP address already"),
                );
                return None;
            }
            true
        }
    };
    let refresh = match f.get("refresh") {
        None => defaults::DISCOVERY_REFRESH,
        Some(n) if !srv && !dns => {
            ctx.error(n, format!("{what}.refresh only applies with `discover: dns` or `srv`"));
            return None;
        }
        Some(n) => {
            let d = ctx.positive_duration(n, &format!("{what}.refresh"))?;
            if d < defaults::DISCOVERY_REFRESH_MIN {
                ctx.error(
                    n,
                    format!("{what}.refresh must be at least {:?}, found {d:?}", defaults::DISCOVERY_REFRESH_MIN),
                );
                return None;
            }
            d
        }
    };
    if srv {
        return Some(Some(Discover::Srv {
            name: address.to_string(),
            refresh,
        }));
    }
    if !dns {
        return Some(None);
    }
    let (host, port) = address.rsplit_once(':')?;
    Some(Some(Discover::Hosts {
        name: host.to_string(),
        port: port.parse().ok()?,
        refresh,
    }))
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
