//! The client connection as hyper reads it: bytes the proxy already read while looking at
//! the first request head, then the socket. Writes that cannot go on for `idle_timeout`
//! (a client that stopped reading its response) fail, so such a client cannot hold its
//! connection and the backend's for ever: backpressure slows the backend, the bound ends it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use std::future::Future;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::stream::Stream;

/// A client stream with a prefix of already-read bytes.
#[derive(Debug)]
pub struct ClientIo {
    prefix: Bytes,
    stream: Stream,
    /// How long a write may wait for the client to read (`None`: for ever).
    write_patience: Option<Duration>,
    /// Armed while a write waits; made on the first wait.
    write_stall: Option<Pin<Box<tokio::time::Sleep>>>,
    stalled: bool,
}

impl ClientIo {
    /// `prefix` is served before anything is read from `stream`; a write that waits for
    /// the client longer than `write_patience` fails.
    pub fn new(prefix: Bytes, stream: Stream, write_patience: Option<Duration>) -> ClientIo {
        ClientIo {
            prefix,
            stream,
            write_patience,
            write_stall: None,
            stalled: false,
        }
    }

    /// Passes a write's result on, timing a wait: `Pending` for longer than the patience
    /// becomes `TimedOut`.
    fn timed<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        let Some(patience) = self.write_patience else { return r };
        if r.is_ready() {
            self.stalled = false;
            return r;
        }
        if !self.stalled {
            self.stalled = true;
            let at = tokio::time::Instant::now() + patience;
            match &mut self.write_stall {
                Some(t) => t.as_mut().reset(at),
                None => self.write_stall = Some(Box::pin(tokio::time::sleep_until(at))),
            }
        }
        match self.write_stall.as_mut().map(|t| t.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client read nothing for limits.idle_timeout",
            ))),
            _ => Poll::Pending,
        }
    }

    /// The stream and the prefix bytes nobody read yet.
    pub fn into_parts(self) -> (Stream, Bytes) {
        (self.stream, self.prefix)
    }

    /// Is the client side TLS?
    pub fn is_tls(&self) -> bool {
        self.stream.is_tls()
    }
}

impl AsyncRead for ClientIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.timed(cx, r)
    }
    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.timed(cx, r)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.stream).poll_flush(cx);
        this.timed(cx, r)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
