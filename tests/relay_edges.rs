//! The relay stays right at every byte (issue 16): pipelined data is checked before the
//! 101; a peer that dies mid-frame ends the other side at once; an offender is closed
//! promptly; bytes dropped after a close are not traffic; payload bytes are activity; a
//! keepalive ping is awaited only once sent; invalid backend frames stop at the edge.

mod common;
use common::*;

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use switchyard::ws::frame::{apply_mask, write_header, Opcode};
use switchyard::ws::peer::read_frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One frame's bytes; masked (as a client sends) when `mask` is given.
fn frame(fin: bool, op: Opcode, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut h = [0u8; 14];
    let n = write_header(&mut h, fin, op, mask, payload.len() as u64);
    let mut v = h[..n].to_vec();
    let mut p = payload.to_vec();
    if let Some(m) = mask {
        apply_mask(&mut p, m, 0);
    }
    v.extend(p);
    v
}

const M: Option<[u8; 4]> = Some([9, 8, 7, 6]);

/// Reads until EOF (or an error) and returns what came; panics if it takes over `limit`.
async fn read_to_eof(s: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(limit, async {
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .expect("the balancer closed the connection in time");
    out
}

#[tokio::test]
async fn pipelined_data_over_a_buffer_is_refused_before_the_101() {
    bounded(async {
        let b = backend("b1").await;
        let p = Proxy::start(&config("round_robin", &[b.addr], "limits:\n  max_request_header_bytes: 1MiB\n"));
        // A head of ~66 KB makes the head reader's buffer grow to 128 KiB, so the read that
        // completes the head also takes ~62 KB of the frames behind it.
        let pad = "a".repeat(66_000);
        let mut req = upgrade_request("/", &format!("X-Pad: {pad}\r\n")).into_bytes();
        for _ in 0..4 {
            req.extend(frame(true, Opcode::Binary, &[7u8; 25_000], M));
        }
        let resp = raw_exchange(p.addr, &req).await;
        assert_eq!(status(&resp), 400, "{}", &resp[..resp.len().min(200)]);
        assert!(resp.contains("too much data sent before the 101"), "{resp}");
        assert_eq!(b.accepted.load(Relaxed), 0, "nothing reached the backend");

        // A small pipelined frame is still relayed.
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        let mut req = upgrade_request("/", "").into_bytes();
        req.extend(frame(true, Opcode::Text, b"early", M));
        s.write_all(&req).await.unwrap();
        let (buf, end) = switchyard::handshake::read_head(&mut s, 16384).await.unwrap();
        assert!(buf.starts_with(b"HTTP/1.1 101"));
        let mut pending = buf[end..].to_vec();
        let f = tokio::time::timeout(T, read_frame(&mut s, &mut pending)).await.unwrap().unwrap();
        assert_eq!((f.opcode, &f.payload[..]), (Opcode::Text, &b"early"[..]));
    })
    .await
}
