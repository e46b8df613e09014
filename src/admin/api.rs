//! The JSON API: pools and backends (read-only views of the runtime's atomics), process
//! status, backend drain/undrain and config reload.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use hyper::StatusCode;
use serde_json::{json, Value};

use super::{json, text, Admin, Resp};
use crate::backend::{Backend, BackendState, CHECK_OK, CHECK_UNKNOWN, LOAD_UNKNOWN};
use crate::clock;
use crate::conns::ConnTable;
use crate::shared::Shared;

/// Close code for connections of a drained backend (RFC 6455 §7.4.1 registry: "Service Restart").
const DRAINED: u16 = 1012;

/// `GET /api/pools`: every pool (by name) and every backend (in config order).
pub(crate) fn pools(shared: &Shared) -> Value {
    let rt = shared.runtime.load();
    let mut names: Vec<&String> = rt.pools.keys().collect();
    names.sort();
    let pools: Vec<Value> = names
        .into_iter()
        .map(|name| {
            let p = &rt.pools[name];
            json!({
                "name": name,
                "algorithm": p.config.algorithm.name(),
                "backends": p.backends.iter().map(|b| backend(b)).collect::<Vec<_>>(),
                "discovery": discovery(&rt, name, &p.config),
            })
        })
        .collect();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "draining": shared.draining.load(Relaxed),
        "connections": shared.conns.len(),
        "pools": pools,
    })
}

fn backend(b: &Backend) -> Value {
    let load = b.custom_load.load(Relaxed);
    let max = b.max_connections();
    json!({
        "address": b.address,
        "discovered_from": b.discovered_from().as_deref(),
        "state": b.state().name(),
        "weight": b.weight(),
        "max_connections": (max != 0).then_some(max),
        "ejected": b.is_ejected(clock::now_ms()),
        "active": b.active(),
        "throttled": b.metrics.throttled_now.load(Relaxed),
        "total": b.total.load(Relaxed),
        "bytes_in_per_s": b.rate_c2b.get(),
        "bytes_out_per_s": b.rate_b2c.get(),
        "bytes_c2b": b.bytes_c2b.load(Relaxed),
        "bytes_b2c": b.bytes_b2c.load(Relaxed),
        "messages_c2b": b.msgs_c2b.load(Relaxed),
        "http_requests": b.http_requests.load(Relaxed),
        "messages_b2c": b.msgs_b2c.load(Relaxed),
        "latency_ms": b.latency.get() * 1000.0,
        "custom_load": (load != LOAD_UNKNOWN).then_some(load),
        "last_check": last_check(b),
    })
}

/// The pool's DNS discovery entries: each with what it asks and how many backends its last
/// good answer holds (`answered: false` before the first one).
fn discovery(rt: &crate::runtime::Runtime, pool: &str, config: &crate::config::PoolConfig) -> Vec<Value> {
    config
        .backends
        .iter()
        .filter_map(|b| {
            let d = b.discover.as_ref()?;
            let found = rt.discovered.get(&(pool.to_string(), b.address.clone()));
            Some(json!({
                "name": b.address,
                "kind": d.kind(),
                "query": d.name(),
                "refresh_ms": d.refresh().as_millis() as u64,
                "answered": found.is_some(),
                "backends": found.map_or(0, Vec::len),
            }))
        })
        .collect()
}

/// The last active check: `{"ok": bool, "age_ms": n}`, or null before the first one.
fn last_check(b: &Backend) -> Value {
    let at = b.last_check_ms.load(Relaxed);
    match b.last_check_ok.load(Relaxed) {
        CHECK_UNKNOWN => Value::Null,
        r => json!({ "ok": r == CHECK_OK, "age_ms": clock::now_ms().saturating_sub(at) }),
    }
}

/// `GET /api/status`: process-level numbers.
pub(crate) fn status(admin: &Admin) -> Value {
    let shared = &admin.shared;
    let last = shared.last_reload.lock().ok().and_then(|g| g.clone());
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": clock::epoch().elapsed().as_secs(),
        "draining": shared.draining.load(Relaxed),
        "connections": shared.conns.len(),
        "admitted": shared.admission.active(),
        // Connections held back by their message limits now.
        "throttled": shared
            .runtime
            .load()
            .pools
            .values()
            .flat_map(|p| p.backends.iter())
            .map(|b| b.metrics.throttled_now.load(Relaxed))
            .sum::<u64>(),
        "h2": {
            "connections": shared.h2.connections.load(Relaxed),
            "streams": shared.h2.streams.load(Relaxed),
        },
        "config_path": shared.config_path.as_ref().map(|p| p.display().to_string()),
        "last_reload": last.map(|(at_unix_s, r)| json!({
            "at_unix_s": at_unix_s,
            "ok": r.is_ok(),
            "errors": r.err().unwrap_or_default(),
        })),
    })
}

/// `POST /api/reload`: same as SIGHUP; `200 ok` or `422` with one error per line.
pub(crate) async fn reload(admin: &Admin) -> Resp {
    // Queued behind any reload already asked for; the queue logs the outcome and records
    // it for `/api/status`.
    match crate::reload::reload_async(&admin.shared).await {
        // What entries new to the config found, one line each, after the `ok`.
        Ok(notes) => text(StatusCode::OK, notes.iter().fold("ok\n".to_string(), |acc, n| acc + n + "\n")),
        Err(errors) => {
            let mut body = errors.join("\n");
            body.push('\n');
            text(StatusCode::UNPROCESSABLE_ENTITY, body)
        }
    }
}

/// `POST /api/pools/{pool}/backends/{address}/drain|undrain`.
///
/// Drain: no new connections, and the live ones are closed with 1012 spread (jittered) over
/// `limits.drain_timeout` so their clients do not reconnect in lockstep. Undrain: back to
/// service through the backend's one return transition — `up` with slow start, or `down`
/// while its last active check failed (the checks bring it up); a backend that is not
/// draining keeps its state. Closes already scheduled still happen.
pub(crate) fn set_drain(shared: &Shared, pool: &str, address: &str, drain: bool) -> Resp {
    let rt = shared.runtime.load();
    let Some(p) = rt.pools.get(pool) else {
        return json(StatusCode::NOT_FOUND, &json!({ "error": format!("no pool named {pool:?}") }));
    };
    let Some(b) = p.backend(address) else {
        return json(
            StatusCode::NOT_FOUND,
            &json!({ "error": format!("pool {pool:?} has no backend {address:?}") }),
        );
    };
    let now = clock::now_ms();
    if !drain {
        let was = b.state();
        let state = b.return_to_service(BackendState::Draining, now).unwrap_or_else(|| b.state());
        tracing::info!(
            pool,
            backend = address,
            previous = was.name(),
            state = state.name(),
            "backend undrained through the admin API"
        );
        return json(
            StatusCode::OK,
            &json!({ "pool": pool, "backend": address, "state": state.name(), "previous": was.name() }),
        );
    }
    let was = b.set_state(BackendState::Draining, now);
    let drain_ms = rt.config.limits.drain_timeout.as_millis() as u64;
    let live = shared.conns.select(|c| Arc::ptr_eq(&c.backend, b));
    ConnTable::spread_close(&live, now, drain_ms, DRAINED);
    tracing::info!(
        pool,
        backend = address,
        connections = live.len(),
        drain_ms,
        "backend drained through the admin API"
    );
    json(
        StatusCode::OK,
        &json!({
            "pool": pool,
            "backend": address,
            "state": "draining",
            "previous": was.name(),
            "closing": live.len(),
            "drain_timeout_ms": drain_ms,
        }),
    )
}
