//! A client connection on the plain path (HTTP/1.1 or HTTP/2), as each of its requests sees
//! it: where it comes from, which listener's settings apply now, its pinned backend
//! connection, and an upgrade waiting for hyper to hand the socket back.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use hyper::upgrade::OnUpgrade;

use super::upgrade::Prepared;

use crate::client_addr::{ClientAddr, Peer};
use crate::http::client::Pinned;
use crate::http::headers::Forwarding;
use crate::shared::Shared;

/// One client connection on the plain path, as every request on it sees it.
pub(super) struct ClientConn {
    /// The process's shared state (the backend connection pool among it).
    pub(super) shared: Arc<Shared>,
    /// The name of its listener, and the listener epoch it was looked up at: each request
    /// is routed by the listener its socket belongs to now (a reload may rename, move or
    /// swap listeners under a keep-alive connection).
    listener: Mutex<(u64, Arc<str>)>,
    /// The listening socket that accepted the connection.
    socket: u64,
    /// Where the connection comes from.
    pub(super) peer: Peer,
    /// The client of its requests that name none (no `X-Forwarded-For`): the peer.
    pub(super) direct: ClientAddr,
    /// The forwarding values of [`Self::direct`], made once.
    pub(super) forwarding: Forwarding,
    /// The peer is a trusted proxy: each request names its own client, and is counted for
    /// it while in flight (the connection was admitted without a client).
    pub(super) per_request: bool,
    /// Whether the client connection is TLS.
    pub(super) tls: bool,
    /// Whether the client speaks HTTP/2 (each request a stream).
    pub(super) h2: bool,
    /// The backend connection kept for a backend with `proxy_protocol`.
    pub(super) pinned: Arc<Pinned>,
    /// Set by a request that upgraded: what to do with the connection once hyper lets go.
    pub(super) upgrade: Mutex<Option<PendingUpgrade>>,
}

impl ClientConn {
    /// The state of a client connection admitted on the plain path (HTTP/1.1 or HTTP/2).
    pub(super) fn new(
        shared: &Arc<Shared>,
        (listener, socket): (Arc<str>, u64),
        peer: Peer,
        per_request: bool,
        (tls, h2): (bool, bool),
    ) -> Arc<ClientConn> {
        Arc::new(ClientConn {
            shared: shared.clone(),
            listener: Mutex::new((shared.listener_epoch.load(std::sync::atomic::Ordering::Acquire), listener)),
            socket,
            direct: crate::client_addr::direct(&peer),
            forwarding: Forwarding::default(),
            peer,
            per_request,
            tls,
            h2,
            pinned: Arc::new(Pinned::default()),
            upgrade: Mutex::new(None),
        })
    }

    /// Whether the client connection is TLS, and the forwarding values to reuse for
    /// `client` (when it is the connection's own).
    pub(super) fn reuse(&self, client: &ClientAddr) -> (bool, Option<&Forwarding>) {
        (self.tls, std::ptr::eq(client, &self.direct).then_some(&self.forwarding))
    }

    /// The socket that accepted the connection.
    pub(super) fn socket(&self) -> u64 {
        self.socket
    }

    /// The current name of the listener whose socket accepted this connection: looked up
    /// again only when a reload changed listeners since the last request.
    pub(super) fn listener_name(&self) -> Arc<str> {
        let epoch = self.shared.listener_epoch.load(std::sync::atomic::Ordering::Acquire);
        let Ok(mut cached) = self.listener.lock() else {
            return Arc::from("");
        };
        if cached.0 != epoch {
            if let Some(now) = self.shared.socket_name(self.socket) {
                cached.1 = now;
            }
            cached.0 = epoch;
        }
        cached.1.clone()
    }
}

/// An upgrade answered with a 101 through hyper, finished after hyper hands the socket back.
pub(super) enum PendingUpgrade {
    /// Relay to the backend that answered the 101.
    Relay(OnUpgrade, Box<Prepared>, Instant),
    /// Shed: send this close frame and go.
    Shed(OnUpgrade, Vec<u8>),
}
