//! Overload protection and the life of a long connection: connection caps, the rate limit,
//! idle timeout, idle eviction, keepalive pings, graceful shutdown and rebalancing.

mod common;
use common::*;

use std::time::{Duration, Instant};
use switchyard::backend::BackendState;
use switchyard::ws::frame::Opcode;
use tokio::io::AsyncWriteExt;

fn retry_secs(reason: &str) -> f64 {
    reason
        .strip_prefix("try again in ")
        .and_then(|r| r.strip_suffix('s'))
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no retry hint in {reason:?}"))
}

#[tokio::test]
async fn over_max_connections_extra_clients_get_1013_and_held_ones_keep_echoing() {
    bounded(async {
        let b = backend("b").await;
        let p = Proxy::start(&config(
            "round_robin",
            &[b.addr],
            "limits:\n  max_connections: 3\nshedding:\n  retry_hint: 5s\n",
        ));
        let mut held = Vec::new();
        for _ in 0..3 {
            let mut ws = connect(&p.url("/")).await;
            assert_eq!(ask(&mut ws, "x").await, "x");
            held.push(ws);
        }
        let mut hints = Vec::new();
        for _ in 0..5 {
            let mut ws = connect(&p.url("/")).await;
            let (code, reason) = expect_close(&mut ws).await;
            assert_eq!(code, 1013);
            hints.push(retry_secs(&reason));
        }
        assert!(hints.iter().all(|h| (3.4..=6.6).contains(h)), "{hints:?}");
        assert!(hints.windows(2).any(|w| w[0] != w[1]), "hints are jittered: {hints:?}");
        for ws in &mut held {
            assert_eq!(ask(ws, "still").await, "still");
        }
        // a slot frees up: admitted again
        let admission = p.server.shared.admission.clone();
        let admitted = admission.active();
        held.pop().unwrap().close(None).await.unwrap();
        assert!(
            eventually(T, || admission.active() < admitted).await.is_some(),
            "the slot came back"
        );
        still_serves(&p.url("/")).await;
        // the backend never saw the shed ones
        assert_eq!(b.accepted.load(std::sync::atomic::Ordering::SeqCst), 4);
    })
    .await
}

#[tokio::test]
async fn the_rate_limit_sheds_the_excess_of_a_burst_and_admits_again_after_a_second() {
    bounded(async {
        let b = backend("b").await;
        let p = Proxy::start(&config("round_robin", &[b.addr], "limits:\n  max_connections_per_second: 5\n"));
        let (mut ok, mut shed) = (0, 0);
        let mut held = Vec::new();
        for _ in 0..12 {
            let mut ws = connect(&p.url("/")).await;
            ws.send_text("x").await;
            match next_text_or_close(&mut ws).await {
                Ok(_) => {
                    ok += 1;
                    held.push(ws);
                }
                Err(code) => {
                    assert_eq!(code, 1013);
                    shed += 1;
                }
            }
        }
        assert!((5..=6).contains(&ok), "burst of one second's worth admitted: ok={ok} shed={shed}");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        still_serves(&p.url("/")).await;
    })
    .await
}

/// The clients of a backend that fails are not new load: their tokens of the rate limit come
/// back, so they reconnect at once instead of being paced like a storm. A normal close gives
/// nothing back.
#[tokio::test]
async fn clients_of_a_failed_backend_get_their_rate_tokens_back() {
    bounded(async {
        let mut a = backend("a").await;
        let mut b = backend("b").await;
        let p = Proxy::start(&config(
            "round_robin",
            &[a.addr, b.addr],
            "limits:\n  max_connections_per_second: 1\n",
        ));
        let echo = |mut ws: Ws| async move {
            ws.send_text("x").await;
            (next_text_or_close(&mut ws).await, ws)
        };
        // the one token of the second is spent
        let (r, mut first) = echo(connect(&p.url("/")).await).await;
        assert_eq!(r, Ok("x".to_string()));
        let (r, _) = echo(connect(&p.url("/")).await).await;
        assert_eq!(r, Err(1013), "the rate is spent");
        // its backend crashes: 1011 from the balancer, and its client comes straight back
        if a.accepted.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            a.kill().await;
        } else {
            b.kill().await;
        }
        let admission = p.server.shared.admission.clone();
        let refunded = admission.refunded();
        assert_eq!(expect_close(&mut first).await.0, 1011);
        drop(first);
        // the token comes back when the balancer has finished that connection (its close
        // handshake), a few milliseconds after the client saw 1011: seen in the admission's
        // own count, so no clock has to tell a refund from the bucket's refill
        assert!(
            eventually(T, || admission.refunded() == refunded + 1).await.is_some(),
            "the failed connection's token was given back"
        );
        let mut back = None;
        for _ in 0..25 {
            if let (Ok(_), ws) = echo(connect(&p.url("/")).await).await {
                back = Some(ws);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(back.is_some(), "reconnected with the token given back");
        let (r, _) = echo(connect(&p.url("/")).await).await;
        assert_eq!(r, Err(1013), "one token per failed connection, no more");
        // a client that closes normally gives nothing back
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let (r, mut normal) = echo(connect(&p.url("/")).await).await;
        assert_eq!(r, Ok("x".to_string()));
        use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame};
        let bye = CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        };
        normal.close(Some(bye)).await.unwrap();
        assert_eq!(expect_close(&mut normal).await.0, 1000);
        let (r, _) = echo(connect(&p.url("/")).await).await;
        assert_eq!(r, Err(1013), "a normal close is no refund");
        assert_eq!(admission.refunded(), refunded + 1, "nothing given back for a normal close");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        still_serves(&p.url("/")).await;
    })
    .await
}

#[tokio::test]
async fn idle_connections_get_1001_while_active_ones_survive() {
    bounded(async {
        let b = backend("b").await;
        let p = Proxy::start(&config("round_robin", &[b.addr], "limits:\n  idle_timeout: 800ms\n"));
        let mut idle = connect(&p.url("/")).await;
        let mut active = connect(&p.url("/")).await;
        let t0 = Instant::now();
        let idle_task = tokio::spawn(async move { (expect_close(&mut idle).await, t0.elapsed()) });
        while t0.elapsed() < Duration::from_millis(2000) {
            assert_eq!(ask(&mut active, "tick").await, "tick");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let ((code, reason), at) = idle_task.await.unwrap();
        assert_eq!((code, reason.as_str()), (1001, "idle timeout"));
        assert!(at >= Duration::from_millis(700) && at < Duration::from_millis(1800), "{at:?}");
        assert_eq!(ask(&mut active, "alive").await, "alive");
    })
    .await
}

#[tokio::test]
async fn at_the_ceiling_evict_idle_closes_the_longest_idle_to_admit_a_new_one() {
    bounded(async {
        let b = backend("b").await;
        let p = Proxy::start(&config(
            "round_robin",
            &[b.addr],
            "limits:\n  max_connections: 2\nshedding:\n  evict_idle: true\n",
        ));
        let mut oldest = connect(&p.url("/")).await;
        assert_eq!(ask(&mut oldest, "a").await, "a");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut recent = connect(&p.url("/")).await;
        assert_eq!(ask(&mut recent, "b").await, "b");
        let mut newcomer = connect(&p.url("/")).await;
        assert_eq!(ask(&mut newcomer, "c").await, "c");
        assert_eq!(expect_close(&mut oldest).await.0, 1001);
        assert_eq!(ask(&mut recent, "d").await, "d");
    })
    .await
}

#[tokio::test]
async fn a_client_that_ignores_pings_is_closed_after_interval_plus_timeout() {
    bounded(async {
        let b = backend("b").await;
        let p = Proxy::start(&config(
            "round_robin",
            &[b.addr],
            "limits:\n  ping_interval: 400ms\n  ping_timeout: 400ms\n",
        ));
        // a raw client that reads but never answers
        let (mut s, mut pending) = raw_ws(p.addr, "/").await;
        let t0 = Instant::now();
        let mut pings = 0;
        let code = loop {
            let f = tokio::time::timeout(T, switchyard::ws::peer::read_frame(&mut s, &mut pending))
                .await
                .unwrap()
                .unwrap();
            match f.opcode {
                Opcode::Ping => pings += 1,
                Opcode::Close => break u16::from_be_bytes([f.payload[0], f.payload[1]]),
                _ => {}
            }
        };
        let at = t0.elapsed();
        assert_eq!(code, 1001);
        assert_eq!(pings, 1);
        assert!(at >= Duration::from_millis(750) && at < Duration::from_millis(2500), "{at:?}");
        // a client that answers (tungstenite pongs automatically while reading) stays
        let mut ws = connect(&p.url("/")).await;
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_millis(1800) {
            assert_eq!(ask(&mut ws, "x").await, "x");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        // a raw client that answers only with pongs (no data) also stays
        let (mut s, mut pending) = raw_ws(p.addr, "/").await;
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_millis(1800) {
            let f = tokio::time::timeout(T, switchyard::ws::peer::read_frame(&mut s, &mut pending))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(f.opcode, Opcode::Ping, "no close while answering");
            switchyard::ws::peer::write_frame(&mut s, true, Opcode::Pong, &f.payload, true)
                .await
                .unwrap();
        }
        s.shutdown().await.unwrap();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_closes_everything_with_1001_spread_over_drain_timeout() {
    bounded(async {
        let b = backend("b").await;
        let p = Proxy::start(&config("round_robin", &[b.addr], "limits:\n  drain_timeout: 1s\n"));
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let mut ws = connect(&p.url("/")).await;
            assert_eq!(ask(&mut ws, "x").await, "x");
            tasks.push(tokio::spawn(async move {
                let c = expect_close(&mut ws).await;
                (c, Instant::now())
            }));
        }
        let t0 = Instant::now();
        let Proxy { server, .. } = p;
        let stop = tokio::task::spawn_blocking(move || server.shutdown(None));
        let mut times = Vec::new();
        for t in tasks {
            let ((code, _), at) = t.await.unwrap();
            assert_eq!(code, 1001);
            times.push(at.duration_since(t0));
        }
        times.sort();
        assert!(*times.last().unwrap() < Duration::from_millis(1500), "{times:?}");
        assert!(
            times[9] - times[0] > Duration::from_millis(300),
            "spread, not all at once: {times:?}"
        );
        tokio::time::timeout(Duration::from_secs(10), stop).await.unwrap().unwrap();
    })
    .await
}

#[tokio::test]
async fn rebalance_moves_connections_onto_a_backend_that_comes_up_within_the_rate() {
    bounded(async {
        let a = backend("a").await;
        let b = backend("b").await;
        let p = Proxy::start(&config(
            "least_connections",
            &[a.addr, b.addr],
            "    rebalance:\n      enabled: true\n      max_moves_per_second: 4\n",
        ));
        let pool = p.server.shared.runtime.load().pools["p"].clone();
        pool.backends[1].set_state(BackendState::Down, switchyard::clock::now_ms());
        let mut held = Vec::new();
        for _ in 0..12 {
            let mut ws = connect(&p.url("/")).await;
            assert_eq!(ask(&mut ws, "whoami").await, "a");
            held.push(ws);
        }
        let t0 = Instant::now();
        pool.backends[1].set_state(BackendState::Up, switchyard::clock::now_ms());
        // Clients that get 1012 reconnect at once, as real ones would.
        let (moved, stayed) = reconnect_after_close(held, p.url("/"), Duration::from_secs(4), Duration::ZERO).await;
        assert!(moved.iter().all(|(c, ..)| *c == 1012), "every move is a 1012");
        assert_eq!(moved.len(), 6, "exactly the excess moves");
        assert!(
            moved.iter().all(|(_, _, who, _)| who == "b"),
            "reconnecting clients land on the new backend"
        );
        // 4 per second: six moves take more than a second
        let last = moved.iter().map(|(_, t, ..)| t.duration_since(t0)).max().unwrap();
        assert!(last > Duration::from_millis(1000), "rate-limited: {last:?}");
        assert_eq!(stayed.len(), 6);
        assert_eq!((pool.backends[0].active(), pool.backends[1].active()), (6, 6));
        drop(stayed);
    })
    .await
}

/// Helpers local to these tests.
trait SendText {
    async fn send_text(&mut self, t: &str);
}

impl SendText for Ws {
    async fn send_text(&mut self, t: &str) {
        use futures_util::SinkExt;
        let _ = self.send(tokio_tungstenite::tungstenite::Message::text(t)).await;
    }
}

/// The next text, or the close code.
async fn next_text_or_close(ws: &mut Ws) -> Result<String, u16> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match tokio::time::timeout(T, ws.next()).await.expect("in time") {
            Some(Ok(Message::Text(t))) => return Ok(t.to_string()),
            Some(Ok(Message::Close(Some(f)))) => return Err(u16::from(f.code)),
            Some(Ok(_)) => continue,
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn past_the_hard_ceiling_connections_get_503_with_retry_after_before_any_work() {
    bounded(async {
        use tokio::io::AsyncReadExt;
        let b = backend("b").await;
        let p = Proxy::start(&config(
            "round_robin",
            &[b.addr],
            "limits:\n  max_connections: 1\n  handshake_timeout: 3s\n",
        ));
        let mut held = connect(&p.url("/")).await;
        assert_eq!(ask(&mut held, "x").await, "x");
        // Silent TCP connections stay pending (they never send a request head).
        let mut silent = Vec::new();
        let mut answer = String::new();
        for _ in 0..4 {
            let mut s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
            let mut buf = vec![0u8; 512];
            if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await {
                answer = String::from_utf8_lossy(&buf[..n]).to_string();
                break;
            }
            silent.push(s);
        }
        assert_eq!(status(&answer), 503, "{answer:?}");
        assert!(answer.contains("Retry-After: "), "{answer}");
        // 1 admitted + 1 silent pending + this one = 3 > 2 × max_connections
        assert_eq!(silent.len(), 1, "the second silent connection hits the ceiling");
        drop(silent);
        held.close(None).await.unwrap();
        let _ = expect_close(&mut held).await;
        drop(held);
        // Every slot given back (the admitted one and the pending ones), then served again.
        let a = p.server.shared.admission.clone();
        assert!(
            eventually(T, || a.active() == 0 && a.pending() == 0).await.is_some(),
            "slots not given back: {} admitted, {} pending",
            a.active(),
            a.pending()
        );
        still_serves(&p.url("/")).await;
    })
    .await
}

#[tokio::test]
async fn a_full_backend_is_skipped_and_all_full_is_1013_counted_as_backend_full() {
    bounded(async {
        let a = backend("a").await;
        let b = backend("b").await;
        // Pool p: `a` takes one connection, `b` two; round robin would alternate.
        let p = Proxy::start(&format!(
            "listeners:\n  - name: l\n    bind: \"127.0.0.1:0\"\n    routes:\n      - match: {{ path_prefix: /full }}\n        pool: p\n      - pool: q\npools:\n  p:\n    algorithm: round_robin\n    backends:\n      - address: \"{}\"\n        max_connections: 1\n      - address: \"{}\"\n        max_connections: 2\n  q:\n    backends:\n      - address: \"{}\"\n",
            a.addr, b.addr, a.addr
        ));
        let count = || {
            switchyard::metrics::render()
                .lines()
                .find(|l| l.starts_with("switchyard_shed_total{reason=\"backend_full\"}"))
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // The first three connections fill both backends; whichever order round robin
        // offers them, a full `a` is skipped for `b`.
        let mut held = Vec::new();
        let mut names = Vec::new();
        for _ in 0..3 {
            let mut ws = connect(&p.url("/full")).await;
            names.push(ask(&mut ws, "whoami").await);
            held.push(ws);
        }
        names.sort();
        assert_eq!(names, ["a", "b", "b"], "a full backend is skipped, not overshot");
        let before = count();
        let mut fourth = connect(&p.url("/full")).await;
        assert_eq!(expect_close(&mut fourth).await.0, 1013);
        assert!(count() >= before + 1.0, "counted as backend_full");
        still_serves(&p.url("/other")).await;
    })
    .await
}

#[tokio::test]
async fn the_proxys_own_pongs_never_reach_the_backend_but_the_clients_pings_do() {
    bounded(async {
        use switchyard::ws::peer::{read_frame, write_frame};
        // A raw backend that records the opcode and payload of every frame it receives.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let baddr = l.local_addr().unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(Opcode, Vec<u8>)>::new()));
        let rec = seen.clone();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let (_, mut pending) = accept_upgrade_raw(&mut s, "").await;
            while let Ok(f) = read_frame(&mut s, &mut pending).await {
                rec.lock().unwrap().push((f.opcode, f.payload));
            }
        });
        let p = Proxy::start(&config(
            "round_robin",
            &[baddr],
            "limits:\n  ping_interval: 300ms\n  ping_timeout: 2s\n",
        ));
        let (mut s, mut pending) = raw_ws(p.addr, "/").await;
        // Answer the proxy's ping, then send a ping and a pong of our own.
        let f = tokio::time::timeout(T, read_frame(&mut s, &mut pending)).await.unwrap().unwrap();
        assert_eq!(f.opcode, Opcode::Ping);
        write_frame(&mut s, true, Opcode::Pong, &f.payload, true).await.unwrap();
        write_frame(&mut s, true, Opcode::Ping, b"client ping", true).await.unwrap();
        write_frame(&mut s, true, Opcode::Pong, b"client pong", true).await.unwrap();
        write_frame(&mut s, true, Opcode::Text, b"marker", true).await.unwrap();
        let t0 = Instant::now();
        while !seen.lock().unwrap().iter().any(|(_, p)| p == b"marker") && t0.elapsed() < T {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let seen = seen.lock().unwrap().clone();
        assert!(
            !seen.iter().any(|(op, p)| *op == Opcode::Pong && *p == f.payload),
            "the proxy's pong was forwarded: {seen:?}"
        );
        assert!(seen.iter().any(|(op, p)| *op == Opcode::Ping && p == b"client ping"), "{seen:?}");
        assert!(seen.iter().any(|(op, p)| *op == Opcode::Pong && p == b"client pong"), "{seen:?}");
    })
    .await
}

/// Clients that reconnect after a close, as real ones do: each waits up to `wait` for its
/// close, then (after `delay`) connects again and asks who serves it. Returns the moved
/// ones (close code, when it came, who serves it now, the new connection) and the
/// connections never closed (kept open until the counts are checked).
async fn reconnect_after_close(held: Vec<Ws>, url: String, wait: Duration, delay: Duration) -> (Vec<(u16, Instant, String, Ws)>, Vec<Ws>) {
    let tasks: Vec<_> = held
        .into_iter()
        .map(|mut ws| {
            let url = url.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(wait, expect_close(&mut ws)).await {
                    Ok((code, _)) => {
                        let at = Instant::now();
                        drop(ws);
                        tokio::time::sleep(delay).await;
                        let mut again = connect(&url).await;
                        let who = ask(&mut again, "whoami").await;
                        Ok((code, at, who, again))
                    }
                    Err(_) => Err(ws),
                }
            })
        })
        .collect();
    let (mut moved, mut stayed) = (Vec::new(), Vec::new());
    for t in tasks {
        match t.await.unwrap() {
            Ok(m) => moved.push(m),
            Err(ws) => stayed.push(ws),
        }
    }
    (moved, stayed)
}

/// 30 connections on two of three backends, the third comes up: the excess is 10.
/// The pool is named `name` (metrics are process-wide, and tests run side by side).
async fn rebalance_episode(window: &str, name: &str) -> (Proxy, std::sync::Arc<switchyard::runtime::Pool>, Vec<Ws>, [Backend; 3]) {
    let bs = [backend("a").await, backend("b").await, backend("c").await];
    let yaml = config(
        "least_connections",
        &[bs[0].addr, bs[1].addr, bs[2].addr],
        &format!("    rebalance:\n      enabled: true\n      max_moves_per_second: 5\n      reconnect_window: {window}\nadmin:\n  bind: \"127.0.0.1:0\"\n"),
    )
    .replace("      - pool: p\n", &format!("      - pool: {name}\n"))
    .replace("\n  p:\n", &format!("\n  {name}:\n"));
    let p = Proxy::start(&yaml);
    let pool = p.server.shared.runtime.load().pools[name].clone();
    pool.backends[2].set_state(BackendState::Down, switchyard::clock::now_ms());
    let mut held = Vec::new();
    for _ in 0..30 {
        held.push(connect(&p.url("/")).await);
    }
    assert_eq!((pool.backends[0].active(), pool.backends[1].active()), (15, 15));
    pool.backends[2].set_state(BackendState::Up, switchyard::clock::now_ms());
    (p, pool, held, bs)
}

/// Waits `for_`: returns the close codes received by then, and the connections still open
/// (the closed ones are dropped, as their clients would go).
async fn closes_within(held: Vec<Ws>, for_: Duration) -> (Vec<u16>, Vec<Ws>) {
    let deadline = tokio::time::Instant::now() + for_;
    let (mut codes, mut open) = (Vec::new(), Vec::new());
    for mut ws in held {
        match tokio::time::timeout_at(deadline, expect_close(&mut ws)).await {
            Ok((code, _)) => codes.push(code),
            Err(_) => open.push(ws),
        }
    }
    (codes, open)
}

fn unreturned(pool: &str, body: &str) -> u64 {
    let prefix = format!("switchyard_rebalance_unreturned_total{{pool=\"{pool}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_closes_only_the_excess_when_clients_never_come_back() {
    bounded(async {
        let (p, pool, held, _bs) = rebalance_episode("2s", "never").await;
        // 5 moves per second: the excess of 10 takes 2 s; watch for 5 s.
        let (codes, _open) = closes_within(held, Duration::from_secs(5)).await;
        assert_eq!(codes.len(), 10, "exactly the excess is moved, nobody chased: {codes:?}");
        assert!(codes.iter().all(|c| *c == 1012), "{codes:?}");
        let counts = || (pool.backends[0].active(), pool.backends[1].active(), pool.backends[2].active());
        let settled = eventually(T, || {
            let (a, b, c) = counts();
            a + b == 20 && c == 0 && a.abs_diff(b) <= 2
        });
        assert!(settled.await.is_some(), "{:?}", counts());
        // The windows have ended with nobody back: all ten counted as unreturned.
        let m = http_get(p.admin(), "/metrics").await.1;
        assert_eq!(unreturned("never", &m), 10, "{m}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_converges_without_overshoot_when_clients_come_back_after_3s() {
    bounded(async {
        let (p, pool, held, _bs) = rebalance_episode("10s", "late").await;
        let url = p.url("/");
        // Each closed client comes back 3 s later, as a backing-off real client would.
        let (moved, stayed) = reconnect_after_close(held, url, Duration::from_secs(6), Duration::from_secs(3)).await;
        assert!(
            moved.iter().all(|(_, _, who, _)| who == "c"),
            "a returning client lands on the new backend"
        );
        let moved_n = moved.len() as u64;
        // The excess was 10; within tolerance (10 %) the episode may stop a little short.
        assert!((8..=10).contains(&moved_n), "no overshoot: {moved_n}");
        let (a, b, c) = (pool.backends[0].active(), pool.backends[1].active(), pool.backends[2].active());
        assert_eq!((a + b + c, c), (30, moved_n), "everyone back, on the new backend");
        assert!(a.max(b) <= 11, "in balance within tolerance: {:?}", (a, b, c));
        let m = http_get(p.admin(), "/metrics").await.1;
        assert_eq!(unreturned("late", &m), 0, "everyone came back (the window has not ended): {m}");
        drop((moved, stayed));
    })
    .await
}
