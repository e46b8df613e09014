//! Admin connections over the caps: a small reserve that serves `GET /healthz` only, so
//! an orchestrator's liveness probe is answered however many idle or slow clients hold
//! the admin listener (they would otherwise get the balancer restarted). When the reserve
//! is full the oldest reserved connection is dropped for the newest: a flood cannot keep a
//! probe out, and each reserved connection lives at most [`HEAD_TIMEOUT`].

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;

use super::Admin;

/// Connections in the reserve at once; a new one evicts the oldest.
const SIZE: usize = 64;
/// A reserved connection must send its request head within this.
const HEAD_TIMEOUT: Duration = Duration::from_secs(1);
/// Largest request head read in the reserve.
const MAX_HEAD_BYTES: usize = 4096;

/// Live admin connections per client address.
#[derive(Debug, Default, Clone)]
pub(super) struct PeerCount(Arc<Mutex<HashMap<IpAddr, usize>>>);

/// Counts one connection of a peer until dropped.
#[derive(Debug)]
pub(super) struct PeerSlot(PeerCount, IpAddr);

impl PeerCount {
    /// Takes a slot for `ip` unless it already holds `max`.
    pub(super) fn enter(&self, ip: IpAddr, max: usize) -> Option<PeerSlot> {
        let mut m = self.0.lock().ok()?;
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PeerSlot(self.clone(), ip))
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        if let Ok(mut m) = (self.0).0.lock() {
            if let Some(n) = m.get_mut(&self.1) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&self.1);
                }
            }
        }
    }
}

/// The reserved connections, oldest first, each with the signal that evicts it.
#[derive(Debug, Default)]
pub(super) struct Reserve {
    slots: Mutex<VecDeque<(u64, Arc<Notify>)>>,
    next: std::sync::atomic::AtomicU64,
}

impl Reserve {
    fn enter(self: &Arc<Self>) -> (u64, Arc<Notify>) {
        let id = self.next.fetch_add(1, Relaxed);
        let kick = Arc::new(Notify::new());
        if let Ok(mut s) = self.slots.lock() {
            while s.len() >= SIZE {
                if let Some((_, old)) = s.pop_front() {
                    old.notify_one();
                }
            }
            s.push_back((id, kick.clone()));
        }
        (id, kick)
    }

    fn leave(&self, id: u64) {
        if let Ok(mut s) = self.slots.lock() {
            s.retain(|(i, _)| *i != id);
        }
    }
}

/// Serves one reserved connection: `/healthz` as the admin listener would, anything else
/// `503` with `Retry-After`; then closes.
pub(super) async fn serve(admin: Arc<Admin>, reserve: Arc<Reserve>, mut sock: tokio::net::TcpStream) {
    let (id, kick) = reserve.enter();
    let head = tokio::select! {
        r = tokio::time::timeout(HEAD_TIMEOUT, crate::handshake::read_head(&mut sock, MAX_HEAD_BYTES)) => r.ok().and_then(|r| r.ok()),
        _ = kick.notified() => None,
    };
    reserve.leave(id);
    let Some((buf, end)) = head else { return };
    let mut hs = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut hs);
    let healthz = matches!(req.parse(&buf[..end]), Ok(httparse::Status::Complete(_)))
        && matches!(req.method, Some("GET" | "HEAD"))
        && req.path == Some("/healthz");
    let (status, body) = match (healthz, admin.shared.draining.load(Relaxed)) {
        (true, false) => ("200 OK", "ok\n"),
        (true, true) => ("503 Service Unavailable", "draining\n"),
        (false, _) => ("503 Service Unavailable", "admin connections busy; only /healthz is served\n"),
    };
    let retry = if healthz { "" } else { "Retry-After: 1\r\n" };
    let body = if req.method == Some("HEAD") { "" } else { body };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nCache-Control: no-store\r\n{retry}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(HEAD_TIMEOUT, async {
        let _ = sock.write_all(resp.as_bytes()).await;
        let _ = sock.shutdown().await;
    })
    .await;
}
