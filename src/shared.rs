//! The state every task of the process shares: the live runtime, the connection table,
//! admission, the listeners, the reload queue. It sits low in the house: the server, health
//! checks, the admin API, rebalancing and reloads all read or write it, and none of them is
//! imported by it; the tasks are started in one place, `Server::start`.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::conns::ConnTable;
use crate::limits::Admission;
use crate::listeners::{BoundListener, WorkerCmd};
use crate::runtime::Runtime;

/// State every task of the process shares.
#[derive(Debug)]
pub struct Shared {
    /// The live config-derived state; swapped whole on reload.
    pub runtime: ArcSwap<Runtime>,
    /// Live proxied connections.
    pub conns: Arc<ConnTable>,
    /// Connection caps and rate.
    pub admission: Arc<Admission>,
    /// Set once shutdown began (`/healthz` answers 503).
    pub draining: AtomicBool,
    /// Woken when shutdown begins: plain HTTP keep-alive connections close after their
    /// current request.
    pub drain_started: tokio::sync::Notify,
    /// Idle keep-alive connections to backends, for plain HTTP.
    pub http_clients: Arc<crate::http::ClientPool>,
    /// The config file, for reloads.
    pub config_path: Option<PathBuf>,
    /// Bound listeners (changed by reloads).
    pub listeners: std::sync::Mutex<Vec<BoundListener>>,
    /// Bumped by every reload after it renamed, moved or replaced listeners: a keep-alive
    /// connection looks its socket's name up again when it changed.
    pub listener_epoch: std::sync::atomic::AtomicU64,
    /// One command queue per worker thread.
    pub(crate) workers: Vec<tokio::sync::mpsc::UnboundedSender<WorkerCmd>>,
    /// When the last reload ran (Unix seconds) and how it ended, whatever triggered it.
    pub last_reload: std::sync::Mutex<Option<(u64, ReloadOutcome)>>,
    /// The one queue every reload goes through (SIGHUP, API, `--watch`), run in order; DNS
    /// discovery's answers go through it too.
    pub reloads: ReloadQueue,
    /// HTTP/2 client connections open now, and their open streams.
    pub h2: H2Gauges,
}

/// How much HTTP/2 is open now (for `/api/status` and the dashboard).
#[derive(Debug, Default)]
pub struct H2Gauges {
    /// Client connections that chose `h2`.
    pub connections: std::sync::atomic::AtomicU64,
    /// Their open streams (requests in flight and WebSockets).
    pub streams: std::sync::atomic::AtomicU64,
}

impl Shared {
    /// Backends of `old` that `new` no longer has: no new connections, live ones closed with
    /// 1012 spread over drain_timeout. The state is set before the connections are selected:
    /// one that registers later sees it and closes itself (`upgrade::start`).
    pub fn drain_removed(&self, old: &Runtime, new: &Runtime, now: u64) {
        let drain_ms = new.config.limits.drain_timeout.as_millis() as u64;
        for pool in old.pools.values() {
            let now_pool = new.pools.get(&*pool.name);
            if now_pool.is_some_and(|p| Arc::ptr_eq(p, pool)) {
                continue;
            }
            for b in &pool.backends {
                let kept = now_pool.is_some_and(|p| p.backends.iter().any(|n| Arc::ptr_eq(n, b)));
                if !kept {
                    b.set_state(crate::backend::BackendState::Draining, now);
                    let conns = self.conns.select(|c| Arc::ptr_eq(&c.backend, b));
                    tracing::info!(pool = %pool.name, backend = %b.address, connections = conns.len(), "backend removed: draining");
                    ConnTable::spread_close(&conns, now, drain_ms, crate::ws::CloseCode::ServiceRestart.code());
                }
            }
        }
    }
}

/// The outcome of one reload: `Ok`, or every error (one per line in the API's answer).
pub type ReloadOutcome = Result<Vec<String>, Vec<String>>;

/// What a reload reads its config from.
pub enum ReloadSource {
    /// The config file, read when the reload's turn comes.
    File,
    /// This text of the config file (what `--watch` saw settle).
    Text(String),
    /// Not a reload: a discovery entry's new answer, applied to the live runtime on the same
    /// queue, so an answer and a reload never build from the same runtime and undo each other.
    Found(FoundAnswer),
}

/// A discovery entry's new answer (canonical, never empty).
#[derive(Debug, Clone, PartialEq)]
pub struct FoundAnswer {
    /// The pool of the entry.
    pub pool: String,
    /// The entry (its `address`, or SRV name).
    pub entry: String,
    /// What DNS answered.
    pub found: Vec<crate::discovered::Found>,
}

/// Where a reload's outcome goes.
pub enum ReloadReply {
    /// Nobody waits (SIGHUP: the outcome is logged and shown in `/api/status`).
    None,
    /// A thread waits (the blocking `reload::reload`).
    Blocking(std::sync::mpsc::Sender<ReloadOutcome>),
    /// A task waits (`POST /api/reload`, `--watch`).
    Task(tokio::sync::oneshot::Sender<ReloadOutcome>),
}

/// One queued reload.
pub struct ReloadJob {
    /// Where the config comes from.
    pub source: ReloadSource,
    /// Where the outcome goes.
    pub reply: ReloadReply,
}

/// The single queue every reload goes through: one task on the control runtime takes
/// the requests in the order they were made and runs them one at a time (each on the
/// blocking pool, so file reads and binds never stall admin or health checks). Two
/// overlapping reloads therefore end with the later one's config, whatever started them.
pub struct ReloadQueue {
    tx: tokio::sync::mpsc::UnboundedSender<ReloadJob>,
    /// Taken once by the task that runs the reloads.
    pub rx: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<ReloadJob>>>,
    /// Reloads that have read their config text so far (the one running included): what a
    /// caller watches to know a reload is under way with the file as it was.
    read: std::sync::atomic::AtomicU64,
}

impl Default for ReloadQueue {
    fn default() -> Self {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        ReloadQueue {
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
            read: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl std::fmt::Debug for ReloadQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("reload::Queue")
    }
}

impl ReloadQueue {
    /// Queues one reload; false when the server is stopping.
    pub fn push(&self, source: ReloadSource, reply: ReloadReply) -> bool {
        self.tx.send(ReloadJob { source, reply }).is_ok()
    }

    /// How many reloads have read their config text so far.
    pub fn read(&self) -> u64 {
        self.read.load(std::sync::atomic::Ordering::Acquire)
    }

    /// A reload has read its config text.
    pub(crate) fn text_read(&self) {
        self.read.fetch_add(1, std::sync::atomic::Ordering::Release);
    }
}
