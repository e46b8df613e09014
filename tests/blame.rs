//! Blame and trust (issue 25): only the backend's share of a failure reaches passive
//! health, ejection is bounded, and no shortcut skips a check. Every finding is reproduced
//! with raw sockets and scripted backends, asserting the exact answer and that other
//! clients are served meanwhile.

mod common;
use common::http::*;
use common::scripted::{scripted, Script};
use common::*;

use std::net::SocketAddr;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn pool_backend(p: &Proxy, pool: &str) -> Arc<switchyard::backend::Backend> {
    p.server.shared.runtime.load().pools[pool].backends[0].clone()
}

fn now() -> u64 {
    switchyard::clock::now_ms()
}

/// Reads responses on a keep-alive connection until a final (non-1xx) one.
async fn final_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Resp> {
    loop {
        let r = read_response(s, buf).await?;
        if r.status >= 200 {
            return Some(r);
        }
    }
}

/// Reads a response head from `r` (bounded); returns its status.
async fn head_status<R: AsyncRead + Unpin>(r: &mut R) -> u16 {
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = [0u8; 4096];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match r.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(T, read).await;
    status(&String::from_utf8_lossy(&buf))
}

/// Plain GETs on one keep-alive connection until `stop`; returns how many got a 200 and
/// how many did not.
fn keep_serving(addr: SocketAddr, stop: Arc<std::sync::atomic::AtomicBool>) -> tokio::task::JoinHandle<(u32, u32)> {
    tokio::spawn(async move {
        let (mut ok, mut bad) = (0, 0);
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut buf = Vec::new();
        while !stop.load(SeqCst) {
            match roundtrip(&mut s, &mut buf, &get("/", "")).await {
                Some(r) if r.status == 200 => ok += 1,
                _ => {
                    bad += 1;
                    s = TcpStream::connect(addr).await.unwrap();
                    buf.clear();
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (ok, bad)
    })
}

#[tokio::test]
async fn stalled_uploads_get_408_and_eject_no_backend() {
    bounded(async {
        let (a, b) = (http_backend("a").await, http_backend("b").await);
        let p = Proxy::start(&config("round_robin", &[a.addr, b.addr], "limits:\n  request_timeout: 1s\n"));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let bystander = keep_serving(p.addr, stop.clone());
        // A body that stops after 15 of 100 bytes, a chunked body that stops after its first
        // chunk, and `Expect: 100-continue` with no body at all; each as the first request of
        // a connection and as the second of a kept-alive one, twice: 12 clients, four times
        // what it took to eject both backends before.
        let stalls = [
            "POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n0123456789abcde",
            "POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
            "POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\nExpect: 100-continue\r\n\r\n",
        ];
        let mut attackers = Vec::new();
        for _ in 0..2 {
            for stall in stalls {
                for kept in [false, true] {
                    let addr = p.addr;
                    attackers.push(tokio::spawn(async move {
                        let mut s = TcpStream::connect(addr).await.unwrap();
                        let mut buf = Vec::new();
                        if kept {
                            let r = roundtrip(&mut s, &mut buf, &get("/", "")).await.expect("first answer");
                            assert_eq!(r.status, 200);
                        }
                        let started = Instant::now();
                        s.write_all(stall.as_bytes()).await.unwrap();
                        let r = final_response(&mut s, &mut buf).await.expect("an answer to the stalled upload");
                        (r.status, r.body, started.elapsed(), closed_soon(&mut s).await)
                    }));
                }
            }
        }
        for a in attackers {
            let (status, body, took, closed) = a.await.unwrap();
            assert_eq!(status, 408, "{body}");
            assert_eq!(body, "request body not received in time\n");
            assert!(took >= Duration::from_millis(900), "408 after {took:?}, before request_timeout");
            assert!(closed, "the connection of a stalled upload is closed");
        }
        stop.store(true, SeqCst);
        let (ok, bad) = bystander.await.unwrap();
        assert!(ok >= 5 && bad == 0, "a bystander was served throughout: {ok} ok, {bad} failed");
        for i in 0..2 {
            let be = p.backend(i);
            assert_eq!(be.passive_failures.load(Relaxed), 0, "backend {i}");
            assert!(!be.is_ejected(now()), "backend {i} ejected by clients");
        }
        // Both backends still take requests.
        let (mut s, mut buf) = (TcpStream::connect(p.addr).await.unwrap(), Vec::new());
        let mut names = std::collections::BTreeSet::new();
        for _ in 0..4 {
            names.insert(roundtrip(&mut s, &mut buf, &get("/", "")).await.unwrap().body);
        }
        assert_eq!(names.into_iter().collect::<Vec<_>>(), ["a", "b"]);
    })
    .await
}

#[tokio::test]
async fn a_backend_that_stops_reading_an_upload_is_to_blame() {
    bounded(async {
        let deaf = scripted(Script::NeverReadsBody).await;
        let p = Proxy::start(&config(
            "round_robin",
            &[deaf.addr],
            "limits:\n  request_timeout: 1s\n  max_request_body_bytes: 1GiB\n",
        ));
        let total: usize = 512 << 20;
        let s = TcpStream::connect(p.addr).await.unwrap();
        let (mut rd, mut wr) = s.into_split();
        let writer = tokio::spawn(async move {
            let head = format!("POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: {total}\r\n\r\n");
            wr.write_all(head.as_bytes()).await.unwrap();
            let chunk = vec![b'x'; 64 * 1024];
            let mut sent = 0;
            while sent < total && wr.write_all(&chunk).await.is_ok() {
                sent += chunk.len();
            }
            sent
        });
        // The client never stopped sending: the wait is the backend's.
        assert_eq!(head_status(&mut rd).await, 504);
        writer.abort();
        assert_eq!(pool_backend(&p, "p").passive_failures.load(Relaxed), 1);
    })
    .await
}

/// A pool of two http backends, `extra` lines under the pool, with an admin listener.
fn two_backend_pool(name: &str, a: SocketAddr, b: SocketAddr, extra: &str) -> String {
    format!(
        "listeners:\n  - name: l\n    bind: \"127.0.0.1:0\"\n    routes:\n      - pool: {name}\npools:\n  {name}:\n    algorithm: round_robin\n{extra}    backends:\n      - address: \"{a}\"\n      - address: \"{b}\"\nadmin:\n  bind: \"127.0.0.1:0\"\n"
    )
}

/// Sends `n` pipelined `GET path` on one connection; returns the statuses.
async fn pipelined(addr: SocketAddr, path: &str, n: usize) -> Vec<u16> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(get(path, "").repeat(n).as_bytes()).await.unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(read_response(&mut s, &mut buf).await.map_or(0, |r| r.status));
    }
    out
}

#[tokio::test]
async fn application_5xx_eject_nothing_unless_counted_and_never_the_whole_pool() {
    bounded(async {
        let (a, b) = (http_backend("a").await, http_backend("b").await);
        // By default a URL the application answers with 500 is the application's business.
        let p = Proxy::start(&two_backend_pool("app", a.addr, b.addr, ""));
        assert_eq!(pipelined(p.addr, "/fail", 12).await, vec![500; 12]);
        let pool = p.server.shared.runtime.load().pools["app"].clone();
        for be in &pool.backends {
            assert!(!be.is_ejected(now()), "{} ejected by a client's 5xx URL", be.address);
            assert_eq!(be.passive_failures.load(Relaxed) + be.passive_5xx.load(Relaxed), 0);
        }
        assert_eq!(pipelined(p.addr, "/", 2).await, vec![200, 200]);
        drop(p);

        // Counted on request: one backend ejected at its second 5xx, the other kept by the
        // 50 % cap however many more come, and counted as capped.
        let p = Proxy::start(&two_backend_pool(
            "capped",
            a.addr,
            b.addr,
            "    passive_health: { count_5xx: true, consecutive_5xx: 2 }\n",
        ));
        assert_eq!(pipelined(p.addr, "/fail", 12).await, vec![500; 12]);
        let pool = p.server.shared.runtime.load().pools["capped"].clone();
        let ejected = pool.backends.iter().filter(|b| b.is_ejected(now())).count();
        assert_eq!(ejected, 1, "exactly half of the pool ejected");
        let (_, m) = http_get(p.admin(), "/metrics").await;
        let capped = metric(&m, "switchyard_passive_ejections_capped_total{pool=\"capped\"}");
        assert!(capped >= 4.0, "capped ejections counted: {capped}\n{m}");
        // The pool still serves.
        assert_eq!(pipelined(p.addr, "/", 3).await, vec![200; 3]);
    })
    .await
}

#[tokio::test]
async fn every_request_of_a_connection_gets_the_checks_of_the_first() {
    bounded(async {
        let b = http_backend("b").await;
        let p = Proxy::start(&config("round_robin", &[b.addr], "limits:\n  max_request_header_bytes: 4KiB\n"));
        let big = format!("X-Big: {}\r\n", "a".repeat(9000));
        let many: String = (0..99).map(|i| format!("X-H{i}: v\r\n")).collect();
        let upgrade_10 = upgrade_request("/ws", "").replacen("HTTP/1.1", "HTTP/1.0", 1);
        let cases: Vec<(String, u16, &str)> = vec![
            (get("/", &big), 431, ""),
            (get("/", &many), 431, "request head too large\n"),
            (get("/", "Host: other\r\n"), 400, "bad request: duplicated Host header\n"),
            (
                get("/", "Connection: host\r\n"),
                400,
                "bad request: Connection must not name Host\n",
            ),
            (
                "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n".into(),
                405,
                "method not allowed through this proxy\n",
            ),
            ("GET / HTTP/1.0\r\n\r\n".into(), 400, "bad request: missing Host header\n"),
            (upgrade_10, 400, "bad request: WebSocket upgrades need HTTP/1.1\n"),
        ];
        for second in [false, true] {
            for (req, want, body) in &cases {
                let mut s = TcpStream::connect(p.addr).await.unwrap();
                let mut buf = Vec::new();
                if second {
                    assert_eq!(roundtrip(&mut s, &mut buf, &get("/", "")).await.unwrap().status, 200);
                }
                let before = b.seen.requests.load(SeqCst);
                let r = roundtrip(&mut s, &mut buf, req).await;
                let what = &req[..req.find("\r\n").unwrap()];
                let r = r.unwrap_or_else(|| panic!("no answer to {what} (second: {second})"));
                assert_eq!(r.status, *want, "{what} (second: {second}): {}", r.body);
                if !body.is_empty() {
                    assert_eq!(r.body, *body, "{what}");
                }
                assert!(closed_soon(&mut s).await, "{what}: connection closed");
                assert_eq!(b.seen.requests.load(SeqCst), before, "{what} reached the backend");
            }
        }
        // Others are served.
        let (mut s, mut buf) = (TcpStream::connect(p.addr).await.unwrap(), Vec::new());
        assert_eq!(roundtrip(&mut s, &mut buf, &get("/", "")).await.unwrap().body, "b");
    })
    .await
}

#[tokio::test]
async fn a_chunked_body_on_get_reaches_the_backend_whole() {
    bounded(async {
        let b = http_backend("b").await;
        let p = Proxy::start(&config("round_robin", &[b.addr], ""));
        let (mut s, mut buf) = (TcpStream::connect(p.addr).await.unwrap(), Vec::new());
        for method in ["GET", "GET", "DELETE"] {
            let req =
                format!("{method} /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
            let r = roundtrip(&mut s, &mut buf, &req).await.unwrap();
            assert_eq!(
                (r.status, r.body.as_str()),
                (200, "11"),
                "{method}: the backend read the whole body"
            );
        }
        assert_eq!(b.seen.upload_bytes.load(SeqCst), 33);
    })
    .await
}

#[tokio::test]
async fn sticky_needs_a_secret_and_a_cookie_forged_with_the_old_default_lands_nowhere() {
    bounded(async {
        let yaml = "listeners:\n  - name: l\n    bind: \"127.0.0.1:0\"\n    routes:\n      - pool: p\npools:\n  p:\n    sticky: { cookie: SYID }\n    backends:\n      - address: \"127.0.0.1:9\"\n";
        let err = format!("{:?}", switchyard::config::parse(yaml, std::path::Path::new(".")).unwrap_err());
        assert!(err.contains("needs a `secret`") && err.contains("/dev/urandom"), "{err}");
        let (a, b) = (http_backend("a").await, http_backend("b").await);
        let p = Proxy::start(&config(
            "round_robin",
            &[a.addr, b.addr],
            "    sticky: { cookie: SYID, secret: \"k3Q9v8cS2hJ\" }\n",
        ));
        // What a client computes offline from the former built-in secret for backend b.
        use sha1::{Digest, Sha1};
        let mut h = Sha1::new();
        h.update(b"switchyard");
        h.update([0u8]);
        h.update(b.addr.to_string().as_bytes());
        let forged: String = h.finalize()[..8].iter().map(|x| format!("{x:02x}")).collect();
        let mut landed = std::collections::BTreeMap::new();
        for _ in 0..6 {
            let (mut s, mut buf) = (TcpStream::connect(p.addr).await.unwrap(), Vec::new());
            let r = roundtrip(&mut s, &mut buf, &get("/", &format!("Cookie: SYID={forged}\r\n"))).await.unwrap();
            assert!(r.header("set-cookie").is_some(), "a forged cookie is replaced");
            *landed.entry(r.body).or_insert(0) += 1;
        }
        assert_eq!(landed.get("a"), Some(&3), "the algorithm chose, not the forged cookie: {landed:?}");
    })
    .await
}

#[tokio::test]
async fn a_reconnect_loop_against_a_backend_that_drops_it_stays_under_the_rate() {
    bounded(async {
        let dropper = scripted(Script::TerminateOnMessage).await;
        let echo = backend("echo").await;
        let yaml = format!(
            "listeners:\n  - name: l\n    bind: \"127.0.0.1:0\"\n    routes:\n      - match: {{ path_prefix: /ok }}\n        pool: ok\n      - pool: p\npools:\n  p:\n    backends:\n      - address: \"{}\"\n  ok:\n    backends:\n      - address: \"{}\"\nlimits:\n  max_connections_per_second: 5\nadmin:\n  bind: \"127.0.0.1:0\"\n",
            dropper.addr, echo.addr
        );
        let p = Proxy::start(&yaml);
        let mut bystander = connect(&p.url("/ok")).await;
        let (_, m) = http_get(p.admin(), "/metrics").await;
        let shed_before = metric(&m, "switchyard_shed_total{reason=\"rate\"}");
        let started = Instant::now();
        let mut codes = std::collections::BTreeMap::new();
        while started.elapsed() < Duration::from_secs(3) {
            let (mut s, mut pending) = raw_ws(p.addr, "/").await;
            let msg = switchyard::ws::peer::frame_bytes(true, switchyard::ws::frame::Opcode::Text, b"auth", Some([1, 2, 3, 4]));
            let _ = s.write_all(&msg).await;
            *codes.entry(raw_close_code(&mut s, &mut pending).await).or_insert(0) += 1;
        }
        let through = dropper.accepted.load(SeqCst);
        eprintln!("reconnect loop at 5/s for 3 s: {through} upgrades reached the backend; closes {codes:?}");
        // 5 at once, 5 a second for 3 s, and at most one refund a second for this client.
        assert!(through <= 5 + 15 + 4 + 2, "{through} upgrades reached the backend at 5/s: {codes:?}");
        assert!(codes.get(&1011).copied().unwrap_or(0) >= 5, "{codes:?}");
        let (_, m) = http_get(p.admin(), "/metrics").await;
        let shed = metric(&m, "switchyard_shed_total{reason=\"rate\"}") - shed_before;
        assert!(shed >= 10.0, "the loop was shed by the rate: {shed}, {codes:?}");
        assert_eq!(ask(&mut bystander, "still here").await, "still here");
    })
    .await
}

#[tokio::test]
async fn shed_clients_that_never_close_linger_only_within_the_ceiling() {
    bounded(async {
        let echo = backend("echo").await;
        let p = Proxy::start(&config("round_robin", &[echo.addr], "limits:\n  max_connections: 5\n"));
        let mut live = Vec::new();
        for _ in 0..5 {
            live.push(connect(&p.url("/")).await);
        }
        // 150 clients are shed (101 then 1013) or, past the hard ceiling, refused (503), and
        // never close their sockets.
        let mut shed = Vec::new();
        for _ in 0..150 {
            let addr = p.addr;
            shed.push(tokio::spawn(async move {
                let mut s = TcpStream::connect(addr).await.unwrap();
                s.write_all(upgrade_request("/", "").as_bytes()).await.unwrap();
                let mut got = Vec::new();
                // The balancer half-closes after its answer, then lingers reading (2 s) or
                // closes at once. Read to the end of the answer ...
                let _ = tokio::time::timeout(Duration::from_millis(1500), async {
                    let mut b = [0u8; 256];
                    loop {
                        match s.read(&mut b).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&b[..n]),
                        }
                    }
                })
                .await;
                // ... then probe: a socket still open (lingering) takes what is written; a
                // closed one answers with a reset, and the next write fails.
                let mut held = true;
                for _ in 0..2 {
                    if s.write_all(b"x").await.is_err() {
                        held = false;
                    }
                    tokio::time::sleep(Duration::from_millis(150)).await;
                }
                (got, !held, s)
            }));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (mut lingering, mut shed_1013, mut refused) = (0, 0, 0);
        let mut held = Vec::new();
        for t in shed {
            let (got, eof, s) = t.await.unwrap();
            let text = String::from_utf8_lossy(&got);
            if text.starts_with("HTTP/1.1 101") {
                let end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                let mut rest = got[end..].to_vec();
                let mut nothing = tokio::io::empty();
                assert_eq!(raw_close_code(&mut nothing, &mut rest).await, 1013);
                shed_1013 += 1;
            } else {
                assert_eq!(status(&text), 503, "{text}");
                refused += 1;
            }
            lingering += usize::from(!eof);
            held.push(s);
        }
        assert!(shed_1013 >= 5, "{shed_1013} shed, {refused} refused");
        eprintln!("150 clients at max_connections 5: {shed_1013} shed with 1013, {refused} refused with 503, {lingering} held open");
        // The ceiling is 2 × max_connections admitted, pending or lingering: 5 are live.
        assert!(lingering <= 5, "{lingering} shed connections held open past the ceiling");
        let a = &p.server.shared.admission;
        assert!(a.active() + a.pending() <= 10, "{} + {}", a.active(), a.pending());
        for ws in &mut live {
            assert_eq!(ask(ws, "live").await, "live");
        }
    })
    .await
}

#[tokio::test]
async fn a_completed_closing_handshake_closes_the_client_at_once() {
    bounded(async {
        let keeper = scripted(Script::CloseReplyKeepOpen).await;
        let p = Proxy::start(&config("round_robin", &[keeper.addr], ""));
        let (mut s, mut pending) = raw_ws(p.addr, "/").await;
        let close = switchyard::ws::peer::frame_bytes(
            true,
            switchyard::ws::frame::Opcode::Close,
            &1000u16.to_be_bytes(),
            Some([9, 8, 7, 6]),
        );
        s.write_all(&close).await.unwrap();
        assert_eq!(raw_close_code(&mut s, &mut pending).await, 1000);
        let replied = Instant::now();
        let mut b = [0u8; 64];
        let n = tokio::time::timeout(T, s.read(&mut b)).await.expect("closed in time");
        assert!(matches!(n, Ok(0) | Err(_)), "nothing after the close reply");
        // The close grace is 5 s; at once is well under it.
        assert!(replied.elapsed() < Duration::from_secs(3), "closed after {:?}", replied.elapsed());
        still_serves_plain(&p, &keeper).await;
    })
    .await
}

/// The keeper backend still takes upgrades after the close (a fresh handshake succeeds).
async fn still_serves_plain(p: &Proxy, keeper: &common::scripted::Scripted) {
    let before = keeper.accepted.load(SeqCst);
    let (_s, _) = raw_ws(p.addr, "/").await;
    assert_eq!(keeper.accepted.load(SeqCst), before + 1);
}

/// One request or upgrade per outcome of the blame table, each on a pool of its own, and
/// which of them counted against the backend.
#[tokio::test]
async fn every_outcome_of_the_blame_table_reaches_passive_health_only_when_the_backend_is_to_blame() {
    bounded(async {
        let client = http_backend("client").await;
        let dead = dead_port().await;
        let mute = scripted(Script::Mute).await;
        let plain = http_backend("plain").await;
        let lost = scripted(Script::CloseAfterHead).await;
        let silent = scripted(Script::Silent).await;
        let garbage = scripted(Script::Garbage).await;
        let pools: [(&str, SocketAddr, &str); 7] = [
            ("client", client.addr, ""),
            ("dead", dead, ""),
            ("mute", mute.addr, "        tls: { insecure_skip_verify: true }\n"),
            ("plain", plain.addr, "        tls: { insecure_skip_verify: true }\n"),
            ("lost", lost.addr, ""),
            ("silent", silent.addr, ""),
            ("garbage", garbage.addr, ""),
        ];
        let mut y = String::from("listeners:\n  - name: l\n    bind: \"127.0.0.1:0\"\n    routes:\n");
        for (name, _, _) in &pools {
            y.push_str(&format!("      - match: {{ host: {name} }}\n        pool: {name}\n"));
        }
        y.push_str("pools:\n");
        for (name, addr, tls) in &pools {
            y.push_str(&format!(
                "  {name}:\n    connect_timeout: 300ms\n    backends:\n      - address: \"{addr}\"\n{tls}"
            ));
        }
        y.push_str("limits:\n  request_timeout: 1s\n  max_request_body_bytes: 64KiB\n");
        let p = Proxy::start(&y);
        let ask = |host: &'static str, req: String| {
            let addr = p.addr;
            async move {
                let req = req.replace("Host: test", &format!("Host: {host}"));
                let mut s = TcpStream::connect(addr).await.unwrap();
                s.write_all(req.as_bytes()).await.unwrap();
                head_status(&mut s).await
            }
        };
        // The client's share and answered requests: none counts.
        let big = "x".repeat(100 * 1024);
        let client_side: Vec<(&str, String, u16)> = vec![
            ("answered", get("/", ""), 200),
            ("application 5xx", get("/fail", ""), 500),
            ("upgrade refused", upgrade_request("/", ""), 502),
            (
                "body stalled",
                "POST /upload HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\nabc".into(),
                408,
            ),
            (
                "body broken",
                "POST /upload HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nZZ\r\n".into(),
                400,
            ),
            (
                "body too large",
                format!(
                    "POST /upload HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{big}\r\n0\r\n\r\n",
                    big.len()
                ),
                413,
            ),
        ];
        for (what, req, want) in client_side {
            assert_eq!(ask("client", req).await, want, "{what}");
            assert_eq!(
                pool_backend(&p, "client").passive_failures.load(Relaxed),
                0,
                "{what} was blamed on the backend"
            );
        }
        // A client that goes away while its request waits.
        {
            let mut s = TcpStream::connect(p.addr).await.unwrap();
            s.write_all(get("/slow", "").replace("Host: test", "Host: client").as_bytes())
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
            drop(s);
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert_eq!(pool_backend(&p, "client").passive_failures.load(Relaxed), 0, "client gone");
        }
        // The backend's share: each counts once.
        let backend_side: [(&str, &'static str, u16); 6] = [
            ("connect refused", "dead", 503),
            ("connect timed out (TLS never answered)", "mute", 503),
            ("TLS failed", "plain", 503),
            ("connection lost before the head", "lost", 502),
            ("no answer within request_timeout", "silent", 504),
            ("invalid answer", "garbage", 502),
        ];
        for (what, pool, want) in backend_side {
            assert_eq!(ask(pool, get("/", "")).await, want, "{what}");
            assert_eq!(pool_backend(&p, pool).passive_failures.load(Relaxed), 1, "{what} not counted");
        }
        // Served meanwhile.
        assert_eq!(ask("client", get("/", "")).await, 200);
    })
    .await
}

/// Attack review of issue 25 (raw sockets, scripted backends): each way a client or an
/// application could still get a healthy backend blamed, or hold connections for ever.
#[tokio::test]
async fn a_backend_that_gives_up_on_a_stalled_body_or_rejects_an_upload_early_is_not_blamed() {
    bounded(async {
        let impatient = scripted(Script::GivesUpOnSlowBody).await;
        let rejecting = scripted(Script::RejectsEarly).await;
        let yaml = format!(
            "listeners:\n  - name: l\n    bind: \"127.0.0.1:0\"\n    routes:\n      - match: {{ host: impatient }}\n        pool: impatient\n      - pool: rejecting\npools:\n  impatient:\n    backends:\n      - address: \"{}\"\n  rejecting:\n    backends:\n      - address: \"{}\"\nlimits:\n  request_timeout: 2s\n  max_request_body_bytes: 64MiB\n",
            impatient.addr, rejecting.addr
        );
        let p = Proxy::start(&yaml);
        // The client stalls after 5 of 10 bytes; the backend gives up after 300 ms.
        for _ in 0..4 {
            let mut s = TcpStream::connect(p.addr).await.unwrap();
            s.write_all(b"POST /upload HTTP/1.1\r\nHost: impatient\r\nContent-Length: 10\r\n\r\n01234").await.unwrap();
            assert_eq!(head_status(&mut s).await, 408, "the client's stall, as the backend saw it");
        }
        assert_eq!(pool_backend(&p, "impatient").passive_failures.load(Relaxed), 0);
        // An 8 MiB upload that the backend refuses at once (413 and close).
        for _ in 0..4 {
            let s = TcpStream::connect(p.addr).await.unwrap();
            let (mut rd, mut wr) = s.into_split();
            let up = tokio::spawn(async move {
                let _ = wr.write_all(b"POST /upload HTTP/1.1\r\nHost: rejecting\r\nContent-Length: 8388608\r\n\r\n").await;
                let chunk = vec![b'x'; 65536];
                for _ in 0..128 {
                    if wr.write_all(&chunk).await.is_err() {
                        break;
                    }
                }
            });
            let status = head_status(&mut rd).await;
            assert!(status == 413 || status == 502, "{status}");
            up.abort();
        }
        assert_eq!(pool_backend(&p, "rejecting").passive_failures.load(Relaxed), 0, "an early answer is no failure");
    })
    .await
}

#[tokio::test]
async fn an_upgrade_with_a_body_is_refused_and_expect_is_not_forwarded() {
    bounded(async {
        let expecting = scripted(Script::HonoursExpect).await;
        let p = Proxy::start(&config("round_robin", &[expecting.addr], ""));
        for body in [
            "Content-Length: 64\r\n",
            "Transfer-Encoding: chunked\r\n",
            "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
        ] {
            let resp = raw_exchange(p.addr, upgrade_request("/", body).as_bytes()).await;
            assert_eq!(status(&resp), 400, "{resp}");
            assert!(resp.contains("a WebSocket upgrade carries no body"), "{resp}");
        }
        assert_eq!(expecting.accepted.load(SeqCst), 0, "nothing reached the backend");
        // `Expect: 100-continue` is this hop's: the backend never sees it, answers 101.
        for _ in 0..4 {
            let resp = raw_exchange(p.addr, upgrade_request("/", "Expect: 100-continue\r\n").as_bytes()).await;
            assert_eq!(status(&resp), 101, "{resp}");
        }
        assert_eq!(p.backend(0).passive_failures.load(Relaxed), 0);
    })
    .await
}

#[tokio::test]
async fn stalled_trickled_and_unread_exchanges_all_end() {
    bounded(async {
        let early = scripted(Script::AnswersEarlyThenDrains).await;
        let firehose = scripted(Script::Firehose).await;
        let b = http_backend("b").await;
        let yaml = format!(
            "listeners:\n  - name: l\n    bind: \"127.0.0.1:0\"\n    routes:\n      - match: {{ host: early }}\n        pool: early\n      - match: {{ host: firehose }}\n        pool: firehose\n      - pool: b\npools:\n  early:\n    backends:\n      - address: \"{}\"\n  firehose:\n    backends:\n      - address: \"{}\"\n  b:\n    backends:\n      - address: \"{}\"\nlimits:\n  request_timeout: 1s\n  idle_timeout: 1s\n  keepalive_timeout: 30s\n",
            early.addr, firehose.addr, b.addr
        );
        let p = Proxy::start(&yaml);
        // An early answer, then a body that never comes: the connection ends.
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        s.write_all(b"POST /x HTTP/1.1\r\nHost: early\r\nContent-Length: 1000000\r\n\r\n0123456789").await.unwrap();
        assert_eq!(head_status(&mut s).await, 401);
        assert!(closed_soon(&mut s).await, "the stalled body ends the connection");
        // A body trickled a byte every 400 ms (under request_timeout each time, far under 500
        // bytes a second): 408.
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        s.write_all(b"POST /upload HTTP/1.1\r\nHost: b\r\nContent-Length: 100\r\n\r\n").await.unwrap();
        let (mut rd, mut wr) = s.into_split();
        let trickle = tokio::spawn(async move {
            for _ in 0..100 {
                if wr.write_all(b"x").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
        });
        let started = Instant::now();
        assert_eq!(head_status(&mut rd).await, 408);
        assert!(started.elapsed() < Duration::from_secs(8), "{:?}", started.elapsed());
        trickle.abort();
        // A client that never reads a 64 MiB answer: cut off after idle_timeout of no reading.
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        let mut s = sock.connect(p.addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: firehose\r\n\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_secs(4)).await;
        let mut got = 0usize;
        let mut b2 = vec![0u8; 65536];
        let ended = tokio::time::timeout(T, async {
            loop {
                match s.read(&mut b2).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got += n,
                }
            }
        })
        .await;
        assert!(ended.is_ok() && got < 64 << 20, "the unread answer was cut off ({got} bytes read)");
        // Meanwhile and after, others are served.
        let (mut s, mut buf) = (TcpStream::connect(p.addr).await.unwrap(), Vec::new());
        assert_eq!(roundtrip(&mut s, &mut buf, &get("/", "")).await.unwrap().body, "b");
    })
    .await
}

#[tokio::test]
async fn a_101_to_a_plain_request_is_the_backends_fault_and_chunked_twice_is_refused() {
    bounded(async {
        let liar = scripted(Script::Switches).await;
        let b = http_backend("b").await;
        let yaml = format!(
            "listeners:\n  - name: l\n    bind: \"127.0.0.1:0\"\n    routes:\n      - match: {{ host: liar }}\n        pool: liar\n      - pool: p\npools:\n  liar:\n    backends:\n      - address: \"{}\"\n  p:\n    backends:\n      - address: \"{}\"\n",
            liar.addr, b.addr
        );
        let p = Proxy::start(&yaml);
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: liar\r\n\r\n").await.unwrap();
        assert_eq!(head_status(&mut s).await, 502);
        assert_eq!(pool_backend(&p, "liar").passive_failures.load(Relaxed), 1);
        // chunked applied twice: refused on the first request and on a later one.
        let twice = "POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        for second in [false, true] {
            let (mut s, mut buf) = (TcpStream::connect(p.addr).await.unwrap(), Vec::new());
            if second {
                assert_eq!(roundtrip(&mut s, &mut buf, &get("/", "")).await.unwrap().status, 200);
            }
            let before = b.seen.requests.load(SeqCst);
            let r = roundtrip(&mut s, &mut buf, twice).await.expect("an answer");
            assert_eq!(r.status, 400, "second: {second}: {}", r.body);
            assert_eq!(b.seen.requests.load(SeqCst), before);
        }
        // A one-shot client that shuts its sending side after the request gets its answer.
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        s.write_all(get("/", "Connection: close\r\n").as_bytes()).await.unwrap();
        s.shutdown().await.unwrap();
        assert_eq!(head_status(&mut s).await, 200);
    })
    .await
}
