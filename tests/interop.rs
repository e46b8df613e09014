//! Real WebSocket applications nobody here wrote, through the balancer: stock Socket.IO 4
//! servers and `socket.io-client` with its default options (long-polling first, then the
//! upgrade), and stock SockJS servers with `sockjs-client` over its HTTP fallbacks. The
//! packages come from npm (`tests/js/package.json`; `.ci/run` installs them). Without Node
//! or the packages the tests say so and pass, except under CI, where they fail.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js")
}

/// Whether Node and the npm packages are here; under CI their absence is a failure.
fn node_ready() -> bool {
    let ok = Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success())
        && js_dir().join("node_modules/socket.io").exists()
        && js_dir().join("node_modules/sockjs-client").exists();
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "node or tests/js/node_modules missing under CI (.ci/run installs them)"
        );
        eprintln!("skipped: needs node and `npm ci --prefix tests/js`");
    }
    ok
}

/// Starts `node SCRIPT ARGS…` and waits for its `listening PORT` line.
fn node_server(script: &str, args: &[&str]) -> (Proc, std::net::SocketAddr) {
    let mut proc = Proc(
        Command::new("node")
            .arg(js_dir().join(script))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node starts"),
    );
    let line = proc
        .lines()
        .recv_timeout(Duration::from_secs(20))
        .expect("the server says it listens");
    let port: u16 = line.trim_start_matches("listening ").trim().parse().expect("a port");
    (proc, std::net::SocketAddr::from(([127, 0, 0, 1], port)))
}

/// Runs a Node client script to its end (bounded) and parses its JSON line.
async fn node_client(script: &str, args: &[&str]) -> serde_json::Value {
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(js_dir().join(script)).args(args).kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .expect("client finished in time")
        .expect("node runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("client output {text:?}: {e}\n{}", String::from_utf8_lossy(&out.stderr)))
}

fn proxy_for(backends: &[std::net::SocketAddr], pool_extra: &str) -> Proxy {
    Proxy::start(&config("round_robin", backends, pool_extra))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_io_default_client_polls_then_upgrades_on_one_server() {
    if !node_ready() {
        return;
    }
    let servers: Vec<_> = ["s1", "s2", "s3"].iter().map(|n| node_server("sio_server.js", &[n])).collect();
    let addrs: Vec<_> = servers.iter().map(|s| s.1).collect();
    let p = proxy_for(&addrs, "    sticky:\n      cookie: SYID\n      secret: interop-secret\n");
    let url = format!("http://{}", p.addr);
    let all = node_client("sio_client.js", &[&url, "12", "default", "1500"]).await;
    let all = all.as_array().expect("a list");
    assert_eq!(all.len(), 12);
    let mut used = std::collections::BTreeSet::new();
    for c in all {
        assert_eq!(c["errors"], serde_json::json!([]), "{c}");
        let servers = c["servers"].as_array().unwrap();
        assert_eq!(servers.len(), 1, "every ack of one client from one server: {c}");
        assert_eq!(c["upgraded"], true, "{c}");
        assert_eq!(c["transport"], "websocket", "{c}");
        used.insert(servers[0].as_str().unwrap().to_string());
    }
    assert_eq!(used.len(), 3, "clients spread over all three servers: {used:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_io_polling_only_stays_up_past_two_ping_intervals() {
    if !node_ready() {
        return;
    }
    // Ping every 1 s: a session held 3.5 s on polling sees three pings through the balancer.
    let servers: Vec<_> = ["s1", "s2", "s3"]
        .iter()
        .map(|n| node_server("sio_server.js", &[n, "1000"]))
        .collect();
    let addrs: Vec<_> = servers.iter().map(|s| s.1).collect();
    let p = proxy_for(&addrs, "    sticky:\n      cookie: SYID\n      secret: interop-secret\n");
    let url = format!("http://{}", p.addr);
    let all = node_client("sio_client.js", &[&url, "6", "polling", "3500"]).await;
    for c in all.as_array().expect("a list") {
        assert_eq!(c["errors"], serde_json::json!([]), "{c}");
        assert_eq!(c["disconnects"], 0, "{c}");
        assert_eq!(c["transport"], "polling", "{c}");
        assert_eq!(c["servers"].as_array().unwrap().len(), 1, "{c}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockjs_fallback_transports_exchange_messages_sticky_by_path_segment() {
    if !node_ready() {
        return;
    }
    let servers: Vec<_> = ["s1", "s2", "s3"].iter().map(|n| node_server("sockjs_server.js", &[n])).collect();
    let addrs: Vec<_> = servers.iter().map(|s| s.1).collect();
    let p = Proxy::start(&config("hash", &addrs, "    hash:\n      key: path_segment:3\n"));
    let url = format!("http://{}/echo", p.addr);
    let mut used = std::collections::BTreeSet::new();
    for transport in ["xhr-streaming", "eventsource", "xhr-polling"] {
        let all = node_client("sockjs_client.js", &[&url, transport, "8", "5"]).await;
        for s in all.as_array().expect("a list") {
            assert_eq!(s["errors"], serde_json::json!([]), "{transport}: {s}");
            assert_eq!(s["transport"], transport, "{s}");
            assert_eq!(s["answers"], 5, "{transport}: {s}");
            let servers = s["servers"].as_array().unwrap();
            assert_eq!(servers.len(), 1, "{transport}: one session, one server: {s}");
            used.insert(servers[0].as_str().unwrap().to_string());
        }
    }
    assert_eq!(used.len(), 3, "sessions spread over all three servers: {used:?}");
}

/// Chromium is needed too; under CI its absence is a failure (.ci/run installs it).
fn browser_ready() -> bool {
    if !node_ready() {
        return false;
    }
    let ok = common::browser::chromium_available();
    if !ok {
        assert!(std::env::var_os("CI").is_none(), "chromium missing under CI (.ci/run installs it)");
        eprintln!("skipped: needs chromium");
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_io_in_chromium_keeps_its_cookie_and_upgrades() {
    if !browser_ready() {
        return;
    }
    bounded(async {
        let servers: Vec<_> = ["s1", "s2", "s3"].iter().map(|n| node_server("sio_server.js", &[n])).collect();
        let addrs: Vec<_> = servers.iter().map(|s| s.1).collect();
        let p = proxy_for(&addrs, "    sticky:\n      cookie: SYID\n      secret: interop-secret\n");
        let mut page = common::browser::Page::new().await;
        // The page itself comes through the balancer (plain HTTP), which sets the cookie.
        page.goto(&format!("http://{}/page", p.addr)).await;
        let r = page.cdp.eval("runSio(2000)").await;
        assert_eq!(r["errors"], serde_json::json!([]), "{r}");
        assert_eq!(r["servers"].as_array().map(Vec::len), Some(1), "every ack from one server: {r}");
        assert_eq!(r["upgraded"], true, "{r}");
        assert_eq!(r["transport"], "websocket", "{r}");
        // HttpOnly: the page's script cannot read the balancer's cookie.
        assert!(!r["cookie"].as_str().unwrap_or("").contains("SYID"), "{r}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_io_in_chromium_over_h2_polls_and_upgrades_on_one_tls_connection() {
    if !browser_ready() {
        return;
    }
    bounded(async {
        let servers: Vec<_> = ["s1", "s2", "s3"].iter().map(|n| node_server("sio_server.js", &[n])).collect();
        let addrs: Vec<_> = servers.iter().map(|s| s.1).collect();
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = common::self_signed(dir.path());
        let yaml = config(
            "round_robin",
            &addrs,
            "    sticky:\n      cookie: SYID\n      secret: interop-secret\nadmin:\n  bind: \"127.0.0.1:0\"\n",
        )
        .replace(
            "    routes:\n",
            &format!("    tls: {{ cert: \"{}\", key: \"{}\" }}\n    routes:\n", cert.display(), key.display()),
        );
        let p = Proxy::start(&yaml);
        let mut page = common::browser::Page::new().await;
        page.cdp.call("Security.setIgnoreCertificateErrors", serde_json::json!({ "ignore": true })).await;
        page.goto(&format!("https://127.0.0.1:{}/page", p.addr.port())).await;
        let r = page.cdp.eval("runSio(2000)").await;
        assert_eq!(r["errors"], serde_json::json!([]), "{r}");
        assert_eq!(r["servers"].as_array().map(Vec::len), Some(1), "sticky: every ack from one server: {r}");
        assert_eq!((&r["upgraded"], &r["transport"]), (&serde_json::json!(true), &serde_json::json!("websocket")), "{r}");
        // The page and every polling request came over HTTP/2...
        let protocols = page
            .cdp
            .eval("[...new Set([performance.getEntriesByType('navigation')[0], ...performance.getEntriesByType('resource')].map(e => e.nextHopProtocol))].join(',')")
            .await;
        assert_eq!(protocols, "h2", "page and polling requests over HTTP/2");
        // ...and the upgrade was an RFC 8441 stream, on one backend.
        let metrics = http_get(p.admin(), "/metrics").await.1;
        let h2: f64 = addrs
            .iter()
            .map(|a| metric(&metrics, &format!("switchyard_connections_total{{pool=\"p\",backend=\"{a}\",protocol=\"h2\"}}")))
            .sum();
        assert_eq!(h2, 1.0, "one WebSocket, over an HTTP/2 stream: {metrics}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockjs_in_chromium_over_each_fallback_transport() {
    if !browser_ready() {
        return;
    }
    bounded(async {
        let servers: Vec<_> = ["s1", "s2", "s3"].iter().map(|n| node_server("sockjs_server.js", &[n])).collect();
        let addrs: Vec<_> = servers.iter().map(|s| s.1).collect();
        let p = Proxy::start(&config("hash", &addrs, "    hash:\n      key: path_segment:3\n"));
        let mut page = common::browser::Page::new().await;
        page.goto(&format!("http://{}/page", p.addr)).await;
        let mut used = std::collections::BTreeSet::new();
        for transport in ["xhr-streaming", "eventsource", "xhr-polling"] {
            let all = page.cdp.eval(&format!("runSockjs({transport:?}, 8, 3)")).await;
            for s in all.as_array().expect("a list") {
                assert_eq!(s["errors"], serde_json::json!([]), "{transport}: {s}");
                assert_eq!(s["transport"], transport, "{s}");
                assert_eq!(s["answers"], 3, "{transport}: {s}");
                let servers = s["servers"].as_array().unwrap();
                assert_eq!(servers.len(), 1, "{transport}: one session, one server: {s}");
                used.insert(servers[0].as_str().unwrap().to_string());
            }
        }
        assert_eq!(used.len(), 3, "sessions spread over all three servers: {used:?}");
    })
    .await
}
