//! Opening the backend side: pick, connect (bounded; a PROXY protocol header first for a
//! backend with `proxy_protocol: v2`), forward the rewritten upgrade request, verify the
//! backend's 101, and move on to the next backend when one fails before its 101 (the client
//! never sees a single dead backend).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::backend::{ActiveGuard, Backend};
use crate::blame::{Outcome, Party};
use crate::client_addr::ClientAddr;
use crate::clock;
use crate::handshake::{accept_key, any_has_token, header, read_head};
use crate::limits::ShedReason;
use crate::proxy_protocol::{Addresses, V2Header};
use crate::runtime::Pool;
use crate::stream::Stream;

/// Largest backend response head accepted.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;
/// Time constant of the handshake-latency peak-EWMA decay (shared with the algorithm).
use crate::balance::least_response_time::DECAY_MS as LATENCY_TAU_MS;

/// Why no backend connection could be made.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No backend could be picked or every attempt failed: shed with 1013.
    #[error("no backend available ({})", .0.label())]
    Exhausted(ShedReason),
    /// The backend answered, but not with a valid 101: 502.
    #[error("bad gateway: {0}")]
    BadGateway(&'static str),
}

/// A backend connection that answered a valid 101.
#[derive(Debug)]
pub struct Upstream {
    /// The connection.
    pub stream: Stream,
    /// The backend's response head followed by any frames it already sent.
    pub response: Vec<u8>,
    /// Length of the head within `response`.
    pub head_len: usize,
    /// Counts the connection on the backend while held.
    pub guard: ActiveGuard,
    /// RSV bits the negotiated extensions use.
    pub rsv_allowed: u8,
    /// The backend's index in its pool.
    pub index: usize,
    /// How stickiness chose, for a sticky pool.
    pub sticky: Option<crate::balance::sticky::StickyResult>,
}

/// What the client asked, as the upstream needs it.
#[derive(Debug, Clone, Copy)]
pub struct ClientRequest<'a> {
    /// Parsed request headers.
    pub headers: &'a [httparse::Header<'a>],
    /// Request target.
    pub target: &'a str,
    /// Host header.
    pub host: &'a str,
    /// `Sec-WebSocket-Key`.
    pub key: &'a str,
    /// The client.
    pub client: &'a ClientAddr,
    /// What the client connected to (the destination in a backend's PROXY header).
    pub local: SocketAddr,
    /// Whether the client connection is TLS.
    pub tls: bool,
}

/// Opens a verified WebSocket connection to a backend of `pool`.
pub async fn open(pool: &Pool, req: &ClientRequest<'_>) -> Result<Upstream, UpstreamError> {
    let head = rewrite_request(req);
    let expected = accept_key(req.key);
    let mut tried = crate::runtime::Tried::default();
    for _ in 0..pool.config.max_attempts.max(1) {
        let (i, sticky) = pool
            .pick_next(req.client.ip(), req.target, req.headers, &mut tried)
            .map_err(UpstreamError::Exhausted)?;
        let backend = &pool.backends[i];
        // Count the connection on the backend from the first attempt, so concurrent picks
        // see it (least-connections) and `max_connections` cannot be overshot by a burst.
        let guard = ActiveGuard::new(backend.clone());
        let started = Instant::now();
        let for_client = Addresses {
            source: req.client.addr,
            destination: req.local,
        };
        let outcome = match tokio::time::timeout(pool.config.connect_timeout, attempt(pool, backend, for_client, &head)).await {
            Ok(Ok((stream, response, head_len))) => match verify(&response[..head_len], &expected) {
                Ok(rsv_allowed) => {
                    backend.observe_latency(started.elapsed().as_secs_f64(), clock::now_ms(), LATENCY_TAU_MS);
                    pool.record(backend, Outcome::Answered);
                    return Ok(Upstream {
                        stream,
                        response,
                        head_len,
                        guard,
                        rsv_allowed,
                        index: i,
                        sticky,
                    });
                }
                // Not a 101: the client gets 502; whose fault it is the outcome says (a
                // `4xx` judges the client's request, a `5xx` is the application's, an invalid
                // 101 or an unparsable head the backend's).
                Err((outcome, why)) => {
                    pool.record(backend, outcome);
                    match outcome.party() {
                        Party::Backend => tracing::warn!(backend = %backend.address, pool = %pool.name, "invalid upgrade answer: {why}"),
                        _ => tracing::debug!(backend = %backend.address, pool = %pool.name, "backend refused the upgrade: {why}"),
                    }
                    return Err(UpstreamError::BadGateway(why));
                }
            },
            Ok(Err(e)) => {
                let outcome = attempt_failure(&e);
                match outcome {
                    // Out of descriptors or buffers here: every backend would fail the same
                    // way, and none of them is to blame.
                    Outcome::LocalResources => {
                        tracing::warn!(backend = %backend.address, "cannot connect, local resources exhausted: {e}");
                        return Err(UpstreamError::Exhausted(ShedReason::LocalResources));
                    }
                    // A failed TLS handshake is a configuration problem (CA, name, protocol)
                    // the operator must see; a refused or reset connect is routine.
                    Outcome::TlsFailed => tracing::warn!(backend = %backend.address, pool = %pool.name, "TLS to the backend failed: {e}"),
                    _ => tracing::debug!(backend = %backend.address, "attempt failed: {e}"),
                }
                outcome
            }
            Err(_) => {
                tracing::debug!(backend = %backend.address, "attempt timed out");
                Outcome::ConnectTimedOut
            }
        };
        pool.record(backend, outcome);
        // A failed attempt took no real connection.
        drop(guard);
    }
    Err(UpstreamError::Exhausted(ShedReason::NoBackend))
}

/// Connects, sends the head, reads the answer's head.
async fn attempt(pool: &Pool, backend: &Arc<Backend>, for_client: Addresses, head: &[u8]) -> std::io::Result<(Stream, Vec<u8>, usize)> {
    let mut stream = connect(pool, backend, Some(for_client)).await?;
    stream.write_all(head).await?;
    let (buf, end) = read_head(&mut stream, MAX_RESPONSE_HEAD).await.map_err(std::io::Error::other)?;
    Ok((stream, buf, end))
}

/// Whose failure a failed attempt (connect, TLS, request written, answer read) is.
pub fn attempt_failure(e: &std::io::Error) -> Outcome {
    if is_local_error(e) {
        Outcome::LocalResources
    } else if is_tls_error(e) {
        Outcome::TlsFailed
    } else if matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::HostUnreachable | std::io::ErrorKind::NetworkUnreachable
    ) {
        Outcome::ConnectFailed
    } else {
        // Reset, closed before or inside the answer's head, or an answer too large.
        Outcome::ConnectionLost
    }
}

/// Is a connect error the balancer's own (out of descriptors, buffers or ports) rather
/// than the backend's? Those never count against the backend's health.
pub fn is_local_error(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::EADDRNOTAVAIL)
    )
}

/// Did the TLS handshake with the backend fail (tokio-rustls wraps rustls' error)?
fn is_tls_error(e: &std::io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>())
}

/// TCP (and TLS when configured) connection to a backend. A backend with `proxy_protocol`
/// first gets a v2 header (before TLS, as the specification wants): `PROXY` with the
/// client's addresses, or `LOCAL` for the balancer's own connections (`for_client: None`:
/// health checks, load polls), which the backend must accept as its peer's.
pub async fn connect(pool: &Pool, backend: &Backend, for_client: Option<Addresses>) -> std::io::Result<Stream> {
    let mut tcp = TcpStream::connect(backend.address.as_str()).await?;
    crate::stream::tune_tcp(&tcp, pool.tcp_keepalive);
    if backend.config.proxy_protocol.is_some() {
        let header = match for_client {
            Some(a) => V2Header::proxy(a.source, a.destination),
            None => V2Header::local(),
        };
        tcp.write_all(header.as_bytes()).await?;
    }
    match pool.tls_for(&backend.address) {
        None => Ok(Stream::Tcp(tcp)),
        Some((connector, name)) => {
            let tls = connector.connect(name.clone(), tcp).await?;
            Ok(Stream::TlsClient(Box::new(tls)))
        }
    }
}

/// The request the backend gets: the client's, with `X-Forwarded-For` (the client last,
/// see [`ClientAddr::forwarded_for`]), `X-Forwarded-Proto` (replaced) and `Forwarded`
/// (RFC 7239, this hop's element appended). A list sent on several lines is one list
/// (RFC 9110 §5.3), written back as one line.
fn rewrite_request(req: &ClientRequest<'_>) -> Vec<u8> {
    // Written with plain appends: through `write!` the formatting machinery cost about 4 %
    // of an upgrade's user-space instructions (callgrind).
    let mut out = Vec::with_capacity(512);
    let proto = crate::http::headers::scheme(req.tls);
    out.extend_from_slice(b"GET ");
    out.extend_from_slice(req.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut forwarded = Vec::new();
    for h in req.headers {
        // `Expect` is this hop's (a `100 Continue` would come back as the answer), and the
        // client's forwarding fields are replaced below.
        if h.name.eq_ignore_ascii_case("x-forwarded-proto")
            || h.name.eq_ignore_ascii_case("x-forwarded-for")
            || h.name.eq_ignore_ascii_case("expect")
        {
            continue;
        }
        if h.name.eq_ignore_ascii_case("forwarded") {
            forwarded.extend_from_slice(h.value.trim_ascii());
            forwarded.extend_from_slice(b", ");
            continue;
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"X-Forwarded-For: ");
    out.extend_from_slice(req.client.forwarded_for.as_bytes());
    out.extend_from_slice(b"\r\nForwarded: ");
    out.extend_from_slice(&forwarded);
    let elem = crate::http::headers::forwarded_element(req.client.ip(), req.tls, req.host);
    out.extend_from_slice(elem.as_bytes());
    out.extend_from_slice(b"\r\nX-Forwarded-Proto: ");
    out.extend_from_slice(proto.as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    out
}

/// Why a backend's answer to the upgrade was not a valid 101: whose fault, and the text.
type Rejected = (Outcome, &'static str);

/// Checks a backend's answer is a valid 101 for our key; returns the allowed RSV bits.
fn verify(head: &[u8], expected_accept: &[u8; 28]) -> Result<u8, Rejected> {
    let mut hs = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut hs);
    match resp.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err((Outcome::InvalidAnswer, "unparsable response")),
    }
    match resp.code {
        Some(101) => {}
        // The application's answer to what this client asked: a 4xx judged the request,
        // a 2xx/3xx says the URL is no WebSocket endpoint, a 5xx is the application's error.
        Some(400..=499) => return Err((Outcome::UpgradeRefused, "backend refused the request (4xx)")),
        Some(500..=599) => return Err((Outcome::ApplicationError, "backend answered 5xx")),
        // An interim answer (`100 Continue` to an `Expect` the backend honoured) or any
        // answer without an upgrade: the application's, not a broken backend.
        Some(100..=399) => return Err((Outcome::UpgradeRefused, "backend answered without upgrading")),
        _ => return Err((Outcome::InvalidAnswer, "status is not 101")),
    }
    let headers: &[httparse::Header<'_>] = resp.headers;
    if !any_has_token(headers, "upgrade", "websocket") {
        return Err((Outcome::InvalidAnswer, "missing Upgrade: websocket"));
    }
    if !any_has_token(headers, "connection", "upgrade") {
        return Err((Outcome::InvalidAnswer, "missing Connection: upgrade"));
    }
    if header(headers, "sec-websocket-accept").map(<[u8]>::trim_ascii) != Some(&expected_accept[..]) {
        return Err((Outcome::InvalidAnswer, "wrong Sec-WebSocket-Accept"));
    }
    Ok(match header(headers, "sec-websocket-extensions") {
        None => 0,
        Some(v) if v.trim_ascii().is_empty() => 0,
        // RFC 7692 §6: permessage-deflate uses RSV1; unknown extensions may use any.
        Some(v) if v.split(|&b| b == b',').all(|e| e.trim_ascii().starts_with(b"permessage-deflate")) => 0b100,
        Some(_) => 0b111,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_headers_are_added_and_appended() {
        let hs = [
            httparse::Header { name: "Host", value: b"h" },
            httparse::Header {
                name: "X-Forwarded-For",
                value: b"10.0.0.1",
            },
            httparse::Header {
                name: "X-Forwarded-Proto",
                value: b"spoofed",
            },
            httparse::Header {
                name: "Sec-WebSocket-Protocol",
                value: b"chat",
            },
        ];
        let peer = crate::client_addr::Peer::socket("192.0.2.7:5".parse().unwrap(), "127.0.0.1:80".parse().unwrap());
        let client = crate::client_addr::resolve(&peer, &hs, &[]);
        let req = ClientRequest {
            headers: &hs,
            target: "/a?b",
            host: "h",
            key: "k",
            client: &client,
            local: peer.local,
            tls: false,
        };
        let out = String::from_utf8(rewrite_request(&req)).unwrap();
        assert!(out.starts_with("GET /a?b HTTP/1.1\r\n"));
        assert!(out.contains("X-Forwarded-For: 10.0.0.1, 192.0.2.7\r\n"));
        assert!(out.contains("Forwarded: for=192.0.2.7;proto=http;host=\"h\"\r\n"));
        assert!(out.contains("X-Forwarded-Proto: http\r\n") && !out.contains("spoofed"));
        assert!(out.contains("Sec-WebSocket-Protocol: chat\r\n"));
    }

    #[test]
    fn verifies_the_101() {
        let acc = accept_key("dGhlIHNhbXBsZSBub25jZQ==");
        let good = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
            std::str::from_utf8(&acc).unwrap()
        );
        assert_eq!(verify(good.as_bytes(), &acc), Ok(0));
        let pmd = good.replace("\r\n\r\n", "\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n");
        assert_eq!(verify(pmd.as_bytes(), &acc), Ok(0b100));
        assert!(matches!(
            verify(good.replace("101 Switching Protocols", "200 OK").as_bytes(), &acc),
            Err((Outcome::UpgradeRefused, _))
        ));
        assert!(matches!(
            verify(b"HTTP/1.1 503 Busy\r\n\r\n", &acc),
            Err((Outcome::ApplicationError, _))
        ));
        for s in ["400 Bad Request", "401 Unauthorized", "431 Too Large", "302 Found", "100 Continue"] {
            let head = format!("HTTP/1.1 {s}\r\nContent-Length: 0\r\n\r\n");
            assert!(matches!(verify(head.as_bytes(), &acc), Err((Outcome::UpgradeRefused, _))), "{s}");
        }
        assert!(matches!(
            verify(b"HTTP/1.1 999 What\r\n\r\n", &acc),
            Err((Outcome::InvalidAnswer, _))
        ));
        assert!(matches!(verify(b"garbage\r\n\r\n", &acc), Err((Outcome::InvalidAnswer, _))));
        assert!(matches!(
            verify(good.replace("s3pP", "xxxx").as_bytes(), &accept_key("AAAAAAAAAAAAAAAAAAAAAA==")),
            Err((Outcome::InvalidAnswer, _))
        ));
    }

    #[test]
    fn local_resource_errors_are_not_the_backends() {
        for code in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM, libc::EADDRNOTAVAIL] {
            assert!(is_local_error(&std::io::Error::from_raw_os_error(code)), "{code}");
        }
        for code in [libc::ECONNREFUSED, libc::ECONNRESET, libc::ETIMEDOUT, libc::EHOSTUNREACH] {
            assert!(!is_local_error(&std::io::Error::from_raw_os_error(code)), "{code}");
        }
        assert!(!is_local_error(&std::io::Error::other("tls")));
    }
}
