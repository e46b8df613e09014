//! Backend selection and failure handling end to end: dead backends are skipped, invalid
//! 101s are 502, no backend is 1013, weighted round robin and least connections count right.

mod common;
use common::*;

use std::net::SocketAddr;

fn weighted(algorithm: &str, backends: &[(SocketAddr, u32)], extra: &str) -> String {
    let mut y = format!("listeners:\n  - name: l\n    bind: \"127.0.0.1:0\"\n    routes:\n      - pool: p\npools:\n  p:\n    algorithm: {algorithm}\n    backends:\n");
    for (b, w) in backends {
        y.push_str(&format!("      - address: \"{b}\"\n        weight: {w}\n"));
    }
    y.push_str(extra);
    y
}

#[tokio::test]
async fn a_dead_backend_is_skipped() {
    bounded(async {
        let good = backend("good").await;
        let dead = dead_port().await;
        let p = Proxy::start(&config("round_robin", &[dead, good.addr], ""));
        for _ in 0..6 {
            let mut ws = connect(&p.url("/")).await;
            assert_eq!(ask(&mut ws, "whoami").await, "good");
        }
    })
    .await
}

/// The contract's "a backend refuses or fails before its 101: the next backend is tried",
/// for the failures after the connect: a backend that accepts and closes on the request,
/// and one that accepts and never answers (over `connect_timeout`).
#[tokio::test]
async fn a_backend_that_resets_or_stays_silent_before_its_101_is_skipped() {
    bounded(async {
        use common::scripted::{scripted, Script};
        let good = backend("good").await;
        let reset = scripted(Script::CloseAfterHead).await;
        let silent = scripted(Script::Silent).await;
        let yaml =
            config("round_robin", &[reset.addr, silent.addr, good.addr], "").replace("connect_timeout: 5s", "connect_timeout: 300ms");
        let p = Proxy::start(&yaml);
        for _ in 0..6 {
            let mut ws = connect(&p.url("/")).await;
            assert_eq!(ask(&mut ws, "whoami").await, "good");
        }
        assert!(
            reset.accepted.load(std::sync::atomic::Ordering::SeqCst) >= 1,
            "the resetting backend was tried"
        );
        assert!(
            silent.accepted.load(std::sync::atomic::Ordering::SeqCst) >= 1,
            "the silent backend was tried"
        );
    })
    .await
}

#[tokio::test]
async fn every_backend_dead_gives_a_completed_handshake_and_1013() {
    bounded(async {
        let good = backend("good").await;
        let (d1, d2) = (dead_port().await, dead_port().await);
        let p = Proxy::start(&two_pools("dead", &[d1, d2], good.addr, "shedding:\n  retry_hint: 4s\n"));
        let mut ws = connect(&p.url("/dead")).await;
        let (code, reason) = expect_close(&mut ws).await;
        assert_eq!(code, 1013);
        let secs: f64 = reason
            .strip_prefix("try again in ")
            .and_then(|r| r.strip_suffix('s'))
            .unwrap()
            .parse()
            .unwrap();
        assert!((2.8..=5.2).contains(&secs), "{reason}");
        // the same balancer still serves others
        still_serves(&p.url("/")).await;
    })
    .await
}

#[tokio::test]
async fn an_invalid_101_or_another_status_is_502() {
    bounded(async {
        let wrong_accept = canned_backend(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n",
        )
        .await;
        let not_101 = canned_backend("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
        let good = backend("good").await;
        for b in [wrong_accept, not_101] {
            let p = Proxy::start(&two_pools("bad", &[b], good.addr, ""));
            let resp = raw_exchange(p.addr, upgrade_request("/bad", "").as_bytes()).await;
            assert_eq!(status(&resp), 502, "{resp}");
            // the same balancer still serves others
            still_serves(&p.url("/")).await;
        }
    })
    .await
}

/// `/NAME...` goes to a pool of `backends`, everything else to a pool of `good`.
fn two_pools(name: &str, backends: &[SocketAddr], good: SocketAddr, extra: &str) -> String {
    let mut y = format!(
        "listeners:\n  - name: l\n    bind: \"127.0.0.1:0\"\n    routes:\n      - match: {{ path_prefix: /{name} }}\n        pool: {name}\n      - pool: good\npools:\n  good:\n    backends:\n      - address: \"{good}\"\n  {name}:\n    backends:\n"
    );
    for b in backends {
        y.push_str(&format!("      - address: \"{b}\"\n"));
    }
    y.push_str(extra);
    y
}

#[tokio::test]
async fn weighted_round_robin_gives_exact_shares() {
    bounded(async {
        let a = backend("a").await;
        let b = backend("b").await;
        let p = Proxy::start(&weighted("round_robin", &[(a.addr, 3), (b.addr, 1)], ""));
        let mut seq = String::new();
        for _ in 0..40 {
            let mut ws = connect(&p.url("/")).await;
            seq.push_str(&ask(&mut ws, "whoami").await);
            let _ = ws.close(None).await;
        }
        assert_eq!(seq.matches('a').count(), 30, "{seq}");
        assert_eq!(seq.matches('b').count(), 10, "{seq}");
        assert!(!seq.contains("aaaa"), "interleaved, not bunched: {seq}");
    })
    .await
}

#[tokio::test]
async fn least_connections_fills_the_emptier_backend() {
    bounded(async {
        let a = backend("a").await;
        let b = backend("b").await;
        let p = Proxy::start(&weighted("least_connections", &[(a.addr, 1), (b.addr, 1)], ""));
        let mut held = Vec::new();
        for _ in 0..4 {
            let mut ws = connect(&p.url("/")).await;
            let who = ask(&mut ws, "whoami").await;
            held.push((who, ws));
        }
        assert_eq!(held.iter().filter(|(w, _)| w == "a").count(), 2);
        // close both connections on `a`: the next two must land there
        let mut kept = Vec::new();
        for (w, mut ws) in held {
            if w == "a" {
                ws.close(None).await.unwrap();
            } else {
                kept.push(ws);
            }
        }
        while a.live.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        // the balancer's own count drops when the relay ends
        let mine = p.server.shared.runtime.load().pools["p"]
            .backend(&a.addr.to_string())
            .unwrap()
            .clone();
        let dropped = eventually(T, || mine.active.load(std::sync::atomic::Ordering::SeqCst) == 0).await;
        assert!(dropped.is_some(), "the balancer counts no connection on `a`");
        for _ in 0..2 {
            let mut ws = connect(&p.url("/")).await;
            assert_eq!(ask(&mut ws, "whoami").await, "a");
            kept.push(ws);
        }
    })
    .await
}
