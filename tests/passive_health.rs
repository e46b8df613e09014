//! Passive health counts only what a backend is responsible for: a `4xx` the client provoked
//! never ejects a backend, a duplicated once-only header is refused at the edge (issue 16,
//! fault 1); a `5xx` counts only with `passive_health.count_5xx`, and never empties the pool
//! (issue 25).

mod common;
use common::*;

use std::sync::atomic::Ordering::Relaxed;

#[tokio::test]
async fn client_provoked_4xx_never_eject_the_backend() {
    bounded(async {
        let b = backend("b1").await;
        // One backend, passive checks only: `fall` is 3, so three counted failures eject it.
        let p = Proxy::start(&config("round_robin", &[b.addr], ""));
        for status_path in ["/status/400", "/status/401", "/status/431"] {
            let resp = raw_exchange(p.addr, upgrade_request(status_path, "").as_bytes()).await;
            assert_eq!(status(&resp), 502, "{resp}");
        }
        // A duplicated Sec-WebSocket-Key never reaches the backend: 400 at the edge.
        for _ in 0..3 {
            let dup = upgrade_request("/", "Sec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4PEA==\r\n");
            let resp = raw_exchange(p.addr, dup.as_bytes()).await;
            assert_eq!(status(&resp), 400, "{resp}");
            assert!(resp.contains("duplicated Sec-WebSocket-Key"), "{resp}");
        }
        let be = p.backend(0);
        assert_eq!(be.passive_failures.load(Relaxed), 0);
        assert!(!be.is_ejected(switchyard::clock::now_ms()));
        // A legitimate client is still served by that backend.
        let mut ws = connect(&p.url("/")).await;
        assert_eq!(ask(&mut ws, "whoami").await, "b1");
        assert_eq!(b.accepted.load(Relaxed), 1, "only the legitimate client was upgraded");
    })
    .await
}

#[tokio::test]
async fn backend_5xx_count_only_when_asked_and_never_eject_the_last_backend() {
    bounded(async {
        let b = backend("b1").await;
        // By default a 5xx to an upgrade is the application's answer: never counted.
        let p = Proxy::start(&config("round_robin", &[b.addr], ""));
        for _ in 0..5 {
            let resp = raw_exchange(p.addr, upgrade_request("/status/503", "").as_bytes()).await;
            assert_eq!(status(&resp), 502, "{resp}");
        }
        assert_eq!(p.backend(0).passive_failures.load(Relaxed), 0);
        assert_eq!(p.backend(0).passive_5xx.load(Relaxed), 0);
        drop(p);
        // Counted on request (`count_5xx`), with its own streak: two backends named by the
        // the third 5xx of one ejects it, and the other is kept whatever follows.
        let b2 = backend("b2").await;
        let extra = "    passive_health: { count_5xx: true, consecutive_5xx: 3 }\n";
        let p = Proxy::start(&config("round_robin", &[b.addr, b2.addr], extra));
        for _ in 0..10 {
            let resp = raw_exchange(p.addr, upgrade_request("/status/500", "").as_bytes()).await;
            assert_eq!(status(&resp), 502, "{resp}");
        }
        let now = switchyard::clock::now_ms();
        let ejected = (0..2).filter(|&i| p.backend(i).is_ejected(now)).count();
        assert_eq!(ejected, 1, "one ejected, the last available kept");
        // The pool still serves through the backend it kept.
        let kept = if p.backend(0).is_ejected(now) { "b2" } else { "b1" };
        let mut ws = connect(&p.url("/")).await;
        assert_eq!(ask(&mut ws, "whoami").await, kept);
    })
    .await
}
