//! Reloading: SIGHUP, `POST /api/reload` and `--watch` all run [`reload`]: read → validate
//! fully → bind new listeners → build the new runtime (reusing the live state of every
//! backend that stays) → swap it in atomically → apply the difference (drain what went
//! away). Anything that fails rejects the reload whole; the old config keeps serving.

use std::sync::Arc;
use std::time::Duration;

use crate::clock;
use crate::config::Config;
use crate::conns::ConnTable;
use crate::runtime::Runtime;
use crate::shared::Shared;

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
                // A discovery entry's backends are checked against its name (see `discovered`).
                let t = match &b.discover {
                    Some(d) if t.server_name.is_none() => &crate::config::BackendTls {
                        server_name: Some(d.tls_name().to_string()),
                        ..t.clone()
                    },
                    _ => t,
                };
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
    let (text, _) = crate::config::read(path)?;
    check_text(path, &text).map(|cfg| (cfg, text))
}

pub use crate::shared::ReloadOutcome as Outcome;
pub use crate::shared::ReloadQueue as Queue;
use crate::shared::{ReloadJob as Job, ReloadReply as Reply, ReloadSource as Source};

/// Starts the task that runs queued reloads (on the current runtime: the control one). It
/// holds the shared state weakly, so a stopped server is not kept alive by its queue.
pub(crate) fn spawn_queue(shared: &Arc<Shared>) {
    let Some(mut rx) = shared.reloads.rx.lock().ok().and_then(|mut r| r.take()) else {
        return;
    };
    let weak = Arc::downgrade(shared);
    tokio::spawn(async move {
        while let Some(job) = rx.recv().await {
            let Some(shared) = weak.upgrade() else { break };
            let Job { source, reply } = job;
            let outcome = tokio::task::spawn_blocking(move || match source {
                Source::Found(answer) => crate::discovery::apply_answer(&shared, answer),
                source => run(&shared, source),
            })
            .await
            .unwrap_or_else(|e| Err(vec![format!("reload failed: {e}")]));
            match reply {
                Reply::None => {}
                Reply::Blocking(tx) => {
                    let _ = tx.send(outcome);
                }
                Reply::Task(tx) => {
                    let _ = tx.send(outcome);
                }
            }
        }
    });
}

/// Reloads the config file and waits for the outcome (blocking: never call it on the
/// control thread). Queued behind any reload already asked for.
pub fn reload(shared: &Arc<Shared>) -> Outcome {
    let (tx, rx) = std::sync::mpsc::channel();
    if !shared.reloads.push(Source::File, Reply::Blocking(tx)) {
        return Err(vec!["the server is stopping".into()]);
    }
    rx.recv().unwrap_or_else(|_| Err(vec!["the server is stopping".into()]))
}

/// Reloads the config file and waits for the outcome without blocking the runtime.
pub async fn reload_async(shared: &Arc<Shared>) -> Outcome {
    queued(shared, Source::File).await
}

/// Asks for a reload of the config file without waiting (SIGHUP).
pub fn request(shared: &Arc<Shared>) {
    let _ = shared.reloads.push(Source::File, Reply::None);
}

async fn queued(shared: &Arc<Shared>, source: Source) -> Outcome {
    let (tx, rx) = tokio::sync::oneshot::channel();
    if !shared.reloads.push(source, Reply::Task(tx)) {
        return Err(vec!["the server is stopping".into()]);
    }
    rx.await.unwrap_or_else(|_| Err(vec!["the server is stopping".into()]))
}

/// One reload, on the queue's turn: read → validate → bind new listeners → commit → swap →
/// apply the difference. Rejected whole on any error, with the old config still serving;
/// counted in `switchyard_config_reloads_total`, recorded for `/api/status`.
fn run(shared: &Arc<Shared>, source: Source) -> Outcome {
    let started = std::time::Instant::now();
    let result = match shared.config_path.clone() {
        None => Err(vec!["no config file to reload (demo mode)".into()]),
        Some(path) => {
            let name = path.display().to_string();
            let text = match source {
                Source::Text(t) => Ok(t),
                Source::File | Source::Found(_) => crate::config::read_text(&path).map_err(|e| {
                    vec![crate::config::ConfigError {
                        line: 1,
                        col: 1,
                        message: format!("cannot read {name}: {e}"),
                        hint: None,
                    }]
                }),
            };
            shared.reloads.text_read();
            text.and_then(|text| check_text(&path, &text).map(|cfg| (cfg, text)))
                .map_err(|e| e.iter().map(|e| e.render(&name)).collect())
                .and_then(|(cfg, text)| {
                    let applied = apply(shared, cfg);
                    if applied.is_ok() {
                        crate::metrics::config_running(&path, &text);
                    }
                    applied
                })
        }
    };
    crate::metrics::reload(result.is_ok());
    match &result {
        Ok(notes) => tracing::info!(
            elapsed_us = started.elapsed().as_micros() as u64,
            "config reloaded{}{}",
            if notes.is_empty() { "" } else { ":\n" },
            notes.join("\n")
        ),
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

/// Validates the text of the config file at `path` whole, including the files it names.
fn check_text(path: &std::path::Path, text: &str) -> Result<Config, Vec<crate::config::ConfigError>> {
    let cfg = crate::config::parse_file(path, text)?;
    let problems = file_problems(&cfg, text);
    if problems.is_empty() {
        Ok(cfg)
    } else {
        Err(problems)
    }
}

/// Applies a validated config to the running server. All or nothing: the runtime is
/// prepared aside and new listeners are bound before anything live is touched; only then
/// are the kept backends' settings written, the runtime swapped and the difference applied.
fn apply(shared: &Arc<Shared>, cfg: Config) -> Outcome {
    let old = shared.runtime.load_full();
    // Discovered backends stay: the entries that stay keep their last answers, and entries
    // new to this config are asked now, before anything is built from them (bounded by the
    // resolver's timeout): a renamed entry that finds the same addresses keeps its backends.
    let (found, held, notes) = crate::discovery::ask_new(&cfg, &old.config).merged(&old.discovered, &old.held, &old.config, &cfg);
    let prepared = Runtime::prepare(cfg, Some(&old), &found, held).map_err(|e| vec![e])?;
    // Sockets are matched by address, not by name: a wanted listener whose address a bound
    // one has takes that one's sockets (renamed if its name differs), so renames, moves of a
    // name to another address and swaps of two addresses apply in one reload without
    // binding an address that is still open. Only addresses nobody has are bound anew.
    let plan: ListenerPlan = {
        let bound = shared.listeners.lock().unwrap_or_else(|e| e.into_inner());
        plan_listeners(&bound, &prepared.config().listeners)
    };
    let mut opened = Vec::with_capacity(plan.to_open.len());
    for (name, bind) in &plan.to_open {
        // On failure `opened` is dropped: its sockets close, none ever accepted.
        opened.push(Shared::bind_listener(name, *bind, shared.workers()).map_err(|e| vec![e])?);
    }
    // Nothing below can fail: commit.
    let rt = Arc::new(prepared.commit());
    let drain_ms = rt.config.limits.drain_timeout.as_millis() as u64;
    shared.runtime.store(rt.clone());
    let now = clock::now_ms();
    let mut bound = shared.listeners.lock().unwrap_or_else(|e| e.into_inner());
    let mut all: Vec<Option<crate::listeners::BoundListener>> = bound.drain(..).map(Some).collect();
    let mut keep = Vec::with_capacity(plan.keep.len() + opened.len());
    for (i, name) in &plan.keep {
        let Some(mut b) = all[*i].take() else { continue };
        if b.name != *name {
            tracing::info!(listener = %name, previous = %b.name, addr = %b.actual, "listener renamed by reload (same sockets)");
            b.rename(name);
        }
        keep.push(b);
    }
    let mut gone: Vec<crate::listeners::BoundListener> = all.into_iter().flatten().collect();
    for o in opened {
        keep.push(shared.start_listener(o));
    }
    // A name moved to another address (bound anew, or another listener's it took over):
    // the connections of its old socket stay its own.
    for l in keep.iter_mut() {
        if let Some(old) = gone.iter_mut().find(|g| g.name == l.name) {
            l.sockets.append(&mut old.sockets);
        }
    }
    *bound = keep;
    shared.listener_epoch.fetch_add(1, std::sync::atomic::Ordering::Release);
    // Removed from the list (under its lock) before the connections are selected: one that
    // registers later sees its socket gone and closes itself (`upgrade::start`).
    drop(bound);
    // Listeners gone (or moved): stop accepting; the connections of a socket whose
    // listener is gone (not moved) drain with 1001.
    for b in gone {
        // Waits (bounded) until every worker closed its socket: the next reload may bind the
        // same address again.
        b.close(std::time::Duration::from_secs(2));
        if !b.sockets.is_empty() {
            let conns = shared.conns.select(|c| b.sockets.contains(&c.socket));
            ConnTable::spread_close(&conns, now, drain_ms, crate::ws::CloseCode::GoingAway.code());
        }
        tracing::info!(listener = %b.name, addr = %b.actual, "listener closed by reload");
    }
    shared.drain_removed(&old, &rt, now);
    push_message_limits(shared, &old.config, &rt.config);
    Ok(notes)
}

/// A reload that changed message limits (`limits:` or a route's) gives every live
/// connection its limits under the new config: those of its listener's route with the same
/// conditions and pool as the one it came by (wherever it moved in the list), else of the
/// listener's first route to its pool, else `limits:` alone.
fn push_message_limits(shared: &Shared, old: &crate::config::Config, new: &crate::config::Config) {
    let route_limits = |c: &crate::config::Config| -> Vec<crate::config::MessageOverride> {
        c.listeners.iter().flat_map(|l| l.routes.iter().map(|r| r.limits)).collect()
    };
    if old.limits.messages == new.limits.messages && route_limits(old) == route_limits(new) {
        return;
    }
    let conns = shared.conns.select(|_| true);
    for c in &conns {
        let listener = shared.socket_name(c.socket);
        let routes = listener
            .as_deref()
            .and_then(|n| new.listeners.iter().find(|l| *l.name == *n))
            .map(|l| l.routes.as_slice())
            .unwrap_or_default();
        let route = routes
            .iter()
            .find(|r| r.key() == c.route)
            .or_else(|| routes.iter().find(|r| *r.pool == *c.pool));
        let limits = match route {
            Some(r) => new.limits.messages.with(&r.limits),
            None => new.limits.messages,
        };
        c.set_limits(limits);
    }
    tracing::info!(connections = conns.len(), "message limits of live connections changed by reload");
}

/// How a reload's listeners map onto the bound ones.
#[derive(Debug, PartialEq)]
struct ListenerPlan {
    /// Bound listeners kept (by index), each under the name it takes.
    keep: Vec<(usize, String)>,
    /// Listeners to bind anew.
    to_open: Vec<(String, std::net::SocketAddr)>,
}

/// Matches the wanted listeners to the bound ones by address (the configured one, or the
/// one a port-0 listener got); a wanted listener without one is bound anew. Bound listeners
/// no wanted one matches are closed by the caller.
fn plan_listeners(bound: &[crate::listeners::BoundListener], wanted: &[crate::config::ListenerConfig]) -> ListenerPlan {
    plan_by_address(
        &bound.iter().map(|b| (b.configured, b.actual, b.name.as_str())).collect::<Vec<_>>(),
        &wanted.iter().map(|l| (l.name.as_str(), l.bind)).collect::<Vec<_>>(),
    )
}

/// [`plan_listeners`] over plain values: `bound` as (configured, actual, name), `wanted` as
/// (name, bind). A bound listener under the same name is preferred when two could match (a
/// port-0 listener reloaded as written).
fn plan_by_address(bound: &[(std::net::SocketAddr, std::net::SocketAddr, &str)], wanted: &[(&str, std::net::SocketAddr)]) -> ListenerPlan {
    let mut claimed = vec![false; bound.len()];
    let mut plan = ListenerPlan {
        keep: Vec::new(),
        to_open: Vec::new(),
    };
    let matches = |b: &(std::net::SocketAddr, std::net::SocketAddr, &str), bind: std::net::SocketAddr| {
        // Port 0 asks for any port: it matches only the listener it was written for.
        b.0 == bind && bind.port() != 0 || b.1 == bind
    };
    let wanted_name = |n: &str| wanted.iter().any(|(w, _)| *w == n);
    for &(name, bind) in wanted {
        let free = |i: usize| !claimed[i];
        // The same name on the same address (for port 0: the same configured address).
        let same_name = (0..bound.len())
            .find(|&i| free(i) && bound[i].2 == name && (matches(&bound[i], bind) || (bind.port() == 0 && bound[i].0 == bind)));
        // Another listener's address; for port 0, a listener of that configured address
        // whose name no wanted listener has (a rename).
        let other = || {
            (0..bound.len()).find(|&i| free(i) && matches(&bound[i], bind)).or_else(|| {
                (bind.port() == 0)
                    .then(|| (0..bound.len()).find(|&i| free(i) && bound[i].0 == bind && !wanted_name(bound[i].2)))
                    .flatten()
            })
        };
        match same_name.or_else(other) {
            Some(i) => {
                claimed[i] = true;
                plan.keep.push((i, name.to_string()));
            }
            None => plan.to_open.push((name.to_string(), bind)),
        }
    }
    plan
}

/// How often `--watch` looks at the file.
const WATCH_POLL: Duration = Duration::from_millis(500);
/// How long a changed file must stay the same (content, size, modification time and inode)
/// before `--watch` applies it.
const WATCH_SETTLE: Duration = Duration::from_millis(500);
/// A look at the file that takes longer than this is abandoned (and retried next round).
const WATCH_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// One look at the config file by `--watch`: its text and the identity of what was read.
#[derive(Debug, Clone, PartialEq)]
struct Snapshot {
    text: String,
    len: u64,
    modified: Option<std::time::SystemTime>,
    inode: u64,
    /// Another process has the file open for writing (a writer pausing mid-file).
    being_written: bool,
}

/// Reads the file with [`crate::config::read_text`] (regular files only, non-blocking,
/// bounded), then checks nothing changed underneath: size, mtime and inode before and
/// after the read agree, and the size matches what was read.
fn snapshot(path: &std::path::Path) -> std::io::Result<Snapshot> {
    use std::os::unix::fs::MetadataExt;
    let before = std::fs::metadata(path)?;
    let text = crate::config::read_text(path)?;
    let after = std::fs::metadata(path)?;
    let being_written = open_for_writing(path);
    let (len, modified, inode) = (after.len(), after.modified().ok(), after.ino());
    if before.len() != len || before.modified().ok() != modified || before.ino() != inode || text.len() as u64 != len {
        return Err(std::io::Error::other("changed while read"));
    }
    Ok(Snapshot {
        text,
        len,
        modified,
        inode,
        being_written,
    })
}

/// Is the file open for writing by any process? Asked with a read lease (Linux: granted
/// only when nobody has the file open for writing). When leases are not available to us
/// (another owner, leases disabled), assume not: the settle time still applies.
fn open_for_writing(path: &std::path::Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;
    let Ok(f) = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path) else {
        return false;
    };
    // SAFETY: fcntl on a descriptor we own; the lease is released before it is closed.
    unsafe {
        if libc::fcntl(f.as_raw_fd(), libc::F_SETLEASE, libc::F_RDLCK) == 0 {
            libc::fcntl(f.as_raw_fd(), libc::F_SETLEASE, libc::F_UNLCK);
            return false;
        }
    }
    matches!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EAGAIN) | Some(libc::EBUSY)
    )
}

/// Looks at the file off the control thread, with a time limit.
async fn look(path: &std::path::Path) -> Option<Snapshot> {
    let p = path.to_path_buf();
    match tokio::time::timeout(WATCH_READ_TIMEOUT, tokio::task::spawn_blocking(move || snapshot(&p))).await {
        Ok(Ok(Ok(s))) => Some(s),
        _ => None,
    }
}

/// Polls the config file (every 0.5 s) and reloads when its content differs from what was
/// last loaded. A change is applied only once the file has settled: the same content,
/// size, mtime and inode over [`WATCH_SETTLE`], not open for writing by anyone, and not
/// shorter than at any look in between (a file truncated to be rewritten in place is
/// waited out). The text that settled is what is validated and applied, through the same
/// queue as every other reload. Reads never block the control thread: regular files only,
/// non-blocking, bounded, on the blocking pool with a timeout.
pub fn watch_file(shared: Arc<Shared>, control: &tokio::runtime::Handle, loaded: Vec<u8>) {
    control.spawn(async move {
        let Some(path) = shared.config_path.clone() else { return };
        let mut last = loaded;
        let mut complained = false;
        loop {
            tokio::time::sleep(WATCH_POLL).await;
            let Some(first) = look(&path).await else {
                if !complained {
                    tracing::warn!(config = %path.display(), "--watch: cannot read the config file as a regular file; waiting");
                    complained = true;
                }
                continue;
            };
            complained = false;
            if first.text.as_bytes() == last.as_slice() {
                continue;
            }
            // Changed: wait until it settles. Any difference, a shrink or a writer still
            // holding it open sends it back to the next round.
            tokio::time::sleep(WATCH_SETTLE).await;
            let Some(settled) = look(&path).await else { continue };
            if settled != first || settled.being_written || first.being_written {
                tracing::debug!(config = %path.display(), "--watch: the config file is still changing");
                continue;
            }
            last = settled.text.clone().into_bytes();
            let _ = queued(&shared, Source::Text(settled.text)).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> std::net::SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn listeners_are_matched_by_address() {
        let bound = [
            (a("127.0.0.1:8001"), a("127.0.0.1:8001"), "a"),
            (a("127.0.0.1:8002"), a("127.0.0.1:8002"), "b"),
            (a("127.0.0.1:0"), a("127.0.0.1:40000"), "z"),
        ];
        // A swap of two addresses: both keep their sockets under the other name.
        let plan = plan_by_address(
            &bound,
            &[("a", a("127.0.0.1:8002")), ("b", a("127.0.0.1:8001")), ("z", a("127.0.0.1:0"))],
        );
        assert_eq!(plan.keep, vec![(1, "a".to_string()), (0, "b".to_string()), (2, "z".to_string())]);
        assert!(plan.to_open.is_empty());
        // A name moved to a new port: bound anew; its old socket is not kept.
        let plan = plan_by_address(&bound, &[("a", a("127.0.0.1:8003")), ("b", a("127.0.0.1:8002"))]);
        assert_eq!(plan.keep, vec![(1, "b".to_string())]);
        assert_eq!(plan.to_open, vec![("a".to_string(), a("127.0.0.1:8003"))]);
        // A rename on a port-0 address keeps the socket; another port-0 listener is new.
        let plan = plan_by_address(&bound, &[("y", a("127.0.0.1:0")), ("x", a("127.0.0.1:0"))]);
        assert_eq!(plan.keep, vec![(2, "y".to_string())]);
        assert_eq!(plan.to_open, vec![("x".to_string(), a("127.0.0.1:0"))]);
        // The actual address of a port-0 listener written out is that listener.
        let plan = plan_by_address(&bound, &[("w", a("127.0.0.1:40000"))]);
        assert_eq!(plan.keep, vec![(2, "w".to_string())]);
    }
}
