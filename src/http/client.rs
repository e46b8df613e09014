//! Keep-alive connections to backends for plain HTTP (hyper's HTTP/1.1 client). A
//! connection is opened like an upgrade's (`upstream::connect`: bounded, TLS when the
//! backend has it), used for one request at a time, and put back once its response is
//! complete. Idle connections are kept per [`ConnKey`] — everything that made the
//! connection: the backend object (its address, TLS settings and server name, PROXY mode and
//! pool, one object per pool and config that reaches it the same way) and the TLS client
//! configuration it was opened with — at most [`MAX_IDLE_PER_BACKEND`] of them, and never
//! reused after [`IDLE_TTL`] (backends close idle keep-alive connections themselves; Node's
//! default is 5 s). A connection is only ever reused where it would have been opened the
//! same way.
//!
//! A backend with `proxy_protocol` is told the client in a header at the start of each
//! connection, so such a connection speaks for one client only: it is never put in the
//! shared pool but kept by the client connection that opened it ([`Pinned`]) for that
//! connection's next request of the same client, and closed with it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

use super::Body;
use crate::backend::Backend;
use crate::proxy_protocol::Addresses;
use crate::runtime::{NameHasher, Pool};

/// Most idle connections kept for one backend.
pub const MAX_IDLE_PER_BACKEND: usize = 256;
/// An idle connection older than this is closed instead of reused.
pub const IDLE_TTL: Duration = Duration::from_secs(4);
/// How long a pooled connection whose response just completed may take to be ready.
const READY_WAIT: Duration = Duration::from_millis(50);
/// Largest response head (and read buffer) accepted from a backend.
const MAX_BUF: usize = 64 * 1024;

/// One backend connection, ready for a request.
pub struct Conn {
    /// Sends requests on it.
    pub sender: SendRequest<Body>,
    /// It came from the idle list (so it may have been closed by the backend meanwhile).
    pub reused: bool,
}

/// An idle connection and since when it is idle.
type Idle = (SendRequest<Body>, Instant);

/// What a kept connection is shared by: the backend object's id (a new object whenever a
/// reload changes how the backend is reached, and one per pool) and the address of the TLS
/// client configuration it was opened with (0 without TLS). A live TLS connection holds its
/// configuration, so that address cannot be reused by another while the connection waits.
pub type ConnKey = (u64, usize);

/// The key of connections to `backend` of `pool` opened now.
pub fn conn_key(pool: &Pool, backend: &Backend) -> ConnKey {
    let tls = pool
        .tls_for(&backend.address)
        .map_or(0, |(connector, _)| Arc::as_ptr(connector.config()) as usize);
    (backend.id, tls)
}

/// Lists of idle connections, keyed as said above.
type IdleMap = std::collections::HashMap<ConnKey, Vec<Idle>, std::hash::BuildHasherDefault<NameHasher>>;

/// Most keys kept before lists left empty are pruned (backends gone by reloads).
const MAX_KEYS: usize = 256;

/// Idle keep-alive connections by [`ConnKey`].
#[derive(Default)]
pub struct ClientPool {
    idle: Mutex<IdleMap>,
    /// Connections opened so far.
    opened: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for ClientPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientPool").finish_non_exhaustive()
    }
}

impl ClientPool {
    /// An idle connection to `backend`, if one is still open and fresh. A connection is
    /// put back as soon as its response is complete, a moment before hyper's dispatcher is
    /// ready for the next request: that moment is waited for (briefly).
    pub async fn take(&self, key: ConnKey) -> Option<Conn> {
        loop {
            let (sender, since) = {
                let mut idle = self.idle.lock().ok()?;
                idle.get_mut(&key)?.pop()?
            };
            if let Some(c) = reusable(sender, since).await {
                return Some(c);
            }
        }
    }

    /// Opens a new connection to `backend` (connect errors are the caller's to count);
    /// `for_client` goes in its PROXY header when it has `proxy_protocol`.
    pub async fn open(&self, pool: &Pool, backend: &Backend, for_client: Addresses) -> std::io::Result<Conn> {
        let stream = crate::upstream::connect(pool, backend, Some(for_client)).await?;
        let (sender, conn) = http1::Builder::new()
            .max_buf_size(MAX_BUF)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("backend HTTP connection ended: {e}");
            }
        });
        self.opened.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Conn { sender, reused: false })
    }

    /// Puts `sender` back; its last response is complete. Dropped (closing the connection)
    /// when the backend's idle list is full.
    pub fn put(&self, key: ConnKey, sender: SendRequest<Body>) {
        let Ok(mut idle) = self.idle.lock() else { return };
        if idle.len() >= MAX_KEYS && !idle.contains_key(&key) {
            idle.retain(|_, list| !list.is_empty());
        }
        let list = idle.entry(key).or_default();
        if list.len() >= MAX_IDLE_PER_BACKEND {
            // Stale entries are pruned only when the list is full: no clock read per entry
            // on every request.
            let now = Instant::now();
            list.retain(|(s, since)| !s.is_closed() && now.duration_since(*since) < IDLE_TTL);
        }
        if list.len() < MAX_IDLE_PER_BACKEND {
            list.push((sender, Instant::now()));
        }
    }

    /// Idle connections kept now, over every backend.
    pub fn idle(&self) -> usize {
        self.idle.lock().map_or(0, |m| m.values().map(Vec::len).sum())
    }

    /// Backend connections opened since start.
    pub fn opened(&self) -> u64 {
        self.opened.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A connection put back `since` then, if it is still open and fresh, once it is ready for
/// the next request (put back as soon as its response is complete, a moment before hyper's
/// dispatcher is: that moment is waited for, briefly).
async fn reusable(mut sender: SendRequest<Body>, since: Instant) -> Option<Conn> {
    if since.elapsed() >= IDLE_TTL || sender.is_closed() {
        return None;
    }
    if sender.is_ready() {
        return Some(Conn { sender, reused: true });
    }
    match tokio::time::timeout(READY_WAIT, sender.ready()).await {
        Ok(Ok(())) => Some(Conn { sender, reused: true }),
        _ => None,
    }
}

/// The backend connection a client connection keeps for a backend with `proxy_protocol`:
/// at most one, reused only for the same backend and the same client (a trusted proxy's
/// keep-alive connection carries several).
#[derive(Default)]
pub struct Pinned(Mutex<Option<PinnedConn>>);

struct PinnedConn {
    backend: Weak<Backend>,
    client: SocketAddr,
    sender: SendRequest<Body>,
    since: Instant,
}

impl std::fmt::Debug for Pinned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pinned")
    }
}

impl Pinned {
    /// The kept connection, if it is to `backend` for `client` and still usable (any other
    /// is closed).
    pub async fn take(&self, backend: &Arc<Backend>, client: SocketAddr) -> Option<Conn> {
        let kept = self.0.lock().ok()?.take()?;
        if kept.backend.as_ptr() != Arc::as_ptr(backend) || kept.client != client {
            return None;
        }
        reusable(kept.sender, kept.since).await
    }

    /// Keeps `sender` (its last response is complete) in place of any other.
    pub fn put(&self, backend: &Arc<Backend>, client: SocketAddr, sender: SendRequest<Body>) {
        if let Ok(mut kept) = self.0.lock() {
            *kept = Some(PinnedConn {
                backend: Arc::downgrade(backend),
                client,
                sender,
                since: Instant::now(),
            });
        }
    }
}
