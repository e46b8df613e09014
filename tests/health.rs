//! Health end to end: active tcp/http/websocket checks mark backends down and up again
//! within their rise/fall budget, and passive ejection takes a dead backend out without a
//! single client failing.

mod common;
use common::*;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use switchyard::backend::{BackendState, CHECK_FAILED, CHECK_OK};

const INTERVAL_MS: u64 = 200;
const TIMEOUT_MS: u64 = 100;
const RISE: u64 = 2;
const FALL: u64 = 3;

/// `health_check:` YAML with the test's short timings.
fn check(kind: &str, path: &str) -> String {
    format!(
        "    health_check:\n      kind: {kind}\n      path: {path}\n      interval: {INTERVAL_MS}ms\n      timeout: {TIMEOUT_MS}ms\n      rise: {RISE}\n      fall: {FALL}\n"
    )
}

/// Longest time `n` consecutive checks may take: `n` jittered intervals (+ 10 %) plus one
/// timeout, plus scheduling slack for a loaded test machine.
fn budget(n: u64) -> Duration {
    Duration::from_millis(n * INTERVAL_MS * 11 / 10 + TIMEOUT_MS + 400)
}

/// Asks `n` new clients who served them; returns the names.
async fn whoami_n(proxy: &Proxy, n: usize) -> Vec<String> {
    let mut names = Vec::new();
    for _ in 0..n {
        let mut ws = connect(&proxy.url("/")).await;
        names.push(ask(&mut ws, "whoami").await);
        let _ = ws.close(None).await;
    }
    names
}

#[tokio::test]
async fn a_killed_backend_is_marked_down_in_time_and_up_again_after_rise() {
    bounded(async {
        let mut a = backend("a").await;
        let b = backend("b").await;
        let addr_a = a.addr;
        let proxy = Proxy::start(&config("round_robin", &[a.addr, b.addr], &check("tcp", "/")));
        let (ba, bb) = (proxy.backend(0), proxy.backend(1));
        assert!(eventually(budget(1), || ba.last_check_ok.load(SeqCst) == CHECK_OK).await.is_some());

        // Traffic flows to both while A dies: clients connect and talk in a loop. A client
        // whose conversation was on A when it died loses it (that is the point); every
        // connect still succeeds, because a refused backend is retried on the next.
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicUsize::new(0));
        let traffic = tokio::spawn({
            let (stop, served, url) = (stop.clone(), served.clone(), proxy.url("/"));
            async move {
                while !stop.load(SeqCst) {
                    let mut ws = connect(&url).await;
                    if ws.send(Message::text("hello")).await.is_ok() {
                        if let Ok(Some(Ok(Message::Text(t)))) = tokio::time::timeout(T, ws.next()).await {
                            served.fetch_add(usize::from(t.as_str() == "hello"), SeqCst);
                        }
                    }
                    let _ = ws.close(None).await;
                }
            }
        });
        // A reaches the kill with traffic flowing, not before the first conversation.
        let flowing = served.clone();
        assert!(eventually(T, || flowing.load(SeqCst) >= 4).await.is_some(), "traffic flows");
        a.kill().await;
        let down = eventually(budget(FALL), || ba.state() == BackendState::Down).await;
        assert!(down.is_some(), "not marked down within {:?}", budget(FALL));
        assert_eq!(ba.last_check_ok.load(SeqCst), CHECK_FAILED);
        assert_eq!(bb.state(), BackendState::Up);

        // No new connection goes to A.
        assert!(whoami_n(&proxy, 10).await.iter().all(|n| n == "b"));
        stop.store(true, SeqCst);
        traffic.await.expect("every client of the traffic loop connected");
        assert!(served.load(SeqCst) > 0);

        // Back on the same port: up after `rise` successes.
        let _a = backend_at(addr_a, "a").await;
        let up = eventually(budget(RISE), || ba.state() == BackendState::Up).await;
        assert!(up.is_some(), "not marked up within {:?}", budget(RISE));
        assert_eq!(ba.last_check_ok.load(SeqCst), CHECK_OK);

        let metrics = switchyard::metrics::render();
        let transitions = |to: &str| {
            metrics
                .lines()
                .any(|l| l.starts_with("switchyard_health_transitions_total") && l.contains(&addr_a.to_string()) && l.contains(to))
        };
        assert!(transitions("to=\"down\"") && transitions("to=\"up\""), "{metrics}");
    })
    .await;
}

#[tokio::test]
async fn an_http_check_marks_a_503_backend_down() {
    bounded(async {
        let busy = canned_backend("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy").await;
        let fine = canned_backend("HTTP/1.1 204 No Content\r\n\r\n").await;
        let proxy = Proxy::start(&config("round_robin", &[busy, fine], &check("http", "/health")));
        let (b503, b204) = (proxy.backend(0), proxy.backend(1));
        assert!(eventually(budget(FALL), || b503.state() == BackendState::Down).await.is_some());
        assert_eq!(b204.state(), BackendState::Up);
        assert_eq!(b204.last_check_ok.load(SeqCst), CHECK_OK);
        assert!(b204.last_check_ms.load(SeqCst) > 0);
    })
    .await;
}

#[tokio::test]
async fn a_websocket_check_catches_a_backend_that_only_speaks_http() {
    bounded(async {
        let http_only = canned_backend("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
        let real = backend("real").await;
        let proxy = Proxy::start(&config("round_robin", &[http_only, real.addr], &check("websocket", "/health")));
        let (fake, ws) = (proxy.backend(0), proxy.backend(1));
        assert!(eventually(budget(FALL), || fake.state() == BackendState::Down).await.is_some());
        // The real backend passes: upgrade, ping/pong with the same payload, close.
        assert!(eventually(budget(1), || ws.last_check_ok.load(SeqCst) == CHECK_OK).await.is_some());
        assert_eq!(ws.state(), BackendState::Up);
        assert!(whoami_n(&proxy, 4).await.iter().all(|n| n == "real"));
    })
    .await;
}

#[tokio::test]
async fn passive_ejection_without_active_checks() {
    bounded(async {
        let dead = dead_port().await;
        let good = backend("good").await;
        let proxy = Proxy::start(&config("round_robin", &[dead, good.addr], ""));
        let bd = proxy.backend(0);
        // Round robin sends every other client to the dead one first; it is retried on the
        // good one, so every client is served while the failures add up to the ejection.
        assert!(whoami_n(&proxy, 10).await.iter().all(|n| n == "good"));
        let now = switchyard::clock::now_ms();
        assert!(bd.ejected_until_ms.load(SeqCst) > now, "the dead backend is ejected");
        assert_eq!(bd.state(), BackendState::Up, "passive ejection leaves the state alone");
        // ...but the metrics say it takes no connections, and why.
        let m = switchyard::metrics::render();
        let series = |s: String| assert!(m.lines().any(|l| l == s), "{s} missing:\n{m}");
        series(format!("switchyard_backend_up{{pool=\"p\",backend=\"{dead}\"}} 0"));
        series(format!(
            "switchyard_backend_state{{pool=\"p\",backend=\"{dead}\",state=\"ejected\"}} 1"
        ));
        series(format!("switchyard_backend_state{{pool=\"p\",backend=\"{dead}\",state=\"up\"}} 0"));
        series(format!(
            "switchyard_health_transitions_total{{pool=\"p\",backend=\"{dead}\",to=\"ejected\"}} 1"
        ));
        assert!(whoami_n(&proxy, 4).await.iter().all(|n| n == "good"));
    })
    .await;
}

#[tokio::test]
async fn reloads_start_and_stop_checks_and_let_removed_backends_go() {
    bounded(async {
        let a = backend("a").await;
        let dead = dead_port().await;
        let dir = tempfile::tempdir().unwrap();
        let (proxy, path) = Proxy::start_file(dir.path(), &config("round_robin", &[a.addr], &check("tcp", "/")));
        let shared = proxy.server.shared.clone();

        // Added by a reload: checked (and marked down) like any other.
        std::fs::write(&path, config("round_robin", &[a.addr, dead], &check("tcp", "/"))).unwrap();
        switchyard::reload(&shared).expect("reload ok");
        let added = proxy.backend(1);
        let tick = Duration::from_millis(300);
        assert!(eventually(budget(FALL) + tick, || added.state() == BackendState::Down)
            .await
            .is_some());
        assert_eq!(proxy.backend(0).state(), BackendState::Up);

        // Checks turned off by a reload: passive checks only, so the backend is up again.
        std::fs::write(&path, config("round_robin", &[a.addr, dead], "")).unwrap();
        switchyard::reload(&shared).expect("reload ok");
        assert!(Arc::ptr_eq(&proxy.backend(1), &added), "the reload kept the backend's state");
        assert!(eventually(tick * 2, || added.state() == BackendState::Up).await.is_some());

        // Removed by a reload: its checker stops and nothing keeps it alive.
        let removed = Arc::downgrade(&added);
        drop(added);
        std::fs::write(&path, config("round_robin", &[a.addr], &check("tcp", "/"))).unwrap();
        switchyard::reload(&shared).expect("reload ok");
        let gone = eventually(budget(1) + tick, || removed.strong_count() == 0).await;
        assert!(gone.is_some(), "a removed backend is still referenced");
        assert!(whoami_n(&proxy, 3).await.iter().all(|n| n == "a"));
    })
    .await;
}
