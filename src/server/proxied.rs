//! A listener with `proxy_protocol: true`: before anything else (TLS included), the
//! connection must start with a PROXY protocol header from a peer in
//! `limits.trusted_proxies`, read within `limits.handshake_timeout`. The header names the
//! connection's real source and destination. A connection that fails is closed without an
//! answer (whoever sent it is not speaking to us as a client), logged at debug level, and
//! counted in `switchyard_proxy_protocol_errors_total{reason}`: `untrusted`, `missing`,
//! `malformed`, `too_long`, `timeout` or `closed`.

use std::net::SocketAddr;

use tokio::net::TcpStream;

use crate::client_addr::Peer;
use crate::config::{any_contains, Cidr};
use crate::proxy_protocol::{self, ReadError};

/// Reads the header and returns the peer it names (the socket's own for `LOCAL` and
/// `UNKNOWN`), or `None` when the connection is to be closed.
pub(super) async fn read_peer(
    sock: &mut TcpStream,
    socket: SocketAddr,
    local: SocketAddr,
    trusted: &[Cidr],
    deadline: tokio::time::Instant,
) -> Option<Peer> {
    let fail = |reason: &'static str, detail: &dyn std::fmt::Display| {
        tracing::debug!(peer = %socket, reason, "PROXY protocol: connection closed: {detail}");
        crate::metrics::proxy_protocol_error(reason);
        None
    };
    if !any_contains(trusted, socket.ip()) {
        return fail("untrusted", &"the peer is not in limits.trusted_proxies");
    }
    match tokio::time::timeout_at(deadline, proxy_protocol::read(sock)).await {
        Ok(Ok(h)) => Some(match h.addresses {
            Some(a) => Peer::proxied(socket, a.source, a.destination),
            None => Peer::socket(socket, local),
        }),
        Ok(Err(ReadError::Invalid(why))) => fail(why.label(), &why),
        Ok(Err(ReadError::Closed(e))) => fail("closed", &e),
        Err(_) => fail("timeout", &"no whole header within limits.handshake_timeout"),
    }
}
