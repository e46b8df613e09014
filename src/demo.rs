//! `switchyard demo`: three in-process echo backends, the balancer and the dashboard, plus a
//! little traffic of its own so there is something to watch.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use crate::ws::frame::Opcode;
use crate::ws::peer::{client_handshake, read_frame, serve_echo, write_frame};

/// Starts an echo backend on `127.0.0.1:0` on the current runtime; returns its address.
pub async fn spawn_echo_backend() -> std::io::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(serve_echo(s, None));
        }
    });
    Ok(addr)
}

/// The demo's config: a listener on `port`, the admin on `admin_port`, and `backends`.
pub fn demo_config(port: u16, admin_port: u16, backends: &[SocketAddr]) -> String {
    let mut y = format!(
        "listeners:\n  - name: demo\n    bind: \"127.0.0.1:{port}\"\n    routes:\n      - pool: echo\nadmin:\n  bind: \"127.0.0.1:{admin_port}\"\npools:\n  echo:\n    algorithm: least_connections\n    health_check:\n      kind: websocket\n      path: /health\n      interval: 1s\n      timeout: 500ms\n    backends:\n"
    );
    for (i, b) in backends.iter().enumerate() {
        y.push_str(&format!("      - address: \"{b}\"\n        weight: {}\n", 1 + i % 2));
    }
    y.push_str("limits:\n  idle_timeout: 10m\n");
    y
}

/// Background traffic: a few clients that connect, exchange messages and reconnect now and
/// then, so the dashboard has live numbers. Runs until the runtime stops.
pub async fn traffic(url_addr: SocketAddr) {
    for i in 0..6u64 {
        tokio::spawn(async move {
            loop {
                let _ = one_session(url_addr, i).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }
}

async fn one_session(addr: SocketAddr, seed: u64) -> std::io::Result<()> {
    let mut s = TcpStream::connect(addr).await?;
    let mut pending = client_handshake(&mut s, "demo", "/demo").await?;
    let msgs = 20 + (seed * 37 + rand::random_range(0..40)) % 120;
    let payload = vec![b'x'; 64 + (seed as usize * 200)];
    for _ in 0..msgs {
        write_frame(&mut s, true, Opcode::Text, &payload, true).await?;
        let _ = read_frame(&mut s, &mut pending).await?;
        tokio::time::sleep(Duration::from_millis(100 + rand::random_range(0..200))).await;
    }
    write_frame(&mut s, true, Opcode::Close, &1000u16.to_be_bytes(), true).await?;
    let _ = tokio::time::timeout(Duration::from_secs(2), read_frame(&mut s, &mut pending)).await;
    Ok(())
}
