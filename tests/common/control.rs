//! Helpers for control-plane races made deterministic: a backend that holds its `101`
//! until the test lets it go, so a drain or reload can run mid-handshake.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Mutex};

/// A backend that reports each upgrade request on `arrived` and answers its `101` only
/// when `release` gets a message; then it holds the connection open (reading) until EOF.
pub struct HeldBackend {
    pub addr: SocketAddr,
    pub arrived: mpsc::UnboundedReceiver<()>,
    pub release: mpsc::UnboundedSender<()>,
}

/// Starts a [`HeldBackend`] on 127.0.0.1:0.
pub async fn held_backend() -> HeldBackend {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (atx, arrived) = mpsc::unbounded_channel();
    let (release, rrx) = mpsc::unbounded_channel::<()>();
    let rrx = Arc::new(Mutex::new(rrx));
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let (atx, rrx) = (atx.clone(), rrx.clone());
            tokio::spawn(async move {
                let Ok((buf, end)) = switchyard::handshake::read_head(&mut s, 16384).await else {
                    return;
                };
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                let Some(key) = head.lines().find_map(|l| l.strip_prefix("Sec-WebSocket-Key: ")) else {
                    return;
                };
                let acc = switchyard::handshake::accept_key(key.trim());
                let _ = atx.send(());
                if rrx.lock().await.recv().await.is_none() {
                    return;
                }
                let resp = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                    std::str::from_utf8(&acc).unwrap()
                );
                if s.write_all(resp.as_bytes()).await.is_err() {
                    return;
                }
                let mut sink = [0u8; 1024];
                while let Ok(n) = s.read(&mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    });
    HeldBackend { addr, arrived, release }
}

/// A WebSocket echo backend (the library's `serve_echo`) whose plain HTTP health endpoint
/// answers `200` while `healthy` is set and `503` otherwise; upgrades always succeed, as
/// for a backend that reports itself unhealthy yet still accepts connections.
pub async fn switchable_health_backend(healthy: Arc<std::sync::atomic::AtomicBool>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let healthy = healthy.clone();
            tokio::spawn(async move {
                // Peek at the head (the checker and clients send it in one write) to tell
                // an upgrade from a health check without consuming it.
                let mut peeked = vec![0u8; 4096];
                let mut head = String::new();
                for _ in 0..200 {
                    let Ok(n) = s.peek(&mut peeked).await else { return };
                    head = String::from_utf8_lossy(&peeked[..n]).to_ascii_lowercase();
                    if n == 0 || head.contains("\r\n\r\n") {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                if head.contains("upgrade: websocket") || healthy.load(std::sync::atomic::Ordering::SeqCst) {
                    let _ = switchyard::ws::peer::serve_echo(s, None).await;
                } else {
                    let _ = switchyard::handshake::read_head(&mut s, 16384).await;
                    let _ = s
                        .write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbusy")
                        .await;
                    let _ = s.shutdown().await;
                }
            });
        }
    });
    addr
}
