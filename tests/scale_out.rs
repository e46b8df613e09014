//! Scale-out with a real spreader: Debian's HAProxy in `mode tcp`, round robin with
//! `send-proxy-v2`, in front of two Switchyard processes, in front of three backends. Checks
//! that the backends see the real client address, that a `hash` key lands on the same
//! backend through either instance, and that stopping one instance with SIGTERM moves its
//! clients (1001, then a reconnect through the spreader) with none lost, and that a DNS change
//! (a record added, one removed) reaches both instances within `refresh`.
//!
//! Needs `haproxy` on PATH (`.ci/run` installs it); without it the tests say so and pass
//! only outside CI.

mod common;

use std::net::{SocketAddr, TcpListener as StdListener};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::dns::Dns;
use common::*;
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

fn haproxy_ready() -> bool {
    let ok = Command::new("haproxy").arg("-v").output().is_ok_and(|o| o.status.success());
    if !ok {
        assert!(std::env::var_os("CI").is_none(), "haproxy missing under CI (.ci/run installs it)");
        eprintln!("skipped: needs haproxy (apt-get install haproxy)");
    }
    ok
}

/// HAProxy in TCP mode on a listener the test bound on port 0 (passed as fd 3), round robin
/// with PROXY v2 to `instances`.
fn spreader(instances: &[SocketAddr], dir: &std::path::Path) -> (Proc, SocketAddr) {
    let l = StdListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let mut cfg = format!(
        "global\n  maxconn 4000\n  stats socket {}\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 60s\n  timeout server 60s\n  retries 3\n  option redispatch\nfrontend fe\n  bind fd@3\n  default_backend be\nbackend be\n  balance roundrobin\n",
        dir.join("haproxy.sock").display()
    );
    for (i, a) in instances.iter().enumerate() {
        cfg.push_str(&format!(
            "  server sy{i} {a} send-proxy-v2 check check-send-proxy inter 200ms fall 1 rise 1\n"
        ));
    }
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, cfg).unwrap();
    let fd = l.as_raw_fd();
    let mut cmd = Command::new("haproxy");
    cmd.args(["-db", "-f", path.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("haproxy.log")).unwrap());
    // SAFETY: between fork and exec only async-signal-safe calls (dup2, fcntl) are made.
    unsafe {
        cmd.pre_exec(move || {
            // When the listener already is fd 3, dup2 does nothing and leaves its close-on-exec
            // flag set (tests run in parallel, so low descriptors get reused): clear it always.
            if libc::dup2(fd, 3) < 0 || libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().expect("haproxy starts");
    drop(l); // the child holds its copy
    (Proc(child), addr)
}

/// The SRV name both instances discover their backends by.
const SRV: &str = "_ws._tcp.chat.sy.test";

/// A Switchyard process whose listener takes PROXY headers from loopback and whose
/// backends are the SRV records of [`SRV`] on `dns`. Returns it, its listener and its admin.
fn instance(dir: &std::path::Path, name: &str, dns: &Dns) -> (Proc, SocketAddr, SocketAddr) {
    let y = format!(
        "listeners:\n  - name: l\n    bind: \"127.0.0.1:0\"\n    proxy_protocol: true\n    routes:\n      - pool: p\nadmin:\n  bind: \"127.0.0.1:0\"\npools:\n  p:\n    algorithm: hash\n    hash: {{ key: \"header:x-key\" }}\n    backends:\n      - srv: {SRV}\n        refresh: 500ms\nlimits:\n  trusted_proxies: [\"127.0.0.1/32\"]\n  drain_timeout: 1s\n{}",
        dns.resolver_yaml("1s")
    );
    let f = dir.join(format!("{name}.yaml"));
    std::fs::write(&f, y).unwrap();
    let mut proc = Proc::spawn(&["run", "-c", f.to_str().unwrap()]);
    let rx = proc.lines();
    let (mut listener, mut admin) = (None, None);
    while listener.is_none() || admin.is_none() {
        let line = rx.recv_timeout(T).expect("the instance announces its addresses");
        if let Some(u) = line.strip_prefix("listening l ws://") {
            listener = Some(u.trim_end_matches('/').parse().unwrap());
        } else if let Some(u) = line.strip_prefix("admin http://") {
            admin = Some(u.split('/').next().unwrap().parse().unwrap());
        }
    }
    (proc, listener.unwrap(), admin.unwrap())
}

/// The backend addresses an instance's admin API lists (draining ones excluded).
async fn listed(admin: SocketAddr) -> Vec<String> {
    let (status, body) = http_get(admin, "/api/pools").await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut out: Vec<String> = v["pools"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["state"] != "draining")
        .map(|b| b["address"].as_str().unwrap().to_string())
        .collect();
    out.sort();
    out
}

/// A WebSocket client from 127.0.0.2 through the spreader, with `X-Key: key`.
async fn client_via(spreader: SocketAddr, key: &str) -> Ws {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let tcp = sock.connect(spreader).await.unwrap();
    let mut req = format!("ws://{spreader}/ws").into_client_request().unwrap();
    req.headers_mut().insert("x-key", key.parse().unwrap());
    let (ws, _) = tokio::time::timeout(
        T,
        tokio_tungstenite::client_async(req, tokio_tungstenite::MaybeTlsStream::Plain(tcp)),
    )
    .await
    .expect("handshake in time")
    .expect("handshake through the spreader");
    ws
}

/// How many of the spreader's servers HAProxy runs as up (`show servers state`: the sixth
/// field is the operational state, 2 = running), asked on its stats socket.
async fn spreader_up(sock: &std::path::Path) -> usize {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::UnixStream::connect(sock).await else {
        return 0;
    };
    if s.write_all(b"show servers state\n").await.is_err() {
        return 0;
    }
    let mut out = String::new();
    let _ = tokio::time::timeout(T, s.read_to_string(&mut out)).await;
    out.lines()
        .filter(|l| !l.starts_with('#') && l.split_whitespace().count() > 5)
        .filter(|l| l.split_whitespace().nth(5) == Some("2"))
        .count()
}

struct Farm {
    backends: [Backend; 3],
    dns: Dns,
    instances: Vec<(Proc, SocketAddr, SocketAddr)>,
    spreader: (Proc, SocketAddr),
}

/// The SRV records of `backends` (all on 127.0.0.1, by `lo.sy.test`).
async fn publish(dns: &Dns, backends: &[&Backend]) {
    let recs: Vec<(u16, u16, u16, &str)> = backends.iter().map(|b| (0, 1, b.addr.port(), "lo.sy.test.")).collect();
    dns.set_srv(&format!("{SRV}."), &recs).await;
}

async fn setup(dir: &std::path::Path) -> Farm {
    let bs = [backend("a").await, backend("b").await, backend("c").await];
    let dns = Dns::start();
    dns.set_addrs("lo.sy.test.", &["127.0.0.1"]).await;
    // The records in one order here; the ring is built from the sorted set either way.
    publish(&dns, &[&bs[2], &bs[0], &bs[1]]).await;
    let one = instance(dir, "one", &dns);
    let two = instance(dir, "two", &dns);
    let sp = spreader(&[one.1, two.1], dir);
    // HAProxy holds the listener the test bound: a refused connect means it exited.
    let mut ok = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(sp.1).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = std::fs::read_to_string(dir.join("haproxy.log")).unwrap_or_default();
    assert!(ok, "haproxy did not start: {log}");
    // Both instances know the three backends (their first DNS answer is in), and HAProxy's
    // first health checks found both instances up, before any client.
    for admin in [one.2, two.2] {
        let t0 = std::time::Instant::now();
        while listed(admin).await.len() < 3 {
            assert!(t0.elapsed() < T, "instance at {admin} never listed the three backends");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let t0 = std::time::Instant::now();
    while spreader_up(&dir.join("haproxy.sock")).await < 2 {
        assert!(t0.elapsed() < T, "HAProxy never saw both instances up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Farm {
        backends: bs,
        dns,
        instances: vec![one, two],
        spreader: sp,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_haproxy_the_backends_see_the_client_and_a_key_lands_on_one_backend() {
    if !haproxy_ready() {
        return;
    }
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let farm = setup(dir.path()).await;
        let (bs, sp) = (&farm.backends, farm.spreader.1);
        // Each key twice in a row: round robin sends the two connections to different instances.
        for k in 0..40 {
            let key = format!("user-{k}");
            let mut first = client_via(sp, &key).await;
            let mut second = client_via(sp, &key).await;
            let (n1, n2) = (ask(&mut first, "whoami").await, ask(&mut second, "whoami").await);
            assert_eq!(n1, n2, "key {key} went to two backends");
            // ... and the two connections did go through different instances: each holds one
            // (without this, one instance alone would pass the test).
            if k == 0 {
                for (_, _, admin) in &farm.instances {
                    let (_, body) = http_get(*admin, "/api/status").await;
                    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                    assert_eq!(v["connections"], 1, "key {key}: one connection on each instance: {v}");
                }
            }
            let b = bs
                .iter()
                .find(|b| b.last_headers.lock().unwrap().iter().any(|(n, _)| n == "x-key"))
                .unwrap();
            let xff = b
                .last_headers
                .lock()
                .unwrap()
                .iter()
                .find(|(n, _)| n == "x-forwarded-for")
                .map(|(_, v)| v.clone());
            assert_eq!(xff.as_deref(), Some("127.0.0.2"), "the backend saw the spreader, not the client");
            let _ = first.close(None).await;
            let _ = second.close(None).await;
        }
        let used = bs
            .iter()
            .filter(|b| b.accepted.load(std::sync::atomic::Ordering::SeqCst) > 0)
            .count();
        assert_eq!(used, 3, "40 keys use every backend");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_one_instance_moves_its_clients_to_the_other_with_none_lost() {
    if !haproxy_ready() {
        return;
    }
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let mut farm = setup(dir.path()).await;
        let sp = farm.spreader.1;
        let mut clients = Vec::new();
        for k in 0..20 {
            let mut ws = client_via(sp, &format!("user-{k}")).await;
            assert_eq!(ask(&mut ws, "hi").await, "hi");
            clients.push((k, ws));
        }
        farm.instances[0].0.signal(libc::SIGTERM);
        // The drain spreads its 1001s over drain_timeout (1 s) and the instance exits once its
        // connections are done (or their close grace ran out): after its exit, every client of
        // the stopped instance has its close frame waiting, however slow the machine.
        let exit = tokio::task::block_in_place(|| farm.instances[0].0.wait_exit(Duration::from_secs(20)));
        assert_eq!(exit, Some(0), "graceful exit");
        let (mut moved, mut kept) = (0, 0);
        for (k, mut ws) in clients {
            let waiting = tokio::time::timeout(Duration::from_millis(300), futures_util::StreamExt::next(&mut ws)).await;
            match waiting {
                Ok(Some(Ok(Message::Close(Some(f))))) => {
                    assert_eq!(u16::from(f.code), 1001, "client {k}");
                    // A real client reconnects; the spreader sends it to the instance left.
                    let mut again = client_via(sp, &format!("user-{k}")).await;
                    assert_eq!(ask(&mut again, "back").await, "back", "client {k} reconnected");
                    moved += 1;
                }
                Err(_) => {
                    assert_eq!(ask(&mut ws, "still there?").await, "still there?", "client {k}");
                    kept += 1;
                }
                other => panic!("client {k}: lost without a 1001: {other:?}"),
            }
        }
        assert_eq!(moved + kept, 20);
        assert!(
            moved >= 5 && kept >= 5,
            "round robin put clients on both: moved {moved}, kept {kept}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_change_reaches_both_instances_within_refresh() {
    if !haproxy_ready() {
        return;
    }
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let farm = setup(dir.path()).await;
        let admins: Vec<SocketAddr> = farm.instances.iter().map(|i| i.2).collect();
        let addr = |b: &Backend| b.addr.to_string();
        let mut before: Vec<String> = farm.backends.iter().map(addr).collect();
        before.sort();
        for a in &admins {
            assert_eq!(listed(*a).await, before);
        }
        // One record added (d), one removed (a).
        let d = backend("d").await;
        publish(&farm.dns, &[&farm.backends[1], &farm.backends[2], &d]).await;
        let mut after = vec![addr(&farm.backends[1]), addr(&farm.backends[2]), addr(&d)];
        after.sort();
        let t0 = std::time::Instant::now();
        let mut seen = [None, None];
        while seen.iter().any(Option::is_none) && t0.elapsed() < Duration::from_secs(5) {
            for (i, a) in admins.iter().enumerate() {
                if seen[i].is_none() && listed(*a).await == after {
                    seen[i] = Some(t0.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let seen: Vec<Duration> = seen.iter().map(|s| s.expect("both instances follow the change")).collect();
        eprintln!("DNS change seen by the instances after {seen:?} (refresh 500ms)");
        // Within one refresh (jittered by at most 10 %) and the time to apply it.
        assert!(seen.iter().all(|s| *s < Duration::from_millis(1000)), "{seen:?}");
        // And traffic through either instance reaches the new backend.
        let mut reached = false;
        for k in 0..60 {
            let mut ws = client_via(farm.spreader.1, &format!("user-{k}")).await;
            if ask(&mut ws, "whoami").await == "d" {
                reached = true;
                break;
            }
        }
        assert!(reached, "no key reached the added backend");
    })
    .await;
}
