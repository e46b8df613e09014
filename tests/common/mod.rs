//! Shared helpers for end-to-end tests: real backends (tokio-tungstenite), real clients,
//! the balancer started in-process from YAML on port 0. Every wait is bounded.
#![allow(dead_code)]

pub mod browser;
pub mod control;
pub mod dns;
pub mod http;
pub mod scripted;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Instant;
pub use switchyard::Server;

/// A client connection.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Upper bound for any single wait in a test.
pub const T: Duration = Duration::from_secs(10);

/// Runs `f` with a hard time limit.
pub async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("test took longer than 60 s")
}

/// A running balancer; shut down (without waiting) on drop.
pub struct Proxy {
    pub server: Server,
    pub addr: SocketAddr,
}

impl Proxy {
    /// Starts the balancer from YAML (the first listener's address is `addr`).
    pub fn start(yaml: &str) -> Proxy {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("TEST_LOG").unwrap_or_else(|_| "off".into()))
            .with_test_writer()
            .try_init();
        let cfg = switchyard::config::parse(yaml, std::path::Path::new(".")).unwrap_or_else(|e| panic!("bad test config: {e:?}\n{yaml}"));
        let server = Server::start(cfg, None).expect("server starts");
        let addr = server.addrs()[0].1;
        Proxy { server, addr }
    }

    /// Starts the balancer from a config file written into `dir` (so reloads can re-read it).
    pub fn start_file(dir: &std::path::Path, yaml: &str) -> (Proxy, std::path::PathBuf) {
        let path = dir.join("switchyard.yaml");
        std::fs::write(&path, yaml).unwrap();
        let cfg = switchyard::config::load(&path).unwrap_or_else(|e| panic!("bad test config: {e:?}"));
        let server = Server::start(cfg, Some(path.clone())).expect("server starts");
        let addr = server.addrs()[0].1;
        (Proxy { server, addr }, path)
    }

    /// `ws://addr/path`.
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// Backend `i` of pool `p` as the balancer sees it now (state, counters, reports).
    pub fn backend(&self, i: usize) -> Arc<switchyard::backend::Backend> {
        self.server.shared.runtime.load().pools["p"].backends[i].clone()
    }

    /// The admin address.
    pub fn admin(&self) -> SocketAddr {
        self.server.admin_addr().expect("admin configured")
    }
}

/// YAML for one listener on port 0 routing everything to pool `p` with these backends.
pub fn config(algorithm: &str, backends: &[SocketAddr], extra: &str) -> String {
    let mut y = format!("listeners:\n  - name: l\n    bind: \"127.0.0.1:0\"\n    routes:\n      - pool: p\npools:\n  p:\n    algorithm: {algorithm}\n    connect_timeout: 5s\n    backends:\n");
    for b in backends {
        y.push_str(&format!("      - address: \"{b}\"\n"));
    }
    y.push_str(extra);
    y
}

/// A test backend: a real WebSocket echo server that can be told what to do by text
/// messages (`close:CODE:REASON`, `die`, `stream:N`, `whoami`), and counts connections.
/// An upgrade request for `/status/NNN` is refused with that HTTP status (an auth or
/// validation failure the client provoked).
pub struct Backend {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    pub live: Arc<AtomicUsize>,
    pub last_headers: Arc<Mutex<Vec<(String, String)>>>,
    task: tokio::task::JoinHandle<()>,
    conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Backend {
    /// Stops it like a crash: the listener closes (connects are refused) and every live
    /// connection is dropped. `backend_at(addr, ..)` starts it again on the same port.
    pub async fn kill(&mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts an echo backend on 127.0.0.1:0. `name` is answered to `whoami`.
pub async fn backend(name: &'static str) -> Backend {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    backend_on(l, name)
}

/// Starts an echo backend on an existing listener.
// The echo arm sends the message it matched, so its `if` cannot become a guard.
#[allow(clippy::collapsible_match)]
pub fn backend_on(l: TcpListener, name: &'static str) -> Backend {
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let live = Arc::new(AtomicUsize::new(0));
    let last_headers = Arc::new(Mutex::new(Vec::new()));
    let (a, lv, h) = (accepted.clone(), live.clone(), last_headers.clone());
    let conns = Arc::new(Mutex::new(Vec::<tokio::task::JoinHandle<()>>::new()));
    let all = conns.clone();
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let (a, lv, h) = (a.clone(), lv.clone(), h.clone());
            let t = tokio::spawn(async move {
                // The callback's error type is tungstenite's (a whole HTTP response).
                #[allow(clippy::result_large_err)]
                let cb = |req: &Request, mut resp: Response| {
                    let hs: Vec<(String, String)> = req
                        .headers()
                        .iter()
                        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
                        .collect();
                    if let Some(p) = req.headers().get("sec-websocket-protocol") {
                        let first = p.to_str().unwrap_or("").split(',').next().unwrap_or("").trim().to_string();
                        resp.headers_mut().insert("sec-websocket-protocol", first.parse().unwrap());
                    }
                    *h.lock().unwrap() = hs;
                    if let Some(code) = req.uri().path().strip_prefix("/status/").and_then(|c| c.parse::<u16>().ok()) {
                        let refusal = tokio_tungstenite::tungstenite::http::Response::builder()
                            .status(code)
                            .body(None)
                            .unwrap();
                        return Err(refusal);
                    }
                    Ok(resp)
                };
                let cfg = WebSocketConfig::default().max_message_size(None).max_frame_size(None);
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async_with_config(s, cb, Some(cfg)).await else {
                    return;
                };
                a.fetch_add(1, Ordering::SeqCst);
                lv.fetch_add(1, Ordering::SeqCst);
                while let Some(Ok(m)) = ws.next().await {
                    match m {
                        Message::Text(t) if t.as_str() == "whoami" => {
                            let _ = ws.send(Message::text(name)).await;
                        }
                        Message::Text(t) if t.as_str() == "die" => break,
                        Message::Text(t) if t.as_str().starts_with("close:") => {
                            let mut it = t.as_str().splitn(3, ':').skip(1);
                            let code: u16 = it.next().unwrap().parse().unwrap();
                            let reason = it.next().unwrap_or("").to_string();
                            let _ = ws
                                .send(Message::Close(Some(CloseFrame {
                                    code: CloseCode::from(code),
                                    reason: reason.into(),
                                })))
                                .await;
                            // wait for the client's answer
                            while let Some(Ok(_)) = ws.next().await {}
                            break;
                        }
                        Message::Text(t) if t.as_str().starts_with("stream:") => {
                            let n: usize = t.as_str()[7..].parse().unwrap();
                            for i in 0..n {
                                if ws.send(Message::binary(vec![(i % 251) as u8; 1024])).await.is_err() {
                                    break;
                                }
                            }
                        }
                        Message::Text(_) | Message::Binary(_) => {
                            if ws.send(m).await.is_err() {
                                break;
                            }
                        }
                        Message::Close(_) => {
                            // tungstenite answers the close itself; drain until the end
                            while let Some(Ok(_)) = ws.next().await {}
                            break;
                        }
                        _ => {}
                    }
                }
                lv.fetch_sub(1, Ordering::SeqCst);
            });
            conns.lock().unwrap().push(t);
        }
    });
    Backend {
        addr,
        accepted,
        live,
        last_headers,
        task,
        conns: all,
    }
}

/// Starts an echo backend on a given address (e.g. one `kill`ed), retrying the bind briefly.
pub async fn backend_at(addr: SocketAddr, name: &'static str) -> Backend {
    for _ in 0..100 {
        if let Ok(l) = TcpListener::bind(addr).await {
            return backend_on(l, name);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("cannot bind {addr} again");
}

/// A backend that answers every request with the fixed bytes `answer`, then closes.
pub async fn canned_backend(answer: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = switchyard::handshake::read_head(&mut s, 16384).await;
                let _ = s.write_all(answer.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    a
}

/// The library's own echo backend (`serve_echo`): WebSocket echo, and `load` as the body
/// of a plain `GET /load` (for `custom_load` pools).
pub async fn load_reporting_backend(load: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(switchyard::ws::peer::serve_echo(s, Some(load)));
        }
    });
    a
}

/// Answers one upgrade request on `s` by hand: a 101 with the right accept key and `extra`
/// response header lines. Returns the request head and any bytes read past it.
pub async fn accept_upgrade_raw(s: &mut TcpStream, extra: &str) -> (String, Vec<u8>) {
    let (buf, end) = switchyard::handshake::read_head(s, 16384).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let key = head
        .lines()
        .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
        .unwrap()
        .trim()
        .to_string();
    let acc = switchyard::handshake::accept_key(&key);
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n{extra}\r\n",
        std::str::from_utf8(&acc).unwrap()
    );
    s.write_all(resp.as_bytes()).await.unwrap();
    (head, buf[end..].to_vec())
}

/// A self-signed certificate for `localhost` and `127.0.0.1` written into `dir`: (cert, key).
pub fn self_signed(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let c = params.self_signed(&key).unwrap();
    let (cp, kp) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cp, c.pem()).unwrap();
    std::fs::write(&kp, key.serialize_pem()).unwrap();
    (cp, kp)
}

/// A port nothing listens on.
pub async fn dead_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a
}

/// Connects a client (bounded).
pub async fn connect(url: &str) -> Ws {
    let cfg = WebSocketConfig::default().max_message_size(None).max_frame_size(None);
    let (ws, _) = tokio::time::timeout(T, tokio_tungstenite::connect_async_with_config(url, Some(cfg), false))
        .await
        .expect("connect in time")
        .expect("connect ok");
    ws
}

/// Connects a client sending extra request headers (e.g. `Cookie`).
pub async fn connect_with_headers(url: &str, headers: &[(&'static str, &str)]) -> Ws {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request().unwrap();
    for (name, value) in headers {
        req.headers_mut().insert(*name, value.parse().unwrap());
    }
    let (ws, _) = tokio::time::timeout(T, tokio_tungstenite::connect_async(req))
        .await
        .expect("connect in time")
        .expect("connect ok");
    ws
}

/// A TCP connection to `addr` from the local address `from` (`127.0.0.2`: a second client).
pub async fn tcp_from(from: &str, addr: SocketAddr) -> TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(from.parse().unwrap(), 0)).unwrap();
    tokio::time::timeout(T, sock.connect(addr)).await.expect("connect in time").unwrap()
}

/// A WebSocket client connecting from `from`, which first writes `prefix` (a PROXY header)
/// and sends extra request headers.
pub async fn connect_via(from: &str, url: &str, prefix: &[u8], headers: &[(&'static str, &str)]) -> Ws {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request().unwrap();
    for (name, value) in headers {
        req.headers_mut().insert(*name, value.parse().unwrap());
    }
    let host = req.uri().authority().unwrap().as_str().parse().unwrap();
    let mut s = tcp_from(from, host).await;
    s.write_all(prefix).await.unwrap();
    let cfg = WebSocketConfig::default().max_message_size(None).max_frame_size(None);
    let (ws, _) = tokio::time::timeout(
        T,
        tokio_tungstenite::client_async_with_config(req, MaybeTlsStream::Plain(s), Some(cfg)),
    )
    .await
    .expect("connect in time")
    .expect("connect ok");
    ws
}

/// The value of one series in a Prometheus text exposition (0 when absent), e.g.
/// `metric(&text, "switchyard_shed_total{reason=\"per_client\"}")`.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Polls `cond` every 10 ms until it holds (returns how long that took) or `limit` passes.
pub async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond().then(|| start.elapsed())
}

/// Sends a text message and returns the next data message's text.
pub async fn ask(ws: &mut Ws, text: &str) -> String {
    ws.send(Message::text(text)).await.unwrap();
    loop {
        match tokio::time::timeout(T, ws.next()).await.expect("answer in time") {
            Some(Ok(Message::Text(t))) => return t.to_string(),
            Some(Ok(Message::Binary(b))) => return String::from_utf8_lossy(&b).to_string(),
            Some(Ok(Message::Close(c))) => panic!("closed instead of answering: {c:?}"),
            Some(Ok(_)) => continue,
            other => panic!("no answer: {other:?}"),
        }
    }
}

/// Reads until a close frame arrives; returns (code, reason).
pub async fn expect_close(ws: &mut Ws) -> (u16, String) {
    loop {
        match tokio::time::timeout(T, ws.next()).await.expect("close in time") {
            Some(Ok(Message::Close(Some(f)))) => return (u16::from(f.code), f.reason.to_string()),
            Some(Ok(Message::Close(None))) => return (1005, String::new()),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

/// Proves the balancer still serves: a fresh client gets an echo.
pub async fn still_serves(url: &str) {
    let mut ws = connect(url).await;
    assert_eq!(ask(&mut ws, "still here?").await, "still here?");
    let _ = ws.close(None).await;
}

/// Sends raw bytes, returns everything the balancer answered until it closed (bounded).
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(T, async {
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
            }
            // a 101 keeps the connection open: its head is all we need
            if out.starts_with(b"HTTP/1.1 101") && out.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).to_string()
}

/// A valid upgrade request with `extra` headers inserted.
pub fn upgrade_request(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n")
}

/// The status code of an HTTP response text.
pub fn status(resp: &str) -> u16 {
    resp.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// Completes a raw handshake through the balancer; returns the socket and bytes past the 101.
pub async fn raw_ws(addr: SocketAddr, path: &str) -> (TcpStream, Vec<u8>) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let pending = tokio::time::timeout(T, switchyard::ws::peer::client_handshake(&mut s, "test", path))
        .await
        .unwrap()
        .unwrap();
    (s, pending)
}

/// Reads frames until a close; returns its code (1005 if empty).
pub async fn raw_close_code<S: tokio::io::AsyncRead + Unpin>(s: &mut S, pending: &mut Vec<u8>) -> u16 {
    use switchyard::ws::frame::Opcode;
    loop {
        let f = tokio::time::timeout(T, switchyard::ws::peer::read_frame(s, pending))
            .await
            .expect("frame in time")
            .expect("a frame");
        if f.opcode == Opcode::Close {
            return if f.payload.len() >= 2 {
                u16::from_be_bytes([f.payload[0], f.payload[1]])
            } else {
                1005
            };
        }
    }
}

/// GET on the admin listener; returns (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(addr, "GET", path, "").await
}

/// A plain HTTP/1.1 request; returns (status, body).
pub async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    http_with(addr, method, path, "", body).await
}

/// [`http`] with extra header lines (each ending in `\r\n`).
pub async fn http_with(addr: SocketAddr, method: &str, path: &str, headers: &str, body: &str) -> (u16, String) {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let resp = raw_exchange(addr, req.as_bytes()).await;
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status(&resp), body)
}

/// The balancer binary.
pub const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// A child process killed on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    pub fn spawn(args: &[&str]) -> Proc {
        Proc(Self::command(args).spawn().expect("binary runs"))
    }

    /// The command `spawn` runs (stdout piped, a quiet log), for a test that changes it first.
    pub fn command(args: &[&str]) -> Command {
        // SY_TEST_CHILD_LOGS=1 shows the child's debug log, for chasing a failing test.
        let (log, stderr) = if std::env::var_os("SY_TEST_CHILD_LOGS").is_some() {
            ("debug", Stdio::inherit())
        } else {
            ("warn", Stdio::null())
        };
        let mut cmd = Command::new(BIN);
        cmd.args(args).env("RUST_LOG", log).stdout(Stdio::piped()).stderr(stderr);
        cmd
    }

    /// Like `spawn`, with `RUST_LOG=info` and stderr lines sent to the returned channel.
    pub fn spawn_logged(args: &[&str]) -> (Proc, std::sync::mpsc::Receiver<String>) {
        let mut child = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("binary runs");
        let err = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        (Proc(child), rx)
    }

    /// Every stdout line from here on, read on a thread of its own. The thread drains stdout
    /// to its end even once nobody listens, so the child never blocks on a full pipe.
    pub fn lines(&mut self) -> std::sync::mpsc::Receiver<String> {
        let out = self.0.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        rx
    }

    /// Reads stdout lines until one starts with `prefix`; returns the rest of it.
    pub fn line_after(&mut self, prefix: &str) -> String {
        let lines = self.lines();
        let limit = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let left = limit.saturating_duration_since(std::time::Instant::now());
            let line = lines.recv_timeout(left).expect("the binary announces its address");
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.to_string();
            }
        }
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.0.id() as i32, sig) };
    }

    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if let Ok(Some(st)) = self.0.try_wait() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}
