//! The real client address: per-client limits (upgrades and plain HTTP), trusted and
//! untrusted `X-Forwarded-For`, hashing by the client it names, PROXY protocol headers on a
//! listener (v1, v2, missing, from an untrusted peer) and to a backend (upgrades, pinned
//! plain connections, health checks with `LOCAL`). 127.0.0.1 and 127.0.0.2 are two clients.

mod common;
use common::http::{get, http_backend, proxy_protocol_backend, roundtrip, HttpBackend};
use common::*;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use switchyard::proxy_protocol::V2Header;
use tokio::io::AsyncReadExt;

/// The request headers the backend saw last, by name.
fn seen(b: &Backend, name: &str) -> Option<String> {
    b.last_headers
        .lock()
        .unwrap()
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
}

fn proxy_listener(yaml: String) -> String {
    yaml.replace("    routes:\n", "    proxy_protocol: true\n    routes:\n")
}

#[tokio::test]
async fn over_the_per_client_cap_an_upgrade_gets_1013_while_another_client_is_served() {
    bounded(async {
        let b = backend("b").await;
        let p = Proxy::start(&config("round_robin", &[b.addr], "limits:\n  max_connections_per_client: 2\n"));
        let url = p.url("/");
        let mut held = Vec::new();
        for i in 0..2 {
            let mut ws = connect_via("127.0.0.1", &url, b"", &[]).await;
            assert_eq!(ask(&mut ws, &format!("a{i}")).await, format!("a{i}"));
            held.push(ws);
        }
        // The third from the same address: the handshake completes, then 1013.
        let mut third = connect_via("127.0.0.1", &url, b"", &[]).await;
        let (code, reason) = expect_close(&mut third).await;
        assert_eq!(code, 1013);
        assert!(reason.starts_with("try again in "), "{reason}");
        // Another client has its own count.
        let mut other = connect_via("127.0.0.2", &url, b"", &[]).await;
        assert_eq!(ask(&mut other, "b").await, "b");
        assert_eq!(
            b.accepted.load(std::sync::atomic::Ordering::SeqCst),
            3,
            "the shed one never reached it"
        );
        // A connection that ends gives its place back.
        held.pop().unwrap().close(None).await.unwrap();
        let freed = eventually(T, || b.live.load(std::sync::atomic::Ordering::SeqCst) == 2).await;
        assert!(freed.is_some());
        // The balancer's own count drops when the relay's task ends.
        let conns = p.server.shared.conns.clone();
        assert!(eventually(T, || conns.len() == 2).await.is_some(), "the relay ended");
        let mut again = connect_via("127.0.0.1", &url, b"", &[]).await;
        assert_eq!(ask(&mut again, "c").await, "c");
    })
    .await
}

#[tokio::test]
async fn over_the_per_client_rate_an_upgrade_gets_1013_while_another_client_is_served() {
    bounded(async {
        let b = backend("b").await;
        let p = Proxy::start(&config(
            "round_robin",
            &[b.addr],
            "limits:\n  max_connections_per_client_per_second: 1\n",
        ));
        let url = p.url("/");
        let mut first = connect_via("127.0.0.1", &url, b"", &[]).await;
        assert_eq!(ask(&mut first, "x").await, "x");
        for _ in 0..2 {
            let mut ws = connect_via("127.0.0.1", &url, b"", &[]).await;
            assert_eq!(expect_close(&mut ws).await.0, 1013);
        }
        let mut other = connect_via("127.0.0.2", &url, b"", &[]).await;
        assert_eq!(ask(&mut other, "y").await, "y");
        // One token a second: admitted again after it.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let mut later = connect_via("127.0.0.1", &url, b"", &[]).await;
        assert_eq!(ask(&mut later, "z").await, "z");
    })
    .await
}

#[tokio::test]
async fn plain_http_over_the_per_client_cap_gets_503_with_retry_after() {
    bounded(async {
        let hb = common::http::http_backend("h").await;
        let p = Proxy::start(&config(
            "round_robin",
            &[hb.addr],
            "limits:\n  max_connections_per_client: 1\nshedding:\n  retry_hint: 5s\n",
        ));
        let mut kept = tcp_from("127.0.0.1", p.addr).await;
        let mut buf = Vec::new();
        let r = roundtrip(&mut kept, &mut buf, &get("/", "")).await.unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "h"));
        // A second connection of the same client while the first is open.
        let mut second = tcp_from("127.0.0.1", p.addr).await;
        let mut b2 = Vec::new();
        let r = roundtrip(&mut second, &mut b2, &get("/", "")).await.unwrap();
        assert_eq!(r.status, 503);
        let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((3..=7).contains(&retry), "jittered around 5 s: {retry}");
        let mut other = tcp_from("127.0.0.2", p.addr).await;
        let mut b3 = Vec::new();
        assert_eq!(roundtrip(&mut other, &mut b3, &get("/", "")).await.unwrap().status, 200);
        // The first keeps being served on its keep-alive connection.
        assert_eq!(roundtrip(&mut kept, &mut buf, &get("/", "")).await.unwrap().status, 200);
    })
    .await
}

#[tokio::test]
async fn a_trusted_proxy_names_the_client_and_an_untrusted_peer_does_not() {
    bounded(async {
        let b = backend("b").await;
        let p = Proxy::start(&config(
            "round_robin",
            &[b.addr],
            "limits:\n  max_connections_per_client: 1\n  trusted_proxies: [\"127.0.0.1/32\"]\n",
        ));
        let url = p.url("/");
        let xff = |v: &'static str| [("x-forwarded-for", v)];
        // Through the trusted proxy at 127.0.0.1: each X-Forwarded-For client has its own count.
        let mut a = connect_via("127.0.0.1", &url, b"", &xff("203.0.113.9")).await;
        assert_eq!(ask(&mut a, "a").await, "a");
        assert_eq!(seen(&b, "x-forwarded-for").as_deref(), Some("203.0.113.9"));
        let fwd = seen(&b, "forwarded").unwrap();
        assert!(fwd.starts_with("for=203.0.113.9;proto=http;host="), "{fwd}");
        let mut a2 = connect_via("127.0.0.1", &url, b"", &xff("6.6.6.6, 203.0.113.9")).await;
        assert_eq!(expect_close(&mut a2).await.0, 1013, "the same client, whatever it claimed before");
        let mut c = connect_via("127.0.0.1", &url, b"", &xff("203.0.113.10")).await;
        assert_eq!(ask(&mut c, "c").await, "c");
        assert_eq!(seen(&b, "x-forwarded-for").as_deref(), Some("203.0.113.10"));
        // From 127.0.0.2 (not trusted) the header is only a claim: the peer is the client.
        let mut u = connect_via("127.0.0.2", &url, b"", &xff("203.0.113.11")).await;
        assert_eq!(ask(&mut u, "u").await, "u");
        assert_eq!(seen(&b, "x-forwarded-for").as_deref(), Some("203.0.113.11, 127.0.0.2"));
        let mut u2 = connect_via("127.0.0.2", &url, b"", &xff("203.0.113.12")).await;
        assert_eq!(expect_close(&mut u2).await.0, 1013, "keyed by the peer, not the claim");
    })
    .await
}

#[tokio::test]
async fn hash_client_ip_follows_the_trusted_forwarded_client() {
    bounded(async {
        let (b1, b2, b3) = (backend("b1").await, backend("b2").await, backend("b3").await);
        let p = Proxy::start(&config(
            "hash",
            &[b1.addr, b2.addr, b3.addr],
            "limits:\n  trusted_proxies: [\"127.0.0.1/32\"]\n",
        ));
        let url = p.url("/");
        let who = |from: &'static str, client: String| {
            let url = url.clone();
            async move {
                let mut ws = connect_via(from, &url, b"", &[("x-forwarded-for", &client)]).await;
                let name = ask(&mut ws, "whoami").await;
                let _ = ws.close(None).await;
                name
            }
        };
        let mut trusted = HashSet::new();
        let mut untrusted = HashSet::new();
        for i in 0..12 {
            let client = format!("198.51.100.{i}");
            let first = who("127.0.0.1", client.clone()).await;
            assert_eq!(who("127.0.0.1", client.clone()).await, first, "{client} sticks");
            trusted.insert(first);
            untrusted.insert(who("127.0.0.2", client).await);
        }
        assert!(trusted.len() >= 2, "forwarded clients spread: {trusted:?}");
        assert_eq!(untrusted.len(), 1, "an untrusted peer's claims change nothing: {untrusted:?}");
    })
    .await
}

/// The proxy's counter of closed PROXY connections for `reason`.
fn pp_errors(reason: &str) -> f64 {
    metric(
        &switchyard::metrics::render(),
        &format!("switchyard_proxy_protocol_errors_total{{reason=\"{reason}\"}}"),
    )
}

/// The request headers an HTTP backend saw last, one `name: value` a line.
fn http_seen(hb: &HttpBackend) -> String {
    hb.seen.last_headers.lock().unwrap().clone()
}

#[tokio::test]
async fn a_proxy_protocol_listener_takes_the_client_from_a_v1_or_v2_header() {
    bounded(async {
        let hb = http_backend("h").await;
        let p = Proxy::start(&proxy_listener(config(
            "round_robin",
            &[hb.addr],
            "limits:\n  trusted_proxies: [\"127.0.0.1/32\"]\n",
        )));
        let url = p.url("/ws");
        let v1 = format!("PROXY TCP4 198.51.100.7 {} 40000 {}\r\n", p.addr.ip(), p.addr.port());
        let mut ws = connect_via("127.0.0.1", &url, v1.as_bytes(), &[]).await;
        assert_eq!(ask(&mut ws, "v1").await, "v1");
        assert!(http_seen(&hb).contains("x-forwarded-for: 198.51.100.7\n"), "{}", http_seen(&hb));
        let v2 = V2Header::proxy("[2001:db8::7]:40001".parse().unwrap(), p.addr);
        let mut ws = connect_via("127.0.0.1", &url, v2.as_bytes(), &[]).await;
        assert_eq!(ask(&mut ws, "v2").await, "v2");
        assert!(http_seen(&hb).contains("x-forwarded-for: 2001:db8::7\n"), "{}", http_seen(&hb));
        assert!(http_seen(&hb).contains("forwarded: for=\"[2001:db8::7]\";"), "{}", http_seen(&hb));
        // LOCAL (the load balancer's own health check): the socket's address stands.
        let mut ws = connect_via("127.0.0.1", &url, V2Header::local().as_bytes(), &[]).await;
        assert_eq!(ask(&mut ws, "local").await, "local");
        assert!(http_seen(&hb).contains("x-forwarded-for: 127.0.0.1\n"), "{}", http_seen(&hb));
        // Plain HTTP behind a header, keep-alive: every request is the header's client's.
        let mut s = tcp_from("127.0.0.1", p.addr).await;
        let header = format!("PROXY TCP4 198.51.100.8 {} 40002 {}\r\n", p.addr.ip(), p.addr.port());
        tokio::io::AsyncWriteExt::write_all(&mut s, header.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        for _ in 0..2 {
            let r = roundtrip(&mut s, &mut buf, &get("/headers", "X-Forwarded-For: 6.6.6.6\r\n"))
                .await
                .unwrap();
            assert_eq!(r.status, 200);
            assert!(r.body.contains("x-forwarded-for: 6.6.6.6, 198.51.100.8\n"), "{}", r.body);
        }
    })
    .await
}

/// True when the balancer closes `s` without a single byte.
async fn closed_silently(s: &mut tokio::net::TcpStream) -> bool {
    let mut b = [0u8; 64];
    matches!(tokio::time::timeout(T, s.read(&mut b)).await, Ok(Ok(0)) | Ok(Err(_)))
}

#[tokio::test]
async fn without_a_header_or_from_an_untrusted_peer_the_connection_is_closed_and_counted() {
    bounded(async {
        let b = backend("b").await;
        let p = Proxy::start(&proxy_listener(config(
            "round_robin",
            &[b.addr],
            "limits:\n  trusted_proxies: [\"127.0.0.1/32\"]\n  handshake_timeout: 1s\n",
        )));
        let (missing, untrusted, timeout) = (pp_errors("missing"), pp_errors("untrusted"), pp_errors("timeout"));
        let mut s = tcp_from("127.0.0.1", p.addr).await;
        tokio::io::AsyncWriteExt::write_all(&mut s, upgrade_request("/", "").as_bytes())
            .await
            .unwrap();
        assert!(closed_silently(&mut s).await);
        let mut s = tcp_from("127.0.0.2", p.addr).await;
        tokio::io::AsyncWriteExt::write_all(&mut s, b"PROXY TCP4 198.51.100.7 127.0.0.1 1 2\r\n")
            .await
            .unwrap();
        assert!(closed_silently(&mut s).await);
        // Half a header, then nothing: closed at handshake_timeout.
        let mut s = tcp_from("127.0.0.1", p.addr).await;
        tokio::io::AsyncWriteExt::write_all(&mut s, b"PROXY TCP4 198.5").await.unwrap();
        assert!(closed_silently(&mut s).await);
        assert_eq!(pp_errors("missing") - missing, 1.0);
        assert_eq!(pp_errors("untrusted") - untrusted, 1.0);
        assert_eq!(pp_errors("timeout") - timeout, 1.0);
        assert_eq!(b.accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
    })
    .await
}

#[tokio::test]
async fn a_proxy_protocol_backend_gets_the_client_in_a_v2_header_and_checks_send_local() {
    bounded(async {
        let hb = proxy_protocol_backend("pp").await;
        let yaml = config("round_robin", &[hb.addr], "limits:\n  trusted_proxies: [\"127.0.0.1/32\"]\n")
            .replace(
                &format!("      - address: \"{}\"\n", hb.addr),
                &format!("      - address: \"{}\"\n        proxy_protocol: v2\n", hb.addr),
            )
            .replace(
                "    backends:\n",
                "    health_check: { kind: http, path: /health, interval: 200ms, timeout: 200ms, rise: 1, fall: 1 }\n    backends:\n",
            );
        let p = Proxy::start(&yaml);
        // A health check (LOCAL) reached it and it stays up.
        assert!(eventually(T, || hb.seen.proxy_headers.lock().unwrap().contains(&None))
            .await
            .is_some());
        // An upgrade from 127.0.0.2: the header carries that client.
        let mut ws = connect_via("127.0.0.2", &p.url("/ws"), b"", &[]).await;
        assert_eq!(ask(&mut ws, "hi").await, "hi");
        let sources = |hb: &common::http::HttpBackend| -> Vec<SocketAddr> {
            hb.seen.proxy_headers.lock().unwrap().iter().flatten().copied().collect()
        };
        assert_eq!(sources(&hb).len(), 1);
        assert_eq!(sources(&hb)[0].ip().to_string(), "127.0.0.2");
        // Plain requests of one client connection share one backend connection with its header;
        // a trusted proxy's requests for two clients get one each.
        let mut s = tcp_from("127.0.0.1", p.addr).await;
        let mut buf = Vec::new();
        for _ in 0..3 {
            let r = roundtrip(&mut s, &mut buf, &get("/", "X-Forwarded-For: 203.0.113.9\r\n"))
                .await
                .unwrap();
            assert_eq!((r.status, r.body.as_str()), (200, "pp"));
        }
        let r = roundtrip(&mut s, &mut buf, &get("/", "X-Forwarded-For: 203.0.113.10\r\n"))
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        let plain: Vec<String> = sources(&hb)[1..].iter().map(|a| a.to_string()).collect();
        assert_eq!(plain, ["203.0.113.9:0", "203.0.113.10:0"]);
        assert!(hb.seen.last_headers.lock().unwrap().contains("x-forwarded-for: 203.0.113.10\n"));
        // Another client connection never reuses that backend connection.
        let mut s2 = tcp_from("127.0.0.1", p.addr).await;
        let mut buf2 = Vec::new();
        let r = roundtrip(&mut s2, &mut buf2, &get("/", "X-Forwarded-For: 203.0.113.10\r\n"))
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(sources(&hb).len(), 4);
    })
    .await
}
