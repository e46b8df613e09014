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
    /// When the whole body was passed on (process clock, ms; 0 for a request without one).
    pub finished_at_ms: AtomicU64,
    /// The client's body failed (malformed chunk, connection lost): the client's fault.
    pub failed: AtomicBool,
    /// The client left its body waiting too long ([`Limited`]): the client's fault.
    pub stalled: AtomicBool,
    /// Since when the body waits on the client (process clock, ms): it was last asked for
    /// more and the client had nothing yet. 0 while the backend side holds a chunk it
    /// cannot write (the backend is not reading), and before the body was first asked for.
    pub awaiting_since_ms: AtomicU64,
}

impl RequestTally {
    /// Has the body been waiting on the client for at least `ms` (and still)?
    pub fn client_waited(&self, ms: u64) -> bool {
        let since = self.awaiting_since_ms.load(Relaxed);
        since != 0 && crate::clock::now_ms().saturating_sub(since) >= ms
    }

    /// Whose is the body's part of a wait that timed out: `None` when the whole body was
    /// passed on (the backend was waited for), else the outcome the wait means.
    pub fn stalled(&self) -> Option<crate::blame::Outcome> {
        if self.finished.load(Relaxed) {
            return None;
        }
        Some(match self.awaiting_since_ms.load(Relaxed) != 0 || self.stalled.load(Relaxed) {
            true => crate::blame::Outcome::ClientBodyStalled,
            false => crate::blame::Outcome::NoAnswerInTime,
        })
    }
}

/// The slowest average a request body may arrive at once its first `request_timeout` of
/// waiting is spent (Apache's `mod_reqtimeout` default): a client trickling a byte just
/// inside every timeout cannot hold a connection for the days its size limit would allow.
pub const MIN_BODY_RATE: f64 = 500.0;

/// A client's request body, cut off with an error past `limit` bytes, or when the client
/// leaves it waiting: for `patience` at once (NGINX's `client_body_timeout`), or for longer
/// in all than `patience` plus a second per [`MIN_BODY_RATE`] bytes received. Only time
/// spent waiting on the client counts: a backend that does not read is no client's fault.
#[derive(Debug)]
pub struct Limited {
    inner: Incoming,
    left: u64,
    tally: Arc<RequestTally>,
    patience: Duration,
    /// The deadline of the current wait on the client, made on the first wait.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Since when the body waits on the client (`None` while it does not).
    waiting_since: Option<tokio::time::Instant>,
    /// The client waits that ended, summed.
    waited: Duration,
}

impl Limited {
    /// Wraps `inner`; `tally` records what passed; `patience` is `request_timeout`.
    pub fn new(inner: Incoming, limit: u64, tally: Arc<RequestTally>, patience: Duration) -> Limited {
        Limited {
            inner,
            left: limit,
            tally,
            patience,
            timer: None,
            waiting_since: None,
            waited: Duration::ZERO,
        }
    }

    /// The body waits on the client: true once it waited too long.
    fn out_of_patience(&mut self, cx: &mut Context<'_>) -> bool {
        let now = tokio::time::Instant::now();
        let since = *self.waiting_since.get_or_insert_with(|| {
            self.tally.awaiting_since_ms.store(crate::clock::now_ms(), Relaxed);
            now
        });
        let received = self.tally.bytes.load(Relaxed) as f64;
        let total = self.patience + Duration::from_secs_f64(received / MIN_BODY_RATE);
        let deadline = (since + self.patience).min(since + total.saturating_sub(self.waited));
        let timer = match &mut self.timer {
            Some(t) if t.deadline() == deadline => t,
            Some(t) => {
                t.as_mut().reset(deadline);
                t
            }
            None => self.timer.insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        timer.as_mut().poll(cx).is_ready()
    }
}

impl hyper::body::Body for Limited {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => {
                if this.out_of_patience(cx) {
                    this.tally.stalled.store(true, Relaxed);
                    return Poll::Ready(Some(Err("request body not received in time".into())));
                }
                return Poll::Pending;
            }
            Poll::Ready(f) => f,
        };
        if let Some(since) = this.waiting_since.take() {
            this.waited += since.elapsed();
            this.tally.awaiting_since_ms.store(0, Relaxed);
        }
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
                this.tally.finished_at_ms.store(crate::clock::now_ms(), Relaxed);
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
