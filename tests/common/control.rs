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
