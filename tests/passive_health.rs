//! Passive health counts only what a backend is responsible for: a `4xx` the client provoked
//! never ejects a backend, a duplicated once-only header is refused at the edge, a `5xx` still
//! counts (issue 16, fault 1).

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
async fn backend_5xx_still_count_and_eject() {
    bounded(async {
        let b = backend("b1").await;
        let p = Proxy::start(&config("round_robin", &[b.addr], ""));
        for i in 1..=2u32 {
            let resp = raw_exchange(p.addr, upgrade_request("/status/503", "").as_bytes()).await;
            assert_eq!(status(&resp), 502, "{resp}");
            assert_eq!(p.backend(0).passive_failures.load(Relaxed), i);
        }
        let resp = raw_exchange(p.addr, upgrade_request("/status/500", "").as_bytes()).await;
        assert_eq!(status(&resp), 502, "{resp}");
        assert!(p.backend(0).is_ejected(switchyard::clock::now_ms()), "the third 5xx ejects");
        // With its only backend ejected, the pool sheds: a completed handshake and 1013.
        let mut ws = connect(&p.url("/")).await;
        assert_eq!(expect_close(&mut ws).await.0, 1013);
    })
    .await
}
