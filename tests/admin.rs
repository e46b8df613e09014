//! The admin listener end to end: health, the pools API, the Prometheus metrics of the
//! contract, backend drain/undrain, reload, and malformed requests.

mod common;
use common::*;

use std::time::{Duration, Instant};

use serde_json::Value;

/// Extra YAML for an admin listener on port 0.
const ADMIN: &str = "admin:\n  bind: \"127.0.0.1:0\"\n";

async fn get_json(p: &Proxy, path: &str) -> Value {
    let (code, body) = http_get(p.admin(), path).await;
    assert_eq!(code, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path} is not JSON ({e}): {body}"))
}

/// The value of the one series of `name` whose labels include every `labels` pair (0 if absent).
fn series(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut found = Vec::new();
    for line in metrics.lines().filter(|l| l.starts_with(&format!("{name}{{"))) {
        if labels.iter().all(|(k, v)| line.contains(&format!("{k}=\"{v}\""))) {
            found.push(line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).expect("a number"));
        }
    }
    assert!(found.len() <= 1, "{name} {labels:?} matches {} series", found.len());
    found.first().copied().unwrap_or(0.0)
}

/// Connects a client and asks which backend it reached.
async fn connect_to(p: &Proxy) -> (Ws, String) {
    let mut ws = connect(&p.url("/")).await;
    let who = ask(&mut ws, "whoami").await;
    (ws, who)
}

#[tokio::test]
async fn healthz_answers_ok_then_503_while_draining() {
    bounded(async {
        let b = backend("b1").await;
        let p = Proxy::start(&config("round_robin", &[b.addr], ADMIN));
        assert_eq!(http_get(p.admin(), "/healthz").await, (200, "ok\n".to_string()));
        let status = get_json(&p, "/api/status").await;
        assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(status["draining"], false);
        assert!(status["uptime_s"].is_u64(), "{status}");
        p.server.shared.draining.store(true, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(http_get(p.admin(), "/healthz").await, (503, "draining\n".to_string()));
        assert_eq!(get_json(&p, "/api/pools").await["draining"], true);
    })
    .await
}

#[tokio::test]
async fn pools_api_shows_backends_with_live_connections() {
    bounded(async {
        let b = backend("b1").await;
        let p = Proxy::start(&config("least_connections", &[b.addr], ADMIN));
        let (_ws, who) = connect_to(&p).await;
        assert_eq!(who, "b1");
        let v = get_json(&p, "/api/pools").await;
        assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(v["draining"], false);
        assert_eq!(v["connections"], 1);
        let pools = v["pools"].as_array().expect("pools array");
        assert_eq!(pools.len(), 1);
        assert_eq!(pools[0]["name"], "p");
        assert_eq!(pools[0]["algorithm"], "least_connections");
        let bs = pools[0]["backends"].as_array().expect("backends array");
        assert_eq!(bs.len(), 1);
        let be = &bs[0];
        assert_eq!(be["address"], b.addr.to_string());
        assert_eq!(be["state"], "up");
        assert_eq!(be["weight"], 1);
        assert_eq!(be["active"], 1);
        assert_eq!(be["total"], 1);
        assert!(be["latency_ms"].as_f64().is_some_and(|l| l >= 0.0), "{be}");
        assert!(be["custom_load"].is_null() && be["last_check"].is_null(), "{be}");
        for k in [
            "bytes_in_per_s",
            "bytes_out_per_s",
            "bytes_c2b",
            "bytes_b2c",
            "messages_c2b",
            "messages_b2c",
        ] {
            assert!(be[k].is_number(), "{k} missing: {be}");
        }
    })
    .await
}

#[tokio::test]
async fn metrics_has_every_contract_name_and_counts_messages_exactly() {
    bounded(async {
        let b = backend("b1").await;
        let p = Proxy::start(&config("round_robin", &[b.addr], ADMIN));
        // a refused handshake, so the failure counter exists
        let resp = raw_exchange(p.addr, b"GET / HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\n\r\n").await;
        assert_eq!(status(&resp), 400, "{resp}");

        let addr = b.addr.to_string();
        let labels = |d| [("pool", "p"), ("backend", addr.as_str()), ("direction", d)];
        let (_, before) = http_get(p.admin(), "/metrics").await;
        let mut ws = connect(&p.url("/")).await;
        for i in 0..10 {
            assert_eq!(ask(&mut ws, &format!("m{i}")).await, format!("m{i}"));
        }
        let _ = futures_util::SinkExt::close(&mut ws).await;
        drop(ws);
        // The relay adds its counts to the backend's when it ends.
        let conns = p.server.shared.conns.clone();
        assert!(eventually(T, || conns.is_empty()).await.is_some(), "the relay ended");

        let raw = raw_exchange(p.admin(), b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await;
        assert!(raw.contains("content-type: text/plain; version=0.0.4"), "{raw}");
        let (code, after) = http_get(p.admin(), "/metrics").await;
        assert_eq!(code, 200);
        for name in [
            "switchyard_connections_active",
            "switchyard_connections_total",
            "switchyard_handshake_failures_total",
            "switchyard_shed_total",
            "switchyard_bytes_total",
            "switchyard_messages_total",
            "switchyard_backend_up",
            "switchyard_handshake_duration_seconds",
            "switchyard_config_reloads_total",
            "switchyard_close_codes_total",
        ] {
            assert!(after.lines().any(|l| l.starts_with(name)), "/metrics lacks {name}:\n{after}");
        }
        for d in ["client_to_backend", "backend_to_client"] {
            let moved = series(&after, "switchyard_messages_total", &labels(d)) - series(&before, "switchyard_messages_total", &labels(d));
            assert_eq!(moved, 10.0, "{d}:\n{after}");
        }
        assert!(series(&after, "switchyard_bytes_total", &labels("client_to_backend")) > 0.0);
        assert_eq!(series(&after, "switchyard_backend_up", &[("backend", &addr)]), 1.0);
    })
    .await
}

#[tokio::test]
async fn drain_closes_with_1012_over_drain_timeout_and_undrain_restores() {
    bounded(async {
        let (one, two) = (backend("one").await, backend("two").await);
        let extra = format!("limits:\n  drain_timeout: 1s\n{ADMIN}");
        let p = Proxy::start(&config("round_robin", &[one.addr, two.addr], &extra));
        let mut on_one = Vec::new();
        let mut on_two = Vec::new();
        for _ in 0..20 {
            let (ws, who) = connect_to(&p).await;
            if who == "one" {
                on_one.push(ws)
            } else {
                on_two.push(ws)
            }
        }
        assert_eq!((on_one.len(), on_two.len()), (10, 10), "round robin spreads 20 connections evenly");

        let encoded = one.addr.to_string().replace(':', "%3A");
        let started = Instant::now();
        let (code, body) = http(p.admin(), "POST", &format!("/api/pools/p/backends/{encoded}/drain"), "").await;
        assert_eq!(code, 200, "{body}");
        let v: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!((v["state"].as_str(), v["closing"].as_u64()), (Some("draining"), Some(10)), "{v}");

        // Each drained connection's close, and when it came (all awaited at once).
        let closes = futures_util::future::join_all(on_one.iter_mut().map(|ws| async move {
            let code = expect_close(ws).await.0;
            (code, started.elapsed())
        }))
        .await;
        assert!(closes.iter().all(|(code, _)| *code == 1012), "{closes:?}");
        let first = closes.iter().map(|c| c.1).min().unwrap();
        let last = closes.iter().map(|c| c.1).max().unwrap();
        assert!(last < Duration::from_millis(2500), "drained connections closed until {last:?}");
        // Spread over drain_timeout, not all at once: ten connections take a tenth of the
        // 1 s window each, so the first close comes in the first tenth and the last in the
        // last (load only delays closes, so the gap is a lower bound: 600 ms, 800 expected).
        assert!(
            last.saturating_sub(first) >= Duration::from_millis(600),
            "the drained connections closed within {:?} of each other: {closes:?}",
            last - first
        );
        for ws in &mut on_two {
            assert_eq!(ask(ws, "whoami").await, "two", "the other backend's connections stay open");
        }
        let pools = get_json(&p, "/api/pools").await;
        let state = |pools: &Value, i: usize| pools["pools"][0]["backends"][i]["state"].as_str().map(str::to_string);
        assert_eq!(state(&pools, 0).as_deref(), Some("draining"));
        assert_eq!(state(&pools, 1).as_deref(), Some("up"));
        for _ in 0..4 {
            assert_eq!(connect_to(&p).await.1, "two", "no new connection reaches a drained backend");
        }

        let (code, body) = http(p.admin(), "POST", &format!("/api/pools/p/backends/{}/undrain", one.addr), "").await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(state(&get_json(&p, "/api/pools").await, 0).as_deref(), Some("up"));
        let mut reached = Vec::new();
        for _ in 0..4 {
            reached.push(connect_to(&p).await);
        }
        assert!(
            reached.iter().any(|(_, who)| who == "one"),
            "undrained backend gets connections again"
        );
    })
    .await
}

#[tokio::test]
async fn unknown_paths_methods_and_garbage_get_4xx_and_admin_keeps_serving() {
    bounded(async {
        let b = backend("b1").await;
        let p = Proxy::start(&config("round_robin", &[b.addr], ADMIN));
        let a = p.admin();
        let drain = format!("/api/pools/p/backends/{}/drain", b.addr);
        assert_eq!(http(a, "POST", "/api/pools/nope/backends/127.0.0.1%3A1/drain", "").await.0, 404);
        assert_eq!(http(a, "POST", "/api/pools/p/backends/127.0.0.1%3A1/drain", "").await.0, 404);
        assert_eq!(http(a, "POST", "/api/pools/p/backends/bad%zz/drain", "").await.0, 400);
        assert_eq!(http_get(a, "/nope").await.0, 404);
        assert_eq!(http_get(a, "/api/pools/p/backends").await.0, 404);
        assert_eq!(http(a, "DELETE", "/healthz", "").await.0, 405);

        let req = format!("GET {drain} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        let resp = raw_exchange(a, req.as_bytes()).await;
        assert_eq!(status(&resp), 405, "{resp}");
        assert!(resp.to_ascii_lowercase().contains("\r\nallow: post\r\n"), "{resp}");

        // a page of another origin cannot drive the API
        let req =
            format!("POST {drain} HTTP/1.1\r\nHost: {a}\r\nOrigin: http://evil.example\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        assert_eq!(status(&raw_exchange(a, req.as_bytes()).await), 403);
        assert_eq!(get_json(&p, "/api/pools").await["pools"][0]["backends"][0]["state"], "up");

        for garbage in [
            &b"\x16\x03\x01\x02\x00garbage\r\n\r\n"[..],
            b"GET\r\n\r\n",
            b"GET / HTTP/9.9 extra\r\n\r\n",
            b"NOT HTTP AT ALL\r\n\r\n",
        ] {
            let resp = raw_exchange(a, garbage).await;
            assert!((400..500).contains(&status(&resp)), "{garbage:?} got {resp:?}");
        }
        let big = "x".repeat(100 * 1024);
        assert_eq!(http(a, "POST", "/api/reload", &big).await.0, 413);
        let huge_head = format!("GET /healthz HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n", "y".repeat(20 * 1024));
        let resp = raw_exchange(a, huge_head.as_bytes()).await;
        assert!((400..500).contains(&status(&resp)), "{:?}", &resp[..resp.len().min(300)]);

        // no config file behind this proxy: reload explains why it cannot
        let (code, body) = http(a, "POST", "/api/reload", "").await;
        assert_eq!(code, 422, "{body}");
        assert!(body.contains("no config file"), "{body}");
        assert_eq!(http_get(a, "/healthz").await, (200, "ok\n".to_string()));
        still_serves(&p.url("/")).await;
    })
    .await
}

#[tokio::test]
async fn reload_through_the_api_applies_or_reports_errors() {
    bounded(async {
        let (b1, b2) = (backend("b1").await, backend("b2").await);
        let dir = tempfile::tempdir().unwrap();
        let (p, path) = Proxy::start_file(dir.path(), &config("round_robin", &[b1.addr], ADMIN));
        let backends = |v: &Value| v["pools"][0]["backends"].as_array().map(|a| a.len()).unwrap_or(0);
        assert_eq!(backends(&get_json(&p, "/api/pools").await), 1);

        // the admin bind stays as it is: a reload does not move the admin listener
        std::fs::write(&path, config("round_robin", &[b1.addr, b2.addr], ADMIN)).unwrap();
        assert_eq!(http(p.admin(), "POST", "/api/reload", "").await, (200, "ok\n".to_string()));
        assert_eq!(backends(&get_json(&p, "/api/pools").await), 2);
        assert_eq!(get_json(&p, "/api/status").await["last_reload"]["ok"], true);
        // the added backend takes traffic at once (round robin over both)
        let mut seen = std::collections::HashSet::new();
        for _ in 0..4 {
            let mut ws = connect(&p.url("/")).await;
            seen.insert(ask(&mut ws, "whoami").await);
        }
        assert!(seen.contains("b2"), "the added backend gets traffic: {seen:?}");

        std::fs::write(&path, config("no_such_algorithm", &[b1.addr], ADMIN)).unwrap();
        let (code, body) = http(p.admin(), "POST", "/api/reload", "").await;
        assert_eq!(code, 422, "{body}");
        assert!(body.contains("no_such_algorithm"), "{body}");
        assert_eq!(backends(&get_json(&p, "/api/pools").await), 2, "a rejected reload changes nothing");
        let status = get_json(&p, "/api/status").await;
        assert_eq!(status["last_reload"]["ok"], false, "{status}");
        assert!(
            status["last_reload"]["errors"][0]
                .as_str()
                .is_some_and(|e| e.contains("no_such_algorithm")),
            "{status}"
        );
        let (_, metrics) = http_get(p.admin(), "/metrics").await;
        assert!(series(&metrics, "switchyard_config_reloads_total", &[("result", "error")]) >= 1.0);
    })
    .await
}

#[tokio::test]
async fn with_a_token_every_admin_call_but_healthz_needs_it() {
    bounded(async {
        let b = backend("b1").await;
        let token = "admin-test-token-0123456789";
        let extra = format!("admin:\n  bind: \"127.0.0.1:0\"\n  token: \"{token}\"\n");
        let p = Proxy::start(&config("round_robin", &[b.addr], &extra));
        let a = p.admin();
        let auth = format!("Authorization: Bearer {token}\r\n");
        let wrong = "Authorization: Bearer admin-test-token-012345678X\r\n";
        assert_eq!(http_get(a, "/healthz").await, (200, "ok\n".to_string()), "liveness needs no token");
        for path in ["/api/pools", "/api/status", "/metrics"] {
            assert_eq!(http_get(a, path).await.0, 401, "{path} without a token");
            assert_eq!(http_with(a, "GET", path, wrong, "").await.0, 401, "{path} with a wrong token");
            assert_eq!(http_with(a, "GET", path, &auth, "").await.0, 200, "{path} with the token");
            // RFC 9110 §11.1: the scheme name is case-insensitive (issue 26).
            for scheme in ["bearer", "BEARER", "bEaReR"] {
                let other = format!("Authorization: {scheme} {token}\r\n");
                assert_eq!(http_with(a, "GET", path, &other, "").await.0, 200, "{path} with `{scheme}`");
            }
            let basic = format!("Authorization: Basic {token}\r\n");
            assert_eq!(http_with(a, "GET", path, &basic, "").await.0, 401, "{path} with another scheme");
        }
        let raw = raw_exchange(
            a,
            format!("GET /api/pools HTTP/1.1\r\nHost: {a}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(
            raw.to_ascii_lowercase().contains("www-authenticate: bearer realm=\"switchyard\""),
            "{raw}"
        );
        // A drain without the token changes nothing; with it, it drains.
        let drain = format!("/api/pools/p/backends/{}/drain", b.addr);
        assert_eq!(http(a, "POST", &drain, "").await.0, 401);
        assert_eq!(p.backend(0).state(), switchyard::backend::BackendState::Up);
        assert_eq!(http_with(a, "POST", &drain, &auth, "").await.0, 200);
        assert_eq!(p.backend(0).state(), switchyard::backend::BackendState::Draining);
        assert_eq!(http(a, "POST", "/api/reload", "").await.0, 401);
        // The dashboard page itself holds no data.
        assert_eq!(http_get(a, "/").await.0, 200);
    })
    .await
}

#[tokio::test]
async fn public_metrics_are_readable_without_the_token() {
    bounded(async {
        let b = backend("b1").await;
        let extra = "admin:\n  bind: \"127.0.0.1:0\"\n  token: \"admin-test-token-0123456789\"\n  public_metrics: true\n";
        let p = Proxy::start(&config("round_robin", &[b.addr], extra));
        let (status, body) = http_get(p.admin(), "/metrics").await;
        assert_eq!(status, 200);
        assert!(body.contains("switchyard_backend_up"), "{body}");
        assert_eq!(http_get(p.admin(), "/api/pools").await.0, 401);
    })
    .await
}

/// The only test of this binary that sheds by a per-client limit: the count is exact.
#[tokio::test]
async fn per_client_sheds_are_counted_exactly_by_reason() {
    bounded(async {
        let b = backend("b").await;
        let p = Proxy::start(&config(
            "round_robin",
            &[b.addr],
            &format!("{ADMIN}limits:\n  max_connections_per_client: 1\n"),
        ));
        let (_, before) = http_get(p.admin(), "/metrics").await;
        let mut held = connect_via("127.0.0.1", &p.url("/"), b"", &[]).await;
        assert_eq!(ask(&mut held, "x").await, "x");
        for _ in 0..3 {
            let mut ws = connect_via("127.0.0.1", &p.url("/"), b"", &[]).await;
            assert_eq!(expect_close(&mut ws).await.0, 1013);
        }
        // Plain HTTP from the same client is shed by the same limit.
        let (code, _) = http_get(p.addr, "/").await;
        assert_eq!(code, 503);
        let (_, after) = http_get(p.admin(), "/metrics").await;
        let per_client = |m: &str| series(m, "switchyard_shed_total", &[("reason", "per_client")]);
        assert_eq!(per_client(&after) - per_client(&before), 4.0, "{after}");
        assert!(after.contains("switchyard_shed_total{reason=\"client_table_full\"} 0"), "{after}");
    })
    .await
}

#[tokio::test]
async fn every_close_is_counted_by_code_and_origin() {
    bounded(async {
        // Closes with RFC 6455 codes use kept counter handles, others a key made each time:
        // both must count every close (1003 and 4123 are used by no other test here).
        let b = backend("b1").await;
        let p = Proxy::start(&config("round_robin", &[b.addr], ADMIN));
        let series = |code: u16| format!("switchyard_close_codes_total{{code=\"{code}\",origin=\"client\"}}");
        let (_, before) = http_get(p.admin(), "/metrics").await;
        for code in [1003u16, 1003, 1003, 4123, 4123] {
            let mut ws = connect(&p.url("/")).await;
            assert_eq!(ask(&mut ws, "x").await, "x");
            let frame = tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: code.into(),
                reason: "".into(),
            };
            futures_util::SinkExt::send(&mut ws, tokio_tungstenite::tungstenite::Message::Close(Some(frame)))
                .await
                .unwrap();
            assert_eq!(expect_close(&mut ws).await.0, code, "the close reply echoes the code");
        }
        let counted = |text: &str| (metric(text, &series(1003)), metric(text, &series(4123)));
        let want = (counted(&before).0 + 3.0, counted(&before).1 + 2.0);
        // The last close is counted when its relay ends, a moment after the reply.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut after = http_get(p.admin(), "/metrics").await.1;
        while counted(&after) != want && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            after = http_get(p.admin(), "/metrics").await.1;
        }
        let done = (counted(&after) == want).then_some(());
        assert!(
            done.is_some(),
            "1003: {:?}, 4123: {:?} before; after:\n{after}",
            counted(&before).0,
            counted(&before).1
        );
    })
    .await
}
