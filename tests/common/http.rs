//! A real HTTP/1.1 backend for the plain-HTTP tests (hyper), which also accepts WebSocket
//! upgrades on `/ws` (echo), and a raw keep-alive client that reads responses exactly.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type RespBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// What a test HTTP backend saw.
#[derive(Default)]
pub struct Seen {
    /// TCP connections accepted.
    pub conns: AtomicUsize,
    /// Requests answered.
    pub requests: AtomicUsize,
    /// Request body bytes read by `/upload`.
    pub upload_bytes: AtomicU64,
    /// When each `/sse` event was sent.
    pub sse_sent: Mutex<Vec<Instant>>,
    /// The last request's headers, one `name: value` a line.
    pub last_headers: Mutex<String>,
    /// A backend with the PROXY protocol: the source each connection's header named
    /// (`None` for `LOCAL`), in order.
    pub proxy_headers: Mutex<Vec<Option<SocketAddr>>>,
}

/// A running HTTP backend.
pub struct HttpBackend {
    pub addr: SocketAddr,
    pub seen: Arc<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a backend answering `name` on most paths; `/sse` streams 10 events 100 ms apart,
/// `/upload` counts the body, `/big` streams 16 MiB, `/slow` answers after 3 s, `/headers` echoes the request
/// headers, `/ws` upgrades and echoes.
pub async fn http_backend(name: &'static str) -> HttpBackend {
    serve_http(name, false).await
}

/// [`http_backend`] behind the PROXY protocol: every connection must start with a v1 or v2
/// header (recorded in `seen.proxy_headers`), or it is closed.
pub async fn proxy_protocol_backend(name: &'static str) -> HttpBackend {
    serve_http(name, true).await
}

async fn serve_http(name: &'static str, proxy_protocol: bool) -> HttpBackend {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let s2 = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = l.accept().await else { return };
            let _ = sock.set_nodelay(true);
            s2.conns.fetch_add(1, Ordering::SeqCst);
            let seen = s2.clone();
            tokio::spawn(async move {
                if proxy_protocol {
                    let Ok(h) = switchyard::proxy_protocol::read(&mut sock).await else {
                        return;
                    };
                    seen.proxy_headers.lock().unwrap().push(h.addresses.map(|a| a.source));
                }
                let svc = hyper::service::service_fn(move |req| answer(name, seen.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(sock), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    HttpBackend { addr, seen, task }
}

fn full(s: impl Into<Bytes>) -> RespBody {
    Full::new(s.into()).boxed()
}

async fn answer(name: &'static str, seen: Arc<Seen>, mut req: Request<Incoming>) -> Result<Response<RespBody>, Infallible> {
    seen.requests.fetch_add(1, Ordering::SeqCst);
    let dump: String = req
        .headers()
        .iter()
        .map(|(n, v)| format!("{n}: {}\n", v.to_str().unwrap_or("?")))
        .collect();
    *seen.last_headers.lock().unwrap() = dump.clone();
    let path = req.uri().path().to_string();
    match path.as_str() {
        "/ws" => {
            let key = req
                .headers()
                .get("sec-websocket-key")
                .cloned()
                .unwrap_or(hyper::header::HeaderValue::from_static(""));
            let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
            let on = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(up) = on.await else { return };
                let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                    TokioIo::new(up),
                    tokio_tungstenite::tungstenite::protocol::Role::Server,
                    None,
                )
                .await;
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_text() || m.is_binary() {
                        let _ = ws.send(m).await;
                    }
                }
            });
            Ok(Response::builder()
                .status(101)
                .header("upgrade", "websocket")
                .header("connection", "Upgrade")
                .header("sec-websocket-accept", accept)
                .body(full(""))
                .unwrap())
        }
        "/sse" => {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
            tokio::spawn(async move {
                for i in 0..10 {
                    seen.sse_sent.lock().unwrap().push(Instant::now());
                    if tx.send(Ok(Frame::data(Bytes::from(format!("data: {i}\n\n"))))).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
            let stream = tokio_stream_from(rx);
            Ok(Response::builder()
                .header("content-type", "text/event-stream")
                .body(BodyExt::boxed(StreamBody::new(stream)))
                .unwrap())
        }
        "/big" => {
            // 16 MiB in 64 KiB chunks, produced as fast as the reader takes them.
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(2);
            tokio::spawn(async move {
                let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
                for _ in 0..256 {
                    if tx.send(Ok(Frame::data(chunk.clone()))).await.is_err() {
                        return;
                    }
                }
            });
            Ok(Response::new(BodyExt::boxed(StreamBody::new(tokio_stream_from(rx)))))
        }
        "/upload" => {
            let mut body = req.into_body();
            let mut n = 0u64;
            while let Some(f) = body.frame().await {
                match f {
                    Ok(f) => n += f.data_ref().map_or(0, |d| d.len() as u64),
                    Err(_) => break,
                }
            }
            seen.upload_bytes.fetch_add(n, Ordering::SeqCst);
            Ok(Response::new(full(n.to_string())))
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Ok(Response::new(full(name)))
        }
        "/headers" => Ok(Response::new(full(dump))),
        "/fail" => Ok(Response::builder().status(500).body(full("boom")).unwrap()),
        _ => Ok(Response::new(full(name))),
    }
}

fn tokio_stream_from<T: Send + 'static>(mut rx: tokio::sync::mpsc::Receiver<T>) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    /// First header by name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one response with a `Content-Length` body from a keep-alive connection.
pub async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Resp> {
    let fut = async {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4) {
                let mut hs = [httparse::EMPTY_HEADER; 64];
                let mut r = httparse::Response::new(&mut hs);
                r.parse(&buf[..end]).ok()?;
                let status = r.code?;
                let headers: Vec<(String, String)> = r
                    .headers
                    .iter()
                    .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).to_string()))
                    .collect();
                let len: usize = headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.trim().parse().ok())
                    .unwrap_or(0);
                while buf.len() < end + len {
                    let mut chunk = [0u8; 8192];
                    let n = s.read(&mut chunk).await.ok()?;
                    if n == 0 {
                        return None;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let body = String::from_utf8_lossy(&buf[end..end + len]).to_string();
                buf.drain(..end + len);
                return Some(Resp { status, headers, body });
            }
            let mut chunk = [0u8; 8192];
            let n = s.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), fut).await.ok().flatten()
}

/// Sends `req` on `s` and reads the response.
pub async fn roundtrip(s: &mut TcpStream, buf: &mut Vec<u8>, req: &str) -> Option<Resp> {
    s.write_all(req.as_bytes()).await.ok()?;
    read_response(s, buf).await
}

/// `GET path` with keep-alive and extra header lines.
pub fn get(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\n{extra}\r\n")
}

/// True when the peer closes `s` within 5 s (reads until EOF, discarding).
pub async fn closed_soon(s: &mut TcpStream) -> bool {
    let fut = async {
        let mut b = [0u8; 4096];
        loop {
            match s.read(&mut b).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), fut).await.unwrap_or(false)
}
