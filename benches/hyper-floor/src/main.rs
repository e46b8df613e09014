//! A prototype, not part of Switchyard: hyper's floor for a plain-HTTP reverse proxy (issue 12
//! asks for hyper on both sides). It forwards every request unchanged: no header work, no
//! routing, no picking, no limits, no timers, no metrics; one thread, like `process.workers: 1`.
//!
//! `pool`: each backend connection in its own task, shared through an idle list (Switchyard's
//! shape); `pinned`: one backend connection per client connection, driven inside the client
//! connection's task (no dispatch between tasks).
//!
//! Usage: `hyper-floor pool|pinned LISTEN_ADDR BACKEND_ADDR`.
use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;

use hyper::body::Incoming;
use hyper::client::conn::http1 as client;
use hyper::server::conn::http1 as server;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

#[global_allocator]
static A: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Pool = Rc<RefCell<Vec<client::SendRequest<Incoming>>>>;

async fn open(b: SocketAddr) -> (client::SendRequest<Incoming>, client::Connection<TokioIo<TcpStream>, Incoming>) {
    let s = TcpStream::connect(b).await.unwrap();
    s.set_nodelay(true).unwrap();
    client::handshake(TokioIo::new(s)).await.unwrap()
}

async fn pooled(req: Request<Incoming>, pool: Pool, b: SocketAddr) -> Result<Response<Incoming>, hyper::Error> {
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
    // Simplification: back in the pool once the head is in (hyper queues the next request
    // until the body is done).
    pool.borrow_mut().push(s);
    r
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 || !matches!(args[1].as_str(), "pool" | "pinned") {
        eprintln!("usage: hyper-floor pool|pinned LISTEN_ADDR BACKEND_ADDR");
        std::process::exit(2);
    }
    let mode = args[1].clone();
    let listen: SocketAddr = args[2].parse().unwrap();
    let b: SocketAddr = args[3].parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let l = TcpListener::bind(listen).await.unwrap();
        let pool: Pool = Rc::default();
        loop {
            let (s, _) = l.accept().await.unwrap();
            s.set_nodelay(true).unwrap();
            let pool = pool.clone();
            let mode = mode.clone();
            tokio::task::spawn_local(async move {
                let io = TokioIo::new(s);
                if mode == "pool" {
                    let svc = service_fn(move |req| pooled(req, pool.clone(), b));
                    let _ = server::Builder::new().serve_connection(io, svc).await;
                } else {
                    let (sender, conn) = open(b).await;
                    let sender = Rc::new(RefCell::new(Some(sender)));
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let sender = sender.clone();
                        async move {
                            let mut s = sender.borrow_mut().take().unwrap();
                            let _ = s.ready().await;
                            let r = s.send_request(req).await;
                            *sender.borrow_mut() = Some(s);
                            r
                        }
                    });
                    let srv = server::Builder::new().serve_connection(io, svc);
                    tokio::pin!(srv, conn);
                    tokio::select! { _ = &mut srv => {}, _ = &mut conn => {} }
                }
            });
        }
    });
}
