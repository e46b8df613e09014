//! Relay behaviour end to end: echo sizes, fragmentation, control frames, close codes both
//! ways, extensions and subprotocols, RFC violations, size limits, dying peers, concurrency.

mod common;
use common::*;

use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use switchyard::ws::frame::{apply_mask, write_header, Opcode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame, Frame};
use tokio_tungstenite::tungstenite::Message;

async fn one_backend(extra: &str) -> (Proxy, Backend) {
    let b = backend("b1").await;
    let p = Proxy::start(&config("round_robin", &[b.addr], extra));
    (p, b)
}

#[tokio::test]
async fn echoes_text_and_binary_of_every_length_form() {
    bounded(async {
        let (p, _b) = one_backend("").await;
        let mut ws = connect(&p.url("/")).await;
        for len in [0usize, 125, 126, 65535, 65536, 8 << 20] {
            let bin: Vec<u8> = (0..len).map(|i| (i * 7 % 256) as u8).collect();
            ws.send(Message::binary(bin.clone())).await.unwrap();
            match tokio::time::timeout(T, ws.next()).await.unwrap() {
                Some(Ok(Message::Binary(b))) => assert!(b[..] == bin[..], "binary {len}"),
                other => panic!("binary {len}: {other:?}"),
            }
            let text: String = (0..len).map(|i| (b'a' + (i % 26) as u8) as char).collect();
            ws.send(Message::text(text.clone())).await.unwrap();
            match tokio::time::timeout(T, ws.next()).await.unwrap() {
                Some(Ok(Message::Text(t))) => assert!(t.as_str() == text, "text {len}"),
                other => panic!("text {len}: {other:?}"),
            }
        }
    })
    .await
}

#[tokio::test]
async fn fragmented_message_with_interleaved_ping() {
    bounded(async {
        let (p, _b) = one_backend("").await;
        let mut ws = connect(&p.url("/")).await;
        ws.send(Message::Frame(Frame::message(&b"hello "[..], OpCode::Data(Data::Text), false)))
            .await
            .unwrap();
        ws.send(Message::Ping(b"in-between".to_vec().into())).await.unwrap();
        ws.send(Message::Frame(Frame::message(
            &b"fragmented "[..],
            OpCode::Data(Data::Continue),
            false,
        )))
        .await
        .unwrap();
        ws.send(Message::Frame(Frame::message(&b"world"[..], OpCode::Data(Data::Continue), true)))
            .await
            .unwrap();
        let (mut pong, mut text) = (None, None);
        while pong.is_none() || text.is_none() {
            match tokio::time::timeout(T, ws.next()).await.unwrap() {
                Some(Ok(Message::Pong(p))) => pong = Some(p.to_vec()),
                Some(Ok(Message::Text(t))) => text = Some(t.to_string()),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(pong.unwrap(), b"in-between");
        assert_eq!(text.unwrap(), "hello fragmented world");
    })
    .await
}

#[tokio::test]
async fn close_codes_and_reasons_pass_both_ways() {
    bounded(async {
        let (p, _b) = one_backend("").await;
        // backend → client
        let mut ws = connect(&p.url("/")).await;
        ws.send(Message::text("close:4001:see you")).await.unwrap();
        assert_eq!(expect_close(&mut ws).await, (4001, "see you".to_string()));
        // client → backend → back (tungstenite echoes the client's code)
        let mut ws = connect(&p.url("/")).await;
        ws.send(Message::Close(Some(CloseFrame {
            code: CloseCode::from(4002),
            reason: "client says bye".into(),
        })))
        .await
        .unwrap();
        assert_eq!(expect_close(&mut ws).await, (4002, "client says bye".to_string()));
        still_serves(&p.url("/")).await;
    })
    .await
}

#[tokio::test]
async fn subprotocol_is_negotiated_end_to_end() {
    bounded(async {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let (p, b) = one_backend("").await;
        let mut req = p.url("/").into_client_request().unwrap();
        req.headers_mut()
            .insert("sec-websocket-protocol", "chat.v2, chat.v1".parse().unwrap());
        let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
        assert_eq!(resp.headers().get("sec-websocket-protocol").unwrap(), "chat.v2");
        assert_eq!(ask(&mut ws, "x").await, "x");
        let h = b.last_headers.lock().unwrap().clone();
        assert!(
            h.iter().any(|(k, v)| k == "sec-websocket-protocol" && v == "chat.v2, chat.v1"),
            "{h:?}"
        );
    })
    .await
}

fn masked_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x11, 0x22, 0x33, 0x44];
    let mut h = [0u8; 14];
    let n = write_header(&mut h, true, Opcode::Text, Some(mask), payload.len() as u64);
    h[0] = b0;
    let mut v = h[..n].to_vec();
    let mut p = payload.to_vec();
    apply_mask(&mut p, mask, 0);
    v.extend(p);
    v
}

#[tokio::test]
async fn permessage_deflate_and_rsv_bits_pass_untouched() {
    bounded(async {
        // A raw backend that accepts permessage-deflate and echoes frames byte for byte
        // (re-framed unmasked), keeping RSV1.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let baddr = l.local_addr().unwrap();
        let seen_ext = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let se = seen_ext.clone();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let (head, mut pending) = accept_upgrade_raw(&mut s, "Sec-WebSocket-Extensions: permessage-deflate\r\n").await;
            *se.lock().unwrap() = head
                .lines()
                .find(|l| l.to_ascii_lowercase().starts_with("sec-websocket-extensions"))
                .unwrap_or("")
                .to_string();
            let mut raw = [0u8; 4096];
            loop {
                if let Ok(Some(h)) = switchyard::ws::frame::parse_header(&pending) {
                    let total = h.header_len + h.len as usize;
                    if pending.len() >= total {
                        let mut payload = pending[h.header_len..total].to_vec();
                        apply_mask(&mut payload, h.mask.unwrap(), 0);
                        let mut out = [0u8; 14];
                        let n = write_header(&mut out, h.fin, h.opcode, None, payload.len() as u64);
                        out[0] |= h.rsv << 4;
                        let mut v = out[..n].to_vec();
                        v.extend(payload);
                        s.write_all(&v).await.unwrap();
                        pending.drain(..total);
                        continue;
                    }
                }
                let n = s.read(&mut raw).await.unwrap_or(0);
                if n == 0 {
                    return;
                }
                pending.extend_from_slice(&raw[..n]);
            }
        });
        let p = Proxy::start(&config("round_robin", &[baddr], ""));
        let mut s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
        s.write_all(upgrade_request("/", "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n").as_bytes())
            .await
            .unwrap();
        let (buf, end) = switchyard::handshake::read_head(&mut s, 16384).await.unwrap();
        let head = String::from_utf8_lossy(&buf[..end]);
        assert!(head.contains("Sec-WebSocket-Extensions: permessage-deflate"), "{head}");
        assert!(seen_ext.lock().unwrap().contains("permessage-deflate; client_max_window_bits"));
        // a "compressed" frame: RSV1 set
        s.write_all(&masked_frame(0x80 | 0x40 | 0x1, b"pretend-deflated")).await.unwrap();
        let mut pending = buf[end..].to_vec();
        let mut got = vec![0u8; 2];
        while pending.len() < 2 + 16 {
            let n = s.read(&mut got).await.unwrap();
            assert!(n > 0);
            pending.extend_from_slice(&got[..n]);
        }
        assert_eq!(pending[0], 0x80 | 0x40 | 0x1, "RSV1 reaches the client untouched");
        assert_eq!(&pending[2..18], b"pretend-deflated");
    })
    .await
}

#[tokio::test]
async fn client_protocol_violations_get_1002_and_the_backend_a_close() {
    bounded(async {
        // A backend that records, per connection, every frame it receives up to a close.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, mut seen) = tokio::sync::mpsc::unbounded_channel::<Vec<(Opcode, Vec<u8>)>>();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let (_, mut pending) = accept_upgrade_raw(&mut s, "").await;
                    let mut frames = Vec::new();
                    while let Ok(Ok(f)) = tokio::time::timeout(T, switchyard::ws::peer::read_frame(&mut s, &mut pending)).await {
                        let close = f.opcode == Opcode::Close;
                        frames.push((f.opcode, f.payload));
                        if close {
                            break;
                        }
                    }
                    let _ = tx.send(frames);
                });
            }
        });
        let p = Proxy::start(&config("round_robin", &[addr], ""));
        let mut unmasked = vec![0x81, 2];
        unmasked.extend(b"hi");
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("unmasked", unmasked),
            ("reserved opcode", masked_frame(0x83, b"x")),
            ("reserved control opcode", masked_frame(0x8b, b"x")),
            ("fragmented ping", masked_frame(0x09, b"x")),
            ("long ping", masked_frame(0x89, &[0u8; 126])),
            ("stray continuation", masked_frame(0x80, b"x")),
            ("rsv without extension", masked_frame(0x80 | 0x20 | 0x1, b"x")),
        ];
        for (what, bytes) in cases {
            let (mut s, mut pending) = raw_ws(p.addr, "/").await;
            // A good message first, in the same write as the violation: it must still arrive.
            let mut both = masked_frame(0x81, b"fine");
            both.extend_from_slice(&bytes);
            s.write_all(&both).await.unwrap();
            assert_eq!(raw_close_code(&mut s, &mut pending).await, 1002, "{what}");
            // The backend got the good message, then the balancer's 1002, and nothing else.
            let frames = tokio::time::timeout(T, seen.recv()).await.expect("the backend's frames").unwrap();
            assert_eq!(frames.len(), 2, "{what}: {frames:?}");
            assert_eq!((frames[0].0, frames[0].1.as_slice()), (Opcode::Text, &b"fine"[..]), "{what}");
            assert_eq!(frames[1].0, Opcode::Close, "{what}");
            assert_eq!(
                u16::from_be_bytes([frames[1].1[0], frames[1].1[1]]),
                1002,
                "{what}: the backend's close code"
            );
        }
    })
    .await
}

#[tokio::test]
async fn oversized_message_gets_1009_even_when_fragmented() {
    bounded(async {
        let (p, _b) = one_backend("limits:\n  max_message_bytes: 1KiB\n").await;
        let mut ws = connect(&p.url("/")).await;
        assert_eq!(ask(&mut ws, &"a".repeat(1024)).await.len(), 1024);
        ws.send(Message::binary(vec![0u8; 1025])).await.unwrap();
        assert_eq!(expect_close(&mut ws).await.0, 1009);
        let mut ws = connect(&p.url("/")).await;
        ws.send(Message::Frame(Frame::message(vec![0u8; 600], OpCode::Data(Data::Binary), false)))
            .await
            .unwrap();
        ws.send(Message::Frame(Frame::message(vec![0u8; 600], OpCode::Data(Data::Continue), true)))
            .await
            .unwrap();
        assert_eq!(expect_close(&mut ws).await.0, 1009);
        still_serves(&p.url("/")).await;
    })
    .await
}

#[tokio::test]
async fn backend_dying_mid_stream_gives_1011() {
    bounded(async {
        let (p, _b) = one_backend("").await;
        let mut ws = connect(&p.url("/")).await;
        assert_eq!(ask(&mut ws, "x").await, "x");
        ws.send(Message::text("die")).await.unwrap();
        assert_eq!(expect_close(&mut ws).await, (1011, "backend connection lost".to_string()));
        still_serves(&p.url("/")).await;
    })
    .await
}

#[tokio::test]
async fn a_backend_that_drops_the_socket_on_a_close_still_gives_the_client_its_close_reply() {
    bounded(async {
        // A server loop that stops at the client's close frame and drops the socket without
        // a close of its own (what a tokio-tungstenite loop that breaks on `Message::Close`
        // does): the closing handshake ended early, the backend did not fail.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let baddr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let (_, mut pending) = accept_upgrade_raw(&mut s, "").await;
                    while let Ok(f) = switchyard::ws::peer::read_frame(&mut s, &mut pending).await {
                        if f.opcode == Opcode::Close {
                            break;
                        }
                    }
                    drop(s);
                });
            }
        });
        let p = Proxy::start(&config("round_robin", &[baddr], ""));
        // A close with a code: the proxy echoes it, as the backend should have.
        let (mut s, mut pending) = raw_ws(p.addr, "/").await;
        let mut payload = 1000u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye");
        s.write_all(&masked_frame(0x88, &payload)).await.unwrap();
        assert_eq!(
            raw_close_code(&mut s, &mut pending).await,
            1000,
            "the client's code echoed, not 1011"
        );
        // A close without a payload: answered by a close without a payload (1005 never
        // goes on the wire).
        let (mut s, mut pending) = raw_ws(p.addr, "/").await;
        s.write_all(&masked_frame(0x88, b"")).await.unwrap();
        assert_eq!(
            raw_close_code(&mut s, &mut pending).await,
            1005,
            "an empty close answered by an empty close"
        );
        // A code from the application's range is echoed as it came.
        let (mut s, mut pending) = raw_ws(p.addr, "/").await;
        s.write_all(&masked_frame(0x88, &4321u16.to_be_bytes())).await.unwrap();
        assert_eq!(raw_close_code(&mut s, &mut pending).await, 4321);
        // Nothing was held against the backend.
        let b = p.backend(0);
        assert_eq!(b.state(), switchyard::backend::BackendState::Up);
        assert_eq!(b.passive_failures.load(std::sync::atomic::Ordering::Relaxed), 0);
    })
    .await
}

/// Once the closing handshake is done, the proxy (the client's server) closes the client's
/// connection at once, as RFC 6455 §7.1.1 wants: the client gets its close reply and then
/// the end of the stream, a FIN and not a reset, without having to end its side first, and
/// the connection is gone from the balancer long before the close grace (5 s) would end it.
#[tokio::test]
async fn the_proxy_closes_first_once_the_closing_handshake_is_done() {
    bounded(async {
        let (p, _b) = one_backend("").await;
        let (mut s, mut pending) = raw_ws(p.addr, "/").await;
        s.write_all(&masked_frame(0x81, b"hi")).await.unwrap();
        s.write_all(&masked_frame(0x88, &1000u16.to_be_bytes())).await.unwrap();
        assert_eq!(raw_close_code(&mut s, &mut pending).await, 1000);
        // the client keeps its side open (no FIN, no read either)
        let active = || p.server.shared.admission.active();
        let gone = eventually(Duration::from_secs(2), || active() == 0).await;
        assert!(
            gone.is_some(),
            "{} connection(s) still held 2 s after the closing handshake",
            active()
        );
        let mut rest = [0u8; 16];
        let n = tokio::time::timeout(T, s.read(&mut rest))
            .await
            .unwrap()
            .expect("a FIN, not a reset");
        assert_eq!(n, 0, "nothing after the close reply");
        still_serves(&p.url("/")).await;
    })
    .await
}

#[tokio::test]
async fn vanished_client_closes_the_backend_side() {
    bounded(async {
        let (p, b) = one_backend("").await;
        let (mut s, _) = raw_ws(p.addr, "/").await;
        s.write_all(&masked_frame(0x81, b"hi")).await.unwrap();
        let t0 = std::time::Instant::now();
        while b.live.load(std::sync::atomic::Ordering::SeqCst) == 0 && t0.elapsed() < T {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(b.live.load(std::sync::atomic::Ordering::SeqCst), 1);
        drop(s);
        while b.live.load(std::sync::atomic::Ordering::SeqCst) != 0 && t0.elapsed() < T {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(b.live.load(std::sync::atomic::Ordering::SeqCst), 0, "backend connection still open");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_connections_echo() {
    bounded(async {
        let (p, _b) = one_backend("").await;
        let url = p.url("/");
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let url = url.clone();
                tokio::spawn(async move {
                    let mut ws = connect(&url).await;
                    for j in 0..10 {
                        let m = format!("{i}-{j}");
                        assert_eq!(ask(&mut ws, &m).await, m);
                    }
                    let _ = ws.close(None).await;
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await
}

#[tokio::test]
async fn a_stream_of_server_messages_is_relayed_in_order() {
    bounded(async {
        let (p, _b) = one_backend("").await;
        let mut ws = connect(&p.url("/")).await;
        ws.send(Message::text("stream:2000")).await.unwrap();
        for i in 0..2000usize {
            match tokio::time::timeout(T, ws.next()).await.unwrap() {
                Some(Ok(Message::Binary(b))) => assert!(b.len() == 1024 && b[0] == (i % 251) as u8, "message {i}"),
                other => panic!("{other:?}"),
            }
        }
    })
    .await
}

#[tokio::test]
async fn a_backend_that_stops_reading_stalls_the_client_instead_of_growing_memory() {
    bounded(async {
        // A backend that completes the upgrade and then never reads again.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let baddr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            accept_upgrade_raw(&mut s, "").await;
            tokio::time::sleep(Duration::from_secs(60)).await; // holds the socket, reads nothing
            drop(s);
        });
        let echo = backend("echo").await;
        let p = Proxy::start(&format!(
            "listeners:\n  - name: l\n    bind: \"127.0.0.1:0\"\n    routes:\n      - match: {{ path_prefix: /stall }}\n        pool: stall\n      - pool: echo\npools:\n  stall:\n    backends:\n      - address: \"{baddr}\"\n  echo:\n    backends:\n      - address: \"{}\"\nlimits:\n  max_message_bytes: 0\n",
            echo.addr
        ));
        let (mut s, _) = raw_ws(p.addr, "/stall").await;
        let frame = masked_frame(0x82, &vec![7u8; 256 * 1024]);
        let mut sent = 0usize;
        // Keep writing until a write makes no progress for a second (or 256 MiB went in).
        while sent < 256 << 20 {
            match tokio::time::timeout(Duration::from_secs(1), s.write_all(&frame)).await {
                Ok(Ok(())) => sent += frame.len(),
                Ok(Err(e)) => panic!("write failed: {e}"),
                Err(_) => break,
            }
        }
        // Only kernel socket buffers (client→proxy and proxy→backend) and one relay buffer
        // may hold the bytes; an unbounded proxy would have taken all 256 MiB.
        assert!(sent < 64 << 20, "the client could write {} MiB into a backend that reads nothing", sent >> 20);
        // the same balancer keeps relaying other connections meanwhile
        still_serves(&p.url("/")).await;
    })
    .await
}
