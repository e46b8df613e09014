//! Peers that vanish without a reset: a backend process frozen with SIGSTOP (its kernel
//! still acknowledges every byte, so only the balancer's own ping finds it), and TCP keepalive
//! on both sockets of a proxied connection (for hosts that vanish altogether).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;

/// Not a test: the backend process of `a_frozen_backend_process_frees_its_client`, started
/// from this test binary so that it can be frozen without freezing the balancer.
#[test]
#[ignore = "run as a child process by the tests of this file"]
fn backend_child_process() {
    if std::env::var_os("SY_BACKEND_CHILD").is_none() {
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let b = backend("frozen").await;
        println!("listening {}", b.addr.port());
        // Bounded even if the parent dies without killing it.
        tokio::time::sleep(Duration::from_secs(120)).await;
    });
}

/// Starts `backend_child_process` in its own process; returns it and its address.
fn child_backend() -> (Proc, std::net::SocketAddr) {
    let mut proc = Proc(
        Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "backend_child_process", "--nocapture", "--test-threads=1"])
            .env("SY_BACKEND_CHILD", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("test binary runs"),
    );
    let lines = proc.lines();
    // libtest prints "test NAME ... " on the same line first.
    let port = loop {
        let line = lines.recv_timeout(T).expect("the child backend listens");
        if let Some(p) = line.split("listening ").nth(1) {
            break p.trim().parse::<u16>().unwrap();
        }
    };
    (proc, std::net::SocketAddr::from(([127, 0, 0, 1], port)))
}

#[tokio::test]
async fn a_frozen_backend_process_frees_its_client_with_1011() {
    bounded(async {
        let (child, frozen) = child_backend();
        let live = backend("live").await;
        let extra = "limits:\n  backend_ping_interval: 300ms\n  ping_timeout: 700ms\n";
        let p = Proxy::start(&config("round_robin", &[frozen, live.addr], extra));
        let url = p.url("/ws");
        let (mut on_frozen, mut on_live) = (None, None);
        for _ in 0..4 {
            let mut ws = connect(&url).await;
            match ask(&mut ws, "whoami").await.as_str() {
                "frozen" => on_frozen = Some(ws),
                _ => on_live = Some(ws),
            }
        }
        let (mut on_frozen, mut on_live) = (
            on_frozen.expect("a client on the child"),
            on_live.expect("a client on the live one"),
        );

        // A live backend answers the balancer's pings; the pongs never reach the client, and
        // the connection stays open well past several ping timeouts.
        let quiet = tokio::time::timeout(Duration::from_millis(2500), on_live.next()).await;
        assert!(quiet.is_err(), "the client got something it did not ask for: {quiet:?}");
        assert_eq!(ask(&mut on_live, "still open").await, "still open");

        child.signal(libc::SIGSTOP);
        let t0 = Instant::now();
        let (code, reason) = expect_close(&mut on_frozen).await;
        let took = t0.elapsed();
        child.signal(libc::SIGCONT);
        assert_eq!((code, reason.as_str()), (1011, "backend not responding"));
        // Found by one ping interval plus one ping timeout, not by a TCP timer: well under the
        // 10 s any wait in these tests may take.
        assert!(took < Duration::from_secs(5), "found after {took:?}");
        assert_eq!(ask(&mut on_live, "others unaffected").await, "others unaffected");
        drop(child);
        still_serves(&url).await;
    })
    .await;
}

/// The `ss -tno` line of the established socket whose local port is `local` and peer port
/// is `peer` (0: any).
fn socket_line(local: u16, peer: u16) -> Option<String> {
    let out = Command::new("ss")
        .args(["-tnoH", "state", "established"])
        .output()
        .expect("ss runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.lines()
        .find(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            let port = |c: &str| c.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
            cols.len() >= 4 && port(cols[2]) == Some(local) && (peer == 0 || port(cols[3]) == Some(peer))
        })
        .map(str::to_string)
}

async fn keepalive_seen(setting: &str) -> (Option<String>, Option<String>) {
    let b = backend("b").await;
    let extra = format!("limits:\n  tcp_keepalive: {setting}\n");
    let p = Proxy::start(&config("round_robin", &[b.addr], &extra));
    sockets_seen(&p, b.addr).await
}

/// The `ss` lines of the balancer's two sockets of a new connection through `p` to `backend`.
async fn sockets_seen(p: &Proxy, backend: std::net::SocketAddr) -> (Option<String>, Option<String>) {
    let mut ws = connect(&p.url("/ws")).await;
    assert_eq!(ask(&mut ws, "hi").await, "hi");
    let client_port = match ws.get_ref() {
        tokio_tungstenite::MaybeTlsStream::Plain(s) => s.local_addr().unwrap().port(),
        _ => unreachable!(),
    };
    // The balancer's two sockets: the one it accepted (local = listener, peer = client) and
    // the one it opened (peer = backend, and not the backend's own accepted socket). A socket
    // with bytes in flight shows its retransmission timer instead: look again for a while.
    let mut last = (None, None);
    for _ in 0..50 {
        let accepted = socket_line(p.addr.port(), client_port);
        let opened = {
            let out = Command::new("ss").args(["-tnoH", "state", "established"]).output().unwrap();
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .find(|l| {
                    let cols: Vec<&str> = l.split_whitespace().collect();
                    cols.len() >= 4
                        && cols[3].ends_with(&format!(":{}", backend.port()))
                        && !cols[2].ends_with(&format!(":{}", backend.port()))
                })
                .map(str::to_string)
        };
        let settled = |l: &Option<String>| l.as_ref().is_some_and(|l| !l.contains("timer:(on,"));
        last = (accepted, opened);
        if settled(&last.0) && settled(&last.1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let _ = ws.close(None).await;
    last
}

/// Asserts a keepalive timer due within `limit` seconds on an `ss` line. ss prints "6.948ms"
/// for 6.948 s in some versions and "6sec" in others: the number is what counts; the default
/// 60 s would read "59sec" or "1min".
fn assert_keepalive_within(line: &str, limit: f64) {
    assert!(line.contains("timer:(keepalive,"), "no keepalive timer: {line}");
    let secs: f64 = line
        .split("timer:(keepalive,")
        .nth(1)
        .map(|r| r.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect::<String>())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("a timer: {line}"));
    assert!(secs > 0.0 && secs <= limit, "keepalive timer {secs}s: {line}");
}

#[tokio::test]
async fn tcp_keepalive_is_on_both_sockets_of_a_proxied_connection() {
    bounded(async {
        let (accepted, opened) = keepalive_seen("7s").await;
        let (accepted, opened) = (accepted.expect("the client socket"), opened.expect("the backend socket"));
        for line in [&accepted, &opened] {
            assert_keepalive_within(line, 7.0);
        }
        let (accepted, opened) = keepalive_seen("off").await;
        for line in [accepted.expect("the client socket"), opened.expect("the backend socket")] {
            assert!(!line.contains("keepalive"), "keepalive set though off: {line}");
        }
    })
    .await;
}

#[tokio::test]
async fn accepted_sockets_take_keepalive_from_their_listener_and_a_reload_changes_it() {
    bounded(async {
        // The first connection after start (or a reload) sets the options on the listening
        // socket; later ones get them from it without a setsockopt of their own.
        let b = backend("b").await;
        let dir = tempfile::tempdir().unwrap();
        let yaml = |bind: &str, ka: &str| {
            // One worker: its socket is its own (port 0 with several workers shares one socket,
            // and then every accepted socket is set on its own instead).
            let extra = format!("limits:\n  tcp_keepalive: {ka}\nprocess:\n  workers: 1\n");
            config("round_robin", &[b.addr], &extra).replace("127.0.0.1:0", bind)
        };
        let (p, path) = Proxy::start_file(dir.path(), &yaml("127.0.0.1:0", "9s"));
        for i in 0..3 {
            let (accepted, opened) = sockets_seen(&p, b.addr).await;
            assert_keepalive_within(&accepted.unwrap_or_else(|| panic!("client socket {i}")), 9.0);
            assert_keepalive_within(&opened.unwrap_or_else(|| panic!("backend socket {i}")), 9.0);
        }
        std::fs::write(&path, yaml(&p.addr.to_string(), "off")).unwrap();
        switchyard::reload::reload(&p.server.shared).expect("reload ok");
        for i in 0..3 {
            let (accepted, _) = sockets_seen(&p, b.addr).await;
            let line = accepted.unwrap_or_else(|| panic!("client socket {i} after the reload"));
            assert!(
                !line.contains("keepalive"),
                "keepalive still on after the reload turned it off: {line}"
            );
        }
        std::fs::write(&path, yaml(&p.addr.to_string(), "5s")).unwrap();
        switchyard::reload::reload(&p.server.shared).expect("reload ok");
        for i in 0..3 {
            let (accepted, _) = sockets_seen(&p, b.addr).await;
            assert_keepalive_within(
                &accepted.unwrap_or_else(|| panic!("client socket {i} after the second reload")),
                5.0,
            );
        }
    })
    .await;
}
