//! Logs: `--log-format json` gives one JSON object per line, and the access-log line of a
//! finished connection carries its fields; `process.access_log: false` turns it off.

mod common;
use common::*;

use std::time::{Duration, Instant};

async fn one_connection_then_logs(access_log: bool) -> Vec<serde_json::Value> {
    let b = backend("b").await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.yaml");
    std::fs::write(
        &f,
        config("round_robin", &[b.addr], &format!("process:\n  access_log: {access_log}\n")),
    )
    .unwrap();
    let (mut p, logs) = Proc::spawn_logged(&["--log-format", "json", "run", "-c", f.to_str().unwrap()]);
    let url = tokio::task::block_in_place(|| p.line_after("listening l "));
    let mut ws = connect(&url).await;
    for i in 0..3 {
        assert_eq!(ask(&mut ws, &format!("m{i}")).await, format!("m{i}"));
    }
    ws.close(None).await.unwrap();
    let _ = expect_close(&mut ws).await;
    drop(ws);
    // A reload after the connection ended (its backend side closed: the relay is over and
    // its access line, when on, written just before): the `config reloaded` line proves the
    // log was still being read past the point where an access line would be (so an access
    // log turned off is not confused with a log nobody read).
    assert!(
        eventually(Duration::from_secs(10), || b.live.load(std::sync::atomic::Ordering::SeqCst) == 0)
            .await
            .is_some(),
        "the balancer closed the backend side"
    );
    p.signal(libc::SIGHUP);
    let mut lines = Vec::new();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) {
        match logs.recv_timeout(Duration::from_millis(200)) {
            Ok(l) => {
                let v: serde_json::Value = serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
                let done = v["message"].as_str().is_some_and(|m| m.starts_with("config reloaded"));
                lines.push(v);
                if done {
                    break;
                }
            }
            Err(_) => continue,
        }
    }
    assert!(
        lines
            .iter()
            .any(|v| v["message"].as_str().is_some_and(|m| m.starts_with("config reloaded"))),
        "the log was read to the reload after the connection: {lines:?}"
    );
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_carry_the_access_log_fields() {
    bounded(async {
        let lines = one_connection_then_logs(true).await;
        assert!(!lines.is_empty());
        for l in &lines {
            assert!(
                l["timestamp"].is_string() && l["level"].is_string() && l["target"].is_string(),
                "{l}"
            );
        }
        let access = lines
            .iter()
            .find(|l| l["target"] == "switchyard::access")
            .expect("an access-log line");
        assert_eq!(access["message"], "connection closed");
        assert_eq!(access["pool"], "p");
        assert!(access["client"].as_str().unwrap().starts_with("127.0.0.1:"));
        assert!(access["backend"].as_str().unwrap().starts_with("127.0.0.1:"));
        assert_eq!(access["msgs_c2b"], 3);
        assert_eq!(access["msgs_b2c"], 3);
        assert!(access["bytes_c2b"].as_u64().unwrap() >= 3 * 8);
        assert_eq!(access["close_code"], 1005, "tungstenite closes without a code");
        assert_eq!(access["closed_by"], "client");
        assert_eq!(access["protocol"], "http1");
        assert!(access["duration_ms"].is_u64());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_can_be_turned_off() {
    bounded(async {
        let lines = one_connection_then_logs(false).await;
        assert!(lines.iter().all(|l| l["target"] != "switchyard::access"), "{lines:?}");
    })
    .await
}
