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
            text.and_then(|text| check_text(&path, &text))
                .map_err(|e| e.iter().map(|e| e.render(&name)).collect())
                .and_then(|cfg| apply(shared, cfg))
        }
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
    // Discovered backends stay: the entries that stay keep their last answers.
    let prepared = Runtime::prepare(cfg, Some(&old), &old.discovered).map_err(|e| vec![e])?;
    // Listeners to open: new names, or a changed bind address. A new name on the address
    // of a listener this reload removes is a rename: its sockets are handed over, since
    // binding the address again while they are open would fail.
    let mut renames: Vec<(String, String)> = Vec::new();
    let to_open: Vec<(String, std::net::SocketAddr)> = {
        let bound = shared.listeners.lock().unwrap_or_else(|e| e.into_inner());
        let wanted = &prepared.config().listeners;
        let mut to_open = Vec::new();
        for l in wanted {
            if bound
                .iter()
                .any(|b| b.name == l.name && (b.configured == l.bind || b.actual == l.bind))
            {
                continue;
            }
            let handed = bound.iter().find(|b| {
                (b.configured == l.bind || b.actual == l.bind)
                    && !wanted.iter().any(|w| w.name == b.name)
                    && !renames.iter().any(|(from, _)| *from == b.name)
            });
            match handed {
                Some(b) => renames.push((b.name.clone(), l.name.clone())),
                None => to_open.push((l.name.clone(), l.bind)),
            }
        }
        to_open
    };
    let mut opened = Vec::with_capacity(to_open.len());
    for (name, bind) in to_open {
        // On failure `opened` is dropped: its sockets close, none ever accepted.
        opened.push(Shared::bind_listener(&name, bind, shared.workers()).map_err(|e| vec![e])?);
    }
    // Nothing below can fail: commit.
    let rt = Arc::new(prepared.commit());
    let drain_ms = rt.config.limits.drain_timeout.as_millis() as u64;
    shared.runtime.store(rt.clone());
    let now = clock::now_ms();
    let mut bound = shared.listeners.lock().unwrap_or_else(|e| e.into_inner());
    for (from, to) in &renames {
        if let Some(b) = bound.iter_mut().find(|b| b.name == *from) {
            tracing::info!(listener = %to, previous = %from, addr = %b.actual, "listener renamed by reload (same sockets)");
            b.rename(to);
        }
    }
    let (keep, gone): (Vec<_>, Vec<_>) = bound.drain(..).partition(|b| {
        rt.config
            .listeners
            .iter()
            .any(|l| l.name == b.name && (l.bind == b.configured || l.bind == b.actual))
            && !opened.iter().any(|o| o.name() == b.name)
    });
    *bound = keep;
    for o in opened {
        let l = shared.start_listener(o);
        bound.push(l);
    }
    // Removed from the list (under its lock) before the connections are selected: one that
    // registers later sees its listener gone and closes itself (`upgrade::start`).
    let open_names: Vec<String> = bound.iter().map(|b| b.name.clone()).collect();
    drop(bound);
    // Listeners gone (or moved): stop accepting; a name gone for good drains with 1001.
    for b in gone {
        // Waits (bounded) until every worker closed its socket: the next reload may bind the
        // same address again.
        b.close(std::time::Duration::from_secs(2));
        if !open_names.contains(&b.name) {
            let conns = shared.conns.select(|c| *c.listener == *b.name);
            ConnTable::spread_close(&conns, now, drain_ms, crate::ws::CloseCode::GoingAway.code());
        }
        tracing::info!(listener = %b.name, addr = %b.actual, "listener closed by reload");
    }
    shared.drain_removed(&old, &rt, now);
    Ok(())
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
