//! The real `switchyard` binary: `--version`, `check`, `run` with signals, `demo`.

mod common;
use common::*;

use std::process::Command;
use std::time::Duration;

/// A config file in `dir` for one round-robin pool of `backend` plus `extra` YAML; its path.
fn config_file(dir: &tempfile::TempDir, backend: std::net::SocketAddr, extra: &str) -> String {
    let f = dir.path().join("c.yaml");
    std::fs::write(&f, config("round_robin", &[backend], extra)).unwrap();
    f.to_str().unwrap().to_string()
}

#[test]
fn version_prints_the_crate_version() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("switchyard {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn check_accepts_every_example_config() {
    let mut n = 0;
    for e in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/configs")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "yaml") {
            let out = Command::new(BIN).arg("check").arg(&p).output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{}: {text}", p.display());
            assert_eq!(text.trim(), "ok");
            n += 1;
        }
    }
    assert!(n >= 5);
}

#[test]
fn check_reports_every_problem_with_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.yaml");
    std::fs::write(
        &f,
        "listeners:\n  - name: a\n    bind: \"127.0.0.1:0\"\n    routes:\n      - pool: nope\npools:\n  p:\n    algoritm: round_robin\n    backends:\n      - address: \"not an address\"\n        weight: 0\n",
    )
    .unwrap();
    let out = Command::new(BIN).arg("check").arg(&f).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    let name = f.display().to_string();
    assert!(text.contains(&format!("{name}:5:")), "unknown pool at line 5: {text}");
    assert!(
        text.contains(&format!("{name}:8:5:")) && text.contains("algorithm"),
        "typo with hint: {text}"
    );
    assert!(text.contains(&format!("{name}:10:")), "bad address: {text}");
    assert!(text.contains(&format!("{name}:11:")), "zero weight: {text}");
    assert!(text.lines().count() >= 4, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_and_drains_on_sigterm() {
    bounded(async {
        let b = backend("b").await;
        let dir = tempfile::tempdir().unwrap();
        let f = config_file(&dir, b.addr, "limits:\n  drain_timeout: 1s\n");
        let mut p = Proc::spawn(&["run", "-c", &f]);
        let url = tokio::task::block_in_place(|| p.line_after("listening l "));
        let mut ws = connect(&url).await;
        assert_eq!(ask(&mut ws, "hello").await, "hello");
        p.signal(libc::SIGTERM);
        let (code, _) = expect_close(&mut ws).await;
        assert_eq!(code, 1001);
        drop(ws);
        let status = tokio::task::block_in_place(|| p.wait_exit(Duration::from_secs(15)));
        assert_eq!(status, Some(0));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_starts_and_echoes() {
    bounded(async {
        let mut p = Proc::spawn(&["demo", "--port", "0", "--admin-port", "0", "--quiet"]);
        let url = tokio::task::block_in_place(|| p.line_after("listening demo "));
        let mut ws = connect(&url).await;
        assert_eq!(ask(&mut ws, "ping?").await, "ping?");
        let _ = ws.close(None).await;
        // The demo page comes through the balancer as plain HTTP.
        let addr: std::net::SocketAddr = url.trim_start_matches("ws://").trim_end_matches('/').parse().unwrap();
        let (status, page) = http_get(addr, "/").await;
        assert_eq!(status, 200, "{page}");
        assert!(page.contains("Echo through Switchyard") && page.contains("new WebSocket"), "{page}");
        p.signal(libc::SIGINT);
        assert_eq!(tokio::task::block_in_place(|| p.wait_exit(Duration::from_secs(40))), Some(0));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    bounded(async {
        let b = backend("b").await;
        let dir = tempfile::tempdir().unwrap();
        let f = config_file(&dir, b.addr, "limits:\n  drain_timeout: 30s\n");
        let (mut p, log) = Proc::spawn_logged(&["run", "-c", &f]);
        let url = tokio::task::block_in_place(|| p.line_after("listening l "));
        // Several connections: with a 30 s drain most would wait long for their turn.
        let mut held = Vec::new();
        for _ in 0..5 {
            let mut ws = connect(&url).await;
            assert_eq!(ask(&mut ws, "x").await, "x");
            held.push(ws);
        }
        p.signal(libc::SIGTERM);
        // The first signal started the drain (it says so), and the drain is still running
        // (30 s for five connections): the second signal is what ends it, not the first.
        let draining = tokio::task::block_in_place(|| {
            let limit = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                let left = limit.saturating_duration_since(std::time::Instant::now());
                match log.recv_timeout(left) {
                    Ok(line) if line.contains("signal received: draining") => break true,
                    Ok(_) => {}
                    Err(_) => break false,
                }
            }
        });
        assert!(draining, "the first signal did not start a drain");
        assert!(p.0.try_wait().unwrap().is_none(), "exited on the first signal");
        let t0 = std::time::Instant::now();
        p.signal(libc::SIGTERM);
        let status = tokio::task::block_in_place(|| p.wait_exit(Duration::from_secs(10)));
        assert_eq!(status, Some(0));
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "exited {:?} after the second signal",
            t0.elapsed()
        );
    })
    .await
}
