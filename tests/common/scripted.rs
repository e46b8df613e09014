//! Backends that misbehave on purpose, scripted over raw sockets: each accepts connections
//! on 127.0.0.1:0 and does one thing wrong (or right) per connection, counting what it saw.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// What a scripted backend does with each connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Script {
    /// Reads the request head, then closes without a word.
    CloseAfterHead,
    /// Reads the request head and never answers (holds the connection).
    Silent,
    /// Reads the request head and answers bytes that are not HTTP.
    Garbage,
    /// Reads the request head, never reads the body, never answers.
    NeverReadsBody,
    /// Accepts and never sends or reads anything (a TLS handshake to it never ends).
    Mute,
    /// WebSocket: a valid 101; answers a close frame with its own and keeps the socket open.
    CloseReplyKeepOpen,
    /// WebSocket: a valid 101; drops the connection when the first frame arrives.
    TerminateOnMessage,
}

/// A running scripted backend.
pub struct Scripted {
    pub addr: SocketAddr,
    /// Connections accepted.
    pub accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a backend that follows `script` on every connection.
pub async fn scripted(script: Script) -> Scripted {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let task = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            conns.push(tokio::spawn(run(script, s)));
            conns.retain(|c: &tokio::task::JoinHandle<()>| !c.is_finished());
        }
    });
    Scripted { addr, accepted, task }
}

/// Holds a connection open (without reading) for at most a minute.
async fn hold(s: TcpStream) {
    tokio::time::sleep(Duration::from_secs(60)).await;
    drop(s);
}

async fn run(script: Script, mut s: TcpStream) {
    if script == Script::Mute {
        return hold(s).await;
    }
    let Ok((buf, end)) = switchyard::handshake::read_head(&mut s, 65536).await else {
        return;
    };
    match script {
        Script::CloseAfterHead => {}
        Script::Silent | Script::NeverReadsBody => hold(s).await,
        Script::Garbage => {
            let _ = s.write_all(b"HELLO THERE\r\n\r\n").await;
            let _ = s.shutdown().await;
        }
        Script::CloseReplyKeepOpen | Script::TerminateOnMessage => {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let Some(key) = head
                .lines()
                .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: ").or(l.strip_prefix("sec-websocket-key: ")))
            else {
                return;
            };
            let acc = switchyard::handshake::accept_key(key.trim());
            let resp = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                std::str::from_utf8(&acc).unwrap()
            );
            if s.write_all(resp.as_bytes()).await.is_err() {
                return;
            }
            let mut pending = buf[end..].to_vec();
            let Ok(f) = switchyard::ws::peer::read_frame(&mut s, &mut pending).await else {
                return;
            };
            if script == Script::TerminateOnMessage {
                return;
            }
            if f.opcode == switchyard::ws::frame::Opcode::Close {
                // The reply: an unmasked close frame with the client's code.
                let reply = switchyard::ws::peer::frame_bytes(true, f.opcode, &f.payload, None);
                let _ = s.write_all(&reply).await;
                // and the socket stays open, unread
                hold(s).await;
            }
        }
        Script::Mute => unreachable!(),
    }
}
