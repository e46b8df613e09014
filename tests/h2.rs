//! HTTP/2 at the TLS edge, with clients nobody here wrote: `curl --http2` (many streams on
//! one connection), Python `httpx` with `http2=True` (a streamed upload, SSE), and RFC 8441
//! driven frame by frame with Python's `h2` package (`tests/py/h2ws.py`): WebSockets on
//! streams, shed streams, streams reset by the client, backends that die, drains, and the
//! abuse HTTP/2 invites (`tests/py/h2abuse.py`).

mod common;
use common::http::http_backend;
use common::*;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// One TLS listener (with `listener` lines) in front of `backends`, then `tail`.
fn tls_config(dir: &Path, backends: &[SocketAddr], listener: &str, tail: &str) -> String {
    let (c, k) = self_signed(dir);
    let list: String = backends.iter().map(|b| format!("      - address: \"{b}\"\n")).collect();
    format!(
        "listeners:\n  - name: l\n    bind: \"127.0.0.1:0\"\n    tls: {{ cert: \"{}\", key: \"{}\" }}\n{listener}    routes:\n      - pool: p\npools:\n  p:\n    algorithm: round_robin\n    backends:\n{list}{tail}",
        c.display(),
        k.display()
    )
}

const ADMIN: &str = "admin:\n  bind: \"127.0.0.1:0\"\n";

fn script(name: &str) -> String {
    format!("{}/tests/py/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Python with the `h2` and `httpx` packages, or `None` (then the test is skipped, and
/// fails under CI, where `.ci/run` installs them).
fn python_or_skip(test: &str) -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import h2, httpx"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: python3 with h2 and httpx is required under CI"
        );
        eprintln!("skipping {test}: python3 with h2 and httpx not found");
    }
    ok
}

/// A Python client process whose lines are `key value` facts.
struct Py {
    child: tokio::process::Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    facts: HashMap<String, String>,
}

impl Py {
    fn start(script_name: &str, args: &[&str]) -> Py {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new("python3")
            .arg(script(script_name))
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 starts");
        let out = child.stdout.take().unwrap();
        Py {
            child,
            lines: tokio::io::BufReader::new(out).lines(),
            facts: HashMap::new(),
        }
    }

    /// Reads facts until `key` is said; returns its value.
    async fn fact(&mut self, key: &str) -> String {
        loop {
            if let Some(v) = self.facts.get(key) {
                return v.clone();
            }
            let line = tokio::time::timeout(Duration::from_secs(20), self.lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("no `{key}` in time (have {:?})", self.facts))
                .unwrap()
                .unwrap_or_else(|| panic!("the client ended before saying `{key}` (have {:?})", self.facts));
            let (k, v) = line.split_once(' ').unwrap_or((&line, ""));
            self.facts.insert(k.to_string(), v.to_string());
        }
    }

    /// Lets a client that waits on its standard input go on.
    async fn go_on(&mut self) {
        let stdin = self.child.stdin.as_mut().unwrap();
        let _ = stdin.write_all(b"\n").await;
        let _ = stdin.flush().await;
    }

    /// Runs a scenario to its end; returns every fact.
    async fn run(script_name: &str, args: &[&str]) -> HashMap<String, String> {
        let mut p = Py::start(script_name, args);
        drop(p.child.stdin.take());
        while let Ok(Ok(Some(line))) = tokio::time::timeout(Duration::from_secs(30), p.lines.next_line()).await {
            let (k, v) = line.split_once(' ').unwrap_or((&line, ""));
            p.facts.insert(k.to_string(), v.to_string());
        }
        let status = tokio::time::timeout(Duration::from_secs(5), p.child.wait())
            .await
            .expect("client exits")
            .unwrap();
        assert!(status.success(), "{script_name} {args:?} failed: {:?}", p.facts);
        p.facts
    }
}

/// A WebSocket backend over raw sockets that echoes data frames, records the close code
/// each connection got (`None`: its socket ended without one), drops the connection on a
/// text `die`, and counts upgrades.
struct Recording {
    addr: SocketAddr,
    closes: Arc<Mutex<Vec<Option<u16>>>>,
    heads: Arc<Mutex<Vec<String>>>,
}

async fn recording_backend() -> Recording {
    recording_backend_with("").await
}

/// [`recording_backend`] whose `101` carries `extra` header lines.
async fn recording_backend_with(extra: &'static str) -> Recording {
    use switchyard::ws::frame::{write_header, Opcode};
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let closes = Arc::new(Mutex::new(Vec::new()));
    let heads = Arc::new(Mutex::new(Vec::new()));
    let (c2, h2) = (closes.clone(), heads.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let (closes, heads) = (c2.clone(), h2.clone());
            tokio::spawn(async move {
                let (head, mut pending) = accept_upgrade_raw(&mut s, extra).await;
                heads.lock().unwrap().push(head);
                let mut code = None;
                while let Ok(f) = switchyard::ws::peer::read_frame(&mut s, &mut pending).await {
                    match f.opcode {
                        Opcode::Close => {
                            code = Some(if f.payload.len() >= 2 {
                                u16::from_be_bytes([f.payload[0], f.payload[1]])
                            } else {
                                1005
                            });
                            let mut out = [0u8; 14];
                            let n = write_header(&mut out, true, Opcode::Close, None, f.payload.len() as u64);
                            let mut v = out[..n].to_vec();
                            v.extend(&f.payload);
                            let _ = s.write_all(&v).await;
                            break;
                        }
                        Opcode::Text if f.payload == b"die" => {
                            // A crash: the socket goes, no close frame.
                            break;
                        }
                        Opcode::Text | Opcode::Binary => {
                            let mut out = [0u8; 14];
                            let n = write_header(&mut out, true, f.opcode, None, f.payload.len() as u64);
                            let mut v = out[..n].to_vec();
                            v.extend(&f.payload);
                            if s.write_all(&v).await.is_err() {
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                closes.lock().unwrap().push(code);
            });
        }
    });
    Recording { addr, closes, heads }
}

/// The balancer as a process of its own, for the tests that measure its memory (the tests of
/// this file run side by side in one process).
struct Apart {
    proc: Proc,
    port: String,
}

impl Apart {
    fn start(dir: &Path, yaml: &str) -> Apart {
        let file = dir.join("apart.yaml");
        std::fs::write(&file, yaml).unwrap();
        let mut proc = Proc::spawn(&["run", "-c", file.to_str().unwrap()]);
        let url = tokio::task::block_in_place(|| proc.line_after("listening l "));
        Apart { proc, port: port_of(&url) }
    }

    /// Its resident memory (KiB).
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.proc.0.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

/// The port of the URL a balancer process prints for its listener (`ws://127.0.0.1:PORT/`).
fn port_of(url: &str) -> String {
    url.trim().trim_end_matches('/').rsplit(':').next().unwrap().to_string()
}

fn port(p: &Proxy) -> String {
    p.addr.port().to_string()
}

#[tokio::test]
async fn curl_sends_many_streams_on_one_connection_spread_over_the_pool() {
    bounded(async {
        let (a, b) = (http_backend("a").await, http_backend("b").await);
        let dir = tempfile::tempdir().unwrap();
        let p = Proxy::start(&tls_config(dir.path(), &[a.addr, b.addr], "", ADMIN));
        let url = format!("https://localhost:{}/n", port(&p));
        let mut args: Vec<String> = ["-sk", "--http2", "--parallel", "--parallel-max", "16"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(["--resolve".to_string(), format!("localhost:{}:127.0.0.1", port(&p))]);
        for i in 0..32 {
            args.push("-w".into());
            args.push("%{http_version} %{response_code} %{num_connects}\\n".into());
            args.push("-o".into());
            args.push("/dev/null".into());
            args.push(format!("{url}{i}"));
        }
        let out = tokio::process::Command::new("curl").args(&args).output().await.expect("curl runs");
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 32, "{text}");
        assert!(
            lines.iter().all(|l| l.starts_with("2 200 ")),
            "every answer over HTTP/2, 200: {text}"
        );
        let connects: u32 = lines.iter().map(|l| l.rsplit(' ').next().unwrap().parse::<u32>().unwrap()).sum();
        assert_eq!(connects, 1, "all 32 requests on one TCP connection: {text}");
        let (na, nb) = (
            a.seen.requests.load(std::sync::atomic::Ordering::SeqCst),
            b.seen.requests.load(std::sync::atomic::Ordering::SeqCst),
        );
        assert_eq!((na + nb, na), (32, 16), "round robin over the pool, stream by stream");
        // The backend sees an HTTP/1.1 request with the authority as Host, over https.
        let seen = a.seen.last_headers.lock().unwrap().clone();
        assert!(seen.contains(&format!("host: localhost:{}\n", port(&p))), "{seen}");
        assert!(seen.contains("x-forwarded-proto: https\n"), "{seen}");
        // Each stream is one request in the metrics, labelled with the client's protocol.
        let metrics = http_get(p.admin(), "/metrics").await.1;
        let series = format!(
            "switchyard_http_requests_total{{pool=\"p\",backend=\"{}\",status=\"2xx\",protocol=\"h2\"}}",
            a.addr
        );
        assert_eq!(metric(&metrics, &series), 16.0, "{metrics}");
        let h1 = format!(
            "switchyard_http_requests_total{{pool=\"p\",backend=\"{}\",status=\"2xx\",protocol=\"http1\"}}",
            a.addr
        );
        assert!(!metrics.contains(&h1), "no HTTP/1 request was made: {metrics}");
        // `http2: false` offers HTTP/1.1 only.
        let dir2 = tempfile::tempdir().unwrap();
        let p1 = Proxy::start(&tls_config(dir2.path(), &[a.addr], "    http2: false\n", ""));
        let out = tokio::process::Command::new("curl")
            .args(["-sk", "--http2", "-w", "%{http_version}", "-o", "/dev/null"])
            .arg(format!("https://127.0.0.1:{}/", port(&p1)))
            .output()
            .await
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "1.1");
    })
    .await
}

#[tokio::test]
async fn httpx_streams_an_upload_and_sse_events_as_sent() {
    if !python_or_skip("httpx_streams_an_upload_and_sse_events_as_sent") {
        return;
    }
    bounded(async {
        let a = http_backend("a").await;
        let dir = tempfile::tempdir().unwrap();
        let p = Proxy::start(&tls_config(dir.path(), &[a.addr], "", ""));
        let facts = Py::run("h2plain.py", &["127.0.0.1", &port(&p)]).await;
        assert_eq!(facts["version"], "HTTP/2");
        // 64 chunks of 16 KiB, sent as they were made: the backend counted all of them.
        assert_eq!(facts["upload"], "200 1048576");
        assert_eq!(a.seen.upload_bytes.load(std::sync::atomic::Ordering::SeqCst), 1_048_576);
        // Ten events sent 100 ms apart arrive spread out, not in one piece at the end.
        assert_eq!(facts["sse_events"], "10");
        let spread: f64 = facts["sse_spread_ms"].parse().unwrap();
        assert!(spread >= 600.0, "events arrived as sent (first to last {spread} ms)");
        // Many concurrent streams on one connection.
        assert_eq!(facts["concurrent"], "50 ok");
    })
    .await
}

#[tokio::test]
async fn two_websockets_on_one_connection_close_independently() {
    if !python_or_skip("two_websockets_on_one_connection_close_independently") {
        return;
    }
    bounded(async {
        let b = recording_backend().await;
        let dir = tempfile::tempdir().unwrap();
        let p = Proxy::start(&tls_config(dir.path(), &[b.addr], "", ADMIN));
        let facts = Py::run("h2ws.py", &["two", "127.0.0.1", &port(&p)]).await;
        assert_eq!(facts["alpn"], "h2");
        assert_eq!(facts["status"], "200,200");
        assert_eq!(facts["echo"], "on a,on b");
        assert_eq!(facts["close_a"], "4001");
        assert_eq!(facts["b_still"], "b after a closed");
        assert_eq!(facts["close_b"], "4002");
        assert_eq!(facts["ended"], "True,True");
        let mut closes = b.closes.lock().unwrap().clone();
        closes.sort();
        assert_eq!(
            closes,
            vec![Some(4001), Some(4002)],
            "each backend connection got its stream's code"
        );
        let metrics = http_get(p.admin(), "/metrics").await.1;
        let by = |protocol: &str| {
            let series = format!(
                "switchyard_connections_total{{pool=\"p\",backend=\"{}\",protocol=\"{protocol}\"}}",
                b.addr
            );
            metric(&metrics, &series)
        };
        assert_eq!((by("h2"), by("http1")), (2.0, 0.0), "{metrics}");
        // The backend got an HTTP/1.1 upgrade with the balancer's own key.
        let heads = b.heads.lock().unwrap().clone();
        assert!(
            heads
                .iter()
                .all(|h| h.starts_with("GET /") && h.contains("Upgrade: websocket") && h.contains("Sec-WebSocket-Key: ")),
            "{heads:?}"
        );
    })
    .await
}

#[tokio::test]
async fn a_shed_stream_gets_200_then_1013_and_the_connection_still_serves() {
    if !python_or_skip("a_shed_stream_gets_200_then_1013_and_the_connection_still_serves") {
        return;
    }
    bounded(async {
        let b = http_backend("b").await;
        let dir = tempfile::tempdir().unwrap();
        // The HTTP/2 connection is the one connection allowed: its WebSocket stream is shed.
        let p = Proxy::start(&tls_config(dir.path(), &[b.addr], "", "limits:\n  max_connections: 1\n"));
        let facts = Py::run("h2ws.py", &["shed", "127.0.0.1", &port(&p)]).await;
        assert_eq!(facts["status"], "200");
        assert_eq!(facts["protocol"], "chat", "the first offered subprotocol is echoed");
        assert_eq!(facts["close"], "1013");
        assert_eq!(facts["after"], "200", "a plain request on the same connection is still served");
        assert_eq!(
            b.seen.requests.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "the backend saw the plain request only, not the shed stream"
        );
    })
    .await
}

#[tokio::test]
async fn a_reset_stream_gives_the_backend_1001_and_a_dead_backend_gives_1011() {
    if !python_or_skip("a_reset_stream_gives_the_backend_1001_and_a_dead_backend_gives_1011") {
        return;
    }
    bounded(async {
        let b = recording_backend().await;
        let dir = tempfile::tempdir().unwrap();
        let p = Proxy::start(&tls_config(dir.path(), &[b.addr], "", ADMIN));
        let mut c = Py::start("h2ws.py", &["reset", "127.0.0.1", &port(&p)]);
        assert_eq!(c.fact("echo").await, "before reset");
        assert_eq!(c.fact("other").await, "after reset", "the connection serves another stream");
        let closes = b.closes.clone();
        assert!(
            eventually(T, || closes.lock().unwrap().first() == Some(&Some(1001)))
                .await
                .is_some(),
            "the backend of the reset stream got 1001: {:?}",
            b.closes.lock().unwrap()
        );
        assert_eq!(b.closes.lock().unwrap().len(), 1, "the other stream's backend is untouched");
        // The status API (and the dashboard) shows one HTTP/2 connection with one stream open.
        let (code, body) = http_get(p.admin(), "/api/status").await;
        assert_eq!(code, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (v["h2"]["connections"].as_u64(), v["h2"]["streams"].as_u64()),
            (Some(1), Some(1)),
            "{body}"
        );
        c.go_on().await;
        // A backend that dies: its stream gets 1011 and ends.
        let facts = Py::run("h2ws.py", &["die", "127.0.0.1", &port(&p)]).await;
        assert_eq!(facts["echo"], "hello");
        assert_eq!(facts["close"], "1011");
        assert_eq!(facts["ended"], "True");
    })
    .await
}

#[tokio::test]
async fn a_shutdown_sends_goaway_and_closes_websocket_streams_1001() {
    if !python_or_skip("a_shutdown_sends_goaway_and_closes_websocket_streams_1001") {
        return;
    }
    bounded(async {
        let b = recording_backend().await;
        let dir = tempfile::tempdir().unwrap();
        let p = Proxy::start(&tls_config(dir.path(), &[b.addr], "", "limits:\n  drain_timeout: 1s\n"));
        let mut c = Py::start("h2ws.py", &["hold", "127.0.0.1", &port(&p)]);
        assert_eq!(c.fact("echo").await, "hello");
        let server = p.server;
        let stop = tokio::task::spawn_blocking(move || server.shutdown(None));
        assert_eq!(c.fact("close").await, "1001");
        assert_eq!(c.fact("goaway").await, "0", "GOAWAY with NO_ERROR");
        tokio::time::timeout(Duration::from_secs(15), stop)
            .await
            .expect("shutdown ends")
            .unwrap();
        assert_eq!(b.closes.lock().unwrap().clone(), vec![Some(1001)], "the backend got 1001 too");
    })
    .await
}

#[tokio::test]
async fn extended_connect_is_checked_like_an_upgrade() {
    if !python_or_skip("extended_connect_is_checked_like_an_upgrade") {
        return;
    }
    bounded(async {
        let b = recording_backend().await;
        let dir = tempfile::tempdir().unwrap();
        let p = Proxy::start(&tls_config(
            dir.path(),
            &[b.addr],
            "    allowed_origins: [\"https://good.example\"]\n",
            "",
        ));
        let run = |args: Vec<&'static str>| {
            let port = port(&p);
            async move {
                let mut all = vec!["status", "127.0.0.1"];
                all.push(Box::leak(port.into_boxed_str()));
                all.extend(args);
                Py::run("h2ws.py", &all).await
            }
        };
        let f = run(vec!["origin=https://evil.example"]).await;
        assert_eq!(f["status"], "403", "{f:?}");
        let f = run(vec!["origin=https://good.example", "sec-websocket-version=8"]).await;
        assert_eq!(f["status"], "426", "{f:?}");
        let f = run(vec!["origin=https://good.example"]).await;
        assert_eq!(f["status"], "200", "{f:?}");
        let f = run(vec!["origin=https://good.example", "protocol=chat"]).await;
        assert_eq!(f["status"], "400", "a :protocol other than websocket: {f:?}");
        assert_eq!(b.heads.lock().unwrap().len(), 1, "only the good stream reached the backend");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abuse_is_cut_off_with_goaway_while_others_are_served() {
    if !python_or_skip("abuse_is_cut_off_with_goaway_while_others_are_served") {
        return;
    }
    bounded(async {
        let a = http_backend("a").await;
        let dir = tempfile::tempdir().unwrap();
        let p = Apart::start(
            dir.path(),
            &tls_config(
                dir.path(),
                &[a.addr],
                "",
                "limits:\n  keepalive_timeout: 2s\n  max_request_header_bytes: 8KiB\n",
            ),
        );
        let rss_before = p.rss_kib();
        for attack in [
            "rapid_reset",
            "continuation",
            "hpack_bomb",
            "ping_flood",
            "ping_ack_flood",
            "settings_flood",
            "window_update_flood",
            "unknown_flood",
            "empty_data",
            "idle",
            "streams",
        ] {
            let before = a.seen.requests.load(std::sync::atomic::Ordering::SeqCst);
            let mut attacker = Py::start("h2abuse.py", &[attack, "127.0.0.1", &p.port]);
            // Another client is served while the attack runs.
            let facts = Py::run("h2ws.py", &["get", "127.0.0.1", &p.port]).await;
            assert_eq!(facts["status"], "200", "{attack}: another client is served");
            let outcome = attacker.fact("outcome").await;
            assert!(
                outcome.starts_with("cut"),
                "{attack}: the attacker is cut off: {outcome} {:?}",
                attacker.facts
            );
            if attack.ends_with("_flood") {
                // A flood ends the connection itself, with GOAWAY (the open upload keeps it
                // from ending as idle).
                assert_eq!(outcome, "cut goaway=0", "{attack}");
            }
            let sent: u64 = attacker.fact("requests").await.parse().unwrap();
            let reached = (a.seen.requests.load(std::sync::atomic::Ordering::SeqCst) - before - 1) as u64;
            // Streams that stay open are real concurrency: at most `max_concurrent_streams`
            // of them; of the rest, a small share.
            let bound = if attack == "streams" { 100 } else { sent / 10 + 1 };
            assert!(
                reached <= bound,
                "{attack}: backends see a small share of the attack's {sent} requests: {reached}"
            );
        }
        // What the attacks left behind in the balancer stays small.
        let grown = p.rss_kib().saturating_sub(rss_before);
        assert!(grown < 64 * 1024, "resident memory grew by {grown} KiB over the attacks");
    })
    .await
}

#[tokio::test]
async fn chromium_opens_the_page_and_its_websocket_on_one_h2_connection() {
    use common::browser::{chromium_or_skip, Page};
    if !chromium_or_skip("chromium_opens_the_page_and_its_websocket_on_one_h2_connection") {
        return;
    }
    bounded(async {
        let a = http_backend("a").await;
        let dir = tempfile::tempdir().unwrap();
        let p = Proxy::start(&tls_config(dir.path(), &[a.addr], "", ""));
        let mut page = Page::new().await;
        page.cdp
            .call("Security.setIgnoreCertificateErrors", serde_json::json!({ "ignore": true }))
            .await;
        let origin = format!("https://127.0.0.1:{}", port(&p));
        page.goto(&format!("{origin}/page")).await;
        let opened = page
            .cdp
            .eval(&format!(
                "(async () => {{
                    const nav = performance.getEntriesByType('navigation')[0].nextHopProtocol;
                    window.ws = new WebSocket('wss://127.0.0.1:{}/ws');
                    await new Promise((ok, fail) => {{ ws.onopen = ok; ws.onerror = () => fail('error'); }});
                    const echo = await new Promise(ok => {{ ws.onmessage = e => ok(e.data); ws.send('over one connection'); }});
                    return nav + ' ' + echo;
                }})()",
                port(&p)
            ))
            .await;
        assert_eq!(opened, "h2 over one connection", "the page over h2, the WebSocket echoes");
        // One TCP connection carries the page and the WebSocket.
        let ss = std::process::Command::new("ss")
            .args(["-Htn", "state", "established", &format!("( sport = :{} )", port(&p))])
            .output()
            .expect("ss runs");
        let established = String::from_utf8_lossy(&ss.stdout).lines().count();
        assert_eq!(established, 1, "{}", String::from_utf8_lossy(&ss.stdout));
        let code = page
            .cdp
            .eval("new Promise(ok => { ws.onclose = e => ok(e.code); ws.close(4321, 'page done'); })")
            .await;
        assert_eq!(code, 4321, "the page's close code came back through the backend");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_stalls_only_its_own_stream() {
    if !python_or_skip("a_client_that_stops_reading_stalls_only_its_own_stream") {
        return;
    }
    bounded(async {
        let b = backend("b").await;
        let dir = tempfile::tempdir().unwrap();
        let p = Apart::start(dir.path(), &tls_config(dir.path(), &[b.addr], "", ""));
        let rss_before = p.rss_kib();
        // The backend streams 20,000 messages of 1 KiB on stream A, whose reader stopped.
        let mut c = Py::start("h2ws.py", &["stall", "127.0.0.1", &p.port, "20000"]);
        assert_eq!(c.fact("b_echo").await, "b goes on", "the other stream is not held up");
        let stalled: u64 = c.fact("a_received_stalled").await.parse().unwrap();
        assert!(stalled <= 65_535, "no more than the stream's window reached the client: {stalled}");
        // Backpressure, not buffering: the balancer holds what its windows allow, and the
        // backend's writes wait on its socket.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let grown = p.rss_kib().saturating_sub(rss_before);
        assert!(
            grown < 8 * 1024,
            "resident memory grew by {grown} KiB while 20 MiB waited to be read"
        );
        c.go_on().await;
        assert_eq!(
            c.fact("a_frames").await,
            "20000 in_order=True",
            "nothing lost once the client reads again"
        );
    })
    .await
}

#[tokio::test]
async fn a_reload_keeps_h2_connections_and_applies_to_their_next_streams() {
    if !python_or_skip("a_reload_keeps_h2_connections_and_applies_to_their_next_streams") {
        return;
    }
    bounded(async {
        let (a, b) = (http_backend("a").await, http_backend("b").await);
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = self_signed(dir.path());
        let yaml = |routes: &str, addr: &str| {
            format!(
                "listeners:\n  - name: l\n    bind: \"{addr}\"\n    tls: {{ cert: \"{}\", key: \"{}\" }}\n    routes:\n{routes}      - pool: p\npools:\n  p:\n    backends:\n      - address: \"{}\"\n  q:\n    backends:\n      - address: \"{}\"\n",
                c.display(),
                k.display(),
                a.addr,
                b.addr
            )
        };
        let (p, path) = Proxy::start_file(dir.path(), &yaml("", "127.0.0.1:0"));
        let mut client = Py::start("h2ws.py", &["reload", "127.0.0.1", &port(&p)]);
        assert_eq!(client.fact("echo").await, "before");
        std::fs::write(&path, yaml("      - match: { path_prefix: /new }\n        pool: q\n", &p.addr.to_string())).unwrap();
        switchyard::reload::reload(&p.server.shared).expect("reload ok");
        client.go_on().await;
        assert_eq!(client.fact("echo_after").await, "after", "the WebSocket stream lived through the reload");
        assert_eq!(client.fact("new").await, "200 b", "the next stream is routed by the new config");
        // A reload that removes the listener: the WebSocket is closed 1001 and the connection
        // gets GOAWAY (not left answering 503 to every new stream).
        let other = format!("127.0.0.1:{}", dead_port().await.port());
        let removed = yaml("", &other).replace("name: l", "name: m") + "limits:\n  drain_timeout: 1s\n";
        std::fs::write(&path, removed).unwrap();
        switchyard::reload::reload(&p.server.shared).expect("reload ok");
        client.go_on().await;
        assert_eq!(client.fact("close").await, "1001");
        assert_eq!(client.fact("goaway").await, "0");
    })
    .await
}

#[tokio::test]
async fn a_response_whose_window_never_opens_ends_at_idle_timeout() {
    if !python_or_skip("a_response_whose_window_never_opens_ends_at_idle_timeout") {
        return;
    }
    bounded(async {
        let a = http_backend("a").await;
        let dir = tempfile::tempdir().unwrap();
        let p = Proxy::start(&tls_config(dir.path(), &[a.addr], "", "limits:\n  idle_timeout: 2s\n"));
        let facts = Py::run("h2ws.py", &["nowindow", "127.0.0.1", &port(&p), "15"]).await;
        let received: u64 = facts["received"].parse().unwrap();
        assert!(received <= 65_535, "no more than the window: {received}");
        let cut: u64 = facts["cut_after_ms"]
            .parse()
            .unwrap_or_else(|_| panic!("the connection was never cut: {facts:?}"));
        assert!((2_000..8_000).contains(&cut), "cut after idle_timeout (2 s) and a check: {cut} ms");
        // The stream, its backend connection and the backend's slot are free again.
        let b = p.backend(0);
        assert!(
            eventually(T, || b.active.load(std::sync::atomic::Ordering::SeqCst) == 0)
                .await
                .is_some(),
            "the backend's slot came back"
        );
        assert_eq!(p.server.shared.h2.streams.load(std::sync::atomic::Ordering::SeqCst), 0);
        assert_eq!(p.server.shared.h2.connections.load(std::sync::atomic::Ordering::SeqCst), 0);
    })
    .await
}

#[tokio::test]
async fn cookies_split_over_fields_reach_the_backend_as_one_line() {
    if !python_or_skip("cookies_split_over_fields_reach_the_backend_as_one_line") {
        return;
    }
    bounded(async {
        let a = http_backend("a").await;
        let dir = tempfile::tempdir().unwrap();
        let p = Proxy::start(&tls_config(dir.path(), &[a.addr], "", ""));
        let facts = Py::run("h2ws.py", &["cookies", "127.0.0.1", &port(&p)]).await;
        assert_eq!(facts["cookie_lines"], r#"["cookie: a=1; b=2; c=3"]"#);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_names_the_protocol_of_each_stream() {
    if !python_or_skip("the_access_log_names_the_protocol_of_each_stream") {
        return;
    }
    bounded(async {
        let b = recording_backend().await;
        let a = http_backend("a").await;
        let dir = tempfile::tempdir().unwrap();
        let yaml = tls_config(dir.path(), &[b.addr], "", "").replace(
            "    routes:\n      - pool: p\n",
            "    routes:\n      - match: { path_prefix: /plain }\n        pool: q\n      - pool: p\n",
        ) + &format!("  q:\n    backends:\n      - address: \"{}\"\n", a.addr);
        let f = dir.path().join("logged.yaml");
        std::fs::write(&f, yaml).unwrap();
        let (mut p, logs) = Proc::spawn_logged(&["--log-format", "json", "run", "-c", f.to_str().unwrap()]);
        let url = tokio::task::block_in_place(|| p.line_after("listening l "));
        let port = port_of(&url);
        let out = tokio::process::Command::new("curl")
            .args(["-sk", "--http2", "-o", "/dev/null", "-w", "%{http_version} %{response_code}"])
            .arg(format!("https://127.0.0.1:{port}/plain"))
            .output()
            .await
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "2 200");
        let facts = Py::run("h2ws.py", &["two", "127.0.0.1", &port]).await;
        assert_eq!(facts["close_b"], "4002");
        let mut access = Vec::new();
        let t0 = std::time::Instant::now();
        while access.len() < 3 && t0.elapsed() < Duration::from_secs(10) {
            if let Ok(l) = logs.recv_timeout(Duration::from_millis(200)) {
                let v: serde_json::Value = serde_json::from_str(&l).unwrap();
                if v["target"] == "switchyard::access" {
                    access.push(v);
                }
            }
        }
        assert_eq!(access.len(), 3, "{access:?}");
        assert!(access.iter().all(|v| v["protocol"] == "h2"), "{access:?}");
        let plain = access.iter().filter(|v| v["method"] == "GET" && v["path"] == "/plain").count();
        let ws = access.iter().filter(|v| v["message"] == "connection closed").count();
        assert_eq!((plain, ws), (1, 2), "{access:?}");
    })
    .await
}

#[tokio::test]
async fn extensions_are_negotiated_end_to_end_over_h2() {
    if !python_or_skip("extensions_are_negotiated_end_to_end_over_h2") {
        return;
    }
    bounded(async {
        let b = recording_backend_with("Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n").await;
        let dir = tempfile::tempdir().unwrap();
        let p = Proxy::start(&tls_config(dir.path(), &[b.addr], "", ""));
        let offer = "sec-websocket-extensions=permessage-deflate; client_max_window_bits";
        let facts = Py::run("h2ws.py", &["status", "127.0.0.1", &port(&p), offer]).await;
        assert_eq!(facts["status"], "200");
        assert_eq!(
            facts["extensions"], "permessage-deflate; server_no_context_takeover",
            "the backend's answer reaches the client"
        );
        let heads = b.heads.lock().unwrap().clone();
        assert!(
            heads[0].contains("sec-websocket-extensions: permessage-deflate; client_max_window_bits\r\n"),
            "the client's offer reaches the backend: {heads:?}"
        );
    })
    .await
}
