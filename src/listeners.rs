//! Listening sockets: one group per configured listener, bound (one socket per worker, or
//! one shared socket for port 0) before anything is committed, then handed to the workers'
//! accept loops; renamed in place or closed by reloads.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::shared::Shared;

/// A listener bound on every worker.
#[derive(Debug)]
pub struct BoundListener {
    /// Name.
    pub name: String,
    /// Address as configured (may have port 0).
    pub configured: SocketAddr,
    /// Address actually bound.
    pub actual: SocketAddr,
    pub(crate) stop: watch::Sender<bool>,
    /// The name accept loops give new connections: a reload renaming a listener on the
    /// same address changes it, keeping the sockets.
    pub(crate) name_tx: watch::Sender<Arc<str>>,
    /// Accept loops still holding a socket of this listener (0 once all are closed).
    pub(crate) open_loops: Arc<std::sync::atomic::AtomicUsize>,
    /// The sockets whose connections are this listener's: its own (first), and those of
    /// the listener it replaced when a reload moved it to another address (their
    /// connections stay its own). A connection belongs to a socket, not to a name: a
    /// rename follows it, a removal drains all of them.
    pub sockets: Vec<u64>,
}

impl BoundListener {
    /// Stops accepting and waits (bounded) until every worker has closed its socket, so
    /// the address is free for the next reload.
    pub(crate) fn close(&self, limit: Duration) {
        let _ = self.stop.send(true);
        let deadline = std::time::Instant::now() + limit;
        while self.open_loops.load(std::sync::atomic::Ordering::Acquire) > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Gives the listener a new name (a reload renamed it on the same address).
    pub(crate) fn rename(&mut self, name: &str) {
        self.name = name.to_string();
        let _ = self.name_tx.send(Arc::from(name));
    }
}

/// A listener bound but not yet accepting (a reload binds every new listener before it
/// commits; dropping this closes the sockets).
#[derive(Debug)]
pub(crate) struct BoundSockets {
    name: String,
    configured: SocketAddr,
    actual: SocketAddr,
    socks: Vec<std::net::TcpListener>,
}

/// One worker's share of a listener.
pub(crate) struct Listen {
    /// The process's shared state, for the connections it accepts.
    pub(crate) shared: Arc<Shared>,
    /// The listener's current name (a reload may rename it).
    pub(crate) name: watch::Receiver<Arc<str>>,
    /// The listener's socket id.
    pub(crate) socket: u64,
    /// This worker's socket.
    pub(crate) sock: std::net::TcpListener,
    /// The socket is this worker's alone, so the options it hands down to accepted sockets
    /// are the ones this worker's loop set (one socket shared by several workers, for port
    /// 0, may have been changed by another loop since).
    pub(crate) own_socket: bool,
    /// Turns true when the listener stops.
    pub(crate) stop: watch::Receiver<bool>,
    /// Accept loops still holding a socket; the loop decrements it once its socket is closed.
    pub(crate) open_loops: Arc<std::sync::atomic::AtomicUsize>,
}

/// What a worker thread is told to do.
pub(crate) enum WorkerCmd {
    /// Accept on this socket under the listener's current name until `stop` turns true.
    Listen(Listen),
    /// Load dropped: free the thread's spare relay buffers and return free memory to the
    /// kernel ([`crate::memory`]).
    Trim,
}

impl std::fmt::Debug for WorkerCmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorkerCmd")
    }
}

impl Shared {
    /// The bound address of a listener by name.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners.lock().ok()?.iter().find(|l| l.name == name).map(|l| l.actual)
    }

    /// Is the listener that accepted on socket `id` still open (under whatever name)? A
    /// connection that registers after a reload removed its listener was missed by the
    /// reload's close pass and must close itself (a listener moved to a new address keeps
    /// its connections: its old socket is among its `sockets`).
    pub fn socket_open(&self, id: u64) -> bool {
        self.listeners
            .lock()
            .map(|l| l.iter().any(|b| b.sockets.contains(&id)))
            .unwrap_or(true)
    }

    /// The current name of the listener that accepted on socket `id` (`None` once closed).
    pub fn socket_name(&self, id: u64) -> Option<Arc<str>> {
        let l = self.listeners.lock().ok()?;
        l.iter().find(|b| b.sockets.contains(&id)).map(|b| Arc::from(b.name.as_str()))
    }

    /// Binds a listener on every worker (one `SO_REUSEPORT` socket each) and starts
    /// accepting. Nothing is left bound on failure.
    pub(crate) fn open_listener(self: &Arc<Self>, name: &str, addr: SocketAddr) -> Result<BoundListener, String> {
        Ok(self.start_listener(Self::bind_listener(name, addr, self.workers.len())?))
    }

    /// Binds a listener's sockets without accepting yet.
    pub(crate) fn bind_listener(name: &str, addr: SocketAddr, workers: usize) -> Result<BoundSockets, String> {
        let (actual, socks) = bind_group(addr, workers).map_err(|e| format!("listener {name}: cannot bind {addr}: {e}"))?;
        Ok(BoundSockets {
            name: name.to_string(),
            configured: addr,
            actual,
            socks,
        })
    }

    /// Number of worker threads (sockets per listener).
    pub(crate) fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Starts accepting on bound sockets, one accept loop per worker.
    pub(crate) fn start_listener(self: &Arc<Self>, b: BoundSockets) -> BoundListener {
        static NEXT_SOCKET: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let socket = NEXT_SOCKET.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (stop, stop_rx) = watch::channel(false);
        let (name_tx, name_rx) = watch::channel::<Arc<str>>(Arc::from(b.name.as_str()));
        let open_loops = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let own_socket = b.configured.port() != 0 || b.socks.len() == 1;
        for (w, sock) in self.workers.iter().zip(b.socks) {
            open_loops.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            let cmd = WorkerCmd::Listen(Listen {
                shared: self.clone(),
                name: name_rx.clone(),
                socket,
                sock,
                own_socket,
                stop: stop_rx.clone(),
                open_loops: open_loops.clone(),
            });
            if w.send(cmd).is_err() {
                open_loops.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
            }
        }
        tracing::info!(listener = %b.name, addr = %b.actual, "listening");
        BoundListener {
            name: b.name,
            configured: b.configured,
            actual: b.actual,
            stop,
            name_tx,
            open_loops,
            sockets: vec![socket],
        }
    }
}

/// Binds `addr` with `SO_REUSEPORT` (and `SO_REUSEADDR`), non-blocking.
fn bind_reuseport(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    Ok(s.into())
}

/// Binds `addr` without `SO_REUSEPORT` (so it fails when anyone holds the port), non-blocking.
fn bind_exclusive(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    Ok(s.into())
}

/// One listening socket per worker for `addr`.
///
/// A fixed port gets one `SO_REUSEPORT` socket per worker (the kernel spreads connections),
/// after a probe without it proves nobody else holds the port: two processes must never
/// share a port by accident. Port 0 gets one plain socket shared by every worker, because
/// the kernel may give a port-0 `SO_REUSEPORT` bind a port another such socket holds.
fn bind_group(addr: SocketAddr, n: usize) -> std::io::Result<(SocketAddr, Vec<std::net::TcpListener>)> {
    if addr.port() == 0 {
        let one = bind_exclusive(addr)?;
        let actual = one.local_addr()?;
        let mut all = Vec::with_capacity(n);
        for _ in 1..n {
            all.push(one.try_clone()?);
        }
        all.push(one);
        return Ok((actual, all));
    }
    drop(bind_exclusive(addr)?);
    let mut all = Vec::with_capacity(n);
    for _ in 0..n {
        all.push(bind_reuseport(addr)?);
    }
    Ok((addr, all))
}
