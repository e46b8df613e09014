//! Per-connection message and byte rates (`limits.client_messages_per_second` and the rest of
//! that family) end to end, with clients and a backend nobody here wrote: the `ws` package for
//! Node (`tests/js/limits_client.js`) and Python's `websockets` (`tests/py/limits_client.py`,
//! and `tests/py/limits_backend.py`, an echo backend that records when each message arrived).
//! Over its rate a connection is held back, not cut: its messages arrive late, all of them, in
//! order, and the balancer's memory stays flat; with `client_limit_action: close` it gets 1008
//! once it has been over its rate for `client_limit_grace`. Each balancer is a process of its
//! own, so its memory, metrics and access log are the test's alone. Without Node, `ws` or
//! `websockets` the tests say so and pass, except under CI, where they fail.

mod common;
use common::*;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// One test of this file at a time: each measures rates, latencies and memory, with a
/// balancer, a Python backend and Node clients busy at once on what may be two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Proxy settings Python's `websockets` would follow by default; the tests talk to loopback.
const PROXY_VARS: [&str; 6] = ["http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"];

fn script(lang: &str, name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join(lang).join(name)
}

/// Node with `ws` in `tests/js/node_modules`, and Python with `websockets` 13 or later (its
/// asyncio API); without them the test is skipped, and fails under CI.
fn clients_ready(test: &str) -> bool {
    let node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
        && script("js", "node_modules/ws/package.json").exists();
    let python = std::process::Command::new("python3")
        .args(["-c", "import websockets.asyncio.server, websockets.asyncio.client"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !(node && python) {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: node with tests/js/node_modules/ws and python3 with websockets are required under CI"
        );
        eprintln!("skipping {test}: needs node with tests/js/node_modules/ws ({node}) and python3 with websockets >= 13 ({python})");
    }
    node && python
}

/// A client script running in the background, until it prints its JSON line and exits.
struct Client {
    task: tokio::task::JoinHandle<Value>,
}

impl Client {
    /// `node tests/js/limits_client.js ARGS…`.
    fn node(args: &[&str]) -> Client {
        Client::run("node", script("js", "limits_client.js"), args)
    }

    /// `python3 tests/py/limits_client.py ARGS…`.
    fn python(args: &[&str]) -> Client {
        Client::run("python3", script("py", "limits_client.py"), args)
    }

    fn run(program: &'static str, file: PathBuf, args: &[&str]) -> Client {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let task = tokio::spawn(async move {
            let mut cmd = tokio::process::Command::new(program);
            cmd.arg(&file).args(&args).stdin(Stdio::null()).kill_on_drop(true);
            for v in PROXY_VARS {
                cmd.env_remove(v);
            }
            let out = tokio::time::timeout(Duration::from_secs(50), cmd.output())
                .await
                .unwrap_or_else(|_| panic!("{program} {args:?} did not end in time"))
                .unwrap_or_else(|e| panic!("{program} does not start: {e}"));
            let text = String::from_utf8_lossy(&out.stdout);
            let line = text.lines().last().unwrap_or_default();
            serde_json::from_str(line).unwrap_or_else(|e| {
                panic!(
                    "{program} {args:?}: {e}: stdout {text:?}, stderr {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })
        });
        Client { task }
    }

    fn finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Its JSON line.
    async fn result(self) -> Value {
        match self.task.await {
            Ok(v) => v,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("client task: {e}"),
        }
    }
}

/// What the recording backend last reported.
#[derive(Default)]
struct Seen {
    /// Its own clock (ms) at its last progress line.
    t_ms: f64,
    /// Messages received so far on each open connection, by request path.
    live: HashMap<String, u64>,
    /// The summary of each connection that ended, by request path.
    closed: HashMap<String, Value>,
}

/// `tests/py/limits_backend.py`: a `websockets` echo server reporting each connection's
/// message count every 50 ms and, when it ends, every message's arrival time.
struct Recorder {
    addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    _proc: Proc,
}

impl Recorder {
    /// Starts it; `compression: false` declines permessage-deflate (see the script).
    fn start(compression: bool) -> Recorder {
        let mut cmd = std::process::Command::new("python3");
        cmd.arg(script("py", "limits_backend.py"))
            .args(["--stdin-eof", "--progress-ms", "50"]);
        if !compression {
            cmd.args(["--compression", "none"]);
        }
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        for v in PROXY_VARS {
            cmd.env_remove(v);
        }
        let mut proc = Proc(cmd.spawn().expect("python3 starts"));
        let lines = proc.lines();
        let first = tokio::task::block_in_place(|| lines.recv_timeout(Duration::from_secs(20))).expect("the backend says it listens");
        let hello: Value = serde_json::from_str(&first).unwrap_or_else(|e| panic!("{first:?}: {e}"));
        let port = hello["port"].as_u64().expect("a port") as u16;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let into = seen.clone();
        std::thread::spawn(move || {
            for line in lines {
                let Ok(v) = serde_json::from_str::<Value>(&line) else { continue };
                let event = v["event"].as_str().unwrap_or_default().to_string();
                let mut s = into.lock().unwrap();
                match event.as_str() {
                    "progress" => {
                        s.t_ms = v["t_ms"].as_f64().unwrap_or_default();
                        s.live = v["conns"]
                            .as_object()
                            .into_iter()
                            .flatten()
                            .map(|(path, c)| (path.clone(), c["count"].as_u64().unwrap_or(0)))
                            .collect();
                    }
                    "closed" => {
                        let path = v["path"].as_str().unwrap_or_default().to_string();
                        s.closed.insert(path, v);
                    }
                    _ => {}
                }
            }
        });
        Recorder {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            seen,
            _proc: proc,
        }
    }

    /// (its clock in ms, messages received on `paths` together) at its last report.
    fn sample(&self, paths: &[&str]) -> (f64, u64) {
        let s = self.seen.lock().unwrap();
        (s.t_ms, paths.iter().map(|p| s.live.get(*p).copied().unwrap_or(0)).sum())
    }

    /// Waits until every one of `paths` is open and has had at least `min` messages.
    async fn wait_live(&self, paths: &[&str], min: u64) {
        let live = || {
            let s = self.seen.lock().unwrap();
            paths.iter().all(|p| s.live.get(*p).is_some_and(|&n| n >= min))
        };
        assert!(
            eventually(Duration::from_secs(20), live).await.is_some(),
            "{paths:?} open with {min} messages each: {:?}",
            self.seen.lock().unwrap().live
        );
    }

    /// Messages a second the backend received on `paths` together over the next `window`,
    /// timed on its own clock.
    async fn rate(&self, paths: &[&str], window: Duration) -> f64 {
        let (t1, n1) = self.sample(paths);
        tokio::time::sleep(window).await;
        let (t2, n2) = self.sample(paths);
        assert!(
            t2 - t1 > window.as_millis() as f64 / 2.0,
            "the backend reports its progress: {t1} → {t2}"
        );
        n2.saturating_sub(n1) as f64 * 1000.0 / (t2 - t1)
    }

    /// The summary of the connection on `path`, once it ended.
    async fn closed(&self, path: &str) -> Value {
        let ended = || self.seen.lock().unwrap().closed.contains_key(path);
        assert!(
            eventually(Duration::from_secs(20), ended).await.is_some(),
            "the connection on {path} ended: ended are {:?}",
            self.seen.lock().unwrap().closed.keys().collect::<Vec<_>>()
        );
        self.seen.lock().unwrap().closed[path].clone()
    }

    /// Paths of the connections that ended.
    fn ended(&self) -> Vec<String> {
        self.seen.lock().unwrap().closed.keys().cloned().collect()
    }
}

/// A connection summary without its arrival times, for messages.
fn summary(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("arrivals_ms");
    }
    v
}

/// Arrival times (ms on the backend's clock) of a connection's messages, in order.
fn arrivals(v: &Value) -> Vec<f64> {
    v["arrivals_ms"]
        .as_array()
        .unwrap_or_else(|| panic!("no arrivals: {}", summary(v)))
        .iter()
        .map(num)
        .collect()
}

/// The most messages that arrived within any `window` ms.
fn most_within(at: &[f64], window: f64) -> usize {
    let (mut most, mut j) = (0, 0);
    for (i, &t) in at.iter().enumerate() {
        while j < at.len() && at[j] - t < window {
            j += 1;
        }
        most = most.max(j - i);
    }
    most
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn count(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

#[track_caller]
fn assert_near(got: f64, want: f64, tolerance: f64, what: &str) {
    assert!(
        (got - want).abs() <= want * tolerance,
        "{what}: {got:.1}, expected {want} ± {:.0} %",
        tolerance * 100.0
    );
}

/// Asserts a client ran to its own end: connected, no error, not closed under it, in time.
#[track_caller]
fn assert_clean(r: &Value) {
    assert_eq!(r["opened"], true, "{r}");
    assert_eq!(r["errors"], json!([]), "{r}");
    assert_eq!(r["closed_early"], false, "{r}");
    assert_eq!(r["timed_out"], false, "{r}");
}

/// The sum of the series of `name` whose labels include every `labels` pair, in any order
/// (0 when there is none).
fn series(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix('{')?.split_once("} "))
        .filter(|(have, _)| {
            let have: Vec<&str> = have.split(',').collect();
            labels.iter().all(|(k, v)| have.contains(&format!("{k}=\"{v}\"").as_str()))
        })
        .map(|(_, value)| value.trim().parse::<f64>().unwrap_or(f64::NAN))
        .sum()
}

/// The pool's one backend and the routes of a test's balancer, kept for its reloads.
struct Setup {
    backend: SocketAddr,
    routes: &'static str,
}

impl Setup {
    /// One catch-all route to pool `p`.
    fn new(backend: SocketAddr) -> Setup {
        Setup {
            backend,
            routes: "      - pool: p\n",
        }
    }
}

/// Listener `l` on `bind` with the setup's routes, the admin listener on `admin`, pool `p`,
/// and `limits` (lines indented by two spaces).
fn yaml(setup: &Setup, bind: &str, admin: &str, limits: &str) -> String {
    format!(
        "listeners:\n  - name: l\n    bind: \"{bind}\"\n    routes:\n{}admin:\n  bind: \"{admin}\"\npools:\n  p:\n    backends:\n      - address: \"{}\"\nlimits:\n{limits}",
        setup.routes, setup.backend
    )
}

/// The balancer as a process of its own, logging JSON lines (read as they come).
struct Balancer {
    proc: Proc,
    addr: SocketAddr,
    admin: SocketAddr,
    logs: std::sync::mpsc::Receiver<String>,
    /// Every log line read so far (one that is not JSON as a string).
    read: Mutex<Vec<Value>>,
    file: PathBuf,
    setup: Setup,
    _dir: tempfile::TempDir,
}

impl Balancer {
    fn start(setup: Setup, limits: &str) -> Balancer {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("switchyard.yaml");
        std::fs::write(&file, yaml(&setup, "127.0.0.1:0", "127.0.0.1:0", limits)).unwrap();
        let (mut proc, logs) = Proc::spawn_logged(&["--log-format", "json", "run", "-c", file.to_str().unwrap()]);
        let out = proc.lines();
        let (mut addr, mut admin, mut other) = (None, None, Vec::new());
        tokio::task::block_in_place(|| {
            while addr.is_none() || admin.is_none() {
                let Ok(line) = out.recv_timeout(Duration::from_secs(20)) else {
                    std::thread::sleep(Duration::from_millis(200));
                    let said: Vec<String> = logs.try_iter().collect();
                    panic!(
                        "the balancer did not start:\n{}\n{}\nconfig:\n{}",
                        other.join("\n"),
                        said.join("\n"),
                        std::fs::read_to_string(&file).unwrap_or_default()
                    );
                };
                if let Some(u) = line.strip_prefix("listening l ws://") {
                    addr = u.trim_end_matches('/').parse().ok();
                } else if let Some(u) = line.strip_prefix("admin http://") {
                    admin = u.split('/').next().and_then(|a| a.parse().ok());
                } else {
                    other.push(line);
                }
            }
        });
        Balancer {
            proc,
            addr: addr.unwrap(),
            admin: admin.unwrap(),
            logs,
            read: Mutex::new(Vec::new()),
            file,
            setup,
            _dir: dir,
        }
    }

    /// `ws://addr/path`.
    fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
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

    async fn metrics(&self) -> String {
        let (code, body) = http_get(self.admin, "/metrics").await;
        assert_eq!(code, 200, "{body}");
        body
    }

    /// Live connections `/api/status` counts as throttled now.
    async fn throttled_now(&self) -> u64 {
        let (code, body) = http_get(self.admin, "/api/status").await;
        assert_eq!(code, 200, "{body}");
        let status: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("/api/status is not JSON ({e}): {body}"));
        status["throttled"]
            .as_u64()
            .unwrap_or_else(|| panic!("/api/status has no `throttled` count: {status}"))
    }

    /// Writes the config file again with these limits (same listener, admin, routes, backend).
    fn rewrite(&self, limits: &str) {
        std::fs::write(
            &self.file,
            yaml(&self.setup, &self.addr.to_string(), &self.admin.to_string(), limits),
        )
        .unwrap();
    }

    /// Reloads with these limits through `POST /api/reload`.
    async fn reload_by_api(&self, limits: &str) {
        self.rewrite(limits);
        let (code, body) = http(self.admin, "POST", "/api/reload", "").await;
        assert_eq!(code, 200, "reload refused: {body}");
        assert!(body.starts_with("ok"), "{body}");
    }

    /// Reloads with these limits by SIGHUP, and waits for the log to say it was applied.
    async fn reload_by_signal(&self, limits: &str) {
        let is_reload = |v: &Value| v["message"].as_str().is_some_and(|m| m.starts_with("config reload"));
        let before = self.log_lines().iter().filter(|&v| is_reload(v)).count();
        self.rewrite(limits);
        self.proc.signal(libc::SIGHUP);
        let line = self.nth_log(before + 1, is_reload).await;
        assert!(line["message"].as_str().is_some_and(|m| m.starts_with("config reloaded")), "{line}");
    }

    /// Every log line so far.
    fn log_lines(&self) -> Vec<Value> {
        let mut read = self.read.lock().unwrap();
        for l in self.logs.try_iter() {
            read.push(serde_json::from_str(&l).unwrap_or(Value::String(l)));
        }
        read.clone()
    }

    /// Waits (10 s at most) until `n` log lines match `pred`; returns the `n`-th.
    async fn nth_log(&self, n: usize, pred: impl Fn(&Value) -> bool) -> Value {
        let t0 = Instant::now();
        loop {
            if let Some(v) = self.log_lines().into_iter().filter(|v| pred(v)).nth(n - 1) {
                return v;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "no log line #{n} of the kind looked for in {:?}",
                self.log_lines()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The access-log line of the connection from `local` (`IP:PORT`), once it ended.
    async fn access_line(&self, local: &Value) -> Value {
        let local = local.as_str().unwrap_or_else(|| panic!("no client address: {local}"));
        self.nth_log(1, |v| {
            v["target"] == "switchyard::access" && (v["peer"] == local || v["client"] == local)
        })
        .await
    }

    /// Starts a well-behaved client: 10 round trips a second through the balancer, `n` of them.
    fn polite(&self, path: &str, n: u32) -> Client {
        Client::node(&["echo", &self.url(path), &format!("--count={n}"), "--interval-ms=100"])
    }

    /// A connection that comes and goes first, so that what the first connection costs
    /// (per-thread buffers, the relay's first allocations) is in the baseline of memory.
    async fn warm_up(&self) {
        let warm = Client::node(&["echo", &self.url("/warm"), "--count=50", "--interval-ms=2"])
            .result()
            .await;
        assert_clean(&warm);
        assert_eq!(warm["received"], 50, "{warm}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Asserts a well-behaved client was served as usual beside a flood: every round trip
/// answered, in order, with a median under 50 ms, and its connection never throttled.
async fn assert_polite_served(b: &Balancer, r: &Value, n: u64) {
    assert_clean(r);
    assert_eq!((count(&r["sent"]), count(&r["received"])), (n, n), "{r}");
    assert_eq!(r["echo_in_order"], true, "{r}");
    let p50 = num(&r["latency_ms"]["p50"]);
    assert!(p50 < 50.0, "the well-behaved client's median round trip: {p50} ms: {r}");
    let line = b.access_line(&r["local"]).await;
    assert_eq!(line["throttled_ms"], 0, "the well-behaved connection was never held back: {line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_small_messages_is_paced_to_the_rate_in_order_with_none_lost() {
    let _one = ONE_AT_A_TIME.lock().await;
    if !clients_ready("a_flood_of_small_messages_is_paced_to_the_rate_in_order_with_none_lost") {
        return;
    }
    bounded(async {
        // Python deflating 2,000 small messages a second would set the pace itself.
        let be = Recorder::start(false);
        let b = Balancer::start(
            Setup::new(be.addr),
            "  client_messages_per_second: 2000\n  client_message_burst: 200\n",
        );
        b.warm_up().await;
        let rss_before = b.rss_kib();
        // 10,000 messages handed to the socket at once, against 2,000 a second.
        let flood = Client::node(&["flood", &b.url("/flood"), "--count=10000", "--wait-echo", "--timeout-ms=40000"]);
        let polite = b.polite("/polite", 30);
        let (mut rss_peak, mut throttled) = (rss_before, Vec::new());
        while !flood.finished() {
            rss_peak = rss_peak.max(b.rss_kib());
            if (1_000..9_000).contains(&be.sample(&["/flood"]).1) {
                throttled.push(b.throttled_now().await);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let flood = flood.result().await;
        assert_clean(&flood);
        assert_eq!((count(&flood["sent"]), count(&flood["received"])), (10_000, 10_000), "{flood}");
        assert_eq!(flood["echo_in_order"], true, "{flood}");
        let seen = be.closed("/flood").await;
        assert_eq!(seen["count"], 10_000, "none lost: {}", summary(&seen));
        assert_eq!(seen["in_order"], true, "in order: {}", summary(&seen));
        let at = arrivals(&seen);
        // After the burst, one message every 0.5 ms: messages 1,000 to 9,000 take 4 s...
        assert_near(at[9_000] - at[1_000], 4_000.0, 0.25, "ms from message 1,000 to message 9,000");
        // ...and no second ever carries more than the burst and one second's worth (2,200; 10 %
        // more for the backend's own hiccups, which bunch arrivals up).
        let most = most_within(&at, 1_000.0);
        assert!(most <= 2_420, "{most} messages reached the backend within one second");
        // Held back, not read into the balancer's memory.
        let grown = rss_peak.saturating_sub(rss_before);
        assert!(grown < 4 * 1024, "resident memory grew by {grown} KiB during the flood");
        let grown = b.rss_kib().saturating_sub(rss_before);
        assert!(grown < 4 * 1024, "resident memory is {grown} KiB above its start after the flood");
        // `/api/status` counted the flood (and only it) as throttled while it was held back.
        assert!(!throttled.is_empty(), "the flood was sampled while held back");
        assert!(throttled.iter().all(|&t| t <= 1), "{throttled:?}");
        let held = throttled.iter().filter(|&&t| t == 1).count();
        assert!(held * 2 >= throttled.len(), "throttled in most samples: {throttled:?}");
        let m = b.metrics().await;
        let secs = series(&m, "switchyard_throttled_seconds_total", &[("pool", "p")]);
        assert!((2.0..15.0).contains(&secs), "switchyard_throttled_seconds_total: {secs}");
        assert_eq!(
            series(&m, "switchyard_limit_closes_total", &[("pool", "p")]),
            0.0,
            "throttled, never closed"
        );
        let line = b.access_line(&flood["local"]).await;
        assert_eq!(line["msgs_c2b"], 10_000, "{line}");
        let ms = line["throttled_ms"].as_u64().unwrap_or_else(|| panic!("no throttled_ms: {line}"));
        assert!((2_000..15_000).contains(&ms), "{line}");
        assert_polite_served(&b, &polite.result().await, 30).await;
        assert_eq!(b.throttled_now().await, 0);
        still_serves(&b.url("/after")).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_large_messages_is_paced_to_the_byte_rate_and_arrives_intact() {
    let _one = ONE_AT_A_TIME.lock().await;
    if !clients_ready("a_flood_of_large_messages_is_paced_to_the_byte_rate_and_arrives_intact") {
        return;
    }
    bounded(async {
        let be = Recorder::start(true);
        let b = Balancer::start(
            Setup::new(be.addr),
            "  client_bytes_per_second: 1048576\n  client_bytes_burst: 262144\n",
        );
        b.warm_up().await;
        let rss_before = b.rss_kib();
        // 64 messages of 64 KiB (random, so deflate cannot shrink them): 4 MiB at 1 MiB a second.
        let flood = Client::node(&[
            "flood",
            &b.url("/big"),
            "--count=64",
            "--size=65536",
            "--wait-echo",
            "--timeout-ms=40000",
        ]);
        let polite = b.polite("/polite", 30);
        let mut rss_peak = rss_before;
        while !flood.finished() {
            rss_peak = rss_peak.max(b.rss_kib());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let flood = flood.result().await;
        assert_clean(&flood);
        assert_eq!((count(&flood["sent"]), count(&flood["received"])), (64, 64), "{flood}");
        assert_eq!(flood["echo_in_order"], true, "every echo intact and in order: {flood}");
        let seen = be.closed("/big").await;
        assert_eq!(
            (count(&seen["count"]), count(&seen["intact"]), count(&seen["corrupt"])),
            (64, 64, 0),
            "{}",
            summary(&seen)
        );
        assert_eq!(seen["in_order"], true, "{}", summary(&seen));
        assert_eq!(seen["bytes"], 64 * 65_536, "{}", summary(&seen));
        let at = arrivals(&seen);
        // The burst is 4 messages; the last 48 (3 MiB) take 3 s, the whole flood 3.75 s.
        assert_near(at[63] - at[15], 3_000.0, 0.25, "ms from message 15 to message 63");
        assert_near(at[63] - at[0], 3_750.0, 0.25, "ms from the first message to the last");
        let grown = rss_peak.saturating_sub(rss_before);
        assert!(grown < 4 * 1024, "resident memory grew by {grown} KiB while 4 MiB was held back");
        let m = b.metrics().await;
        let secs = series(&m, "switchyard_throttled_seconds_total", &[("pool", "p")]);
        assert!((1.5..15.0).contains(&secs), "switchyard_throttled_seconds_total: {secs}");
        let line = b.access_line(&flood["local"]).await;
        assert!(count(&line["bytes_c2b"]) >= 64 * 65_536, "{line}");
        let ms = line["throttled_ms"].as_u64().unwrap_or_else(|| panic!("no throttled_ms: {line}"));
        assert!((1_500..15_000).contains(&ms), "{line}");
        assert_polite_served(&b, &polite.result().await, 30).await;
        still_serves(&b.url("/after")).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_close_a_connection_over_its_rate_past_the_grace_gets_1008_and_its_backend_1001() {
    let _one = ONE_AT_A_TIME.lock().await;
    if !clients_ready("with_close_a_connection_over_its_rate_past_the_grace_gets_1008_and_its_backend_1001") {
        return;
    }
    bounded(async {
        let be = Recorder::start(true);
        let b = Balancer::start(
            Setup::new(be.addr),
            "  client_messages_per_second: 50\n  client_limit_action: close\n  client_limit_grace: 1s\n",
        );
        // 10 round trips a second for 4 s: under the rate, and still going when the flood is cut.
        let polite = b.polite("/polite", 40);
        be.wait_live(&["/polite"], 1).await;
        let flood = Client::python(&[&b.url("/flood"), "--duration=10", "--timeout=20"]).result().await;
        assert_eq!(flood["opened"], true, "{flood}");
        assert_eq!(flood["code"], 1008, "{flood}");
        let reason = flood["reason"].as_str().unwrap_or_default().to_ascii_lowercase();
        assert!(reason.contains("rate"), "a reason a person can read: {flood}");
        // Over its rate from the start (its burst of 50 goes at once), cut once that has
        // lasted the grace.
        let after = num(&flood["close_frame_ms"]) - num(&flood["open_ms"]);
        assert!((900.0..5_000.0).contains(&after), "1008 after {after} ms: {flood}");
        let seen = be.closed("/flood").await;
        assert_eq!(seen["code"], 1001, "the backend is told its client went away: {}", summary(&seen));
        assert_eq!(seen["in_order"], true, "{}", summary(&seen));
        // What got through before the close: the burst and the rate, no more.
        let through = count(&seen["count"]) as f64;
        let allowed = 50.0 + 50.0 * after / 1000.0;
        assert!(
            (50.0..=allowed * 1.1 + 5.0).contains(&through),
            "{through} messages reached the backend in {after} ms (allowed {allowed})"
        );
        let m = b.metrics().await;
        let closes = |reason: &str| series(&m, "switchyard_limit_closes_total", &[("pool", "p"), ("reason", reason)]);
        assert_eq!(closes("client_messages"), 1.0, "{m}");
        assert_eq!(
            series(&m, "switchyard_limit_closes_total", &[("pool", "p")]),
            1.0,
            "that one only: {m}"
        );
        let secs = series(&m, "switchyard_throttled_seconds_total", &[("pool", "p")]);
        assert!((0.8..6.0).contains(&secs), "switchyard_throttled_seconds_total: {secs}");
        let line = b.access_line(&flood["local"]).await;
        let ms = line["throttled_ms"].as_u64().unwrap_or_else(|| panic!("no throttled_ms: {line}"));
        assert!((800..6_000).contains(&ms), "throttled for the grace before the close: {line}");
        assert_polite_served(&b, &polite.result().await, 40).await;
        assert_eq!(b.throttled_now().await, 0);
        still_serves(&b.url("/after")).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_connections_of_one_client_share_its_message_rate_and_another_client_has_its_own() {
    let _one = ONE_AT_A_TIME.lock().await;
    if !clients_ready("four_connections_of_one_client_share_its_message_rate_and_another_client_has_its_own") {
        return;
    }
    bounded(async {
        let be = Recorder::start(true);
        let b = Balancer::start(Setup::new(be.addr), "  max_messages_per_second_per_client: 200\n");
        // Each keeps 100 messages unanswered: always over the rate, with a queue short enough
        // to be answered and closed cleanly at the end (see the clients).
        let ones = ["/one/1", "/one/2", "/one/3", "/one/4"];
        let mine: Vec<Client> = ones
            .iter()
            .map(|p| Client::node(&["flood", &b.url(p), "--duration-ms=4000", "--max-in-flight=100", "--wait-echo"]))
            .collect();
        let other = Client::python(&[&b.url("/two"), "--local-address=127.0.0.2", "--duration=4", "--max-in-flight=100"]);
        be.wait_live(&ones, 0).await;
        be.wait_live(&["/two"], 0).await;
        // The burst (one second's worth) is spent at once; then each client gets its 200.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let window = Duration::from_secs(2);
        let (shared, own) = tokio::join!(be.rate(&ones, window), be.rate(&["/two"], window));
        assert_near(
            shared,
            200.0,
            0.25,
            "messages a second of the four connections from 127.0.0.1 together",
        );
        assert_near(own, 200.0, 0.25, "messages a second of the connection from 127.0.0.2");
        for c in mine {
            assert_clean(&c.result().await);
        }
        let other = other.result().await;
        assert_clean(&other);
        assert_eq!(other["drained"], true, "{other}");
        assert!(other["local"].as_str().is_some_and(|l| l.starts_with("127.0.0.2:")), "{other}");
        // Over the whole run too, from the first message to the last: one allowance (its
        // burst and its rate) for the four together, not four; and one for the other.
        let through = |paths: &[&str], summaries: &[Value]| {
            let at: Vec<Vec<f64>> = summaries.iter().map(arrivals).collect();
            let first = at.iter().filter_map(|a| a.first()).fold(f64::MAX, |m, &t| m.min(t));
            let last = at.iter().filter_map(|a| a.last()).fold(0.0_f64, |m, &t| m.max(t));
            let total: usize = at.iter().map(Vec::len).sum();
            let allowed = 200.0 + 200.0 * (last - first) / 1000.0;
            assert!(
                (allowed * 0.75..=allowed * 1.1).contains(&(total as f64)),
                "{total} messages on {paths:?} in {:.0} ms (one allowance: {allowed:.0})",
                last - first
            );
        };
        let mut summaries = Vec::new();
        for p in ones.iter().chain(&["/two"]) {
            let s = be.closed(p).await;
            assert_eq!((&s["in_order"], &s["code"]), (&json!(true), &json!(1000)), "{}", summary(&s));
            summaries.push(s);
        }
        through(&ones[..], &summaries[..4]);
        through(&["/two"][..], &summaries[4..]);
        let m = b.metrics().await;
        assert_eq!(
            series(&m, "switchyard_limit_closes_total", &[("pool", "p")]),
            0.0,
            "throttled, never closed"
        );
        assert!(series(&m, "switchyard_throttled_seconds_total", &[("pool", "p")]) > 0.0, "{m}");
        still_serves(&b.url("/after")).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_the_rate_of_a_live_connection() {
    let _one = ONE_AT_A_TIME.lock().await;
    if !clients_ready("a_reload_changes_the_rate_of_a_live_connection") {
        return;
    }
    bounded(async {
        let be = Recorder::start(true);
        let b = Balancer::start(Setup::new(be.addr), "  client_messages_per_second: 50\n");
        // Always 100 messages unanswered: over any of the rates below, and a short queue to
        // answer at the end.
        let flood = Client::node(&[
            "flood",
            &b.url("/r"),
            "--duration-ms=8000",
            "--max-in-flight=100",
            "--wait-echo",
            "--timeout-ms=30000",
        ]);
        be.wait_live(&["/r"], 50).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let window = Duration::from_millis(1500);
        let slow = be.rate(&["/r"], window).await;
        assert_near(slow, 50.0, 0.25, "messages a second at 50");
        b.reload_by_api("  client_messages_per_second: 500\n").await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let fast = be.rate(&["/r"], window).await;
        assert_near(fast, 500.0, 0.25, "messages a second on the same connection after a reload to 500");
        assert!(fast / slow > 6.0, "{slow:.1} → {fast:.1} a second");
        b.reload_by_signal("  client_messages_per_second: 50\n").await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let back = be.rate(&["/r"], window).await;
        assert_near(back, 50.0, 0.25, "messages a second after SIGHUP back to 50");
        let flood = flood.result().await;
        assert_clean(&flood);
        let seen = be.closed("/r").await;
        assert_eq!(
            (&seen["in_order"], &seen["code"]),
            (&json!(true), &json!(1000)),
            "{}",
            summary(&seen)
        );
        assert_eq!(be.ended(), vec!["/r".to_string()], "one connection all along");
        let m = b.metrics().await;
        assert_eq!(series(&m, "switchyard_config_reloads_total", &[("result", "ok")]), 2.0, "{m}");
        still_serves(&b.url("/after")).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_connection_gets_pings_and_outlives_idle_timeout() {
    let _one = ONE_AT_A_TIME.lock().await;
    if !clients_ready("a_throttled_connection_gets_pings_and_outlives_idle_timeout") {
        return;
    }
    bounded(async {
        let be = Recorder::start(true);
        let b = Balancer::start(
            Setup::new(be.addr),
            "  client_messages_per_second: 10\n  ping_interval: 1s\n  ping_timeout: 1s\n  idle_timeout: 2s\n",
        );
        // The timers are live: a connection that says nothing is closed meanwhile.
        let mut idle = connect(&b.url("/idle")).await;
        // 60 messages at once: 10 go (the burst), 50 wait 5 s for their tokens.
        let r = Client::node(&["flood", &b.url("/slow"), "--count=60", "--wait-echo", "--timeout-ms=20000"])
            .result()
            .await;
        assert_clean(&r);
        assert_eq!(r["received"], 60, "{r}");
        assert_eq!(r["echo_in_order"], true, "{r}");
        let took = num(&r["last_message_ms"]) - num(&r["open_ms"]);
        assert_near(took, 5_000.0, 0.25, "ms to the last echo");
        let seen = be.closed("/slow").await;
        assert_eq!((count(&seen["count"]), &seen["in_order"]), (60, &json!(true)), "{}", summary(&seen));
        assert_eq!(
            seen["code"],
            1000,
            "the client's own close reached the backend, not a 1001 for idleness or a missed pong: {}",
            summary(&seen)
        );
        assert_eq!(expect_close(&mut idle).await.0, 1001, "the silent connection was closed");
        let m = b.metrics().await;
        assert_eq!(series(&m, "switchyard_limit_closes_total", &[("pool", "p")]), 0.0, "{m}");
        still_serves(&b.url("/after")).await;
        // Held back for 5 s with `ping_interval: 1s`: the balancer went on pinging it (its
        // pongs wait behind what it sent, unread, so they cannot count against it).
        assert!(count(&r["pings"]) >= 2, "the balancer's pings reached the throttled client: {r}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routes_own_limits_override_the_process_wide_ones() {
    let _one = ONE_AT_A_TIME.lock().await;
    if !clients_ready("a_routes_own_limits_override_the_process_wide_ones") {
        return;
    }
    bounded(async {
        // The unlimited flood runs as fast as Python can echo: without deflate's cost.
        let be = Recorder::start(false);
        let routes = "      - match: { path_prefix: /chat }\n        pool: p\n        limits:\n          client_messages_per_second: 20\n      - pool: p\n";
        let b = Balancer::start(
            Setup {
                backend: be.addr,
                routes,
            },
            "  client_messages_per_second: 0\n",
        );
        let chat = Client::node(&["flood", &b.url("/chat/1"), "--duration-ms=4000", "--max-in-flight=20", "--wait-echo"]);
        let free = Client::node(&["flood", &b.url("/free"), "--duration-ms=4000"]);
        be.wait_live(&["/chat/1", "/free"], 20).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let window = Duration::from_secs(2);
        let (chat_rate, free_rate) = tokio::join!(be.rate(&["/chat/1"], window), be.rate(&["/free"], window));
        assert_near(chat_rate, 20.0, 0.25, "messages a second on the route limited to 20");
        assert!(free_rate > 500.0, "the other route is not limited: {free_rate:.0} a second");
        assert_clean(&chat.result().await);
        assert_clean(&free.result().await);
        still_serves(&b.url("/chat/after")).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_direction_is_paced_by_backend_messages_per_second() {
    let _one = ONE_AT_A_TIME.lock().await;
    if !clients_ready("the_backend_direction_is_paced_by_backend_messages_per_second") {
        return;
    }
    bounded(async {
        let be = Recorder::start(true);
        let b = Balancer::start(Setup::new(be.addr), "  backend_messages_per_second: 100\n");
        // 400 messages at once, echoed at once by the backend: its 400 echoes come out at
        // 100 a second after a burst of 100.
        let r = Client::node(&["flood", &b.url("/echoes"), "--count=400", "--wait-echo", "--timeout-ms=20000"])
            .result()
            .await;
        assert_clean(&r);
        assert_eq!((count(&r["received"]), &r["echo_in_order"]), (400, &json!(true)), "{r}");
        let took = num(&r["last_message_ms"]) - num(&r["open_ms"]);
        assert_near(took, 3_000.0, 0.25, "ms to the last echo");
        let seen = be.closed("/echoes").await;
        assert_eq!(
            (count(&seen["count"]), &seen["in_order"]),
            (400, &json!(true)),
            "{}",
            summary(&seen)
        );
        assert_eq!(seen["code"], 1000, "{}", summary(&seen));
        let m = b.metrics().await;
        assert_eq!(series(&m, "switchyard_limit_closes_total", &[("pool", "p")]), 0.0, "{m}");
        still_serves(&b.url("/after")).await;
    })
    .await
}

impl Client {
    /// `python3 tests/py/raw_ws.py client ARGS…`: frames written by hand (a ping flood, empty
    /// fragments, a reset under a backlog); its times are ms on CLOCK_MONOTONIC, the clock of
    /// [`RawBackend`]'s too.
    fn raw(args: &[&str]) -> Client {
        let mut all: Vec<&str> = vec!["client"];
        all.extend_from_slice(args);
        Client::run("python3", script("py", "raw_ws.py"), &all)
    }
}

impl Balancer {
    /// Reloads through `POST /api/reload` with other routes (same listener, admin and backend).
    async fn reload_routes(&self, routes: &'static str, limits: &str) {
        let setup = Setup {
            backend: self.setup.backend,
            routes,
        };
        std::fs::write(&self.file, yaml(&setup, &self.addr.to_string(), &self.admin.to_string(), limits)).unwrap();
        let (code, body) = http(self.admin, "POST", "/api/reload", "").await;
        assert_eq!(code, 200, "reload refused: {body}");
        assert!(body.starts_with("ok"), "{body}");
    }
}

/// What the raw backend last reported.
#[derive(Default)]
struct Frames {
    /// CLOCK_MONOTONIC (ms) at its last progress line.
    t_ms: f64,
    /// Counts (`messages`, `frames`, `pings`, `bytes`) of each open connection, by request path.
    live: serde_json::Map<String, Value>,
    /// The summary of each connection that ended, by request path.
    closed: HashMap<String, Value>,
}

/// `python3 tests/py/raw_ws.py backend`: a backend on a raw socket that sees every frame (each
/// ping, each empty fragment) where `websockets` answers pings itself and joins fragments. It
/// echoes data frames and answers pings; with `--flood-prefix`, it floods the connections on
/// those paths with numbered messages.
struct RawBackend {
    addr: SocketAddr,
    seen: Arc<Mutex<Frames>>,
    _proc: Proc,
}

impl RawBackend {
    fn start(args: &[&str]) -> RawBackend {
        let mut cmd = std::process::Command::new("python3");
        cmd.arg(script("py", "raw_ws.py"))
            .args(["backend", "--stdin-eof", "--progress-ms", "50"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut proc = Proc(cmd.spawn().expect("python3 starts"));
        let lines = proc.lines();
        let first = tokio::task::block_in_place(|| lines.recv_timeout(Duration::from_secs(20))).expect("the backend says it listens");
        let hello: Value = serde_json::from_str(&first).unwrap_or_else(|e| panic!("{first:?}: {e}"));
        let port = hello["port"].as_u64().expect("a port") as u16;
        let seen = Arc::new(Mutex::new(Frames::default()));
        let into = seen.clone();
        std::thread::spawn(move || {
            for line in lines {
                let Ok(v) = serde_json::from_str::<Value>(&line) else { continue };
                let event = v["event"].as_str().unwrap_or_default().to_string();
                let mut s = into.lock().unwrap();
                match event.as_str() {
                    "progress" => {
                        s.t_ms = v["t_ms"].as_f64().unwrap_or_default();
                        s.live = v["conns"].as_object().cloned().unwrap_or_default();
                    }
                    "closed" => {
                        let path = v["path"].as_str().unwrap_or_default().to_string();
                        s.closed.insert(path, v);
                    }
                    _ => {}
                }
            }
        });
        RawBackend {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            seen,
            _proc: proc,
        }
    }

    /// (its clock in ms, the `key` count of the connection on `path`) at its last report; 0
    /// while that connection is not open.
    fn sample(&self, path: &str, key: &str) -> (f64, u64) {
        let s = self.seen.lock().unwrap();
        let n = s.live.get(path).and_then(|c| c[key].as_u64()).unwrap_or(0);
        (s.t_ms, n)
    }

    /// Waits until the connection on `path` is open with a `key` count of at least `min`.
    async fn wait_live(&self, path: &str, key: &str, min: u64) {
        let live = || {
            let s = self.seen.lock().unwrap();
            let n = s.live.get(path).and_then(|c| c[key].as_u64());
            n.is_some_and(|n| n >= min)
        };
        assert!(
            eventually(Duration::from_secs(20), live).await.is_some(),
            "{path} open with {min} {key}: {:?}",
            self.seen.lock().unwrap().live
        );
    }

    /// The `key` count a second on `path` over the next `window`, timed on its own clock.
    async fn rate(&self, path: &str, key: &str, window: Duration) -> f64 {
        let (t1, n1) = self.sample(path, key);
        tokio::time::sleep(window).await;
        let (t2, n2) = self.sample(path, key);
        assert!(
            t2 - t1 > window.as_millis() as f64 / 2.0,
            "the backend reports its progress: {t1} → {t2}"
        );
        n2.saturating_sub(n1) as f64 * 1000.0 / (t2 - t1)
    }

    /// The summary of the connection on `path`, once it ended.
    async fn closed(&self, path: &str) -> Value {
        let ended = || self.seen.lock().unwrap().closed.contains_key(path);
        assert!(
            eventually(Duration::from_secs(20), ended).await.is_some(),
            "the connection on {path} ended: ended are {:?}",
            self.seen.lock().unwrap().closed.keys().collect::<Vec<_>>()
        );
        self.seen.lock().unwrap().closed[path].clone()
    }
}

/// Asserts a raw client connected and met no error.
#[track_caller]
fn assert_raw_opened(r: &Value) {
    assert_eq!(r["opened"], true, "{r}");
    assert_eq!(r["errors"], json!([]), "{r}");
    assert_eq!(r["timed_out"], false, "{r}");
}

/// Three connections from 127.0.0.1 flood and a fourth from the same address (a client behind
/// the same NAT) sends a message every 500 ms, against `max_messages_per_second_per_client:
/// 50`: once the shared allowance runs short they take turns, so the light one gets every
/// message through, each within 0.5 s, while the four together still get one allowance (the
/// burst and 50 a second), not more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flooders_sharing_a_clients_rate_do_not_starve_a_light_connection_of_the_same_client() {
    let _one = ONE_AT_A_TIME.lock().await;
    if !clients_ready("flooders_sharing_a_clients_rate_do_not_starve_a_light_connection_of_the_same_client") {
        return;
    }
    bounded(async {
        let be = Recorder::start(true);
        let b = Balancer::start(Setup::new(be.addr), "  max_messages_per_second_per_client: 50\n");
        // Each keeps 20 messages unanswered: always over the rate, with queues short enough to
        // be answered and closed cleanly at the end (60 messages: 1.2 s at 50 a second).
        let floods = ["/flood/1", "/flood/2", "/flood/3"];
        let flooders: Vec<Client> = floods
            .iter()
            .map(|p| Client::node(&["flood", &b.url(p), "--duration-ms=7000", "--max-in-flight=20", "--wait-echo"]))
            .collect();
        be.wait_live(&floods, 1).await;
        // The burst is spent at once: from here on the flooders wait for every token.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        // 12 round trips, 500 ms apart.
        let light = Client::node(&["echo", &b.url("/light"), "--count=12", "--interval-ms=500"]);
        be.wait_live(&["/light"], 0).await;
        let all = ["/flood/1", "/flood/2", "/flood/3", "/light"];
        let rate = be.rate(&all, Duration::from_secs(3)).await;
        assert_near(rate, 50.0, 0.2, "messages a second of the four connections from 127.0.0.1 together");
        let light = light.result().await;
        assert_clean(&light);
        assert_eq!(
            (count(&light["sent"]), count(&light["received"])),
            (12, 12),
            "every message of the light connection got through: {light}"
        );
        assert_eq!(light["echo_in_order"], true, "{light}");
        let slowest = num(&light["latency_ms"]["max"]);
        assert!(
            slowest < 500.0,
            "the light connection's slowest round trip: {slowest} ms (a turn, not the flooders' queue): {light}"
        );
        for c in flooders {
            assert_clean(&c.result().await);
        }
        // Over the whole run too, from the first message to the last: one allowance for the four.
        let mut at = Vec::new();
        for p in all {
            let s = be.closed(p).await;
            assert_eq!((&s["in_order"], &s["code"]), (&json!(true), &json!(1000)), "{}", summary(&s));
            at.extend(arrivals(&s));
        }
        let first = at.iter().fold(f64::MAX, |m, &t| m.min(t));
        let last = at.iter().fold(0.0_f64, |m, &t| m.max(t));
        let allowed = 50.0 + 50.0 * (last - first) / 1000.0;
        assert_near(
            at.len() as f64,
            allowed,
            0.2,
            &format!("messages of the four in {:.0} ms (one allowance: {allowed:.0})", last - first),
        );
        let m = b.metrics().await;
        assert_eq!(
            series(&m, "switchyard_limit_closes_total", &[("pool", "p")]),
            0.0,
            "throttled, never closed: {m}"
        );
        still_serves(&b.url("/after")).await;
    })
    .await
}

/// A throttled client (5 messages a second) that vanishes with 4,000 messages of 1 KiB unread
/// (a reset: SO_LINGER 0) is found out by the balancer's next ping (`ping_interval: 1s`): its
/// backlog is dropped, not sent on at its rate for 13 minutes nor in a rush, and the backend
/// gets a close frame, 1001, not a cut connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_client_that_vanishes_has_its_backlog_dropped_and_its_backend_gets_1001() {
    let _one = ONE_AT_A_TIME.lock().await;
    if !clients_ready("a_throttled_client_that_vanishes_has_its_backlog_dropped_and_its_backend_gets_1001") {
        return;
    }
    bounded(async {
        let be = RawBackend::start(&[]);
        let b = Balancer::start(
            Setup::new(be.addr),
            "  client_messages_per_second: 5\n  ping_interval: 1s\n  ping_timeout: 1s\n",
        );
        // 4,000 numbered messages at once; 2 s later, the reset.
        let r = Client::raw(&["messages", &b.url("/gone"), "--count=4000", "--size=1024", "--hold=2", "--reset"])
            .result()
            .await;
        assert_raw_opened(&r);
        assert!(r["code"].is_null(), "the client was not closed before it left: {r}");
        let (open, reset) = (num(&r["open_ms"]), num(&r["reset_ms"]));
        let seen = be.closed("/gone").await;
        assert_eq!(
            (&seen["code"], &seen["reason"]),
            (&json!(1001), &json!("client went away")),
            "the backend got a close frame, not a cut connection: {}",
            summary(&seen)
        );
        assert_eq!(seen["in_order"], true, "{}", summary(&seen));
        // Found out at the next ping (within 1 s), before any ping timeout could end it.
        let found = num(&seen["closed_ms"]) - reset;
        assert!(
            (0.0..2_500.0).contains(&found),
            "the backend's connection closed {found:.0} ms after the reset: {}",
            summary(&seen)
        );
        // Up to the reset: the burst and the rate; after it, no more than the rate allows.
        let at = arrivals(&seen);
        let before = at.iter().filter(|&&t| t <= reset).count() as f64;
        let allowed = 5.0 + 5.0 * (reset - open) / 1000.0;
        assert!(
            (allowed * 0.75..=allowed + 3.0).contains(&before),
            "{before} messages reached the backend in the {:.0} ms before the reset (allowed {allowed:.1})",
            reset - open
        );
        let after = at.len() as f64 - before;
        assert!(
            after <= 5.0 * found / 1000.0 + 2.0,
            "{after} messages reached the backend in the {found:.0} ms from the reset to the close"
        );
        let line = b.access_line(&r["local"]).await;
        let ms = line["throttled_ms"].as_u64().unwrap_or_else(|| panic!("no throttled_ms: {line}"));
        assert!(ms > 0, "{line}");
        assert!(count(&line["msgs_c2b"]) < 40, "the backlog was dropped, not read: {line}");
        let m = b.metrics().await;
        assert_eq!(series(&m, "switchyard_limit_closes_total", &[("pool", "p")]), 0.0, "{m}");
        assert_eq!(b.throttled_now().await, 0);
        still_serves(&b.url("/after")).await;
    })
    .await
}

/// Control frames and fragments are messages: with `client_messages_per_second: 10` a client
/// that sends 4,000 pings at once gets them to the backend at 10 a second (each one answered),
/// and a message of 10,000 empty continuation frames goes on at 10 frames a second, not in one
/// go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_and_empty_fragments_each_cost_a_message() {
    let _one = ONE_AT_A_TIME.lock().await;
    if !clients_ready("pings_and_empty_fragments_each_cost_a_message") {
        return;
    }
    bounded(async {
        let be = RawBackend::start(&[]);
        let b = Balancer::start(Setup::new(be.addr), "  client_messages_per_second: 10\n");
        let pings = Client::raw(&["pings", &b.url("/pings"), "--count=4000", "--hold=5"]);
        let fragments = Client::raw(&["fragments", &b.url("/fragments"), "--count=10000", "--hold=5"]);
        be.wait_live("/pings", "pings", 1).await;
        be.wait_live("/fragments", "frames", 1).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let window = Duration::from_secs(2);
        let (ping_rate, fragment_rate) = tokio::join!(be.rate("/pings", "pings", window), be.rate("/fragments", "frames", window));
        assert_near(ping_rate, 10.0, 0.25, "pings a second reaching the backend");
        assert_near(
            fragment_rate,
            10.0,
            0.25,
            "frames a second of the fragmented message reaching the backend",
        );
        let (t, through_pings) = be.sample("/pings", "pings");
        let (_, through_frames) = be.sample("/fragments", "frames");
        let (_, whole) = be.sample("/fragments", "messages");
        assert_eq!(whole, 0, "the message of 10,002 frames is still on its way");
        let pings = pings.result().await;
        let fragments = fragments.result().await;
        assert_raw_opened(&pings);
        assert_raw_opened(&fragments);
        assert!(
            pings["code"].is_null() && fragments["code"].is_null(),
            "throttled, not closed: {pings} {fragments}"
        );
        // From the open on: the burst (10) and 10 a second, no more.
        for (what, through, r) in [("pings", through_pings, &pings), ("frames", through_frames, &fragments)] {
            let allowed = 10.0 + 10.0 * (t - num(&r["open_ms"])) / 1000.0;
            assert!(
                (allowed * 0.75..=allowed + 2.0).contains(&(through as f64)),
                "{through} {what} reached the backend in {:.0} ms (allowed {allowed:.0})",
                t - num(&r["open_ms"])
            );
        }
        assert!(
            count(&pings["pongs"]) >= through_pings,
            "the backend's pong to each ping came back: {through_pings} pings through: {pings}"
        );
        let m = b.metrics().await;
        assert_eq!(series(&m, "switchyard_limit_closes_total", &[("pool", "p")]), 0.0, "{m}");
        assert!(series(&m, "switchyard_throttled_seconds_total", &[("pool", "p")]) > 0.0, "{m}");
        still_serves(&b.url("/after")).await;
    })
    .await
}

/// A byte rate counts each frame's header: with only `client_bytes_per_second: 1000` set, a
/// flood of empty messages (6 bytes a frame, masked) is held to the burst and 1,000 bytes a
/// second (about 167 of them), and with `client_limit_action: close` it is closed with 1008
/// once the grace (1 s) has passed, counted as `reason="client_bytes"`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_byte_rate_counts_frame_headers_so_a_flood_of_empty_messages_is_held_and_closed() {
    let _one = ONE_AT_A_TIME.lock().await;
    if !clients_ready("a_byte_rate_counts_frame_headers_so_a_flood_of_empty_messages_is_held_and_closed") {
        return;
    }
    bounded(async {
        let be = RawBackend::start(&[]);
        let b = Balancer::start(
            Setup::new(be.addr),
            "  client_bytes_per_second: 1000\n  client_limit_action: close\n  client_limit_grace: 1s\n",
        );
        let r = Client::raw(&["empties", &b.url("/empties"), "--count=100000", "--hold=8"])
            .result()
            .await;
        assert_raw_opened(&r);
        assert_eq!(r["code"], 1008, "{r}");
        let reason = r["reason"].as_str().unwrap_or_default().to_ascii_lowercase();
        assert!(reason.contains("byte"), "a reason a person can read: {r}");
        let after = num(&r["close_frame_ms"]) - num(&r["open_ms"]);
        assert!((900.0..3_000.0).contains(&after), "1008 after {after:.0} ms: {r}");
        let seen = be.closed("/empties").await;
        assert_eq!(seen["code"], 1001, "{}", summary(&seen));
        assert_eq!(seen["bytes"], 0, "empty messages only: {}", summary(&seen));
        let through = count(&seen["messages"]) as f64;
        let allowed = (1000.0 + 1000.0 * after / 1000.0) / 6.0;
        assert!(
            (allowed * 0.75..=allowed * 1.1 + 2.0).contains(&through),
            "{through} empty messages reached the backend in {after:.0} ms (allowed {allowed:.0})"
        );
        let m = b.metrics().await;
        assert_eq!(
            series(&m, "switchyard_limit_closes_total", &[("pool", "p"), ("reason", "client_bytes")]),
            1.0,
            "{m}"
        );
        assert_eq!(
            series(&m, "switchyard_limit_closes_total", &[("pool", "p")]),
            1.0,
            "that one only: {m}"
        );
        still_serves(&b.url("/after")).await;
    })
    .await
}

/// A reload that turns `client_limit_action: close` on (grace 3 s) starts the grace of the
/// connections already held back from the reload: two flooders held back for 1.5 s before it
/// are not closed at once nor 1.5 s later, but 3 s after the reload, with 1008 to them and
/// 1001 to the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_to_close_starts_the_grace_of_connections_already_held_back_from_the_reload() {
    let _one = ONE_AT_A_TIME.lock().await;
    if !clients_ready("a_reload_to_close_starts_the_grace_of_connections_already_held_back_from_the_reload") {
        return;
    }
    bounded(async {
        let be = Recorder::start(true);
        let b = Balancer::start(Setup::new(be.addr), "  client_messages_per_second: 5\n");
        let held = ["/held/1", "/held/2"];
        let clients: Vec<Client> = held
            .iter()
            .map(|p| Client::python(&[&b.url(p), "--duration=15", "--timeout=25"]))
            .collect();
        be.wait_live(&held, 5).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(b.throttled_now().await, 2, "both held back before the reload");
        let asked = Instant::now();
        b.reload_by_api("  client_messages_per_second: 5\n  client_limit_action: close\n  client_limit_grace: 3s\n")
            .await;
        let applied = Instant::now();
        let early = eventually(Duration::from_millis(2_500).saturating_sub(applied.elapsed()), || {
            !be.ended().is_empty()
        })
        .await;
        assert!(
            early.is_none(),
            "{:?} closed {:?} after the reload, before its grace",
            be.ended(),
            applied.elapsed()
        );
        let both = eventually(Duration::from_millis(4_500).saturating_sub(asked.elapsed()), || {
            be.ended().len() == 2
        })
        .await;
        assert!(
            both.is_some(),
            "both closed within 4.5 s of the reload: {:?} after {:?}",
            be.ended(),
            asked.elapsed()
        );
        for p in held {
            let seen = be.closed(p).await;
            assert_eq!(seen["code"], 1001, "{}", summary(&seen));
            assert_eq!(seen["in_order"], true, "{}", summary(&seen));
        }
        for c in clients {
            let r = c.result().await;
            assert_eq!((&r["opened"], &r["code"]), (&json!(true), &json!(1008)), "{r}");
            let reason = r["reason"].as_str().unwrap_or_default().to_ascii_lowercase();
            assert!(reason.contains("rate"), "{r}");
        }
        let m = b.metrics().await;
        assert_eq!(
            series(&m, "switchyard_limit_closes_total", &[("pool", "p"), ("reason", "client_messages")]),
            2.0,
            "{m}"
        );
        assert_eq!(series(&m, "switchyard_limit_closes_total", &[("pool", "p")]), 2.0, "{m}");
        assert_eq!(b.throttled_now().await, 0);
        still_serves(&b.url("/after")).await;
    })
    .await
}

/// A reload that puts a route (`/admin`, 1,000 messages a second) in front of the one a live
/// connection came by (`/chat`, 2 a second; same pool) leaves that connection its own route's
/// limits: it goes on at 2 a second, not at the first route to its pool's rate nor at the
/// process-wide 50.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_put_in_front_by_a_reload_leaves_a_live_connection_its_own_routes_limits() {
    let _one = ONE_AT_A_TIME.lock().await;
    if !clients_ready("a_route_put_in_front_by_a_reload_leaves_a_live_connection_its_own_routes_limits") {
        return;
    }
    bounded(async {
        let be = Recorder::start(true);
        let chat = "      - match: { path_prefix: /chat }\n        pool: p\n        limits:\n          client_messages_per_second: 2\n      - pool: p\n";
        let b = Balancer::start(
            Setup {
                backend: be.addr,
                routes: chat,
            },
            "  client_messages_per_second: 50\n",
        );
        let flood = Client::node(&["flood", &b.url("/chat/1"), "--duration-ms=9000"]);
        be.wait_live(&["/chat/1"], 2).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = be.rate(&["/chat/1"], Duration::from_secs(3)).await;
        assert_near(before, 2.0, 0.25, "messages a second on /chat before the reload");
        let admin_first = "      - match: { path_prefix: /admin }\n        pool: p\n        limits:\n          client_messages_per_second: 1000\n      - match: { path_prefix: /chat }\n        pool: p\n        limits:\n          client_messages_per_second: 2\n      - pool: p\n";
        b.reload_routes(admin_first, "  client_messages_per_second: 50\n").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let after = be.rate(&["/chat/1"], Duration::from_secs(4)).await;
        assert_near(
            after,
            2.0,
            0.25,
            "messages a second on the same /chat connection once /admin was put in front of its route",
        );
        assert_clean(&flood.result().await);
        let m = b.metrics().await;
        assert_eq!(series(&m, "switchyard_config_reloads_total", &[("result", "ok")]), 1.0, "{m}");
        still_serves(&b.url("/after")).await;
    })
    .await
}

/// `backend_messages_per_second: 10` against a backend that floods its client: the client
/// gets the messages in order at 10 a second after a burst of 10, and the balancer's pings
/// (`ping_interval: 1s`) reach it all the while, ahead of the backlog held back in that
/// direction; its close reaches the backend, and nothing is closed for the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_held_back_by_backend_messages_per_second_gets_its_messages_paced_and_its_pings() {
    let _one = ONE_AT_A_TIME.lock().await;
    if !clients_ready("a_client_held_back_by_backend_messages_per_second_gets_its_messages_paced_and_its_pings") {
        return;
    }
    bounded(async {
        let be = RawBackend::start(&["--flood-prefix", "/flood"]);
        let b = Balancer::start(
            Setup::new(be.addr),
            "  backend_messages_per_second: 10\n  ping_interval: 1s\n  ping_timeout: 1s\n",
        );
        // Reads for 5 s, answering pings, then closes (1000).
        let r = Client::raw(&["read", &b.url("/flood/1"), "--hold=5"]).result().await;
        assert_raw_opened(&r);
        assert!(r["code"].is_null(), "not closed under it: {r}");
        assert_eq!(r["in_order"], true, "{r}");
        let open = num(&r["open_ms"]);
        let first_5s = |key: &str| -> usize {
            let all = r[key].as_array().unwrap_or_else(|| panic!("no {key}: {r}"));
            all.iter().map(num).filter(|&t| t - open <= 5_000.0).count()
        };
        let pings = first_5s("pings_ms");
        assert!(pings >= 3, "{pings} pings reached the held-back client in 5 s: {r}");
        assert_near(
            first_5s("arrivals_ms") as f64,
            60.0,
            0.2,
            "messages in the first 5 s (a burst of 10, then 10 a second)",
        );
        let at = arrivals(&r);
        assert!(at.len() > 20, "{r}");
        let steady = (at.len() - 11) as f64 * 1000.0 / (at[at.len() - 1] - at[10]);
        assert_near(steady, 10.0, 0.2, "messages a second after the burst");
        let most = most_within(&at, 1_000.0);
        assert!(most <= 22, "{most} messages within one second (the burst and a second's worth: 20)");
        let seen = be.closed("/flood/1").await;
        assert_eq!(seen["code"], 1000, "the client's close reached the backend: {}", summary(&seen));
        assert!(
            count(&seen["flood_sent"]) > at.len() as u64,
            "the backend had more to send: {}",
            summary(&seen)
        );
        let m = b.metrics().await;
        assert_eq!(series(&m, "switchyard_limit_closes_total", &[("pool", "p")]), 0.0, "{m}");
        assert!(series(&m, "switchyard_throttled_seconds_total", &[("pool", "p")]) > 0.0, "{m}");
        still_serves(&b.url("/after")).await;
    })
    .await
}
