//! Flood accounting for an HTTP/2 client connection: the bytes hyper reads pass through
//! unchanged, and the 9-byte header of each frame is looked at (type, flags, length; never
//! the payload, never any framing done here) to count the frames that cost the server work
//! and carry no request: `PING` and `SETTINGS` (acks too: an unasked ack costs as much),
//! `PRIORITY`, `WINDOW_UPDATE`, empty `DATA` frames that do not end their stream, and frame
//! types HTTP/2 does not define. They draw from a token bucket that refills with time, with
//! each request (`HEADERS`: its priority update and window update are expected) and with
//! what the balancer writes to the client (a download earns the window updates that answer
//! it). A client that empties it is flooding, and its connection is told to go (GOAWAY) and
//! ends. The h2 crate bounds the rest itself (rapid reset, CONTINUATION, header lists).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Frames a client may send at once past its steady rate.
pub const FLOOD_BURST: u32 = 1_000;
/// Frames a second a client may send for ever.
pub const FLOOD_RATE: u32 = 100;

/// Tokens a request (`HEADERS` frame) earns.
const PER_REQUEST: u32 = 2;
/// Bytes written to the client that earn one token.
const BYTES_PER_TOKEN: usize = 1024;

const PREFACE_LEN: u32 = 24;
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;

/// Where the reader is in the stream of frames.
#[derive(Debug, Clone, Copy)]
enum At {
    /// In the client's connection preface: this many bytes left.
    Preface(u32),
    /// In a frame header: the bytes of it read so far.
    Header([u8; 9], u8),
    /// In a frame's payload: this many bytes left.
    Payload(u32),
}

/// A client stream whose HTTP/2 frames are counted as they are read.
#[derive(Debug)]
pub struct FloodWatch<T> {
    inner: T,
    at: At,
    tokens: u32,
    refilled_ms: u64,
    /// Bytes written to the client not yet turned into tokens.
    written: usize,
    /// Set once the client flooded; the connection's task reads it and sends GOAWAY.
    flooded: Arc<AtomicBool>,
}

impl<T> FloodWatch<T> {
    /// Watches `inner`; `flooded` is set when the client floods.
    pub fn new(inner: T, flooded: Arc<AtomicBool>) -> FloodWatch<T> {
        FloodWatch {
            inner,
            at: At::Preface(PREFACE_LEN),
            tokens: FLOOD_BURST,
            refilled_ms: crate::clock::now_ms(),
            written: 0,
            flooded,
        }
    }

    /// Adds tokens earned by work the client asked for, up to the burst.
    fn earn(&mut self, n: u32) {
        self.tokens = self.tokens.saturating_add(n).min(FLOOD_BURST);
    }

    /// Counts one costly frame; false when the bucket is empty.
    fn spend(&mut self) -> bool {
        if self.tokens == 0 {
            let now = crate::clock::now_ms();
            let earned = now.saturating_sub(self.refilled_ms) * u64::from(FLOOD_RATE) / 1000;
            if earned == 0 {
                return false;
            }
            self.tokens = earned.min(u64::from(FLOOD_BURST)) as u32;
            self.refilled_ms = now;
        }
        self.tokens -= 1;
        true
    }

    /// Follows the frames through `bytes`; false once the client is flooding.
    fn scan(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            match &mut self.at {
                At::Preface(left) | At::Payload(left) => {
                    let n = (*left as usize).min(bytes.len());
                    *left -= n as u32;
                    bytes = &bytes[n..];
                    if *left == 0 {
                        self.at = At::Header([0; 9], 0);
                    }
                }
                At::Header(h, got) => {
                    let n = (9 - *got as usize).min(bytes.len());
                    h[*got as usize..*got as usize + n].copy_from_slice(&bytes[..n]);
                    *got += n as u8;
                    bytes = &bytes[n..];
                    if *got < 9 {
                        continue;
                    }
                    let len = u32::from_be_bytes([0, h[0], h[1], h[2]]);
                    let (kind, flags) = (h[3], h[4]);
                    let costly = match kind {
                        PING | SETTINGS | PRIORITY | WINDOW_UPDATE => true,
                        DATA => len == 0 && flags & END_STREAM == 0,
                        HEADERS => {
                            self.earn(PER_REQUEST);
                            false
                        }
                        // RST_STREAM, PUSH_PROMISE, GOAWAY, CONTINUATION: the h2 crate's.
                        0x3 | 0x5 | 0x7 | CONTINUATION => false,
                        _ => true,
                    };
                    self.at = match len {
                        0 => At::Header([0; 9], 0),
                        n => At::Payload(n),
                    };
                    if costly && !self.spend() {
                        return false;
                    }
                }
            }
        }
        true
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FloodWatch<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.flooded.load(Ordering::Relaxed) {
            // Nothing more is read from a flooding client; its task ends the connection.
            return Poll::Pending;
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            if !this.scan(&buf.filled()[before..]) {
                this.flooded.store(true, Ordering::Relaxed);
                cx.waker().wake_by_ref();
            }
        }
        r
    }
}

impl<T> FloodWatch<T> {
    /// What the client was sent earns it tokens.
    fn wrote(&mut self, r: &Poll<io::Result<usize>>) {
        if let Poll::Ready(Ok(n)) = r {
            self.written += n;
            if self.written >= BYTES_PER_TOKEN {
                self.earn((self.written / BYTES_PER_TOKEN).min(FLOOD_BURST as usize) as u32);
                self.written %= BYTES_PER_TOKEN;
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FloodWatch<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.wrote(&r);
        r
    }
    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.wrote(&r);
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, len: u32) -> Vec<u8> {
        let mut f = len.to_be_bytes()[1..].to_vec();
        f.extend([kind, flags, 0, 0, 0, 1]);
        f.extend(vec![0u8; len as usize]);
        f
    }

    fn watch() -> FloodWatch<()> {
        FloodWatch::new((), Arc::new(AtomicBool::new(false)))
    }

    #[test]
    fn pings_and_acks_past_the_burst_are_a_flood() {
        let mut w = watch();
        assert!(w.scan(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
        let half: Vec<u8> = (0..FLOOD_BURST / 2).flat_map(|_| frame(PING, 0, 8)).collect();
        let acks: Vec<u8> = (0..FLOOD_BURST / 2).flat_map(|_| frame(PING, 0x1, 8)).collect();
        assert!(w.scan(&half) && w.scan(&acks), "the burst is allowed");
        assert!(!w.scan(&frame(PING, 0x1, 8)), "one more (an unasked ack) is a flood");
    }

    #[test]
    fn window_updates_and_unknown_frames_are_counted_and_earned_by_what_was_sent() {
        let mut w = watch();
        assert!(w.scan(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
        let updates: Vec<u8> = (0..FLOOD_BURST).flat_map(|_| frame(WINDOW_UPDATE, 0, 4)).collect();
        assert!(w.scan(&updates));
        assert!(!w.scan(&frame(0xfa, 0, 0)), "an unknown frame type past the burst is a flood");
        // A download of 1 MiB earns the window updates that answer it.
        let mut w = watch();
        assert!(w.scan(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
        assert!(w.scan(&updates));
        w.wrote(&Poll::Ready(Ok(1024 * 1024)));
        let more: Vec<u8> = (0..1000).flat_map(|_| frame(WINDOW_UPDATE, 0, 4)).collect();
        assert!(w.scan(&more), "earned by the bytes written");
        assert!(!w.scan(&frame(WINDOW_UPDATE, 0, 4)));
    }

    #[test]
    fn frames_split_at_every_byte_are_counted_once() {
        let mut w = watch();
        let mut all = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        for _ in 0..FLOOD_BURST {
            all.extend(frame(DATA, 0, 0));
            // Payload bytes that look like frame headers are skipped, not counted.
            all.extend(frame(DATA, END_STREAM, 18));
        }
        for b in &all {
            assert!(w.scan(std::slice::from_ref(b)));
        }
        assert_eq!(w.tokens, 0);
        assert!(!w.scan(&frame(SETTINGS, 0, 6)));
    }

    #[test]
    fn requests_and_data_are_not_counted() {
        let mut w = watch();
        assert!(w.scan(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
        // Each request with a body and its window update: the request pays for the update.
        let normal: Vec<u8> = (0..10_000)
            .flat_map(|_| {
                [
                    frame(HEADERS, 0x4, 20),
                    frame(DATA, 0, 100),
                    frame(DATA, 0x1, 0),
                    frame(WINDOW_UPDATE, 0, 4),
                ]
                .concat()
            })
            .collect();
        assert!(w.scan(&normal));
        assert!(w.tokens >= FLOOD_BURST - 1, "{}", w.tokens);
    }
}
