//! The relay stays right at every byte (issue 16): pipelined data is checked before the
//! 101; a peer that dies mid-frame ends the other side at once; an offender is closed
//! promptly; bytes dropped after a close are not traffic; payload bytes are activity; a
//! keepalive ping is awaited only once sent; invalid backend frames stop at the edge.

mod common;
use common::*;

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use switchyard::ws::frame::Opcode;
use switchyard::ws::peer::read_frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use switchyard::ws::peer::frame_bytes as frame;

const M: Option<[u8; 4]> = Some([9, 8, 7, 6]);

/// Reads until EOF (or an error) and returns what came; panics if it takes over `limit`.
async fn read_to_eof<S: tokio::io::AsyncRead + Unpin>(s: &mut S, limit: Duration) -> Vec<u8> {
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

/// A backend that completes each upgrade by hand (with `extra` response headers) and then
/// runs `script` on the connection with the request head and the bytes read past it.
async fn scripted_backend<F, Fut>(extra: &'static str, script: F) -> std::net::SocketAddr
where
    F: Fn(TcpStream, String, Vec<u8>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    let script = std::sync::Arc::new(script);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let script = script.clone();
            tokio::spawn(async move {
                let (head, pending) = accept_upgrade_raw(&mut s, extra).await;
                script(s, head, pending).await;
            });
        }
    });
    a
}

/// Less than the relay's 5 s close grace: what must happen "at once" happens well within it.
const PROMPT: Duration = Duration::from_millis(2500);

#[tokio::test]
async fn a_backend_dying_mid_frame_ends_the_client_at_once() {
    bounded(async {
        // Half of a 1000-byte frame, then the backend is gone.
        let half = {
            let mut f = frame(true, Opcode::Binary, &[5u8; 1000], None);
            f.truncate(4 + 100);
            f
        };
        let sent = half.clone();
        let baddr = scripted_backend("", move |mut s, _, _| {
            let half = sent.clone();
            async move {
                s.write_all(&half).await.unwrap();
            }
        })
        .await;
        let p = Proxy::start(&config("round_robin", &[baddr], ""));
        let (mut s, mut got) = raw_ws(p.addr, "/").await;
        // No close frame can follow half a frame: the connection ends at once, and the client
        // got exactly the half frame, nothing after it.
        got.extend(read_to_eof(&mut s, PROMPT).await);
        assert_eq!(got, half);
    })
    .await
}

#[tokio::test]
async fn a_client_dying_mid_frame_ends_the_backend_at_once() {
    bounded(async {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
        let baddr = scripted_backend("", move |mut s, _, mut got| {
            let tx = tx.clone();
            async move {
                got.extend(read_to_eof(&mut s, PROMPT).await);
                let _ = tx.send(got);
            }
        })
        .await;
        let p = Proxy::start(&config("round_robin", &[baddr], ""));
        let (mut s, _) = raw_ws(p.addr, "/").await;
        let mut half = frame(true, Opcode::Binary, &[6u8; 1000], M);
        half.truncate(4 + 4 + 100);
        s.write_all(&half).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(s);
        let mut rx = rx;
        let got = tokio::time::timeout(T, rx.recv()).await.unwrap().unwrap();
        assert_eq!(got, half, "the backend got the half frame and then EOF, no close inside the frame");
    })
    .await
}

#[tokio::test]
async fn an_offending_client_gets_1002_and_its_connection_closed_at_once() {
    bounded(async {
        // The backend never answers the proxy's close, so only the proxy can end the client.
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<u16>();
        let baddr = scripted_backend("", move |mut s, _, mut pending| {
            let tx = tx.clone();
            async move {
                if let Ok(f) = read_frame(&mut s, &mut pending).await {
                    let _ = tx.send(u16::from_be_bytes([f.payload[0], f.payload[1]]));
                }
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
        })
        .await;
        let p = Proxy::start(&config("round_robin", &[baddr], ""));
        let (mut s, mut pending) = raw_ws(p.addr, "/").await;
        s.write_all(&frame(true, Opcode::Text, b"unmasked", None)).await.unwrap();
        assert_eq!(raw_close_code(&mut s, &mut pending).await, 1002);
        assert!(read_to_eof(&mut s, PROMPT).await.is_empty(), "nothing after the close");
        let mut rx = rx;
        assert_eq!(tokio::time::timeout(T, rx.recv()).await.unwrap(), Some(1002));
    })
    .await
}

#[tokio::test]
async fn bytes_a_client_sends_after_its_close_are_neither_counted_nor_read_on() {
    bounded(async {
        let b = backend("b1").await;
        let p = Proxy::start(&config("round_robin", &[b.addr], ""));
        let (mut s, mut pending) = raw_ws(p.addr, "/").await;
        let hello = frame(true, Opcode::Text, b"hi", M);
        s.write_all(&hello).await.unwrap();
        let f = tokio::time::timeout(T, read_frame(&mut s, &mut pending)).await.unwrap().unwrap();
        assert_eq!(f.payload, b"hi");
        let close = frame(true, Opcode::Close, &1000u16.to_be_bytes(), M);
        s.write_all(&close).await.unwrap();
        // ... and keeps writing: far more than all socket buffers on the way can hold.
        let (mut rd, mut wr) = s.into_split();
        let writer = tokio::spawn(async move {
            let junk = vec![0u8; 1 << 20];
            let mut sent = 0usize;
            while sent < 256 << 20 {
                match tokio::time::timeout(T, wr.write_all(&junk)).await {
                    Ok(Ok(())) => sent += junk.len(),
                    _ => break,
                }
            }
            sent
        });
        // The backend answers the close and the connection ends.
        assert_eq!(raw_close_code(&mut rd, &mut pending).await, 1000);
        read_to_eof(&mut rd, T).await;
        let sent = writer.await.unwrap();
        assert!(sent < 256 << 20, "the balancer stopped reading the junk");
        let be = p.backend(0);
        assert!(eventually(T, || be.active() == 0).await.is_some());
        // Only the relayed frames count: the message and the close, not the junk.
        assert_eq!(be.bytes_c2b.load(Relaxed), (hello.len() + close.len()) as u64);
    })
    .await
}

#[tokio::test]
async fn a_slow_upload_of_one_frame_is_activity() {
    bounded(async {
        let b = backend("b1").await;
        let p = Proxy::start(&config("round_robin", &[b.addr], "limits:\n  idle_timeout: 1s\n"));
        let (mut s, mut pending) = raw_ws(p.addr, "/").await;
        let payload = vec![b'u'; 20 * 1024];
        let f = frame(true, Opcode::Binary, &payload, M);
        // Header and mask first, then 1 KiB every 100 ms: 2 s in all, twice the idle timeout,
        // with no frame header after the first.
        s.write_all(&f[..8]).await.unwrap();
        for chunk in f[8..].chunks(1024) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            s.write_all(chunk).await.unwrap();
        }
        let echo = tokio::time::timeout(T, read_frame(&mut s, &mut pending)).await.unwrap().unwrap();
        assert_eq!(echo.opcode, Opcode::Binary, "not closed for idleness mid-upload");
        assert!(echo.payload == payload);
    })
    .await
}

#[tokio::test]
async fn a_ping_is_awaited_only_once_it_is_on_the_wire() {
    bounded(async {
        // One 20 KiB frame sent slowly over 2 s: a keepalive ping can only follow it.
        let baddr = scripted_backend("", |mut s, _, _| async move {
            let f = frame(true, Opcode::Binary, &[3u8; 20 * 1024], None);
            s.write_all(&f[..4]).await.unwrap();
            for chunk in f[4..].chunks(1024) {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if s.write_all(chunk).await.is_err() {
                    return;
                }
            }
            read_to_eof(&mut s, Duration::from_secs(30)).await;
        })
        .await;
        let p = Proxy::start(&config(
            "round_robin",
            &[baddr],
            "limits:\n  ping_interval: 300ms\n  ping_timeout: 300ms\n",
        ));
        let (mut s, mut pending) = raw_ws(p.addr, "/").await;
        let mut seen = Vec::new();
        while seen.len() < 3 {
            let f = tokio::time::timeout(T, read_frame(&mut s, &mut pending)).await.unwrap().unwrap();
            if f.opcode == Opcode::Ping {
                s.write_all(&frame(true, Opcode::Pong, &f.payload, M)).await.unwrap();
            }
            if f.opcode == Opcode::Binary {
                assert_eq!(f.payload.len(), 20 * 1024);
            }
            if !seen.is_empty() || f.opcode == Opcode::Binary {
                seen.push(f.opcode);
            }
        }
        // The ping queued during the long frame went out after it, was answered, and the
        // connection lives on (the next ping comes), instead of a "ping timeout" close.
        assert_eq!(seen, [Opcode::Binary, Opcode::Ping, Opcode::Ping]);
    })
    .await
}

/// The value of `switchyard_backend_protocol_errors_total` for a backend (0 when absent).
fn backend_protocol_errors(backend: std::net::SocketAddr) -> u64 {
    let needle = format!("backend=\"{backend}\"");
    switchyard::metrics::render()
        .lines()
        .find(|l| l.starts_with("switchyard_backend_protocol_errors_total{") && l.contains(&needle))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn invalid_backend_frames_stop_at_the_edge() {
    bounded(async {
        let deflated_start = {
            let mut f = frame(false, Opcode::Text, b"a", None);
            f[0] |= 0x40;
            f
        };
        let rsv1_on = |op: Opcode, fin: bool| {
            let mut f = frame(fin, op, b"b", None);
            f[0] |= 0x40;
            f
        };
        let mut rsv1_continuation = deflated_start.clone();
        rsv1_continuation.extend(rsv1_on(Opcode::Continuation, true));
        let mut rsv1_ping = deflated_start.clone();
        rsv1_ping.extend(rsv1_on(Opcode::Ping, true));
        let cases: Vec<(&str, bool, Vec<u8>)> = vec![
            ("masked server frame", false, frame(true, Opcode::Text, b"x", M)),
            ("1-byte close payload", false, frame(true, Opcode::Close, &[3], None)),
            (
                "close 1005 on the wire",
                false,
                frame(true, Opcode::Close, &1005u16.to_be_bytes(), None),
            ),
            (
                "close 1006 on the wire",
                false,
                frame(true, Opcode::Close, &1006u16.to_be_bytes(), None),
            ),
            (
                "close 1015 on the wire",
                false,
                frame(true, Opcode::Close, &1015u16.to_be_bytes(), None),
            ),
            ("RSV1 on a continuation (deflate)", true, rsv1_continuation),
            ("RSV1 on a ping (deflate)", true, rsv1_ping),
        ];
        for (what, deflate, bad) in cases {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u16>();
            let script = move |mut s: TcpStream, _: String, mut pending: Vec<u8>| {
                let (tx, bad) = (tx.clone(), bad.clone());
                async move {
                    s.write_all(&frame(true, Opcode::Text, b"ok", None)).await.unwrap();
                    s.write_all(&bad).await.unwrap();
                    if let Ok(f) = read_frame(&mut s, &mut pending).await {
                        let _ = tx.send(u16::from_be_bytes([f.payload[0], f.payload[1]]));
                    }
                    read_to_eof(&mut s, T).await;
                }
            };
            let baddr = if deflate {
                scripted_backend("Sec-WebSocket-Extensions: permessage-deflate\r\n", script).await
            } else {
                scripted_backend("", script).await
            };
            let p = Proxy::start(&config("round_robin", &[baddr], ""));
            let (mut s, mut pending) = raw_ws(p.addr, "/").await;
            let f = tokio::time::timeout(T, read_frame(&mut s, &mut pending)).await.unwrap().unwrap();
            assert_eq!(f.payload, b"ok", "{what}: frames before the bad one still arrive");
            if deflate {
                // the valid first frame of the deflated message passes
                let f = tokio::time::timeout(T, read_frame(&mut s, &mut pending)).await.unwrap().unwrap();
                assert_eq!((f.opcode, &f.payload[..]), (Opcode::Text, &b"a"[..]), "{what}");
            }
            assert_eq!(raw_close_code(&mut s, &mut pending).await, 1011, "{what}: the client gets 1011");
            assert_eq!(
                tokio::time::timeout(T, rx.recv()).await.unwrap(),
                Some(1002),
                "{what}: the backend gets 1002"
            );
            assert_eq!(backend_protocol_errors(baddr), 1, "{what}: counted once");
        }
    })
    .await
}
