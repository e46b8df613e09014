//! Bodies streamed through the proxy, never held whole: a request body bounded by
//! `limits.max_request_body_bytes`, a response body bounded by `limits.idle_timeout`
//! between chunks. Each chunk is passed on as it arrives (hyper writes it at once; both
//! sockets have `TCP_NODELAY`), so server-sent events and streaming transports see no delay.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body as _, Frame, Incoming, SizeHint};

use super::BoxError;

/// What a request body did: bytes passed, and whether it went over the limit.
#[derive(Debug, Default)]
pub struct RequestTally {
    /// Body bytes passed to the backend.
    pub bytes: AtomicU64,
    /// The body went over `max_request_body_bytes` (the answer is `413`).
    pub over_limit: AtomicBool,
    /// The whole body was passed on.
    pub finished: AtomicBool,
    /// The client's body failed (malformed chunk, connection lost): the client's fault.
    pub failed: AtomicBool,
    /// The body was last asked for more and the client had nothing yet: the wait is on the
    /// client. False while the backend side holds a chunk it cannot write (the backend is
    /// not reading), and before the body was first asked for.
    pub awaiting_client: AtomicBool,
}

impl RequestTally {
    /// Whose is the body's part of a wait that timed out: `None` when the whole body was
    /// passed on (the backend was waited for), else the outcome the wait means.
    pub fn stalled(&self) -> Option<crate::blame::Outcome> {
        if self.finished.load(Relaxed) {
            return None;
        }
        Some(match self.awaiting_client.load(Relaxed) {
            true => crate::blame::Outcome::ClientBodyStalled,
            false => crate::blame::Outcome::NoAnswerInTime,
        })
    }
}

/// A client's request body, cut off with an error past `limit` bytes.
#[derive(Debug)]
pub struct Limited {
    inner: Incoming,
    left: u64,
    tally: Arc<RequestTally>,
}

impl Limited {
    /// Wraps `inner`; `tally` records what passed.
    pub fn new(inner: Incoming, limit: u64, tally: Arc<RequestTally>) -> Limited {
        Limited { inner, left: limit, tally }
    }
}

impl hyper::body::Body for Limited {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => {
                this.tally.awaiting_client.store(true, Relaxed);
                return Poll::Pending;
            }
            Poll::Ready(f) => f,
        };
        this.tally.awaiting_client.store(false, Relaxed);
        Poll::Ready(match frame {
            Some(Ok(f)) => {
                let n = f.data_ref().map_or(0, |d| d.len() as u64);
                if n > this.left {
                    this.tally.over_limit.store(true, Relaxed);
                    Some(Err("request body larger than limits.max_request_body_bytes".into()))
                } else {
                    this.left -= n;
                    this.tally.bytes.fetch_add(n, Relaxed);
                    Some(Ok(f))
                }
            }
            Some(Err(e)) => {
                this.tally.failed.store(true, Relaxed);
                Some(Err(e.into()))
            }
            None => {
                this.tally.finished.store(true, Relaxed);
                None
            }
        })
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Runs once when a response body ends (completely, by error, or dropped by the client).
pub trait OnEnd: Send {
    /// `bytes` passed to the client; `complete` = the backend's body ended normally.
    fn ended(&mut self, bytes: u64, complete: bool);
}

/// A backend's response body on its way to the client, ended with an error when the
/// backend sends nothing for `idle`.
pub struct Relayed<E: OnEnd> {
    inner: Incoming,
    idle: Option<Duration>,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    bytes: u64,
    end: Option<E>,
}

impl<E: OnEnd> Relayed<E> {
    /// Wraps `inner`; `end` runs once when the body is over.
    pub fn new(inner: Incoming, idle: Option<Duration>, end: E) -> Relayed<E> {
        Relayed {
            inner,
            idle,
            timer: None,
            bytes: 0,
            end: Some(end),
        }
    }

    fn finish(&mut self, complete: bool) {
        if let Some(mut e) = self.end.take() {
            e.ended(self.bytes, complete);
        }
    }
}

impl<E: OnEnd> Drop for Relayed<E> {
    fn drop(&mut self) {
        // A body hyper never polled because it was empty (HEAD, 204, 304) is complete too.
        let complete = self.inner.is_end_stream();
        self.finish(complete);
    }
}

impl<E: OnEnd + Unpin> hyper::body::Body for Relayed<E> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                this.bytes += f.data_ref().map_or(0, |d| d.len() as u64);
                if let (Some(t), Some(idle)) = (this.timer.as_mut(), this.idle) {
                    t.as_mut().reset(tokio::time::Instant::now() + idle);
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.finish(false);
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.finish(true);
                Poll::Ready(None)
            }
            Poll::Pending => {
                let Some(idle) = this.idle else { return Poll::Pending };
                let t = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                if t.as_mut().poll(cx).is_ready() {
                    this.finish(false);
                    return Poll::Ready(Some(Err("backend sent nothing for limits.idle_timeout".into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
