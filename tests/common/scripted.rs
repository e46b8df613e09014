//! Backends that misbehave on purpose, scripted over raw sockets: each accepts connections
//! on 127.0.0.1:0 and does one thing wrong (or right) per connection, counting what it saw.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
    /// Reads the head, then the body while it keeps coming; after 300 ms without a byte it
    /// gives up and closes without a word (Go's `ReadTimeout`, Node's `requestTimeout`).
    GivesUpOnSlowBody,
    /// Honours `Expect: 100-continue` (a `100 Continue` first), then answers the upgrade.
    HonoursExpect,
    /// Answers `413` and closes at once, without reading the body.
    RejectsEarly,
    /// Answers `401` (keep-alive) at once, then reads whatever the client sends, for ever.
    AnswersEarlyThenDrains,
    /// Answers a plain request with a 64 MiB body.
    Firehose,
    /// Answers a plain request with a bare `101 Switching Protocols`.
    Switches,
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
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    match script {
        Script::GivesUpOnSlowBody => {
            let mut b = [0u8; 4096];
            while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(300), s.read(&mut b)).await {
                if n == 0 {
                    return;
                }
            }
        }
        Script::HonoursExpect => {
            if head.contains("expect: 100-continue") {
                let _ = s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await;
            }
            let original = String::from_utf8_lossy(&buf[..end]).to_string();
            let key = original
                .lines()
                .find(|l| l.to_ascii_lowercase().starts_with("sec-websocket-key:"))
                .map_or("", |l| l[18..].trim())
                .to_string();
            let acc = switchyard::handshake::accept_key(&key);
            let resp = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                std::str::from_utf8(&acc).unwrap()
            );
            let _ = s.write_all(resp.as_bytes()).await;
            hold(s).await;
        }
        Script::RejectsEarly => {
            let _ = s
                .write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .await;
        }
        Script::AnswersEarlyThenDrains => {
            let _ = s.write_all(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n").await;
            let mut b = [0u8; 4096];
            let _ = tokio::time::timeout(Duration::from_secs(60), async {
                while let Ok(n) = s.read(&mut b).await {
                    if n == 0 {
                        break;
                    }
                }
            })
            .await;
        }
        Script::Firehose => {
            let len = 64usize << 20;
            let _ = s
                .write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n").as_bytes())
                .await;
            let chunk = vec![b'x'; 64 * 1024];
            let mut sent = 0;
            while sent < len && s.write_all(&chunk).await.is_ok() {
                sent += chunk.len();
            }
        }
        Script::Switches => {
            let _ = s
                .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
                .await;
            hold(s).await;
        }
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
