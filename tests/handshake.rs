//! Every handshake row of the contract's "What a client gets" table, with the exact
//! status, each followed by proof that the balancer still serves others.

mod common;
use common::*;

use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn proxy_with(extra_listener: &str, extra: &str) -> (Proxy, Backend) {
    let b = backend("b1").await;
    let yaml = format!(
        "listeners:\n  - name: l\n    bind: \"127.0.0.1:0\"\n{extra_listener}    routes:\n      - match: {{ path_prefix: /chat }}\n        pool: p\n      - match: {{ host: only.example.com }}\n        pool: p\n      - match: {{ header: {{ name: X-Tenant, value: a }} }}\n        pool: p\npools:\n  p:\n    backends:\n      - address: \"{}\"\n{extra}",
        b.addr
    );
    (Proxy::start(&yaml), b)
}

#[tokio::test]
async fn bad_requests_get_400_naming_the_header() {
    bounded(async {
        let (p, _b) = proxy_with("", "").await;
        let good = upgrade_request("/chat", "");
        // Each row of the contract's table: the exact body, not a header name found anywhere
        // in the answer (every refusal carries `Connection: close`).
        const UPGRADE: &str = "missing or invalid Upgrade header (need: websocket)";
        const CONNECTION: &str = "missing or invalid Connection header (need: Upgrade)";
        const KEY: &str = "missing or invalid Sec-WebSocket-Key header (must be base64 of 16 bytes)";
        let cases = [
            (good.replace("GET", "POST"), "method must be GET"),
            (good.replace("Host: test\r\n", ""), "missing Host header"),
            (good.replace("Host: test\r\n", "Host: \r\n"), "missing Host header"),
            (good.replace("Upgrade: websocket\r\n", ""), UPGRADE),
            (good.replace("Upgrade: websocket\r\n", "Upgrade: h2c\r\n"), UPGRADE),
            (good.replace("Connection: Upgrade\r\n", "Connection: keep-alive\r\n"), CONNECTION),
            (good.replace("Connection: Upgrade\r\n", ""), CONNECTION),
            (good.replace("dGhlIHNhbXBsZSBub25jZQ==", "dG9vIHNob3J0"), KEY),
            (good.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""), KEY),
            ("GARBAGE\r\n\r\n".to_string(), "malformed request head"),
        ];
        for (req, why) in cases {
            let resp = raw_exchange(p.addr, req.as_bytes()).await;
            assert_eq!(status(&resp), 400, "{why}: {resp}");
            let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
            assert_eq!(body, format!("bad request: {why}\n"), "{resp}");
        }
        still_serves(&p.url("/chat")).await;
    })
    .await
}

#[tokio::test]
async fn wrong_version_gets_426_with_version_header() {
    bounded(async {
        let (p, _b) = proxy_with("", "").await;
        let good = upgrade_request("/chat", "");
        // A version other than 13, or none at all.
        for req in [
            good.replace("Version: 13", "Version: 8"),
            good.replace("Sec-WebSocket-Version: 13\r\n", ""),
        ] {
            let resp = raw_exchange(p.addr, req.as_bytes()).await;
            assert_eq!(status(&resp), 426, "{resp}");
            assert!(resp.contains("Sec-WebSocket-Version: 13\r\n"), "{resp}");
        }
        still_serves(&p.url("/chat")).await;
    })
    .await
}

#[tokio::test]
async fn disallowed_origin_gets_403() {
    bounded(async {
        let (p, _b) = proxy_with("    allowed_origins: [\"https://app.example.com\"]\n", "").await;
        let bad = raw_exchange(p.addr, upgrade_request("/chat", "Origin: https://evil.example.com\r\n").as_bytes()).await;
        assert_eq!(status(&bad), 403, "{bad}");
        let missing = raw_exchange(p.addr, upgrade_request("/chat", "").as_bytes()).await;
        assert_eq!(status(&missing), 403, "{missing}");
        let good = raw_exchange(p.addr, upgrade_request("/chat", "Origin: https://app.example.com\r\n").as_bytes()).await;
        assert_eq!(status(&good), 101, "{good}");
    })
    .await
}

#[tokio::test]
async fn oversized_head_gets_431() {
    bounded(async {
        let (p, _b) = proxy_with("", "limits:\n  max_request_header_bytes: 1KiB\n").await;
        let big = format!("X-Big: {}\r\n", "a".repeat(4000));
        let resp = raw_exchange(p.addr, upgrade_request("/chat", &big).as_bytes()).await;
        assert_eq!(status(&resp), 431, "{resp}");
        // too many headers is the same answer
        let many: String = (0..80).map(|i| format!("X-H{i}: v\r\n")).collect();
        let (p2, _b2) = proxy_with("", "").await;
        let resp = raw_exchange(p2.addr, upgrade_request("/chat", &many).as_bytes()).await;
        assert_eq!(status(&resp), 431, "{resp}");
        still_serves(&p.url("/chat")).await;
    })
    .await
}

#[tokio::test]
async fn trickling_client_gets_408_at_the_handshake_timeout() {
    bounded(async {
        let (p, _b) = proxy_with("", "limits:\n  handshake_timeout: 600ms\n").await;
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        let started = Instant::now();
        let req = upgrade_request("/chat", "");
        // one byte every 100 ms: never finishes in time
        let mut out = Vec::new();
        let mut answered: Option<Duration> = None;
        for b in req.as_bytes() {
            if s.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            if started.elapsed() > Duration::from_secs(3) {
                break;
            }
            let mut chunk = [0u8; 256];
            if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(1), s.read(&mut chunk)).await {
                out.extend_from_slice(&chunk[..n]);
                answered.get_or_insert_with(|| started.elapsed());
                if n == 0 {
                    break;
                }
            }
        }
        if out.is_empty() {
            let mut first = [0u8; 256];
            if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(3), s.read(&mut first)).await {
                out.extend_from_slice(&first[..n]);
                answered.get_or_insert_with(|| started.elapsed());
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
        let resp = String::from_utf8_lossy(&out);
        assert_eq!(status(&resp), 408, "{resp}");
        // Not before the handshake timeout (a lower bound no load can break: timers only fire
        // late), and well before the client would have finished.
        let answered = answered.expect("an answer");
        assert!(
            answered >= Duration::from_millis(590),
            "408 after {answered:?}, before handshake_timeout"
        );
        assert!(started.elapsed() < Duration::from_secs(3), "held {:?}", started.elapsed());
        still_serves(&p.url("/chat")).await;
    })
    .await
}

#[tokio::test]
async fn unmatched_route_gets_404_and_each_matcher_works() {
    bounded(async {
        let (p, _b) = proxy_with("", "").await;
        let resp = raw_exchange(p.addr, upgrade_request("/other", "").as_bytes()).await;
        assert_eq!(status(&resp), 404, "{resp}");
        let by_host = raw_exchange(
            p.addr,
            upgrade_request("/other", "")
                .replace("Host: test", "Host: only.example.com:8080")
                .as_bytes(),
        )
        .await;
        assert_eq!(status(&by_host), 101, "{by_host}");
        let by_header = raw_exchange(p.addr, upgrade_request("/other", "X-Tenant: a\r\n").as_bytes()).await;
        assert_eq!(status(&by_header), 101, "{by_header}");
        let wrong_header = raw_exchange(p.addr, upgrade_request("/other", "X-Tenant: b\r\n").as_bytes()).await;
        assert_eq!(status(&wrong_header), 404, "{wrong_header}");
        still_serves(&p.url("/chat")).await;
    })
    .await
}

#[tokio::test]
async fn forwarded_headers_reach_the_backend() {
    bounded(async {
        let (p, b) = proxy_with("", "").await;
        let mut ws = connect(&p.url("/chat")).await;
        assert_eq!(ask(&mut ws, "x").await, "x");
        let h = b.last_headers.lock().unwrap().clone();
        let get = |n: &str| h.iter().find(|(k, _)| k.eq_ignore_ascii_case(n)).map(|(_, v)| v.clone());
        assert_eq!(get("x-forwarded-for").as_deref(), Some("127.0.0.1"));
        assert_eq!(get("x-forwarded-proto").as_deref(), Some("http"));
        assert!(get("forwarded").unwrap().starts_with("for=127.0.0.1;proto=http"), "{h:?}");
    })
    .await
}

#[tokio::test]
async fn the_admin_api_is_not_reachable_through_the_websocket_listener() {
    bounded(async {
        let b = backend("b").await;
        let p = Proxy::start(&config("round_robin", &[b.addr], "admin:\n  bind: \"127.0.0.1:0\"\n"));
        for path in ["/metrics", "/api/pools", "/healthz", "/"] {
            let resp = raw_exchange(p.addr, format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await;
            // Plain HTTP is forwarded to the pool (a WebSocket-only backend here), never
            // answered with admin data.
            assert_ne!(status(&resp), 200, "{path}: {resp}");
            assert!(!resp.contains("switchyard_") && !resp.contains("\"pools\""), "{path}: {resp}");
        }
        assert_eq!(http_get(p.admin(), "/healthz").await.0, 200, "while the admin listener answers");
    })
    .await
}
