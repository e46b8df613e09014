//! Algorithms that depend on measurements or on the request, end to end: least bandwidth
//! (fed by the byte-rate sampler), hash stickiness by cookie and by client IP, and
//! custom load (fed by the load poller).

mod common;
use common::*;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use switchyard::backend::LOAD_UNKNOWN;

/// Asks a held connection who serves it.
async fn held(proxy: &Proxy, headers: &[(&'static str, &str)]) -> (Ws, String) {
    let mut ws = connect_with_headers(&proxy.url("/"), headers).await;
    let name = ask(&mut ws, "whoami").await;
    (ws, name)
}

/// Who serves a new (then closed) connection.
async fn served_by(proxy: &Proxy, headers: &[(&'static str, &str)]) -> String {
    let (mut ws, name) = held(proxy, headers).await;
    let _ = ws.close(None).await;
    name
}

#[tokio::test]
async fn least_bandwidth_steers_new_connections_away_from_a_busy_stream() {
    bounded(async {
        let a = backend("a").await;
        let b = backend("b").await;
        let proxy = Proxy::start(&config("least_bandwidth", &[a.addr, b.addr], "    bandwidth_window: 1s\n"));

        // One connection streams continuously (1 KiB messages, asked for in a loop).
        let (mut chatty, busy) = held(&proxy, &[]).await;
        let stop = Arc::new(AtomicBool::new(false));
        let streamer = tokio::spawn({
            let stop = stop.clone();
            async move {
                while !stop.load(SeqCst) {
                    chatty.send(Message::text("stream:256")).await.unwrap();
                    for _ in 0..256 {
                        match tokio::time::timeout(T, chatty.next()).await.expect("stream in time") {
                            Some(Ok(Message::Binary(_))) => {}
                            other => panic!("stream broke: {other:?}"),
                        }
                    }
                }
                let _ = chatty.close(None).await;
            }
        });
        let i = usize::from(busy == "b");
        let busy_backend = proxy.backend(i);
        // The relay flushes its counters and the sampler ticks about once a second.
        let measured = eventually(Duration::from_secs(5), || busy_backend.bandwidth() > 100_000.0).await;
        assert!(measured.is_some(), "the stream was not measured: {} B/s", busy_backend.bandwidth());

        // Ten new quiet connections: least connections would split them about evenly;
        // least bandwidth puts (nearly) all of them on the quiet backend.
        let mut quiet = Vec::new();
        let mut on_quiet = 0;
        for _ in 0..10 {
            let (ws, name) = held(&proxy, &[]).await;
            on_quiet += usize::from(name != busy);
            quiet.push(ws);
        }
        assert!(on_quiet >= 8, "only {on_quiet} of 10 on the quiet backend");
        stop.store(true, SeqCst);
        streamer.await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn hash_by_cookie_is_sticky_and_spreads_different_values() {
    bounded(async {
        let a = backend("a").await;
        let b = backend("b").await;
        let proxy = Proxy::start(&config("hash", &[a.addr, b.addr], "    hash:\n      key: \"cookie:user\"\n"));
        let first = served_by(&proxy, &[("cookie", "theme=dark; user=alice")]).await;
        for _ in 0..10 {
            assert_eq!(served_by(&proxy, &[("cookie", "user=alice; theme=dark")]).await, first);
        }
        let mut seen = HashMap::new();
        for u in 0..20 {
            let name = served_by(&proxy, &[("cookie", &format!("user=u{u}"))]).await;
            *seen.entry(name).or_insert(0) += 1;
        }
        assert_eq!(seen.len(), 2, "20 users all on one backend: {seen:?}");
    })
    .await;
}

#[tokio::test]
async fn hash_by_client_ip_keeps_one_client_on_one_backend() {
    bounded(async {
        let a = backend("a").await;
        let b = backend("b").await;
        let proxy = Proxy::start(&config("hash", &[a.addr, b.addr], "    hash:\n      key: client_ip\n"));
        // Sixteen client addresses, three connections each: each address always lands on one
        // backend, and the addresses spread over both (a picker that ignores the key, or
        // always answers the same backend, fails one or the other; all sixteen on one
        // backend by chance is 1 in 32,768).
        let mut seen = std::collections::BTreeMap::new();
        for i in 1..=16u8 {
            let from = format!("127.0.0.{i}");
            let mut names = Vec::new();
            for _ in 0..3 {
                let mut ws = connect_via(&from, &proxy.url("/"), b"", &[]).await;
                names.push(ask(&mut ws, "whoami").await);
            }
            names.dedup();
            assert_eq!(names.len(), 1, "client {from} moved between backends: {names:?}");
            *seen.entry(names.remove(0)).or_insert(0) += 1;
        }
        assert_eq!(seen.len(), 2, "sixteen clients all on one backend: {seen:?}");
    })
    .await;
}

#[tokio::test]
async fn custom_load_sends_fewer_connections_to_the_loaded_backend() {
    bounded(async {
        let loaded = load_reporting_backend("90").await;
        let light1 = load_reporting_backend("10").await;
        let light2 = load_reporting_backend("10%").await;
        let extra = "    custom_load:\n      path: /load\n      interval: 200ms\n";
        let proxy = Proxy::start(&config("custom_load", &[loaded, light1, light2], extra));
        let backends: Vec<_> = (0..3).map(|i| proxy.backend(i)).collect();
        let reported = eventually(Duration::from_secs(3), || {
            backends.iter().all(|b| b.custom_load.load(SeqCst) != LOAD_UNKNOWN)
        })
        .await;
        assert!(reported.is_some(), "no load reports polled");
        assert_eq!(backends[0].custom_load.load(SeqCst), 90);

        let mut clients = Vec::new();
        for _ in 0..30 {
            let mut ws = connect(&proxy.url("/")).await;
            assert_eq!(ask(&mut ws, "echo").await, "echo");
            clients.push(ws);
        }
        let active: Vec<u64> = backends.iter().map(|b| b.active()).collect();
        assert_eq!(active.iter().sum::<u64>(), 30, "{active:?}");
        assert!(active[0] <= 6, "the backend at 90 % got {} of 30: {active:?}", active[0]);
    })
    .await;
}
