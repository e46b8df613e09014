//! The control plane under races (issue 17): drains and reloads that run while a
//! connection is mid-handshake, drains that survive reloads, rejected reloads that change
//! nothing, overlapping reloads, the admin listener under load and against DNS
//! rebinding, `--watch` against half-written files. Every race is made deterministic: a
//! backend holds its `101` until the test has drained or reloaded.

mod common;
use common::control::held_backend;
use common::*;

use std::time::Duration;

use serde_json::Value;

const ADMIN: &str = "admin:\n  bind: \"127.0.0.1:0\"\n";

async fn pools_json(p: &Proxy) -> Value {
    let (code, body) = http_get(p.admin(), "/api/pools").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn backend_json<'a>(pools: &'a Value, address: &str) -> &'a Value {
    pools["pools"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["address"] == address)
        .unwrap_or_else(|| panic!("{address} not in {pools}"))
}

/// Fault 1: a connection that picked a backend before an admin drain, and whose `101`
/// arrives after it, is closed with 1012 (it used to stay on the drained backend).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_mid_handshake_closes_the_late_connection_with_1012() {
    bounded(async {
        let mut held = held_backend().await;
        let dir = tempfile::tempdir().unwrap();
        let extra = format!("{ADMIN}limits:\n  drain_timeout: 30s\n");
        let (p, _) = Proxy::start_file(dir.path(), &config("round_robin", &[held.addr], &extra));
        let url = p.url("/");
        let client = tokio::spawn(async move {
            let mut ws = connect(&url).await;
            expect_close(&mut ws).await.0
        });
        held.arrived.recv().await.unwrap();
        let (code, body) = http(p.admin(), "POST", &format!("/api/pools/p/backends/{}/drain", held.addr), "").await;
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("\"closing\":0"), "the connection was not registered yet: {body}");
        held.release.send(()).unwrap();
        // drain_timeout is 30 s; the late connection is closed at once, within T (10 s)
        assert_eq!(client.await.unwrap(), 1012);
    })
    .await
}

/// Fault 1, removal: a reload that removes the backend while a connection waits for its
/// `101` closes that connection with 1012 once it registers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_removing_the_backend_mid_handshake_closes_the_late_connection_with_1012() {
    bounded(async {
        let mut held = held_backend().await;
        let other = backend("other").await;
        let dir = tempfile::tempdir().unwrap();
        let extra = "limits:\n  drain_timeout: 30s\n";
        let (p, path) = Proxy::start_file(dir.path(), &config("round_robin", &[held.addr], extra));
        let url = p.url("/");
        let client = tokio::spawn(async move {
            let mut ws = connect(&url).await;
            expect_close(&mut ws).await.0
        });
        held.arrived.recv().await.unwrap();
        let yaml = config("round_robin", &[other.addr], extra).replace("127.0.0.1:0", &p.addr.to_string());
        std::fs::write(&path, yaml).unwrap();
        let shared = p.server.shared.clone();
        tokio::task::spawn_blocking(move || switchyard::reload::reload(&shared))
            .await
            .unwrap()
            .expect("reload ok");
        held.release.send(()).unwrap();
        assert_eq!(client.await.unwrap(), 1012);
        let mut ws = connect(&p.url("/")).await;
        assert_eq!(ask(&mut ws, "whoami").await, "other");
    })
    .await
}

/// Fault 2: a client whose handshake completes after a reload removed its listener is
/// closed with 1001 (it used to get a 101 and stay, routed by the old listener's config).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_removed_mid_handshake_closes_the_late_connection_with_1001() {
    bounded(async {
        let mut held = held_backend().await;
        let dir = tempfile::tempdir().unwrap();
        let yaml = |second: bool, main: &str| {
            let mut y = format!("listeners:\n  - name: l\n    bind: \"{main}\"\n    routes:\n      - pool: p\n");
            if second {
                y.push_str("  - name: gone\n    bind: \"127.0.0.1:0\"\n    routes:\n      - pool: p\n");
            }
            y.push_str(&format!(
                "pools:\n  p:\n    backends:\n      - address: \"{}\"\nlimits:\n  drain_timeout: 30s\n",
                held.addr
            ));
            y
        };
        let (p, path) = Proxy::start_file(dir.path(), &yaml(true, "127.0.0.1:0"));
        let gone = p.server.addr("gone").unwrap();
        let client = tokio::spawn(async move {
            let mut ws = connect(&format!("ws://{gone}/")).await;
            expect_close(&mut ws).await.0
        });
        held.arrived.recv().await.unwrap();
        std::fs::write(&path, yaml(false, &p.addr.to_string())).unwrap();
        let shared = p.server.shared.clone();
        tokio::task::spawn_blocking(move || switchyard::reload::reload(&shared))
            .await
            .unwrap()
            .expect("reload ok");
        held.release.send(()).unwrap();
        assert_eq!(client.await.unwrap(), 1001);
    })
    .await
}

/// Fault 3: an admin drain in progress survives reloads of the unchanged file by every
/// trigger (the blocking call tests use, the API, the SIGHUP entry point, `--watch`): the
/// backend stays `draining` with its counters, and new connections avoid it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_survives_api_sighup_and_watch_reloads() {
    bounded(async {
        let a = backend("a").await;
        let b = backend("b").await;
        let dir = tempfile::tempdir().unwrap();
        let yaml = config("round_robin", &[a.addr, b.addr], &format!("{ADMIN}limits:\n  drain_timeout: 10m\n"));
        let (p, path) = Proxy::start_file(dir.path(), &yaml);
        let yaml = yaml.replacen("127.0.0.1:0", &p.addr.to_string(), 1);
        let mut ws = connect(&p.url("/")).await;
        assert_eq!(ask(&mut ws, "whoami").await, "a");
        let (code, body) = http(p.admin(), "POST", &format!("/api/pools/p/backends/{}/drain", a.addr), "").await;
        assert_eq!(code, 200, "{body}");
        // Each successful reload swaps in a new runtime.
        let current = || std::sync::Arc::as_ptr(&p.server.shared.runtime.load_full()) as usize;
        switchyard::reload::watch_file(p.server.shared.clone(), p.server.control(), std::fs::read(&path).unwrap());
        for trigger in ["blocking", "api", "sighup", "watch"] {
            let before = current();
            match trigger {
                "blocking" => {
                    let shared = p.server.shared.clone();
                    tokio::task::spawn_blocking(move || switchyard::reload::reload(&shared))
                        .await
                        .unwrap()
                        .unwrap();
                }
                "api" => assert_eq!(http(p.admin(), "POST", "/api/reload", "").await, (200, "ok\n".to_string())),
                "sighup" => switchyard::reload::request(&p.server.shared),
                _ => std::fs::write(&path, format!("{yaml}# touched\n")).unwrap(),
            }
            assert!(eventually(T, || current() != before).await.is_some(), "{trigger}: no reload");
            assert!(p.server.shared.last_reload.lock().unwrap().as_ref().unwrap().1.is_ok(), "{trigger}");
            let pools = pools_json(&p).await;
            let drained = backend_json(&pools, &a.addr.to_string());
            assert_eq!(drained["state"], "draining", "{trigger}: {pools}");
            assert_eq!(drained["total"], 1, "{trigger}: the same backend object, counters kept: {pools}");
            for _ in 0..3 {
                let mut c = connect(&p.url("/")).await;
                assert_eq!(
                    ask(&mut c, "whoami").await,
                    "b",
                    "{trigger}: a new connection reached the drained backend"
                );
            }
        }
    })
    .await
}

/// Fault 4: a reload rejected on a listener bind changes nothing: `/api/pools` is the
/// same byte for byte (the new weight and max_connections were live before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_reload_leaves_the_pools_api_byte_for_byte_unchanged() {
    bounded(async {
        let a = backend("a").await;
        let dir = tempfile::tempdir().unwrap();
        let (p, path) = Proxy::start_file(dir.path(), &config("round_robin", &[a.addr], ADMIN));
        let (_, before) = http_get(p.admin(), "/api/pools").await;
        let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let yaml = format!(
            "listeners:\n  - name: l\n    bind: \"{}\"\n    routes:\n      - pool: p\n  - name: busy\n    bind: \"{}\"\n    routes:\n      - pool: p\n{ADMIN}pools:\n  p:\n    algorithm: least_connections\n    backends:\n      - address: \"{}\"\n        weight: 7\n        max_connections: 3\n",
            p.addr,
            busy.local_addr().unwrap(),
            a.addr
        );
        std::fs::write(&path, yaml).unwrap();
        let shared = p.server.shared.clone();
        let errs = tokio::task::spawn_blocking(move || switchyard::reload::reload(&shared)).await.unwrap().unwrap_err();
        assert!(errs[0].contains("cannot bind"), "{errs:?}");
        let (_, after) = http_get(p.admin(), "/api/pools").await;
        assert_eq!(before, after);
        assert_eq!(p.backend(0).weight(), 1);
        assert_eq!(p.backend(0).max_connections(), 0);
    })
    .await
}

/// Fault 5: a slow reload (a 20,000-backend config) and a fast one asked while the slow one
/// runs (it has read the big file) end with the file's config: reloads run one at a time, in
/// the order asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_reloads_end_with_the_files_config() {
    bounded(async {
        let a = backend("a").await;
        let dir = tempfile::tempdir().unwrap();
        let (p, path) = Proxy::start_file(dir.path(), &config("round_robin", &[a.addr], ""));
        let main = p.addr.to_string();
        let mut big = config("round_robin", &[a.addr], "").replace("127.0.0.1:0", &main);
        big = big.replace("pools:\n  p:", "pools:\n  big:\n    backends:\n{BIG}  p:");
        let many: String = (0..20_000)
            .map(|i| format!("      - address: \"10.9.{}.{}:80\"\n", i / 250, i % 250 + 1))
            .collect();
        std::fs::write(&path, big.replace("{BIG}", &many)).unwrap();
        let shared = p.server.shared.clone();
        let read_before = shared.reloads.read();
        let slow = tokio::task::spawn_blocking(move || switchyard::reload::reload(&shared));
        // The slow reload is under way with the big file before the file changes.
        let reloads = &p.server.shared.reloads;
        assert!(
            eventually(T, || reloads.read() > read_before).await.is_some(),
            "the slow reload starts"
        );
        assert!(
            !slow.is_finished(),
            "the slow reload is still running when the fast one is asked for"
        );
        let small = config("least_connections", &[a.addr], "").replace("127.0.0.1:0", &main);
        std::fs::write(&path, &small).unwrap();
        switchyard::reload::request(&p.server.shared); // the SIGHUP entry point
        let shared = p.server.shared.clone();
        let fast = tokio::task::spawn_blocking(move || switchyard::reload::reload(&shared));
        slow.await.unwrap().expect("slow reload ok");
        fast.await.unwrap().expect("fast reload ok");
        let rt = p.server.shared.runtime.load();
        let expected = switchyard::config::load(&path).unwrap();
        // Compared whole, reported short: the slow config's Debug runs to megabytes.
        assert!(
            rt.config == expected,
            "the running config is not the file's: pools {:?}",
            rt.config.pools.keys().collect::<Vec<_>>()
        );
        assert!(!rt.pools.contains_key("big"));
    })
    .await
}

/// Fault 6: `/healthz` answers `200 ok` while 1,000 idle and 50 slow admin clients (all
/// from the same address as the probe) are connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_while_a_thousand_idle_and_slow_admin_clients_are_connected() {
    use tokio::io::AsyncWriteExt;
    bounded(async {
        let a = backend("a").await;
        let p = Proxy::start(&config("round_robin", &[a.addr], ADMIN));
        let mut held = Vec::new();
        for _ in 0..1000 {
            held.push(tokio::net::TcpStream::connect(p.admin()).await.unwrap());
        }
        for _ in 0..50 {
            let mut s = tokio::net::TcpStream::connect(p.admin()).await.unwrap();
            s.write_all(b"GET /api/pools HTTP/1.1\r\nHo").await.unwrap();
            held.push(s);
        }
        for _ in 0..5 {
            assert_eq!(http_get(p.admin(), "/healthz").await, (200, "ok\n".to_string()));
        }
        // the capped API itself still answers once the crowd is gone
        drop(held);
        let mut served = false;
        for _ in 0..100 {
            if http_get(p.admin(), "/api/pools").await.0 == 200 {
                served = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(served, "the API answers again after the idle clients left");
    })
    .await
}

/// Fault 7: DNS rebinding. `Host: evil.example:PORT` with the matching `Origin` passed the
/// cross-origin check; now such a request gets `421` for reads and for a drain, while IP
/// literals, `localhost` and the names in `admin.hosts` are served.
#[tokio::test]
async fn a_rebinding_host_gets_421_and_listed_names_are_served() {
    bounded(async {
        let a = backend("a").await;
        let admin = "admin:\n  bind: \"127.0.0.1:0\"\n  hosts: [\"switchyard.internal\"]\n";
        let p = Proxy::start(&config("round_robin", &[a.addr], admin));
        let port = p.admin().port();
        let ask = |method: &str, path: &str, host: &str| {
            let origin = format!("http://{host}");
            let req =
                format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nOrigin: {origin}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            let addr = p.admin();
            async move { status(&raw_exchange(addr, req.as_bytes()).await) }
        };
        let evil = format!("evil.example:{port}");
        assert_eq!(ask("GET", "/api/pools", &evil).await, 421);
        assert_eq!(ask("GET", "/metrics", &evil).await, 421);
        let drain = format!("/api/pools/p/backends/{}/drain", a.addr);
        assert_eq!(ask("POST", &drain, &evil).await, 421);
        assert_eq!(p.backend(0).state().name(), "up", "the rebinding drain changed nothing");
        for host in [
            format!("127.0.0.1:{port}"),
            format!("localhost:{port}"),
            format!("switchyard.internal:{port}"),
        ] {
            assert_eq!(ask("GET", "/api/pools", &host).await, 200, "{host}");
        }
        // an Origin of another host is still refused (CSRF)
        let req = format!("GET /api/pools HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: http://evil.example\r\nConnection: close\r\n\r\n");
        assert_eq!(status(&raw_exchange(p.admin(), req.as_bytes()).await), 403);
        // the liveness probe needs no particular Host
        assert_eq!(ask("GET", "/healthz", &evil).await, 200);
    })
    .await
}

/// Fault 8: `--watch` never applies a half-written file. A writer truncates the config,
/// writes the part that lists only backend `a`, pauses 1.5 s holding the file open, then
/// writes the rest (backend `b`): `b` is never removed and its client is never closed. A
/// FIFO at the config path neither blocks the control thread (admin answers) nor applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_never_applies_a_half_written_file_and_a_fifo_blocks_nothing() {
    use std::io::Write;
    bounded(async {
        let a = backend("a").await;
        let b = backend("b").await;
        let dir = tempfile::tempdir().unwrap();
        let yaml = config("round_robin", &[a.addr, b.addr], "");
        let (p, path) = Proxy::start_file(dir.path(), &format!("{yaml}{ADMIN}"));
        let full = format!("{}{ADMIN}# rewritten\n", yaml.replacen("127.0.0.1:0", &p.addr.to_string(), 1));
        switchyard::reload::watch_file(p.server.shared.clone(), p.server.control(), std::fs::read(&path).unwrap());
        let mut others = Vec::new();
        let mut on_b = loop {
            let mut ws = connect(&p.url("/")).await;
            if ask(&mut ws, "whoami").await == "b" {
                break ws;
            }
            others.push(ws);
            assert!(others.len() < 4, "round robin reaches b");
        };
        // The first part alone is a valid config without `b`.
        let cut = full.find(&format!("      - address: \"{}\"", b.addr)).unwrap();
        let (head, tail) = (full[..cut].to_string(), full[cut..].to_string());
        assert!(switchyard::config::parse(&head, std::path::Path::new(".")).is_ok(), "{head}");
        let writer_path = path.clone();
        let writer = std::thread::spawn(move || {
            let mut f = std::fs::File::create(&writer_path).unwrap();
            f.write_all(head.as_bytes()).unwrap();
            f.flush().unwrap();
            std::thread::sleep(Duration::from_millis(1500));
            f.write_all(tail.as_bytes()).unwrap();
        });
        let backends = || p.server.shared.runtime.load().pools["p"].backends.len();
        while !writer.is_finished() {
            assert_eq!(backends(), 2, "a half-written file was applied");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        writer.join().unwrap();
        // The finished file (same backends) is applied; nothing was ever removed.
        let applied = eventually(T, || {
            p.server.shared.runtime.load().config == switchyard::config::load(&path).unwrap()
        })
        .await;
        assert!(applied.is_some(), "the settled file is applied");
        assert_eq!(backends(), 2);
        assert_eq!(ask(&mut on_b, "whoami").await, "b", "b's client was never closed");

        // A FIFO swapped in at the config path.
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo on a path we own.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        std::fs::rename(&fifo, &path).unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await; // a few watch rounds
        assert_eq!(http_get(p.admin(), "/healthz").await, (200, "ok\n".to_string()));
        let (code, body) = http(p.admin(), "POST", "/api/reload", "").await;
        assert_eq!(code, 422, "{body}");
        assert!(body.contains("not a regular file"), "{body}");
        assert_eq!(backends(), 2);
        assert_eq!(ask(&mut on_b, "whoami").await, "b");
    })
    .await
}
