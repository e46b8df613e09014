//! A prototype, not part of Switchyard: hyper's floor for HTTP/2 at the TLS edge (issue 27).
//! TLS (rustls, ALPN `h2`), hyper's HTTP/2 server, and each stream forwarded to an HTTP/1.1
//! backend over pooled keep-alive connections (hyper's client), with only what HTTP/1.1 needs
//! (origin-form target, `Host` from `:authority`): no routing, no picking, no limits, no
//! timers, no metrics, no header work; one thread, like `process.workers: 1`.
//!
//! Usage: `h2-floor LISTEN_ADDR BACKEND_ADDR CERT_PEM KEY_PEM`.
use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::client::conn::http1 as client;
use hyper::server::conn::http2 as server;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

#[global_allocator]
static A: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Pool = Rc<RefCell<Vec<client::SendRequest<Incoming>>>>;

/// Runs HTTP/2 streams as local tasks of the one thread.
#[derive(Clone, Copy)]
struct Local;

impl<F: std::future::Future + 'static> hyper::rt::Executor<F> for Local {
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}

async fn open(b: SocketAddr) -> (client::SendRequest<Incoming>, client::Connection<TokioIo<TcpStream>, Incoming>) {
    let s = TcpStream::connect(b).await.unwrap();
    s.set_nodelay(true).unwrap();
    client::handshake(TokioIo::new(s)).await.unwrap()
}

async fn forward(mut req: Request<Incoming>, pool: Pool, b: SocketAddr) -> Result<Response<Incoming>, hyper::Error> {
    // What HTTP/1.1 needs and nothing more.
    if let Some(a) = req.uri().authority().cloned() {
        req.headers_mut().insert(hyper::header::HOST, a.as_str().parse().unwrap());
    }
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str()).parse().unwrap();
    *req.uri_mut() = target;
    *req.version_mut() = hyper::Version::HTTP_11;
    let mut s = loop {
        let k = pool.borrow_mut().pop();
        match k {
            Some(mut s) => {
                if s.ready().await.is_ok() {
                    break s;
                }
            }
            None => {
                let (s, c) = open(b).await;
                tokio::task::spawn_local(c);
                break s;
            }
        }
    };
    let r = s.send_request(req).await;
    // As the HTTP/1.1 floor: back in the pool once the head is in (hyper queues the next
    // request until the body is done).
    pool.borrow_mut().push(s);
    r
}

fn tls(cert: &str, key: &str) -> tokio_rustls::TlsAcceptor {
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(std::fs::File::open(cert).unwrap()))
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(std::fs::File::open(key).unwrap()))
        .unwrap()
        .unwrap();
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: h2-floor LISTEN_ADDR BACKEND_ADDR CERT_PEM KEY_PEM");
        std::process::exit(2);
    }
    let listen: SocketAddr = args[1].parse().unwrap();
    let b: SocketAddr = args[2].parse().unwrap();
    let acceptor = tls(&args[3], &args[4]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let l = TcpListener::bind(listen).await.unwrap();
        let pool: Pool = Rc::default();
        loop {
            let (s, _) = l.accept().await.unwrap();
            s.set_nodelay(true).unwrap();
            let (pool, acceptor) = (pool.clone(), acceptor.clone());
            tokio::task::spawn_local(async move {
                let Ok(tls) = acceptor.accept(s).await else { return };
                let svc = service_fn(move |req| forward(req, pool.clone(), b));
                let _ = server::Builder::new(Local).enable_connect_protocol().serve_connection(TokioIo::new(tls), svc).await;
            });
        }
    });
}
