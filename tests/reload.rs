//! Hot reload: established connections survive, removed backends drain with 1012, added
//! ones get traffic (API, SIGHUP, --watch), broken configs change nothing, listeners follow.

mod common;
use common::*;

use std::time::{Duration, Instant};

fn two(a: std::net::SocketAddr, b: Option<std::net::SocketAddr>, extra: &str) -> String {
    let mut v = vec![a];
    v.extend(b);
    config("round_robin", &v, extra)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_connections_keep_echoing_through_twenty_reloads() {
    bounded(async {
        let a = backend("a").await;
        let b = backend("b").await;
        let dir = tempfile::tempdir().unwrap();
        let (p, path) = Proxy::start_file(dir.path(), &two(a.addr, Some(b.addr), "limits:\n  max_connections_per_second: 0\n"));
        let mut conns = Vec::new();
        for _ in 0..1000 {
            conns.push(connect(&p.url("/")).await);
        }
        for i in 0..20 {
            // weights, limits and algorithm change; both backends stay
            let algo = if i % 2 == 0 { "least_connections" } else { "round_robin" };
            let yaml = format!(
                "listeners:\n  - name: l\n    bind: \"{}\"\n    routes:\n      - pool: p\npools:\n  p:\n    algorithm: {algo}\n    backends:\n      - address: \"{}\"\n        weight: {}\n      - address: \"{}\"\nlimits:\n  max_connections_per_second: 0\n  idle_timeout: {}s\n",
                p.addr, a.addr, 1 + i % 3, b.addr, 600 + i
            );
            std::fs::write(&path, yaml).unwrap();
            switchyard::reload::reload(&p.server.shared).expect("reload ok");
            for ws in conns.iter_mut().step_by(50) {
                assert_eq!(ask(ws, "x").await, "x");
            }
        }
        for (i, ws) in conns.iter_mut().enumerate() {
            assert_eq!(ask(ws, "still").await, "still", "connection {i} survived");
        }
        let m = switchyard::metrics::render();
        // The recorder is process-wide: other tests in this binary reload too.
        let ok: u64 = m
            .lines()
            .find_map(|l| l.strip_prefix("switchyard_config_reloads_total{result=\"ok\"} "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        assert!(ok >= 20, "{m}");
    })
    .await
}

#[tokio::test]
async fn removing_a_backend_drains_it_with_1012_and_new_connections_go_elsewhere() {
    bounded(async {
        let a = backend("a").await;
        let b = backend("b").await;
        let dir = tempfile::tempdir().unwrap();
        let (p, path) = Proxy::start_file(dir.path(), &two(a.addr, Some(b.addr), "limits:\n  drain_timeout: 1s\n"));
        let mut on_b = Vec::new();
        let mut on_a = Vec::new();
        for _ in 0..6 {
            let mut ws = connect(&p.url("/")).await;
            if ask(&mut ws, "whoami").await == "b" {
                on_b.push(ws)
            } else {
                on_a.push(ws)
            }
        }
        assert_eq!(on_b.len(), 3);
        std::fs::write(
            &path,
            two(a.addr, None, "limits:\n  drain_timeout: 1s\n").replace("bind: \"127.0.0.1:0\"", &format!("bind: \"{}\"", p.addr)),
        )
        .unwrap();
        let t0 = Instant::now();
        switchyard::reload::reload(&p.server.shared).expect("reload ok");
        for ws in &mut on_b {
            assert_eq!(expect_close(ws).await.0, 1012);
        }
        assert!(t0.elapsed() < Duration::from_millis(2500), "{:?}", t0.elapsed());
        for ws in &mut on_a {
            assert_eq!(ask(ws, "whoami").await, "a", "connections on the kept backend are untouched");
        }
        for _ in 0..4 {
            let mut ws = connect(&p.url("/")).await;
            assert_eq!(ask(&mut ws, "whoami").await, "a");
        }
    })
    .await
}

#[tokio::test]
async fn a_broken_config_changes_nothing_and_counts_an_error() {
    bounded(async {
        let a = backend("a").await;
        let dir = tempfile::tempdir().unwrap();
        let (p, path) = Proxy::start_file(dir.path(), &two(a.addr, None, ""));
        let mut ws = connect(&p.url("/")).await;
        let before = count(&switchyard::metrics::render(), "switchyard_config_reloads_total{result=\"error\"}");
        std::fs::write(&path, "listeners: [\n  this is: not yaml").unwrap();
        let errs = switchyard::reload::reload(&p.server.shared).unwrap_err();
        assert!(errs[0].contains(":2:") || errs[0].contains(":1:"), "line and column: {errs:?}");
        std::fs::write(
            &path,
            two(a.addr, None, "").replace("algorithm: round_robin", "algorithm: round_robn"),
        )
        .unwrap();
        let errs = switchyard::reload::reload(&p.server.shared).unwrap_err();
        assert!(errs.iter().any(|e| e.contains("round_robin")), "hint: {errs:?}");
        let after = count(&switchyard::metrics::render(), "switchyard_config_reloads_total{result=\"error\"}");
        assert!(after >= before + 2.0, "{before} → {after}");
        assert_eq!(ask(&mut ws, "alive").await, "alive");
        still_serves(&p.url("/")).await;
    })
    .await
}

#[tokio::test]
async fn listeners_are_added_and_removed_and_a_bind_conflict_rejects_the_whole_reload() {
    bounded(async {
        let a = backend("a").await;
        let dir = tempfile::tempdir().unwrap();
        let (p, path) = Proxy::start_file(dir.path(), &listeners_yaml(&[("l", "127.0.0.1:0")], a.addr));
        let main = p.addr.to_string();
        std::fs::write(&path, listeners_yaml(&[("l", &main), ("second", "127.0.0.1:0")], a.addr)).unwrap();
        switchyard::reload::reload(&p.server.shared).expect("reload adds a listener");
        let second = p.server.shared.listener_addr("second").unwrap();
        let mut ws2 = connect(&format!("ws://{second}/")).await;
        assert_eq!(ask(&mut ws2, "whoami").await, "a");
        // a port already in use: the whole reload is refused, nothing changes
        let busy_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let busy = busy_listener.local_addr().unwrap().to_string();
        std::fs::write(
            &path,
            listeners_yaml(
                &[
                    ("l", &main),
                    ("second", &second.to_string()),
                    ("fourth", "127.0.0.1:0"),
                    ("third", &busy),
                ],
                a.addr,
            ),
        )
        .unwrap();
        let errs = switchyard::reload::reload(&p.server.shared).unwrap_err();
        assert!(errs[0].contains("cannot bind"), "{errs:?}");
        assert!(
            p.server.shared.listener_addr("fourth").is_none(),
            "nothing from the rejected reload is bound"
        );
        assert_eq!(ask(&mut ws2, "whoami").await, "a");
        // removing the second listener drains its connections and stops accepting there
        std::fs::write(&path, listeners_yaml(&[("l", &main)], a.addr)).unwrap();
        switchyard::reload::reload(&p.server.shared).expect("reload removes a listener");
        assert_eq!(expect_close(&mut ws2).await.0, 1001);
        // The reload closed the listener before it returned; connects are refused (bounded
        // wait, not a sleep).
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while tokio::net::TcpStream::connect(second).await.is_ok() {
            assert!(std::time::Instant::now() < deadline, "second listener still accepts");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        still_serves(&p.url("/")).await;
    })
    .await
}

/// A config with these (name, bind) listeners, all routed to one backend.
fn listeners_yaml(listeners: &[(&str, &str)], backend: std::net::SocketAddr) -> String {
    let mut y = String::from("listeners:\n");
    for (n, b) in listeners {
        y.push_str(&format!("  - name: {n}\n    bind: \"{b}\"\n    routes:\n      - pool: p\n"));
    }
    y.push_str(&format!(
        "pools:\n  p:\n    backends:\n      - address: \"{backend}\"\nlimits:\n  drain_timeout: 500ms\n"
    ));
    y
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_watch_add_a_backend_that_gets_traffic() {
    bounded(async {
        for mode in ["sighup", "watch"] {
            let a = backend("a").await;
            let b = backend("b").await;
            let dir = tempfile::tempdir().unwrap();
            let f = dir.path().join("c.yaml");
            std::fs::write(&f, two(a.addr, None, "")).unwrap();
            let args: Vec<&str> = if mode == "watch" {
                vec!["run", "-c", f.to_str().unwrap(), "--watch"]
            } else {
                vec!["run", "-c", f.to_str().unwrap()]
            };
            let mut proc = Proc::spawn(&args);
            let url = tokio::task::block_in_place(|| proc.line_after("listening l "));
            let addr = url.trim_start_matches("ws://").trim_end_matches('/').to_string();
            std::fs::write(&f, two(a.addr, Some(b.addr), "").replace("127.0.0.1:0", &addr)).unwrap();
            if mode == "sighup" {
                proc.signal(libc::SIGHUP);
            }
            let t0 = Instant::now();
            loop {
                let mut ws = connect(&url).await;
                if ask(&mut ws, "whoami").await == "b" {
                    break;
                }
                assert!(t0.elapsed() < Duration::from_secs(5), "{mode}: the added backend never got traffic");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    })
    .await
}

fn count(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_port_listener_survives_renames_and_removal_then_re_adding() {
    bounded(async {
        let a = backend("a").await;
        let dir = tempfile::tempdir().unwrap();
        let (p, path) = Proxy::start_file(dir.path(), &listeners_yaml(&[("main", "127.0.0.1:0")], a.addr));
        let main = p.addr.to_string();
        // A fixed port, found free by the OS.
        let fixed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string();
        let (mut ok, mut refused) = (0, Vec::new());
        for i in 0..20 {
            // Even turns rename the fixed-port listener; odd turns remove it, and the next
            // turn adds it back under a new name.
            let cfg: Vec<(&str, &str)> = match i % 4 {
                0 => vec![("main", &main), ("alpha", &fixed)],
                1 => vec![("main", &main), ("beta", &fixed)],
                2 => vec![("main", &main)],
                _ => vec![("main", &main), ("gamma", &fixed)],
            };
            std::fs::write(&path, listeners_yaml(&cfg, a.addr)).unwrap();
            match switchyard::reload::reload(&p.server.shared) {
                Ok(_) => ok += 1,
                Err(e) => refused.push((i, e)),
            }
            if let Some((name, _)) = cfg.get(1) {
                assert_eq!(
                    p.server.shared.listener_addr(name).map(|a| a.to_string()),
                    Some(fixed.clone()),
                    "turn {i}"
                );
                let mut ws = connect(&format!("ws://{fixed}/")).await;
                assert_eq!(ask(&mut ws, "whoami").await, "a", "turn {i}: the fixed port serves");
            }
        }
        assert_eq!((ok, refused), (20, Vec::new()), "every reload applies");
    })
    .await
}

/// Issue 26, finding 3: a connection belongs to the socket that accepted it. A rename with
/// a handshake in flight does not close it; after a rename, removing the listener drains
/// every connection its socket accepted, under either name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_follow_their_socket_through_renames() {
    bounded(async {
        let mut held = common::control::held_backend().await;
        let echo = backend("echo").await;
        let dir = tempfile::tempdir().unwrap();
        let yaml = |listeners: &[(&str, &str)]| {
            let mut y = String::from("listeners:\n");
            for (n, b) in listeners {
                let pool = if *n == "keep" { "e" } else { "p" };
                y.push_str(&format!("  - name: {n}\n    bind: \"{b}\"\n    routes:\n      - match: {{ path_prefix: /echo }}\n        pool: e\n      - pool: {pool}\n"));
            }
            y.push_str(&format!(
                "pools:\n  p:\n    backends:\n      - address: \"{}\"\n  e:\n    backends:\n      - address: \"{}\"\nlimits:\n  drain_timeout: 200ms\n",
                held.addr, echo.addr
            ));
            y
        };
        let (p, path) = Proxy::start_file(dir.path(), &yaml(&[("keep", "127.0.0.1:0"), ("c", "127.0.0.1:0")]));
        let keep = p.addr.to_string();
        let c = p.server.shared.listener_addr("c").unwrap();
        // A handshake held at the backend while the listener is renamed c -> d.
        let in_flight = tokio::spawn(async move {
            let mut ws = connect(&format!("ws://{c}/")).await;
            let next = tokio::time::timeout(Duration::from_millis(800), futures_util::StreamExt::next(&mut ws)).await;
            (next.is_err(), ws)
        });
        held.arrived.recv().await.unwrap();
        let mut under_c = connect(&format!("ws://{c}/echo")).await;
        std::fs::write(&path, yaml(&[("keep", &keep), ("d", &c.to_string())])).unwrap();
        switchyard::reload::reload(&p.server.shared).expect("rename ok");
        held.release.send(()).unwrap();
        let (quiet, mut late) = in_flight.await.unwrap();
        assert!(quiet, "the handshake in flight during the rename was not closed");
        assert_eq!(ask(&mut under_c, "still").await, "still");
        let mut under_d = connect(&format!("ws://{c}/echo")).await;
        assert_eq!(ask(&mut under_d, "d").await, "d");
        // d removed: everything its socket accepted drains, whatever name it came under.
        std::fs::write(&path, yaml(&[("keep", &keep)])).unwrap();
        switchyard::reload::reload(&p.server.shared).expect("removal ok");
        assert_eq!(expect_close(&mut under_c).await.0, 1001, "accepted as c");
        assert_eq!(expect_close(&mut under_d).await.0, 1001, "accepted as d");
        assert_eq!(expect_close(&mut late).await.0, 1001, "accepted as c mid-handshake");
        still_serves(&format!("ws://{keep}/echo")).await;
    })
    .await
}

/// Issue 26, finding 4: sockets are matched by address, so two listeners swapping their
/// addresses (or a name moving to another listener's address) apply in one reload; the
/// connections stay on their sockets and new ones get the settings now at that address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_listeners_swap_addresses_in_one_reload() {
    bounded(async {
        let (a, b) = (backend("A").await, backend("B").await);
        let dir = tempfile::tempdir().unwrap();
        let yaml = |x: &str, y: &str| two_listeners(x, y, a.addr, b.addr);
        let (x, y) = (free_addr(), free_addr());
        let (p, path) = Proxy::start_file(dir.path(), &yaml(&x, &y));
        let mut on_x = connect(&format!("ws://{x}/")).await;
        let mut on_y = connect(&format!("ws://{y}/")).await;
        assert_eq!(ask(&mut on_x, "whoami").await, "A");
        assert_eq!(ask(&mut on_y, "whoami").await, "B");
        std::fs::write(&path, yaml(&y, &x)).unwrap();
        switchyard::reload::reload(&p.server.shared).expect("a swap applies in one reload");
        let mut new_x = connect(&format!("ws://{x}/")).await;
        let mut new_y = connect(&format!("ws://{y}/")).await;
        assert_eq!(ask(&mut new_x, "whoami").await, "B", "lb's routes now at x");
        assert_eq!(ask(&mut new_y, "whoami").await, "A");
        assert_eq!(ask(&mut on_x, "still").await, "still");
        assert_eq!(ask(&mut on_y, "still").await, "still");
        assert_eq!(p.server.shared.listener_addr("la").unwrap().to_string(), y);
    })
    .await
}

/// A listener moved to another address keeps the connections its old socket accepted (the
/// name stays; the old address stops accepting).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_moved_to_another_port_keeps_its_connections() {
    bounded(async {
        let a = backend("a").await;
        let dir = tempfile::tempdir().unwrap();
        let x: std::net::SocketAddr = free_addr().parse().unwrap();
        let z: std::net::SocketAddr = free_addr().parse().unwrap();
        let (p, path) = Proxy::start_file(dir.path(), &listeners_yaml(&[("m", &x.to_string())], a.addr));
        let mut on_x = connect(&format!("ws://{x}/")).await;
        std::fs::write(&path, listeners_yaml(&[("m", &z.to_string())], a.addr)).unwrap();
        switchyard::reload::reload(&p.server.shared).expect("a move applies");
        assert_eq!(p.server.shared.listener_addr("m"), Some(z));
        let mut on_z = connect(&format!("ws://{z}/")).await;
        assert_eq!(ask(&mut on_z, "new").await, "new");
        let quiet = tokio::time::timeout(Duration::from_millis(800), futures_util::StreamExt::next(&mut on_x)).await;
        assert!(quiet.is_err(), "the moved listener's old connection was closed: {quiet:?}");
        assert_eq!(ask(&mut on_x, "still").await, "still");
        assert!(
            tokio::net::TcpStream::connect(x).await.is_err(),
            "the old address stopped accepting"
        );
    })
    .await
}

/// Attack review of issue 26: a plain keep-alive connection follows its socket through a
/// swap: its next request is routed by the listener now at its address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_is_routed_by_its_sockets_listener_after_a_swap() {
    bounded(async {
        let (a, b) = (common::http::http_backend("A").await, common::http::http_backend("B").await);
        let dir = tempfile::tempdir().unwrap();
        let yaml = |x: &str, y: &str| two_listeners(x, y, a.addr, b.addr);
        let (x, y) = (free_addr(), free_addr());
        let (p, path) = Proxy::start_file(dir.path(), &yaml(&x, &y));
        let mut s = tokio::net::TcpStream::connect(&x).await.unwrap();
        let mut buf = Vec::new();
        let get = common::http::get("/", "");
        assert_eq!(common::http::roundtrip(&mut s, &mut buf, &get).await.unwrap().body, "A");
        std::fs::write(&path, yaml(&y, &x)).unwrap();
        switchyard::reload::reload(&p.server.shared).expect("swap ok");
        assert_eq!(
            common::http::roundtrip(&mut s, &mut buf, &get).await.unwrap().body,
            "B",
            "lb is at x now"
        );
    })
    .await
}

/// Listeners `la` at `x` (pool `pa`, backend `a`) and `lb` at `y` (pool `pb`, backend `b`).
fn two_listeners(x: &str, y: &str, a: std::net::SocketAddr, b: std::net::SocketAddr) -> String {
    format!(
        "listeners:\n  - name: la\n    bind: \"{x}\"\n    routes:\n      - pool: pa\n  - name: lb\n    bind: \"{y}\"\n    routes:\n      - pool: pb\npools:\n  pa:\n    backends:\n      - address: \"{a}\"\n  pb:\n    backends:\n      - address: \"{b}\"\n"
    )
}

/// A loopback address with a port the OS just had free.
fn free_addr() -> String {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string()
}
