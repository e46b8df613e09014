//! One direction of a relay: read from a source, scan frames, write to a destination.
//! A buffer is held only while bytes are in flight; a slow destination stops the reads
//! from its source (backpressure), so memory per direction is bounded by one buffer.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::buf::Buf;
use crate::stream::Stream;
use crate::ws::frame::{ControlFrame, Opcode};
use crate::ws::stream::{Allowance, Event, Scanner};
use crate::ws::CloseCode;

/// Room kept free at the end of a buffer for one injected control frame.
const HEADROOM: usize = 160;
/// Most bytes a direction can take before the relay starts (pipelined behind a handshake head).
pub const MAX_EARLY_BYTES: usize = super::buf::BUF_SIZE - HEADROOM;
/// Bytes a source may still send once its direction only discards (after a close, or with
/// its destination dead) before it is no longer read at all.
const DISCARD_BUDGET: usize = super::buf::BUF_SIZE;
/// A burst of at least this many bytes marks a direction as moving bulk data...
const BULK_BURST: u16 = 16 * 1024;
/// ...and one of fewer than this many ends it (bursts in between keep the mark: a bulk
/// stream's reads often catch a message half arrived).
const SMALL_BURST: u16 = 4 * 1024;

/// A frame the proxy itself puts into a direction at the next frame boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inject {
    /// A ping with this payload (to the client).
    Ping([u8; 8]),
    /// A close with this code and reason.
    Close(u16, &'static str),
}

/// What one call to [`Half::pump`] saw.
#[derive(Debug, Default, Clone, Copy)]
pub struct Pumped {
    /// Anything moved.
    pub progress: bool,
    /// Bytes arrived from the source.
    pub rx: bool,
    /// A data frame header passed.
    pub data_seen: bool,
    /// The proxy's own pong came back (and was cut out).
    pub own_pong: bool,
    /// An injected close with this code was put on the wire.
    pub sent_close: Option<u16>,
    /// The injected ping was written in full.
    pub ping_sent: bool,
    /// Something that ends or changes the connection.
    pub event: Option<HalfEvent>,
    /// Stopped at a data frame its allowance did not cover: the source is not read until
    /// the next call brings more.
    pub throttled: bool,
}

/// Events the relay acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HalfEvent {
    /// The source closed (or failed) its side.
    Eof,
    /// A close frame from the source passed, with this code.
    CloseFrame(u16),
    /// The source broke RFC 6455 or a limit.
    Violation(CloseCode),
    /// Writing to the destination failed.
    DstDead,
}

/// One direction's state.
pub struct Half {
    buf: Buf,
    /// The next buffer taken is a bulk one: a burst (bytes read between taking a buffer
    /// and giving it back) of at least [`BULK_BURST`] set it, none under [`SMALL_BURST`]
    /// came since.
    bulk: bool,
    /// Bytes read since the buffer was taken (saturating: only the thresholds matter, and
    /// every byte here is a byte per idle connection).
    burst: u16,
    out_start: usize,
    out_end: usize,
    filled: usize,
    rescan: bool,
    /// Frame scanner of this direction.
    pub scan: Scanner,
    /// Masks injected frames (towards the backend).
    pub mask_injected: bool,
    /// Source ended.
    pub src_done: bool,
    /// Drop whatever the source still sends (a close went by).
    pub discard: bool,
    /// A close frame from the source passed.
    pub close_seen: bool,
    /// Destination can no longer be written.
    pub dst_dead: bool,
    /// Destination's write side was shut down.
    pub shut: bool,
    /// A frame waiting for the next boundary.
    pub inject: Option<Inject>,
    /// Bytes relayed (scanned and passed on) and not yet flushed to shared counters.
    pub unflushed_bytes: u64,
    /// Bytes dropped since this direction started discarding.
    discarded: u32,
    /// An injected close was put on the wire.
    close_injected: bool,
    /// Once the injected close is written, shut the destination down (it broke the rules).
    pub shut_after_close: bool,
    /// End of an injected ping within the bytes being written (0: none in flight).
    ping_end: u32,
    /// The destination already closed its sending side, or (plain TCP) sent its close frame:
    /// no `shutdown` needed, the socket is about to be closed anyway (the close sends the FIN).
    pub peer_gone: bool,
}

impl Half {
    /// A direction with this scanner.
    pub fn new(scan: Scanner, mask_injected: bool) -> Self {
        Half {
            buf: Buf::empty(),
            bulk: false,
            burst: 0,
            out_start: 0,
            out_end: 0,
            filled: 0,
            rescan: false,
            scan,
            mask_injected,
            src_done: false,
            discard: false,
            close_seen: false,
            dst_dead: false,
            shut: false,
            inject: None,
            unflushed_bytes: 0,
            discarded: 0,
            close_injected: false,
            shut_after_close: false,
            ping_end: 0,
            peer_gone: false,
        }
    }

    /// Bytes that arrived before the relay started (pipelined after a handshake head).
    /// Returns false when they do not fit in one buffer.
    pub fn preload(&mut self, bytes: &[u8]) -> bool {
        if bytes.is_empty() {
            return true;
        }
        if bytes.len() > MAX_EARLY_BYTES {
            return false;
        }
        self.buf.ensure();
        self.buf[..bytes.len()].copy_from_slice(bytes);
        self.filled = bytes.len();
        self.rescan = true;
        true
    }

    /// Drops what was read and not yet passed on (a source closed for its limits: what it
    /// sent over them goes nowhere), so a close can follow at the boundary.
    pub fn drop_unscanned(&mut self) {
        self.filled = self.out_end;
        self.rescan = false;
    }

    /// Everything read was written and no frame waits to be put in.
    pub fn drained(&self) -> bool {
        self.filled == 0 && self.inject.is_none()
    }

    /// A close frame went to the destination: the source's, or one the proxy put in.
    pub fn close_passed(&self) -> bool {
        self.close_seen || self.close_injected
    }

    /// Finished: source ended and the destination is shut (or dead).
    pub fn finished(&self) -> bool {
        self.src_done && (self.shut || self.dst_dead)
    }

    /// Moves bytes until blocked or something happens; see [`Pumped`].
    /// With `allow`, passes on only the data frames it covers (see [`Allowance`]): past it,
    /// the rest stays in the buffer and the source is not read (its TCP window closes).
    pub fn pump(
        &mut self,
        src: &mut Stream,
        dst: &mut Stream,
        cx: &mut Context<'_>,
        own_ping: Option<&[u8]>,
        mut allow: Option<&mut Allowance>,
    ) -> Pumped {
        let mut r = Pumped::default();
        loop {
            if self.out_start < self.out_end {
                if self.dst_dead {
                    self.out_start = self.out_end;
                    self.ping_end = 0;
                } else {
                    match Pin::new(&mut *dst).poll_write(cx, &self.buf[self.out_start..self.out_end]) {
                        Poll::Ready(Ok(n)) if n > 0 => {
                            self.out_start += n;
                            if self.ping_end != 0 && self.out_start >= self.ping_end as usize {
                                self.ping_end = 0;
                                r.ping_sent = true;
                            }
                            r.progress = true;
                            continue;
                        }
                        Poll::Ready(_) => {
                            self.dst_dead = true;
                            self.discard = true;
                            r.event = Some(HalfEvent::DstDead);
                            return r;
                        }
                        Poll::Pending => return r,
                    }
                }
            }
            // Everything scanned so far is written: keep only the carried partial frame.
            if self.out_end > 0 {
                self.buf.copy_within(self.out_end..self.filled, 0);
                self.filled -= self.out_end;
                self.out_start = 0;
                self.out_end = 0;
            }
            // RFC 6455 §7.1.7: the connection of a peer that broke the rules is closed as soon
            // as its close frame is out, without waiting for an answer.
            if self.shut_after_close && self.close_injected && !self.shut && !self.dst_dead {
                match Pin::new(&mut *dst).poll_shutdown(cx) {
                    Poll::Ready(_) => {
                        self.shut = true;
                        r.progress = true;
                    }
                    Poll::Pending => return r,
                }
            }
            if let Some(inj) = self.inject {
                // At a frame boundary the bytes still to scan (a backlog held back by its
                // limits, early bytes) start with a frame: the injected one goes before them.
                if self.dst_dead || self.scan.at_boundary() {
                    self.inject = None;
                    if !self.dst_dead {
                        self.put_front(inj);
                        r.progress = true;
                        match inj {
                            Inject::Close(code, _) => {
                                self.discard = true;
                                self.close_injected = true;
                                self.filled = self.out_end;
                                r.sent_close = Some(code);
                            }
                            Inject::Ping(_) => self.ping_end = self.out_end as u32,
                        }
                        continue;
                    }
                }
            }
            if self.rescan && self.filled > 0 && !self.discard {
                self.rescan = false;
                if let Some(ev) = self.scan_buffered(&mut r, own_ping, allow.as_deref_mut()) {
                    r.event = Some(ev);
                    return r;
                }
                if self.out_end > 0 {
                    continue;
                }
                if r.throttled {
                    return r;
                }
            }
            if self.src_done {
                if self.filled == 0 {
                    self.end_burst();
                }
                if !self.shut && self.peer_gone && self.inject.is_none() && self.filled == 0 {
                    self.shut = true;
                    r.progress = true;
                }
                if !self.shut && !self.dst_dead && self.inject.is_none() && self.filled == 0 {
                    match Pin::new(&mut *dst).poll_shutdown(cx) {
                        Poll::Ready(_) => {
                            self.shut = true;
                            r.progress = true;
                        }
                        Poll::Pending => {}
                    }
                }
                return r;
            }
            if !self.bulk && self.burst >= BULK_BURST && self.filled == 0 {
                // A long burst in an ordinary buffer: swapped for a bulk one while it is empty.
                self.bulk = true;
                self.buf.release();
            }
            self.buf.ensure_for(self.bulk);
            // Headroom so an injected control frame always fits in front of unscanned bytes.
            // Invariant: reads stop at `end`, an injected frame (≤ 131 bytes < HEADROOM) is
            // written and compacted away before the next read, so `filled <= end` here.
            let end = self.buf.len() - HEADROOM;
            debug_assert!(self.filled <= end, "relay buffer over its read limit");
            let mut rb = ReadBuf::new(&mut self.buf[self.filled..end]);
            match Pin::new(&mut *src).poll_read(cx, &mut rb) {
                Poll::Pending => {
                    if self.filled == 0 {
                        self.end_burst();
                    }
                    return r;
                }
                Poll::Ready(res) => {
                    let n = rb.filled().len();
                    if res.is_err() || n == 0 {
                        self.src_done = true;
                        self.filled = self.out_end;
                        r.progress = true;
                        r.event = Some(HalfEvent::Eof);
                        return r;
                    }
                    r.progress = true;
                    self.burst = self.burst.saturating_add(n.min(u16::MAX as usize) as u16);
                    if self.discard {
                        // Dropped bytes are no traffic; a source that keeps sending them gets
                        // a bounded allowance, then is not read any more (no spinning).
                        self.discarded = self.discarded.saturating_add(n as u32);
                        if self.discarded as usize > DISCARD_BUDGET {
                            self.src_done = true;
                            return r;
                        }
                        continue;
                    }
                    self.filled += n;
                    r.rx = true;
                    if let Some(ev) = self.scan_buffered(&mut r, own_ping, allow.as_deref_mut()) {
                        r.event = Some(ev);
                        return r;
                    }
                }
            }
        }
    }

    /// Everything read was written: the buffer goes back, and the burst's size decides
    /// which kind the next one is.
    fn end_burst(&mut self) {
        self.buf.release();
        if self.burst >= BULK_BURST {
            self.bulk = true;
        } else if self.burst < SMALL_BURST {
            self.bulk = false;
        }
        self.burst = 0;
    }

    /// Scans the unscanned bytes; returns an event that stops this direction.
    fn scan_buffered(&mut self, r: &mut Pumped, own_ping: Option<&[u8]>, allow: Option<&mut Allowance>) -> Option<HalfEvent> {
        let stop = self.inject.is_some();
        let s = self
            .scan
            .scan_limited(&mut self.buf, self.out_end, &mut self.filled, own_ping, stop, allow);
        if s.throttled {
            // The rest is scanned again when the allowance grows (and nothing is read before).
            self.rescan = true;
            r.throttled = true;
        }
        self.unflushed_bytes += (s.forward - self.out_end) as u64;
        self.out_end = s.forward;
        r.data_seen |= s.data_seen;
        r.own_pong |= s.own_pong;
        if stop && s.forward < self.filled {
            self.rescan = true;
        }
        match s.event {
            None => None,
            Some(Event::Close(code)) => {
                self.close_seen = true;
                self.discard = true;
                self.filled = self.out_end;
                Some(HalfEvent::CloseFrame(code))
            }
            Some(Event::Violation(code)) => {
                self.discard = true;
                self.filled = self.out_end;
                // the offending frame starts at a boundary: the close can follow at once
                self.rescan = false;
                Some(HalfEvent::Violation(code))
            }
        }
    }

    /// Writes an injected frame before the carried bytes (we are at a frame boundary).
    fn put_front(&mut self, inj: Inject) {
        let mask = self.mask_injected.then(rand::random::<[u8; 4]>);
        let f = match inj {
            Inject::Ping(token) => ControlFrame::new(Opcode::Ping, &token, mask),
            Inject::Close(code, reason) => ControlFrame::close(code, reason, mask),
        };
        let bytes = f.as_bytes();
        self.buf.ensure();
        let l = bytes.len();
        self.buf.copy_within(0..self.filled, l);
        self.buf[..l].copy_from_slice(bytes);
        self.filled += l;
        self.out_start = 0;
        self.out_end = l;
    }
}
