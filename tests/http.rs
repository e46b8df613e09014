//! Plain HTTP on the WebSocket listeners: forwarding with keep-alive on both sides, an
//! upgrade after plain requests on one connection, header lists, streaming, smuggling
//! refused, every failure answer of the contract's plain-HTTP table, and stickiness.

mod common;
use common::http::*;
use common::*;

use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

async fn conn(p: &Proxy) -> (TcpStream, Vec<u8>) {
    (TcpStream::connect(p.addr).await.unwrap(), Vec::new())
}

#[tokio::test]
async fn requests_are_forwarded_with_keep_alive_on_both_sides() {
    bounded(async {
        let b = http_backend("b1").await;
        let p = Proxy::start(&config("round_robin", &[b.addr], ""));
        let (mut s, mut buf) = conn(&p).await;
        for i in 0..20 {
            let r = roundtrip(&mut s, &mut buf, &get(&format!("/page/{i}"), ""))
                .await
                .expect("a response");
            assert_eq!((r.status, r.body.as_str()), (200, "b1"), "request {i}");
        }
        assert_eq!(b.seen.requests.load(SeqCst), 20);
        assert_eq!(b.seen.conns.load(SeqCst), 1, "one backend connection reused for 20 requests");
        let pool = &p.server.shared.http_clients;
        assert_eq!((pool.opened(), pool.idle()), (1, 1), "opened once, idle between requests");
        // A second client reuses the same pooled backend connection.
        let (mut s2, mut buf2) = conn(&p).await;
        assert_eq!(roundtrip(&mut s2, &mut buf2, &get("/x", "")).await.unwrap().body, "b1");
        assert_eq!(b.seen.conns.load(SeqCst), 1);
        // Forwarding fields added, hop-by-hop fields gone.
        let r = roundtrip(
            &mut s,
            &mut buf,
            &get(
                "/headers",
                "Connection: keep-alive, X-Private\r\nX-Private: 1\r\nKeep-Alive: timeout=5\r\nX-Forwarded-Proto: spoofed\r\n",
            ),
        )
        .await
        .unwrap();
        assert!(r.body.contains("x-forwarded-for: 127.0.0.1\n"), "{}", r.body);
        assert!(r.body.contains("x-forwarded-proto: http\n"), "{}", r.body);
        assert!(r.body.contains("forwarded: for=127.0.0.1;proto=http;host=\"test\"\n"), "{}", r.body);
        assert!(
            !r.body.contains("x-private") && !r.body.contains("keep-alive: timeout"),
            "{}",
            r.body
        );
    })
    .await
}

#[tokio::test]
async fn a_connection_may_send_plain_requests_then_upgrade() {
    bounded(async {
        let b = http_backend("b1").await;
        let p = Proxy::start(&config("round_robin", &[b.addr], ""));
        let (mut s, mut buf) = conn(&p).await;
        for _ in 0..3 {
            assert_eq!(roundtrip(&mut s, &mut buf, &get("/", "")).await.unwrap().body, "b1");
        }
        // Connection as two lines (RFC 9110 §5.3: one list).
        let up = "GET /ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: keep-alive\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        s.write_all(up.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut c = [0u8; 1];
            assert_eq!(s.read(&mut c).await.unwrap(), 1);
            head.push(c[0]);
        }
        let head = String::from_utf8_lossy(&head).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(s, tokio_tungstenite::tungstenite::protocol::Role::Client, None).await;
        for i in 0..5 {
            ws.send(Message::text(format!("m{i}"))).await.unwrap();
            let m = tokio::time::timeout(T, ws.next()).await.unwrap().unwrap().unwrap();
            assert_eq!(m.into_text().unwrap().as_str(), format!("m{i}"));
        }
        assert_eq!(p.server.shared.conns.len(), 1, "the upgraded connection is registered");
    })
    .await
}

#[tokio::test]
async fn http_reject_routes_answer_400_and_others_still_serve() {
    bounded(async {
        let b = http_backend("b1").await;
        let yaml = format!(
            "listeners:\n  - name: l\n    bind: \"127.0.0.1:0\"\n    routes:\n      - match: {{ path_prefix: /ws-only }}\n        pool: p\n        http: reject\n      - pool: p\npools:\n  p:\n    backends:\n      - address: \"{}\"\n",
            b.addr
        );
        let p = Proxy::start(&yaml);
        let resp = raw_exchange(p.addr, get("/ws-only/x", "").as_bytes()).await;
        assert_eq!(status(&resp), 400, "{resp}");
        assert!(resp.contains("plain HTTP is not served"), "{resp}");
        assert_eq!(b.seen.requests.load(SeqCst), 0);
        assert_eq!(http_get(p.addr, "/other").await, (200, "b1".to_string()));
        // A request without Host is refused, an HTTP/1.0 one too: it would go to the backend
        // as HTTP/1.1, which must carry one (issue 25).
        for req in [&b"GET /other HTTP/1.1\r\n\r\n"[..], b"GET /other HTTP/1.0\r\n\r\n"] {
            let no_host = raw_exchange(p.addr, req).await;
            assert_eq!(status(&no_host), 400, "{no_host}");
            assert!(no_host.ends_with("bad request: missing Host header\n"), "{no_host}");
        }
        assert_eq!(b.seen.requests.load(SeqCst), 1, "only the request with a Host reached the backend");
    })
    .await
}

#[tokio::test]
async fn ambiguous_framing_is_refused_and_reaches_no_backend() {
    bounded(async {
        let b = http_backend("b1").await;
        let p = Proxy::start(&config("round_robin", &[b.addr], ""));
        let variants = [
            "POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
            "POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            "POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
            "POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: t\r\nX-Folded: a\r\n b\r\n\r\n",
        ];
        for v in variants {
            let mut s = TcpStream::connect(p.addr).await.unwrap();
            s.write_all(v.as_bytes()).await.unwrap();
            let mut buf = Vec::new();
            let r = read_response(&mut s, &mut buf)
                .await
                .unwrap_or_else(|| panic!("an answer to {v:?}"));
            assert_eq!(r.status, 400, "{v:?}: {r:?}");
            assert!(closed_soon(&mut s).await, "connection closed after {v:?}");
            // Counted in connections, not requests: the backend's parser would refuse some of
            // these itself, so its request count could stay at 0 whatever was forwarded.
            assert_eq!(b.seen.conns.load(SeqCst), 0, "{v:?} opened a backend connection");
        }
        // The same after a good request on a keep-alive connection (hyper parses it).
        let (mut s, mut buf) = conn(&p).await;
        assert_eq!(roundtrip(&mut s, &mut buf, &get("/", "")).await.unwrap().status, 200);
        let r = roundtrip(
            &mut s,
            &mut buf,
            "POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        )
        .await
        .unwrap();
        assert_eq!(r.status, 400, "{r:?}");
        assert_eq!(b.seen.requests.load(SeqCst), 1, "only the good request reached the backend");
        assert_eq!(b.seen.conns.load(SeqCst), 1, "on the one connection the good request opened");
        assert_eq!(http_get(p.addr, "/").await, (200, "b1".to_string()), "still serves");
    })
    .await
}

#[tokio::test]
async fn failures_answer_503_502_504_and_413() {
    bounded(async {
        let dead = dead_port().await;
        let b = http_backend("b1").await;
        let yaml = format!(
            "listeners:\n  - name: l\n    bind: \"127.0.0.1:0\"\n    routes:\n      - match: {{ path_prefix: /none }}\n        pool: none\n      - pool: p\npools:\n  none:\n    backends:\n      - address: \"{dead}\"\n  p:\n    connect_timeout: 2s\n    backends:\n      - address: \"{dead}\"\n      - address: \"{}\"\nlimits:\n  request_timeout: 500ms\n  max_request_body_bytes: 1KiB\nshedding:\n  retry_hint: 10s\n",
            b.addr
        );
        let p = Proxy::start(&yaml);
        // Every backend of the pool down: 503 with a jittered Retry-After.
        let mut hints = std::collections::BTreeSet::new();
        for _ in 0..20 {
            let (mut s, mut buf) = conn(&p).await;
            let r = roundtrip(&mut s, &mut buf, &get("/none", "")).await.unwrap();
            assert_eq!(r.status, 503, "{r:?}");
            let secs: u64 = r.header("retry-after").expect("Retry-After").parse().unwrap();
            assert!((7..=13).contains(&secs), "{secs}");
            hints.insert(secs);
        }
        assert!(hints.len() > 1, "Retry-After is jittered: {hints:?}");
        // A connect failure moves on to the next backend: every request is served.
        for _ in 0..6 {
            assert_eq!(http_get(p.addr, "/").await, (200, "b1".to_string()));
        }
        // No response head within request_timeout: 504.
        let started = Instant::now();
        assert_eq!(http_get(p.addr, "/slow").await.0, 504);
        assert!(started.elapsed() < Duration::from_secs(3), "answered before the backend");
        // A declared body over the limit: 413, nothing forwarded.
        let before = b.seen.requests.load(SeqCst);
        assert_eq!(http(p.addr, "POST", "/upload", &"x".repeat(2000)).await.0, 413);
        // A chunked body that grows over the limit: 413 too.
        let (mut s, mut buf) = conn(&p).await;
        let chunk = "x".repeat(600);
        let req = format!("POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n");
        assert_eq!(roundtrip(&mut s, &mut buf, &req).await.map(|r| r.status), Some(413));
        let passed = b.seen.upload_bytes.load(SeqCst);
        assert!(passed <= 1024, "never more than the limit reaches the backend: {passed}");
        assert!(b.seen.requests.load(SeqCst) <= before + 1, "the declared one never reached it");
        // A backend that answers garbage: 502.
        let garbage = canned_backend("NOT HTTP AT ALL\r\n\r\n").await;
        let q = Proxy::start(&config("round_robin", &[garbage], ""));
        assert_eq!(http_get(q.addr, "/").await.0, 502);
        assert_eq!(http_get(p.addr, "/").await, (200, "b1".to_string()), "still serves");
    })
    .await
}

#[tokio::test]
async fn server_sent_events_arrive_as_they_are_sent() {
    bounded(async {
        let b = http_backend("b1").await;
        let p = Proxy::start(&config("round_robin", &[b.addr], ""));
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        s.write_all(get("/sse", "").as_bytes()).await.unwrap();
        let mut got = String::new();
        let mut arrivals = Vec::new();
        let mut buf = [0u8; 4096];
        while arrivals.len() < 10 {
            let n = tokio::time::timeout(T, s.read(&mut buf)).await.unwrap().unwrap();
            assert!(n > 0, "stream ended early: {got}");
            got.push_str(&String::from_utf8_lossy(&buf[..n]));
            while got.matches("data: ").count() > arrivals.len() {
                arrivals.push(Instant::now());
            }
        }
        let sent = b.seen.sse_sent.lock().unwrap().clone();
        assert_eq!(sent.len(), 10);
        // Unbuffered: the first event arrived while the backend was still producing the rest,
        // and the arrivals are spread like the sends (100 ms apart), not bunched at the end as
        // a buffering proxy would deliver them. Ratios, not a wall-clock bound, so a loaded
        // machine's delays cannot fail it.
        assert!(arrivals[0] < sent[9], "the first event arrived only after the last was sent");
        let (sent_spread, arrived_spread) = (sent[9] - sent[0], arrivals[9] - arrivals[0]);
        assert!(
            arrived_spread * 2 >= sent_spread,
            "events sent over {sent_spread:?} arrived within {arrived_spread:?}"
        );
    })
    .await
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_keepalive_timeout() {
    bounded(async {
        let b = http_backend("b1").await;
        let p = Proxy::start(&config("round_robin", &[b.addr], "limits:\n  keepalive_timeout: 500ms\n"));
        let (mut s, mut buf) = conn(&p).await;
        assert_eq!(roundtrip(&mut s, &mut buf, &get("/", "")).await.unwrap().status, 200);
        let started = Instant::now();
        assert!(closed_soon(&mut s).await);
        assert!(started.elapsed() >= Duration::from_millis(400), "{:?}", started.elapsed());
    })
    .await
}

#[tokio::test]
async fn sticky_cookie_pins_a_client_and_is_reissued_when_its_backend_goes() {
    bounded(async {
        let b1 = http_backend("b1").await;
        let b2 = http_backend("b2").await;
        let b3 = http_backend("b3").await;
        let extra = "    sticky:\n      cookie: SYID\n      secret: s3cret\nadmin:\n  bind: \"127.0.0.1:0\"\n";
        let p = Proxy::start(&config("round_robin", &[b1.addr, b2.addr, b3.addr], extra));
        let (mut s, mut buf) = conn(&p).await;
        let first = roundtrip(&mut s, &mut buf, &get("/", "")).await.unwrap();
        let cookie = first.header("set-cookie").expect("a cookie").to_string();
        assert!(
            cookie.starts_with("SYID=") && cookie.contains("Path=/") && cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
            "{cookie}"
        );
        assert!(!cookie.contains("127.0.0.1"), "opaque: {cookie}");
        let pair = cookie.split(';').next().unwrap().to_string();
        for _ in 0..12 {
            let (mut s, mut buf) = conn(&p).await;
            let r = roundtrip(&mut s, &mut buf, &get("/", &format!("Cookie: a=1; {pair}\r\n")))
                .await
                .unwrap();
            assert_eq!(r.body, first.body, "pinned");
            assert!(r.header("set-cookie").is_none(), "no new cookie on a hit");
        }
        // The upgrade honours the cookie too.
        let before: Vec<usize> = [&b1, &b2, &b3].iter().map(|b| b.seen.requests.load(SeqCst)).collect();
        let mut ws = connect_with_headers(&p.url("/ws"), &[("Cookie", &pair)]).await;
        assert_eq!(ask(&mut ws, "hi").await, "hi");
        let _ = ws.close(None).await;
        let after: Vec<usize> = [&b1, &b2, &b3].iter().map(|b| b.seen.requests.load(SeqCst)).collect();
        let pinned = ["b1", "b2", "b3"].iter().position(|n| *n == first.body).unwrap();
        assert_eq!(after[pinned], before[pinned] + 1, "the upgrade went to the pinned backend");
        // Its backend drained: another one answers and the cookie is re-issued.
        let idx = ["b1", "b2", "b3"].iter().position(|n| *n == first.body).unwrap();
        let addr = [b1.addr, b2.addr, b3.addr][idx];
        assert_eq!(
            http(p.admin(), "POST", &format!("/api/pools/p/backends/{addr}/drain"), "").await.0,
            200
        );
        let r = roundtrip(&mut s, &mut buf, &get("/", &format!("Cookie: {pair}\r\n")))
            .await
            .unwrap();
        assert_ne!(r.body, first.body);
        let again = r.header("set-cookie").expect("re-issued");
        assert_ne!(again.split(';').next().unwrap(), pair);
        let metrics = http_get(p.admin(), "/metrics").await.1;
        // One assignment, 12 plain hits and the upgrade's, one reassignment (the only sticky
        // pool of this test binary).
        for (result, n) in [("hit", 13.0), ("assigned", 1.0), ("reassigned", 1.0)] {
            let series = format!("switchyard_sticky_total{{pool=\"p\",result=\"{result}\"}}");
            assert_eq!(metric(&metrics, &series), n, "{result}:\n{metrics}");
        }
        assert!(metrics.contains("switchyard_http_requests_total{pool=\"p\",backend="), "{metrics}");
        assert!(
            metrics.contains("switchyard_http_request_duration_seconds_bucket{pool=\"p\""),
            "{metrics}"
        );
    })
    .await
}

#[tokio::test]
async fn hash_by_path_segment_keeps_a_session_on_one_backend() {
    bounded(async {
        let bs = [http_backend("b1").await, http_backend("b2").await, http_backend("b3").await];
        let addrs: Vec<_> = bs.iter().map(|b| b.addr).collect();
        let p = Proxy::start(&config("hash", &addrs, "    hash:\n      key: path_segment:3\n"));
        let mut seen = std::collections::BTreeSet::new();
        for session in 0..30 {
            let first = http_get(p.addr, &format!("/echo/000/s{session}/xhr_streaming")).await.1;
            for transport in ["xhr", "xhr_send", "eventsource"] {
                let again = http_get(p.addr, &format!("/echo/{}/s{session}/{transport}", session % 7)).await.1;
                assert_eq!(again, first, "session s{session} stays on its backend");
            }
            seen.insert(first);
        }
        assert_eq!(seen.len(), 3, "sessions spread over every backend: {seen:?}");
    })
    .await
}

/// Peak resident set of this process (the balancer runs in it), in bytes.
fn peak_rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_gib_upload_streams_with_flat_memory() {
    bounded(async {
        const TOTAL: u64 = 1 << 30;
        let b = http_backend("b1").await;
        let p = Proxy::start(&config("round_robin", &[b.addr], "limits:\n  max_request_body_bytes: 2GiB\n"));
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        let before = peak_rss();
        s.write_all(format!("POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: {TOTAL}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let chunk = vec![b'x'; 256 * 1024];
        let mut sent = 0u64;
        while sent < TOTAL {
            s.write_all(&chunk).await.unwrap();
            sent += chunk.len() as u64;
        }
        let mut buf = Vec::new();
        let r = read_response(&mut s, &mut buf).await.expect("an answer");
        assert_eq!((r.status, r.body.as_str()), (200, TOTAL.to_string().as_str()));
        assert_eq!(b.seen.upload_bytes.load(SeqCst), TOTAL);
        let grew = peak_rss().saturating_sub(before);
        // Holding the body would take 1 GiB; streaming takes a few buffers.
        assert!(grew < 64 << 20, "peak RSS grew by {} MiB", grew >> 20);
    })
    .await
}

/// Contract rows with no test before (issue 31): plain HTTP gets `503` with a jittered
/// `Retry-After` when every backend is at its `max_connections`, and when the process cap
/// sheds; others are served meanwhile.
#[tokio::test]
async fn plain_requests_get_503_when_every_backend_is_full_and_when_the_process_cap_sheds() {
    bounded(async {
        let b = http_backend("b1").await;
        let free = http_backend("free").await;
        // `/free` goes to a pool with room: there, only the process cap can answer 503.
        let yaml = format!(
            "listeners:\n  - name: l\n    bind: \"127.0.0.1:0\"\n    routes:\n      - match: {{ path_prefix: /free }}\n        pool: q\n      - pool: p\npools:\n  p:\n    backends:\n      - address: \"{}\"\n        max_connections: 1\n  q:\n    backends:\n      - address: \"{}\"\nlimits:\n  max_connections: 2\n",
            b.addr, free.addr
        );
        let p = Proxy::start(&yaml);
        // One request in flight fills the backend (`/slow` answers after 3 s).
        let (mut slow, mut sbuf) = conn(&p).await;
        slow.write_all(get("/slow", "").as_bytes()).await.unwrap();
        assert!(eventually(T, || p.backend(0).active() == 1).await.is_some());
        let (mut s, mut buf) = conn(&p).await;
        let r = roundtrip(&mut s, &mut buf, &get("/", "")).await.unwrap();
        assert_eq!(r.status, 503, "every backend full: {r:?}");
        let retry: u64 = r.header("retry-after").and_then(|v| v.parse().ok()).expect("Retry-After");
        assert!((1..=7).contains(&retry), "{retry}");
        // The pool with room serves this admitted connection...
        let r = roundtrip(&mut s, &mut buf, &get("/free", "")).await.unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "free"), "{r:?}");
        // ...but two connections are open (the process cap is 2): a third is shed by the cap,
        // whichever pool it asks for.
        let (mut third, mut tbuf) = conn(&p).await;
        let r = roundtrip(&mut third, &mut tbuf, &get("/free", "")).await.unwrap();
        assert_eq!(r.status, 503, "over max_connections: {r:?}");
        assert!(r.header("retry-after").is_some(), "{r:?}");
        // The request in flight is served, and then the next one on its connection.
        let r = read_response(&mut slow, &mut sbuf).await.unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "b1"));
        assert_eq!(roundtrip(&mut slow, &mut sbuf, &get("/", "")).await.unwrap().status, 200);
    })
    .await
}

#[tokio::test]
async fn plain_connections_over_the_rate_get_503_and_an_upgrade_after_plain_requests_can_be_shed() {
    bounded(async {
        let b = http_backend("b1").await;
        let dead = dead_port().await;
        let yaml = format!(
            "listeners:\n  - name: l\n    bind: \"127.0.0.1:0\"\n    routes:\n      - match: {{ path_prefix: /dead }}\n        pool: dead\n      - pool: p\npools:\n  dead:\n    backends:\n      - address: \"{dead}\"\n  p:\n    backends:\n      - address: \"{}\"\nlimits:\n  max_connections_per_second: 2\nadmin:\n  bind: \"127.0.0.1:0\"\n",
            b.addr
        );
        let p = Proxy::start(&yaml);
        let (mut held, mut hbuf) = conn(&p).await;
        assert_eq!(roundtrip(&mut held, &mut hbuf, &get("/", "")).await.unwrap().status, 200);
        let mut statuses = Vec::new();
        for _ in 0..4 {
            let (mut s, mut buf) = conn(&p).await;
            let r = roundtrip(&mut s, &mut buf, &get("/", "")).await.unwrap();
            if r.status == 503 {
                assert!(r.header("retry-after").is_some(), "{r:?}");
            }
            statuses.push(r.status);
        }
        assert!(statuses.contains(&503), "the burst over the rate is shed: {statuses:?}");
        let metrics = http_get(p.admin(), "/metrics").await.1;
        assert!(metrics.contains("switchyard_shed_total{reason=\"rate\"}"), "{metrics}");
        // The admitted keep-alive connection still serves, then upgrades into a dead pool:
        // the balancer completes the handshake itself and closes with 1013.
        assert_eq!(roundtrip(&mut held, &mut hbuf, &get("/", "")).await.unwrap().status, 200);
        let up = "GET /dead HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        held.write_all(up.as_bytes()).await.unwrap();
        let mut pending = Vec::new();
        let end = loop {
            if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut c = [0u8; 1024];
            let n = tokio::time::timeout(T, held.read(&mut c)).await.unwrap().unwrap();
            assert!(n > 0, "closed before the 101");
            pending.extend_from_slice(&c[..n]);
        };
        let head = String::from_utf8_lossy(&pending[..end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101") && head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
        pending.drain(..end);
        assert_eq!(raw_close_code(&mut held, &mut pending).await, 1013);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_shutdown_an_idle_keep_alive_connection_is_closed_and_a_long_poll_finishes() {
    bounded(async {
        let b = http_backend("b1").await;
        let p = Proxy::start(&config("round_robin", &[b.addr], "limits:\n  drain_timeout: 5s\n"));
        let (mut idle, mut ibuf) = conn(&p).await;
        assert_eq!(roundtrip(&mut idle, &mut ibuf, &get("/", "")).await.unwrap().status, 200);
        // A request in flight (the backend answers after 3 s) when shutdown begins.
        let mut polling = TcpStream::connect(p.addr).await.unwrap();
        polling.write_all(get("/slow", "").as_bytes()).await.unwrap();
        let seen = b.seen.clone();
        assert!(
            eventually(T, || seen.requests.load(SeqCst) == 2).await.is_some(),
            "the long-poll reached the backend before shutdown begins"
        );
        let Proxy { server, .. } = p;
        let stop = tokio::task::spawn_blocking(move || server.shutdown(None));
        assert!(closed_soon(&mut idle).await, "the idle keep-alive connection is closed");
        let mut pbuf = Vec::new();
        let r = read_response(&mut polling, &mut pbuf).await.expect("the long-poll gets its answer");
        assert_eq!((r.status, r.body.as_str()), (200, "b1"));
        assert!(closed_soon(&mut polling).await, "and its connection is closed after it");
        tokio::time::timeout(Duration::from_secs(10), stop)
            .await
            .expect("shutdown ends")
            .unwrap();
    })
    .await
}

#[tokio::test]
async fn request_timeout_starts_when_the_upload_is_done() {
    bounded(async {
        let b = http_backend("b1").await;
        let p = Proxy::start(&config("round_robin", &[b.addr], "limits:\n  request_timeout: 500ms\n"));
        let (mut s, mut buf) = conn(&p).await;
        // A 2 s upload, one chunk every 200 ms: longer than request_timeout, never stalled.
        s.write_all(b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await
            .unwrap();
        for _ in 0..10 {
            s.write_all(b"400\r\n").await.unwrap();
            s.write_all(&[b'x'; 1024]).await.unwrap();
            s.write_all(b"\r\n").await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        s.write_all(b"0\r\n\r\n").await.unwrap();
        let r = read_response(&mut s, &mut buf).await.expect("an answer");
        assert_eq!((r.status, r.body.as_str()), (200, "10240"), "{r:?}");
        // Silence after the request is still bounded.
        assert_eq!(roundtrip(&mut s, &mut buf, &get("/slow", "")).await.map(|r| r.status), Some(504));
    })
    .await
}

#[tokio::test]
async fn a_body_that_breaks_off_mid_stream_is_the_clients_fault_not_the_backends() {
    bounded(async {
        let b = http_backend("b1").await;
        let p = Proxy::start(&config("round_robin", &[b.addr], ""));
        for i in 0..4 {
            let (mut s, mut buf) = conn(&p).await;
            // A good first chunk (forwarded), then a malformed chunk size.
            s.write_all(b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
                .await
                .unwrap();
            let seen = b.seen.clone();
            assert!(
                eventually(T, || seen.requests.load(SeqCst) == i + 1).await.is_some(),
                "the request reached the backend before its body breaks off"
            );
            s.write_all(b"zz\r\nmore\r\n0\r\n\r\n").await.unwrap();
            let r = read_response(&mut s, &mut buf).await.expect("an answer");
            assert_eq!(r.status, 400, "{r:?}");
        }
        let backend = p.backend(0);
        assert_eq!(backend.passive_failures.load(SeqCst), 0, "no failure counted against the backend");
        assert_eq!(backend.ejected_until_ms.load(SeqCst), 0, "never ejected");
        assert_eq!(http_get(p.addr, "/").await, (200, "b1".to_string()));
    })
    .await
}

#[tokio::test]
async fn an_upgrade_after_plain_requests_gets_the_same_refusals_as_a_first_one() {
    bounded(async {
        let b = http_backend("b1").await;
        let p = Proxy::start(&config("round_robin", &[b.addr], ""));
        let (mut s, mut buf) = conn(&p).await;
        assert_eq!(roundtrip(&mut s, &mut buf, &get("/", "")).await.unwrap().status, 200);
        let up = upgrade_request("/ws", "").replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8");
        let r = roundtrip(&mut s, &mut buf, &up).await.expect("an answer");
        assert_eq!(r.status, 426, "{r:?}");
        assert_eq!(r.header("sec-websocket-version"), Some("13"), "RFC 6455 §4.4: {r:?}");
        // The same on a first request, written by the raw path.
        let raw = raw_exchange(p.addr, up.as_bytes()).await;
        assert_eq!(status(&raw), 426);
        assert!(raw.contains("Sec-WebSocket-Version: 13\r\n"), "{raw}");
    })
    .await
}

#[tokio::test]
async fn a_get_on_a_kept_connection_the_backend_dropped_is_sent_again_on_a_fresh_one() {
    bounded(async {
        // A backend that answers the first request of each connection, then reads the next
        // one and drops the connection without an answer (an idle keep-alive connection closed
        // by the server just as the proxy reused it). Each request head is kept.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let baddr = l.local_addr().unwrap();
        let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let seen = heads.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let Ok((buf, end)) = switchyard::handshake::read_head(&mut s, 16384).await else {
                        return;
                    };
                    seen.lock().unwrap().push(String::from_utf8_lossy(&buf[..end]).to_lowercase());
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
                    if let Ok((buf, end)) = switchyard::handshake::read_head(&mut s, 16384).await {
                        seen.lock().unwrap().push(String::from_utf8_lossy(&buf[..end]).to_lowercase());
                    }
                });
            }
        });
        let p = Proxy::start(&config("round_robin", &[baddr], ""));
        let (mut s, mut buf) = conn(&p).await;
        let first = roundtrip(&mut s, &mut buf, &get("/one", "")).await.expect("first answer");
        assert_eq!((first.status, first.body.as_str()), (200, "ok"));
        let second = roundtrip(&mut s, &mut buf, &get("/two?x=1", "X-App: 7\r\n"))
            .await
            .expect("second answer");
        assert_eq!((second.status, second.body.as_str()), (200, "ok"), "retried on a fresh connection");
        let heads = heads.lock().unwrap().clone();
        assert_eq!(heads.len(), 3, "one, two (dropped), two again: {heads:?}");
        assert!(
            heads[1].starts_with("get /two?x=1 http/1.1\r\n") && heads[2].starts_with("get /two?x=1 http/1.1\r\n"),
            "{heads:?}"
        );
        // The request sent again is the same request: the client's fields and the forwarding
        // fields, once each.
        for h in &heads[1..] {
            assert!(h.contains("\r\nx-app: 7\r\n"), "{h}");
            assert_eq!(h.matches("\r\nx-forwarded-for: 127.0.0.1\r\n").count(), 1, "{h}");
            assert_eq!(
                h.matches("\r\nforwarded: for=127.0.0.1;proto=http;host=\"test\"\r\n").count(),
                1,
                "{h}"
            );
        }
        // A request with a body is not sent twice: the backend may have acted on it.
        let third = roundtrip(
            &mut s,
            &mut buf,
            "POST /three HTTP/1.1\r\nHost: test\r\nContent-Length: 2\r\n\r\nhi",
        )
        .await
        .expect("third answer");
        assert_eq!(third.status, 502);
        // and the balancer still serves others
        let (mut s2, mut buf2) = conn(&p).await;
        assert_eq!(roundtrip(&mut s2, &mut buf2, &get("/four", "")).await.expect("answer").status, 200);
    })
    .await
}
