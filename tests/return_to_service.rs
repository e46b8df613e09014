//! Every return to service goes through one transition that starts the slow-start ramp and
//! respects health (issue 17, fault 11): a backend back from a passive ejection takes only
//! its ramped share, and undraining a backend whose checks fail keeps it out of service
//! until they pass.

mod common;
use common::control::switchable_health_backend;
use common::*;

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;

use serde_json::Value;
use switchyard::backend::{BackendState, CHECK_FAILED, CHECK_OK};

const ADMIN: &str = "admin:\n  bind: \"127.0.0.1:0\"\n";

/// Opens `n` clients that stay connected (each one answered, so it reached its backend).
async fn open(p: &Proxy, n: usize) -> Vec<Ws> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let mut ws = connect(&p.url("/")).await;
        assert_eq!(ask(&mut ws, "ping").await, "ping");
        held.push(ws);
    }
    held
}

/// Opens `n` clients that stay connected; returns them with how many `name` served.
async fn open_counting(p: &Proxy, n: usize, name: &str) -> (Vec<Ws>, usize) {
    let mut held = Vec::with_capacity(n);
    let mut on_name = 0;
    for _ in 0..n {
        let mut ws = connect(&p.url("/")).await;
        on_name += usize::from(ask(&mut ws, "whoami").await == name);
        held.push(ws);
    }
    (held, on_name)
}

#[tokio::test]
async fn a_backend_back_from_ejection_takes_only_its_ramped_share() {
    bounded(async {
        let mut a = backend("a").await;
        let b = backend("b").await;
        let addr_a = a.addr;
        let p = Proxy::start(&config("least_connections", &[a.addr, b.addr], "    slow_start: 20s\n"));
        let pa = p.backend(0);

        // A dies: the first clients try it first (it is the emptiest), are retried on B, and
        // the third refusal ejects A. Twenty clients stay on B.
        a.kill().await;
        let (_on_b, on_a) = open_counting(&p, 20, "a").await;
        assert_eq!(on_a, 0);
        assert!(pa.is_ejected(switchyard::clock::now_ms()), "three refusals eject A");

        // A is back on its port; its ejection ends by time (5 s).
        let _a = backend_at(addr_a, "a").await;
        let ended = eventually(2 * T, || !pa.is_ejected(switchyard::clock::now_ms())).await;
        assert!(ended.is_some(), "the ejection ends");

        // Least connections would send A nearly everything until it caught up with B's 20
        // (about 40 of 60); the ramp that starts when the ejection ends lets in only its
        // share: at 5–10 % of its weight, a few. It does get some (it is back in service).
        let (_held, to_a) = open_counting(&p, 60, "a").await;
        assert!((1..=10).contains(&to_a), "A took {to_a} of 60 new connections, B {}", 60 - to_a);
        assert_eq!(pa.active() as usize, to_a);
        assert_eq!(p.backend(1).active() as usize, 20 + 60 - to_a);
    })
    .await
}

#[tokio::test]
async fn undrain_of_a_backend_failing_its_checks_keeps_it_out_until_they_pass() {
    bounded(async {
        let healthy = Arc::new(AtomicBool::new(true));
        let x = switchable_health_backend(healthy.clone()).await;
        // Y passes its checks throughout (the library's echo answers `200` to plain GETs).
        let y = load_reporting_backend("0").await;
        let check = "    health_check:\n      kind: http\n      path: /health\n      interval: 200ms\n      timeout: 100ms\n      rise: 2\n      fall: 3\n";
        let p = Proxy::start(&config("round_robin", &[x, y], &format!("{check}{ADMIN}")));
        let (px, py) = (p.backend(0), p.backend(1));
        assert!(eventually(T, || px.last_check_ok.load(SeqCst) == CHECK_OK).await.is_some());

        let (code, body) = http(p.admin(), "POST", &format!("/api/pools/p/backends/{x}/drain"), "").await;
        assert_eq!(code, 200, "{body}");
        // While drained it starts failing its checks (a drained backend is checked, never flipped).
        healthy.store(false, SeqCst);
        assert!(eventually(T, || px.last_check_ok.load(SeqCst) == CHECK_FAILED).await.is_some());
        assert_eq!(px.state(), BackendState::Draining);

        // Undrain returns it to what its health says: down, not up.
        let (code, body) = http(p.admin(), "POST", &format!("/api/pools/p/backends/{x}/undrain"), "").await;
        assert_eq!(code, 200, "{body}");
        let v: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!((v["state"].as_str(), v["previous"].as_str()), (Some("down"), Some("draining")), "{v}");
        assert_eq!(px.state(), BackendState::Down);

        let (x_before, y_before) = (px.total.load(SeqCst), py.total.load(SeqCst));
        let new_on = |before: (u64, u64)| (px.total.load(SeqCst) - before.0, py.total.load(SeqCst) - before.1);
        let _held = open(&p, 20).await;
        assert_eq!(new_on((x_before, y_before)), (0, 20), "no new connection reaches the failing backend");
        // Undraining a backend that is down (not draining) leaves it down.
        let (code, body) = http(p.admin(), "POST", &format!("/api/pools/p/backends/{x}/undrain"), "").await;
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("\"state\":\"down\""), "{body}");
        assert_eq!(px.state(), BackendState::Down);

        // Its checks pass again: up after `rise`, and round robin alternates again.
        healthy.store(true, SeqCst);
        assert!(eventually(T, || px.state() == BackendState::Up).await.is_some());
        let before = (px.total.load(SeqCst), py.total.load(SeqCst));
        let _more = open(&p, 4).await;
        assert_eq!(new_on(before), (2, 2));
    })
    .await
}
