//! Reloading: SIGHUP, `POST /api/reload` and `--watch` all run [`reload`]: read → validate
//! fully → bind new listeners → build the new runtime (reusing the live state of every
//! backend that stays) → swap it in atomically → apply the difference (drain what went
//! away). Anything that fails rejects the reload whole; the old config keeps serving.

use std::sync::Arc;
use std::time::Duration;

use crate::clock;
use crate::config::Config;
use crate::runtime::Runtime;
use crate::server::conns::ConnTable;
use crate::server::{Server, Shared};

/// Problems only visible by opening files the config names (TLS certificates and keys),
/// positioned at the first mention of the file name in the config text.
fn file_problems(cfg: &Config, text: &str) -> Vec<crate::config::ConfigError> {
    let mut out = Vec::new();
    let locate = |needle: &std::path::Path| -> (usize, usize) {
        let name = needle.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        for (i, line) in text.lines().enumerate() {
            if let Some(c) = line.find(&name) {
                return (i + 1, c + 1);
            }
        }
        (1, 1)
    };
    for l in &cfg.listeners {
        let Some(t) = &l.tls else { continue };
        for c in &t.certs {
            if let Err(message) = crate::tls::load_certified_key(c) {
                let (line, col) = locate(&c.cert);
                out.push(crate::config::ConfigError {
                    line,
                    col,
                    message,
                    hint: None,
                });
            }
        }
    }
    for p in cfg.pools.values() {
        for b in &p.backends {
            if let Some(t) = &b.tls {
                if let Err(message) = crate::tls::client_connector(t, &b.address) {
                    let (line, col) = t.ca.as_deref().map(locate).unwrap_or((1, 1));
                    out.push(crate::config::ConfigError {
                        line,
                        col,
                        message,
                        hint: None,
                    });
                }
            }
        }
    }
    out
}

/// Reads a config file once and validates it whole, including the files it names: what
/// `check`, start-up and every reload accept. Returns the config and the text it came from.
pub fn load_checked(path: &std::path::Path) -> Result<(Config, String), Vec<crate::config::ConfigError>> {
    let (text, cfg) = crate::config::read(path)?;
    let problems = file_problems(&cfg, &text);
    if problems.is_empty() {
        Ok((cfg, text))
    } else {
        Err(problems)
    }
}

/// Reloads the config file: read → validate → bind new listeners → build (reusing live
/// backend state) → swap → apply the difference. Rejected whole on any error, with the old
/// config still serving; counted in `switchyard_config_reloads_total`.
pub fn reload(shared: &Arc<Shared>) -> Result<(), Vec<String>> {
    let started = std::time::Instant::now();
    let result = match shared.config_path.clone() {
        None => Err(vec!["no config file to reload (demo mode)".into()]),
        Some(path) => load_checked(&path)
            .map_err(|e| e.iter().map(|e| e.render(&path.display().to_string())).collect::<Vec<_>>())
            .and_then(|(cfg, _)| apply(shared, cfg)),
    };
    crate::metrics::reload(result.is_ok());
    match &result {
        Ok(()) => tracing::info!(elapsed_us = started.elapsed().as_micros() as u64, "config reloaded"),
        Err(e) => tracing::error!(
            errors = e.len(),
            "config reload rejected; the old config keeps serving:\n{}",
            e.join("\n")
        ),
    }
    let unix_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    *shared.last_reload.lock().unwrap_or_else(|e| e.into_inner()) = Some((unix_s, result.clone()));
    result
}

/// Applies a validated config to the running server (also used by tests).
pub fn apply(shared: &Arc<Shared>, cfg: Config) -> Result<(), Vec<String>> {
    let old = shared.runtime.load_full();
    let rt = Runtime::build(cfg, Some(&old)).map_err(|e| vec![e])?;
    let mut bound = shared.listeners.lock().unwrap_or_else(|e| e.into_inner());
    // Listeners to open: new names, or a changed bind address. All or nothing.
    let mut opened = Vec::new();
    for l in &rt.config.listeners {
        let same = bound
            .iter()
            .any(|b| b.name == l.name && (b.configured == l.bind || b.actual == l.bind));
        if !same {
            match shared.open_listener(&l.name, l.bind) {
                Ok(b) => opened.push(b),
                Err(e) => {
                    for b in opened {
                        let _ = b.stop.send(true);
                    }
                    return Err(vec![e]);
                }
            }
        }
    }
    let drain_ms = rt.config.limits.drain_timeout.as_millis() as u64;
    shared.runtime.store(Arc::new(rt));
    let rt = shared.runtime.load_full();
    let now = clock::now_ms();
    // Listeners gone (or moved): stop accepting, drain their connections with 1001.
    let (keep, gone): (Vec<_>, Vec<_>) = bound.drain(..).partition(|b| {
        rt.config
            .listeners
            .iter()
            .any(|l| l.name == b.name && (l.bind == b.configured || l.bind == b.actual))
            && !opened.iter().any(|o| o.name == b.name)
    });
    for b in gone {
        let _ = b.stop.send(true);
        if !opened.iter().any(|o| o.name == b.name) {
            let conns = shared.conns.select(|c| *c.listener == *b.name);
            ConnTable::spread_close(&conns, now, drain_ms, crate::ws::CloseCode::GoingAway.code());
        }
        tracing::info!(listener = %b.name, addr = %b.actual, "listener closed by reload");
    }
    *bound = keep;
    bound.extend(opened);
    drop(bound);
    // Backends gone: no new connections, live ones closed with 1012 spread over drain_timeout.
    for pool in old.pools.values() {
        for b in &pool.backends {
            let kept = rt
                .pools
                .get(&*pool.name)
                .is_some_and(|p| p.backends.iter().any(|n| Arc::ptr_eq(n, b)));
            if !kept {
                b.set_state(crate::backend::BackendState::Draining, now);
                let conns = shared.conns.select(|c| Arc::ptr_eq(&c.backend, b));
                tracing::info!(pool = %pool.name, backend = %b.address, connections = conns.len(), "backend removed by reload: draining");
                ConnTable::spread_close(&conns, now, drain_ms, crate::ws::CloseCode::ServiceRestart.code());
            }
        }
    }
    Ok(())
}

/// Polls the config file (every 0.5 s) and reloads when its content differs from what was
/// last loaded, after it has stayed the same for 0.3 s (debounce). Comparing content, not
/// modification times, cannot miss a change made in the same clock tick as the last one.
pub fn watch_file(server: &Server, loaded: Vec<u8>) {
    let shared = server.shared.clone();
    server.control().spawn(async move {
        let Some(path) = shared.config_path.clone() else { return };
        let mut last = loaded;
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let Ok(now) = std::fs::read(&path) else { continue };
            if now != last {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let Ok(settled) = std::fs::read(&path) else { continue };
                if settled != now {
                    continue; // still being written: look again next round
                }
                last = settled;
                let _ = reload(&shared);
            }
        }
    });
}
