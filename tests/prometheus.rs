//! The Prometheus rules of `deploy/prometheus` and the `/metrics` they are written against:
//! `promtool check rules` and `promtool test rules` (every alert with synthetic series),
//! `promtool check metrics` on a running balancer's scrape, and Debian's real Prometheus
//! scraping a running balancer with the shipped rules (their `for:` shortened): the recording
//! rules return series, a killed backend's alert goes pending, then firing, then away when
//! the backend is back, and a reconnect storm makes the shedding alert fire. Without promtool and prometheus the tests say so and pass,
//! except under CI, where they fail.

mod common;
use common::*;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn rules_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus")
}

fn tools_ready(test: &str) -> bool {
    let have = |c: &str| {
        Command::new(c)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let ok = have("promtool") && have("prometheus");
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: promtool and prometheus (Debian's prometheus package) are required under CI"
        );
        eprintln!("skipping {test}: needs promtool and prometheus");
    }
    ok
}

fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(rules_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    if let Some(text) = stdin {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

#[test]
fn the_shipped_rules_are_valid_and_every_alert_fires_on_its_unit_test() {
    if !tools_ready("the_shipped_rules_are_valid_and_every_alert_fires_on_its_unit_test") {
        return;
    }
    let (ok, out) = promtool(&["check", "rules", "switchyard.rules.yml"], None);
    assert!(ok, "{out}");
    assert!(out.contains("SUCCESS: 20 rules found"), "{out}");
    let (ok, out) = promtool(&["test", "rules", "switchyard.rules.test.yml"], None);
    assert!(ok, "{out}");
    // Every alert of the rules has a unit test.
    let rules = std::fs::read_to_string(rules_dir().join("switchyard.rules.yml")).unwrap();
    let tests = std::fs::read_to_string(rules_dir().join("switchyard.rules.test.yml")).unwrap();
    let alerts: Vec<&str> = rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")).collect();
    assert_eq!(alerts.len(), 8, "{alerts:?}");
    for a in alerts {
        assert!(tests.contains(&format!("alertname: {a}")), "{a} has no unit test");
    }
}

/// Every PromQL expression of the Grafana board (`deploy/grafana/switchyard.json`).
fn dashboard_exprs() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/switchyard.json");
    let d: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("the board is JSON");
    let vars = d["templating"]["list"].as_array().expect("templating");
    assert!(
        vars.iter()
            .any(|v| v["name"] == "datasource" && v["type"] == "datasource" && v["query"] == "prometheus"),
        "the data source is a variable"
    );
    let mut exprs = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().into_iter().flatten() {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{p}");
            exprs.push(t["expr"].as_str().expect("expr").to_string());
        }
    }
    exprs
}

#[test]
fn every_expression_of_the_grafana_board_parses() {
    if !tools_ready("every_expression_of_the_grafana_board_parses") {
        return;
    }
    let exprs = dashboard_exprs();
    assert!(exprs.len() >= 20, "{exprs:?}");
    // Each as a recording rule: promtool parses it (and names what does not).
    let dir = tempfile::tempdir().unwrap();
    let mut rules = String::from("groups:\n  - name: board\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: board:expr_{i}\n        expr: {}\n",
            serde_json::to_string(e).unwrap()
        ));
    }
    let file = dir.path().join("board.rules.yml");
    std::fs::write(&file, rules).unwrap();
    let (ok, out) = promtool(&["check", "rules", file.to_str().unwrap()], None);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("SUCCESS: {} rules found", exprs.len())), "{out}");
    // It is built on the shipped recording rules: each one it names exists.
    let shipped = std::fs::read_to_string(rules_dir().join("switchyard.rules.yml")).unwrap();
    for e in &exprs {
        for name in e
            .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .filter(|w| w.matches(':').count() == 2)
        {
            assert!(
                shipped.contains(&format!("record: {name}")),
                "{name} is not a shipped recording rule"
            );
        }
    }
}

/// A balancer run as its own process (the admin listener on port 0), with its admin address.
fn balancer(dir: &Path, yaml: &str) -> (Proc, SocketAddr, SocketAddr) {
    let cfg = dir.join("sy.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let mut p = Proc::spawn(&["run", "-c", cfg.to_str().unwrap()]);
    let lines = p.lines();
    let (mut listen, mut admin) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(20);
    while listen.is_none() || admin.is_none() {
        let line = lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the balancer says where it listens");
        let addr = || {
            line.split_whitespace().find_map(|w| {
                w.trim_start_matches("ws://")
                    .trim_start_matches("http://")
                    .trim_end_matches('/')
                    .parse::<SocketAddr>()
                    .ok()
            })
        };
        if line.starts_with("listening") {
            listen = addr();
        } else if line.starts_with("admin") {
            admin = addr();
        }
    }
    (p, listen.unwrap(), admin.unwrap())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_records_the_series_fires_the_backend_and_storm_alerts() {
    if !tools_ready("a_real_prometheus_records_the_series_fires_the_backend_and_storm_alerts") {
        return;
    }
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let mut b1 = backend("b1").await;
        let b2 = backend("b2").await;
        let yaml = format!(
            "{}    health_check: {{ kind: tcp, interval: 200ms, timeout: 200ms, rise: 1, fall: 1 }}\nadmin:\n  bind: \"127.0.0.1:0\"\nlimits:\n  max_connections_per_second: 20\n",
            config("round_robin", &[b1.addr, b2.addr], "")
        );
        let (_sy, listen, admin) = balancer(dir.path(), &yaml);

        // `promtool check metrics` on a scrape with traffic in it.
        let mut ws = connect(&format!("ws://{listen}/x")).await;
        assert_eq!(ask(&mut ws, "hi").await, "hi");
        let (status, scrape) = http_get(admin, "/metrics").await;
        assert_eq!(status, 200);
        let (ok, out) = promtool(&["check", "metrics"], Some(&scrape));
        assert!(ok, "promtool check metrics: {out}");
        for family in ["switchyard_admitted_connections", "switchyard_max_connections", "process_open_fds", "process_max_fds", "switchyard_config_file_matches 1"] {
            assert!(scrape.contains(family), "{family} missing from the scrape");
        }

        // The shipped rules with their `for:` shortened, one-second scrapes and evaluations.
        let rules = std::fs::read_to_string(rules_dir().join("switchyard.rules.yml"))
            .unwrap()
            .replace("for: 1m", "for: 2s")
            .replace("for: 2m", "for: 2s")
            .replace("for: 30s", "for: 2s");
        std::fs::write(dir.path().join("rules.yml"), rules).unwrap();
        let port = free_port();
        std::fs::write(
            dir.path().join("prometheus.yml"),
            format!("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [rules.yml]\nscrape_configs:\n  - job_name: switchyard\n    static_configs:\n      - targets: [\"{admin}\"]\n"),
        )
        .unwrap();
        let _prom = Proc(
            Command::new("prometheus")
                .current_dir(dir.path())
                .args([
                    "--config.file=prometheus.yml",
                    "--storage.tsdb.path=data",
                    &format!("--web.listen-address=127.0.0.1:{port}"),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("prometheus runs"),
        );
        let prom: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(prom).await.is_err() || http_get(prom, "/-/ready").await.0 != 200 {
            assert!(Instant::now() < deadline, "prometheus did not start");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let query = |q: &'static str| async move {
            let (_, body) = http_get(prom, &format!("/api/v1/query?query={q}")).await;
            serde_json::from_str::<serde_json::Value>(body.split("\r\n\r\n").last().unwrap_or(&body)).unwrap_or_default()
        };
        let b1_addr = b1.addr.to_string();
        let b1_addr = b1_addr.as_str();
        let alert_state = || async move {
            let (_, body) = http_get(prom, "/api/v1/alerts").await;
            let v: serde_json::Value = serde_json::from_str(body.split("\r\n\r\n").last().unwrap_or(&body)).unwrap_or_default();
            v["data"]["alerts"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|a| a["labels"]["alertname"] == "SwitchyardBackendDown" && a["labels"]["backend"] == b1_addr)
                .and_then(|a| a["state"].as_str().map(str::to_string))
        };
        // The recording rules return the balancer's series.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let v = query("pool%3Aswitchyard_connections_active%3Asum").await;
            if v["data"]["result"].as_array().is_some_and(|r| r.iter().any(|s| s["metric"]["pool"] == "p" && s["value"][1] == "1")) {
                break;
            }
            assert!(Instant::now() < deadline, "no recorded series: {v}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        // A rate needs two scrapes.
        loop {
            let v = query("pool_direction%3Aswitchyard_messages%3Arate1m").await;
            if v["data"]["result"].as_array().is_some_and(|r| r.len() == 2) {
                break;
            }
            assert!(Instant::now() < deadline, "both directions recorded: {v}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }

        // Every expression of the Grafana board runs on the real server.
        for e in dashboard_exprs() {
            let q: String = e
                .bytes()
                .map(|b| match b {
                    b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
                    _ => format!("%{b:02X}"),
                })
                .collect();
            let (_, body) = http_get(prom, &format!("/api/v1/query?query={q}")).await;
            let v: serde_json::Value = serde_json::from_str(body.split("\r\n\r\n").last().unwrap_or(&body)).unwrap_or_default();
            assert_eq!(v["status"], "success", "{e}: {v}");
        }
        // A killed backend: pending, then firing; back: the alert goes.
        assert_eq!(alert_state().await, None);
        b1.kill().await;
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while seen.last().map(String::as_str) != Some("firing") {
            if let Some(s) = alert_state().await {
                if seen.last() != Some(&s) {
                    seen.push(s);
                }
            }
            assert!(Instant::now() < deadline, "the backend alert did not fire: {seen:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(seen, ["pending", "firing"], "pending for its `for:`, then firing");
        let _b1 = backend_at(b1_addr.parse().unwrap(), "b1").await;
        let deadline = Instant::now() + Duration::from_secs(20);
        while alert_state().await.is_some() {
            assert!(Instant::now() < deadline, "the alert stayed after the backend came back");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        drop(ws);
        // A reconnect storm against `max_connections_per_second: 20`: most handshakes are
        // shed with 1013, and the shedding alert fires.
        let firing = |name: &'static str| async move {
            let (_, body) = http_get(prom, "/api/v1/alerts").await;
            let v: serde_json::Value = serde_json::from_str(body.split("\r\n\r\n").last().unwrap_or(&body)).unwrap_or_default();
            v["data"]["alerts"].as_array().into_iter().flatten().any(|a| a["labels"]["alertname"] == name && a["state"] == "firing")
        };
        assert!(!firing("SwitchyardShedding").await);
        let deadline = Instant::now() + Duration::from_secs(25);
        let mut shed = 0;
        while !firing("SwitchyardShedding").await {
            assert!(Instant::now() < deadline, "the shedding alert did not fire ({shed} shed)");
            // 60 at once, 60 a second: three times the rate.
            let url = format!("ws://{listen}/storm");
            let conns = futures_util::future::join_all((0..60).map(|_| connect(&url))).await;
            let closes = futures_util::future::join_all(conns.into_iter().map(|mut c| async move {
                match tokio::time::timeout(Duration::from_millis(300), futures_util::StreamExt::next(&mut c)).await {
                    Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(f))))) => u16::from(f.code) == 1013,
                    _ => false,
                }
            }))
            .await;
            shed += closes.iter().filter(|s| **s).count();
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
        assert!(shed > 20, "{shed} handshakes shed");
        still_serves(&format!("ws://{listen}/after")).await;
        drop(b2);
    })
    .await
}
