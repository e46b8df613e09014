//! One type for both sides of a proxied connection: plain TCP or TLS (client or server role).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Probes after the first before a silent peer is declared dead.
const KEEPALIVE_PROBES: u32 = 4;

/// Sets the options every proxied TCP socket gets: no Nagle delay, and with `keepalive`
/// TCP keepalive probes after that much silence, every quarter of it, four times, so a peer
/// host that vanished without a reset is found within `2 × keepalive`. The same bound is set
/// as `TCP_USER_TIMEOUT`, so data stuck unacknowledged towards a vanished peer ends the
/// connection too (keepalive alone never fires while data is in flight).
pub fn tune_tcp(sock: &TcpStream, keepalive: Option<std::time::Duration>) {
    set_options(socket2::SockRef::from(sock), keepalive, false);
}

/// [`tune_tcp`] for a socket accepted from a listener that may have handed it other
/// options (a reload turned `tcp_keepalive` off): `None` turns keepalive off explicitly.
pub fn tune_accepted(sock: &TcpStream, keepalive: Option<std::time::Duration>) {
    set_options(socket2::SockRef::from(sock), keepalive, true);
}

/// Sets [`tune_tcp`]'s options on a listening socket. Linux copies them into every socket
/// the listener accepts (keepalive timer included), so an accepted socket needs none of the
/// six `setsockopt` calls of its own. True when every accepted socket now has them: only
/// on Linux, and only if every option could be set.
pub fn tune_listener(listener: &tokio::net::TcpListener, keepalive: Option<std::time::Duration>) -> bool {
    cfg!(any(target_os = "linux", target_os = "android")) && set_options(socket2::SockRef::from(listener), keepalive, true)
}

/// Sets the options; `clear`: with no keepalive, turn it off (instead of leaving the
/// socket's own setting). False when one could not be set.
fn set_options(s: socket2::SockRef<'_>, keepalive: Option<std::time::Duration>, clear: bool) -> bool {
    let mut ok = s.set_nodelay(true).is_ok();
    let Some(idle) = keepalive else {
        if clear {
            ok &= s.set_keepalive(false).is_ok();
            #[cfg(any(target_os = "linux", target_os = "android"))]
            {
                ok &= s.set_tcp_user_timeout(None).is_ok();
            }
        }
        return ok;
    };
    let interval = (idle / 4).max(std::time::Duration::from_secs(1));
    let ka = socket2::TcpKeepalive::new()
        .with_time(idle)
        .with_interval(interval)
        .with_retries(KEEPALIVE_PROBES);
    ok &= s.set_tcp_keepalive(&ka).is_ok();
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        ok &= s.set_tcp_user_timeout(Some(idle + interval * KEEPALIVE_PROBES)).is_ok();
    }
    ok
}

/// A connection to a client or a backend.
pub enum Stream {
    /// Plain TCP.
    Tcp(TcpStream),
    /// TLS terminated here (client side of the proxy).
    TlsServer(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// TLS originated here (backend side of the proxy).
    TlsClient(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// A WebSocket carried by an HTTP/2 stream (RFC 8441) of a TLS client connection: its
    /// DATA frames, flow-controlled by the stream's window.
    H2(Box<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>),
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stream::Tcp(_) => "Stream::Tcp",
            Stream::TlsServer(_) => "Stream::TlsServer",
            Stream::TlsClient(_) => "Stream::TlsClient",
            Stream::H2(_) => "Stream::H2",
        })
    }
}

impl Stream {
    /// Is the stream TLS?
    pub fn is_tls(&self) -> bool {
        !matches!(self, Stream::Tcp(_))
    }
}

macro_rules! each {
    ($self:expr, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Stream::Tcp($s) => {
                let $s = Pin::new($s);
                $e
            }
            Stream::TlsServer($s) => {
                let $s = Pin::new(&mut **$s);
                $e
            }
            Stream::TlsClient($s) => {
                let $s = Pin::new(&mut **$s);
                $e
            }
            Stream::H2($s) => {
                let $s = Pin::new(&mut **$s);
                $e
            }
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        each!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        each!(self, s => s.poll_write(cx, buf))
    }
    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        each!(self, s => s.poll_write_vectored(cx, bufs))
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::TlsServer(s) => s.is_write_vectored(),
            Stream::TlsClient(s) => s.is_write_vectored(),
            Stream::H2(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => s.poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => s.poll_shutdown(cx))
    }
}
