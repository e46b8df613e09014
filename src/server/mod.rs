//! Accept loops, worker threads and graceful shutdown.
//!
//! Each worker thread runs a single-threaded tokio runtime with its own `SO_REUSEPORT`
//! socket per listener (the kernel spreads connections), so a connection lives on one
//! thread and its relay never crosses threads. A control thread runs the admin listener,
//! health checks, samplers and reloads. Shared state is atomics plus an `ArcSwap<Runtime>`.

mod answer;
mod client;
mod connection;
mod forward;
mod h1;
mod h2;
mod plain;
mod proxied;
mod relaying;
mod upgrade;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::clock;
use crate::config::Config;
use crate::conns::ConnTable;
use crate::limits::Admission;
pub use crate::listeners::BoundListener;
use crate::listeners::WorkerCmd;
use crate::runtime::Runtime;
pub use crate::shared::Shared;

/// Server phases broadcast to the workers.
const RUNNING: u8 = 0;
const STOP_ACCEPTING: u8 = 1;
const EXIT: u8 = 2;

/// A running balancer.
pub struct Server {
    /// Shared state.
    pub shared: Arc<Shared>,
    addrs: Vec<(String, SocketAddr)>,
    phase: watch::Sender<u8>,
    workers: Vec<std::thread::JoinHandle<()>>,
    control: tokio::runtime::Handle,
    control_stop: Option<tokio::sync::oneshot::Sender<()>>,
    control_thread: Option<std::thread::JoinHandle<()>>,
    admin_addr: Option<SocketAddr>,
}

/// Raises the open-file soft limit to the hard limit (each proxied connection uses two).
pub fn raise_nofile_limit() {
    // SAFETY: plain libc calls on a local struct.
    unsafe {
        let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

impl Server {
    /// Builds the runtime, binds every listener and starts the workers and control thread.
    pub fn start(config: Config, config_path: Option<PathBuf>) -> Result<Server, String> {
        crate::metrics::install();
        crate::metrics::describe();
        clock::epoch();
        raise_nofile_limit();
        let workers = match config.process.workers {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            n => n,
        };
        // Discovery entries are asked once before the pools are built (bounded).
        let found = crate::discovery::initial(&config);
        let runtime = Runtime::build(config, None, &found)?;
        let admin_listener = match &runtime.config.admin {
            Some(a) => Some(std::net::TcpListener::bind(a.bind).map_err(|e| format!("admin: cannot bind {}: {e}", a.bind))?),
            None => None,
        };
        let admin_addr = admin_listener.as_ref().and_then(|l| l.local_addr().ok());
        let (phase, _) = watch::channel(RUNNING);
        let mut senders = Vec::new();
        let mut threads = Vec::new();
        for w in 0..workers {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            senders.push(tx);
            let prx = phase.subscribe();
            let t = std::thread::Builder::new()
                .name(format!("switchyard-w{w}"))
                .spawn(move || worker(rx, prx))
                .map_err(|e| format!("cannot start worker thread: {e}"))?;
            threads.push(t);
        }
        let listeners: Vec<(String, SocketAddr)> = runtime.config.listeners.iter().map(|l| (l.name.clone(), l.bind)).collect();
        let shared = Arc::new(Shared {
            runtime: ArcSwap::from_pointee(runtime),
            conns: Arc::new(ConnTable::default()),
            admission: Arc::new(Admission::default()),
            draining: AtomicBool::new(false),
            drain_started: tokio::sync::Notify::new(),
            http_clients: Arc::new(crate::http::ClientPool::default()),
            config_path,
            listeners: std::sync::Mutex::new(Vec::new()),
            workers: senders,
            last_reload: std::sync::Mutex::new(None),
            listener_epoch: std::sync::atomic::AtomicU64::new(0),
            reloads: crate::reload::Queue::default(),
            h2: Default::default(),
        });
        let mut addrs = Vec::new();
        for (name, bind) in listeners {
            let bl = shared.open_listener(&name, bind)?;
            addrs.push((name, bl.actual));
            if let Ok(mut l) = shared.listeners.lock() {
                l.push(bl);
            }
        }
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let control_thread = std::thread::Builder::new()
            .name("switchyard-control".into())
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                    return;
                };
                let _ = handle_tx.send(rt.handle().clone());
                rt.block_on(async move {
                    let _ = stop_rx.await;
                });
            })
            .map_err(|e| format!("cannot start control thread: {e}"))?;
        let control = handle_rx.recv().map_err(|_| "control runtime failed to start".to_string())?;
        let server = Server {
            shared,
            addrs,
            phase,
            workers: threads,
            control,
            control_stop: Some(stop_tx),
            control_thread: Some(control_thread),
            admin_addr,
        };
        server.start_background(admin_listener);
        Ok(server)
    }

    fn start_background(&self, admin_listener: Option<std::net::TcpListener>) {
        let _guard = self.control.enter();
        if let Some(l) = admin_listener {
            crate::admin::spawn(self.shared.clone(), l);
        }
        crate::health::spawn_all(&self.shared);
        crate::reload::spawn_queue(&self.shared);
        crate::discovery::spawn(&self.shared);
        tokio::spawn(crate::rebalance::run(self.shared.clone()));
        tokio::spawn(crate::memory::run(self.shared.clone()));
        tokio::spawn(crate::metrics::run_upkeep());
    }

    /// The bound address of a listener (useful with port 0).
    pub fn addr(&self, listener: &str) -> Option<SocketAddr> {
        self.addrs.iter().find(|(n, _)| n == listener).map(|(_, a)| *a)
    }

    /// Every listener and its bound address.
    pub fn addrs(&self) -> &[(String, SocketAddr)] {
        &self.addrs
    }

    /// The admin listener's bound address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Handle of the control runtime (admin, health, reload).
    pub fn control(&self) -> &tokio::runtime::Handle {
        &self.control
    }

    /// Graceful shutdown: stop accepting, `/healthz` → 503, close every connection with 1001
    /// spread over `drain_timeout`, wait for them (plus the close grace), then stop.
    /// Blocking; call from a non-async context or `spawn_blocking`.
    pub fn shutdown(mut self, force: Option<std::sync::mpsc::Receiver<()>>) {
        self.shared.draining.store(true, Relaxed);
        self.shared.drain_started.notify_waiters();
        let _ = self.phase.send(STOP_ACCEPTING);
        let drain = self.shared.runtime.load().config.limits.drain_timeout;
        let now = clock::now_ms();
        let all = self.shared.conns.select(|_| true);
        tracing::info!(
            connections = all.len(),
            drain_ms = drain.as_millis() as u64,
            "shutting down: draining connections"
        );
        ConnTable::spread_close(&all, now, drain.as_millis() as u64, crate::ws::CloseCode::GoingAway.code());
        let deadline = std::time::Instant::now() + drain + Duration::from_secs(6);
        while std::time::Instant::now() < deadline && (self.shared.admission.active() > 0 || !self.shared.conns.is_empty()) {
            if force.as_ref().is_some_and(|f| f.try_recv().is_ok()) {
                tracing::warn!("second signal: exiting at once");
                break;
            }
            // connections that finished their handshake after the drain began
            let late = self.shared.conns.select(|c| c.close_request().is_none());
            ConnTable::spread_close(&late, clock::now_ms(), 1, crate::ws::CloseCode::GoingAway.code());
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop_threads(true);
    }

    fn stop_threads(&mut self, join: bool) {
        let _ = self.phase.send(EXIT);
        if let Some(s) = self.control_stop.take() {
            let _ = s.send(());
        }
        if join {
            for t in self.workers.drain(..) {
                let _ = t.join();
            }
            if let Some(t) = self.control_thread.take() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_threads(false);
    }
}

fn worker(mut cmds: tokio::sync::mpsc::UnboundedReceiver<WorkerCmd>, mut phase: watch::Receiver<u8>) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start worker runtime: {e}");
            return;
        }
    };
    rt.block_on(async move {
        loop {
            tokio::select! {
                cmd = cmds.recv() => match cmd {
                    Some(WorkerCmd::Listen(l)) => match TcpListener::from_std(l.sock) {
                        Ok(sock) => {
                            tokio::spawn(accept_loop(l.shared, (l.name, l.socket), sock, l.own_socket, phase.clone(), l.stop, l.open_loops));
                        }
                        Err(e) => {
                            l.open_loops.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                            tracing::error!(listener = %*l.name.borrow(), "cannot register listener: {e}");
                        }
                    },
                    Some(WorkerCmd::Trim) => {
                        crate::relay::buf::release_free_list();
                        crate::memory::trim();
                    }
                    None => break,
                },
                r = phase.changed() => {
                    if r.is_err() || *phase.borrow() == EXIT {
                        break;
                    }
                }
            }
        }
    });
}

async fn accept_loop(
    shared: Arc<Shared>,
    (names, socket): (watch::Receiver<Arc<str>>, u64),
    listener: TcpListener,
    own_socket: bool,
    mut phase: watch::Receiver<u8>,
    mut stop: watch::Receiver<bool>,
    open_loops: Arc<std::sync::atomic::AtomicUsize>,
) {
    let name = || names.borrow().clone();
    // A listener bound to one address is every accepted socket's local address (no
    // getsockname per connection); a wildcard one is not.
    let local = listener.local_addr().ok().filter(|a| !a.ip().is_unspecified());
    // The `tcp_keepalive` the listening socket hands down to accepted ones (None: not set
    // yet, or it could not be); set again when a reload changed it.
    let mut handed_down: Option<Option<Duration>> = None;
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((sock, peer)) => {
                    let keepalive = shared.runtime.load().config.limits.tcp_keepalive;
                    // This socket was accepted with what the listener had until now (known
                    // only when no other loop sets options on the same socket).
                    let tuned = own_socket && handed_down == Some(keepalive);
                    if own_socket && !tuned {
                        handed_down = crate::stream::tune_listener(&listener, keepalive).then_some(keepalive);
                    }
                    let epoch = shared.listener_epoch.load(std::sync::atomic::Ordering::Acquire);
                    let accepted = connection::Accepted { sock, peer, local, tuned, socket, epoch };
                    tokio::spawn(connection::handle(shared.clone(), name(), accepted));
                }
                Err(e) => {
                    // EMFILE/ENFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(listener = %name(), "accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            r = phase.changed() => {
                if r.is_err() || *phase.borrow() != RUNNING {
                    break;
                }
            }
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() {
                    // Take what is already queued before the socket closes, or the kernel
                    // resets those connections.
                    while let Ok(Ok((sock, peer))) = tokio::time::timeout(Duration::ZERO, listener.accept()).await {
                        let tuned = false;
                        let epoch = shared.listener_epoch.load(std::sync::atomic::Ordering::Acquire);
                    let accepted = connection::Accepted { sock, peer, local, tuned, socket, epoch };
                        tokio::spawn(connection::handle(shared.clone(), name(), accepted));
                    }
                    break;
                }
            }
        }
    }
    // The socket is closed before the count says so: a reload waiting on it may bind the
    // address again at once.
    drop(listener);
    open_loops.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
}

#[cfg(test)]
mod tests {
    /// What every idle connection's task holds: the relay state and little else (not the
    /// handshake's arguments and buffers, which an `async fn` would keep for the connection's
    /// whole life). Every byte here is a byte per idle connection.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_connection_task_holds_the_relay_and_little_else() {
        let yaml = "listeners:\n  - name: l\n    bind: \"127.0.0.1:0\"\n    routes:\n      - pool: p\npools:\n  p:\n    backends:\n      - address: \"127.0.0.1:9\"\n";
        let cfg = crate::config::parse(yaml, std::path::Path::new(".")).unwrap();
        let server = super::Server::start(cfg, None).unwrap();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = tokio::net::TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, peer) = l.accept().await.unwrap();
        let accepted = super::connection::Accepted {
            sock: s,
            peer,
            local: None,
            tuned: false,
            socket: 0,
            epoch: 0,
        };
        let task = super::connection::handle(server.shared.clone(), std::sync::Arc::from("l"), accepted);
        let (task_size, relay_size) = (std::mem::size_of_val(&task), std::mem::size_of::<crate::relay::Relay>());
        assert_eq!(task_size, std::mem::size_of::<super::connection::Connection>());
        assert!(task_size <= relay_size + 176, "task {task_size} bytes for a relay of {relay_size}");
    }
}
