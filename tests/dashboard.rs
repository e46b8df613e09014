//! The dashboard in a real browser: headless Chromium driven over the Chrome DevTools
//! Protocol renders live data from a running balancer, its Drain button works, and its
//! screenshots are real pictures. Skipped (with a message) where `chromium` is absent.

mod common;
use common::*;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

/// Headless Chromium in its own process group; the whole group is killed on drop.
struct Browser {
    child: Child,
}

impl Browser {
    /// Starts Chromium with remote debugging on a port of its choosing; `None` if absent.
    fn start(profile: &Path) -> Option<Browser> {
        use std::os::unix::process::CommandExt;
        let child = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .ok()?;
        Some(Browser { child })
    }

    /// The DevTools HTTP port, read from the profile's `DevToolsActivePort` file (bounded wait).
    async fn devtools_port(&mut self, profile: &Path) -> u16 {
        let file = profile.join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(port) = std::fs::read_to_string(&file)
                .ok()
                .and_then(|s| s.lines().next()?.trim().parse().ok())
            {
                return port;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("chromium exited early: {status}");
            }
            assert!(Instant::now() < deadline, "chromium wrote no DevToolsActivePort within 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // SAFETY: signals our own child's process group (its pid, set by `process_group(0)`).
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// One page's DevTools Protocol session.
struct Cdp {
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    next_id: u64,
}

impl Cdp {
    /// Opens a new tab through the JSON endpoint and attaches to it.
    async fn open(port: u16) -> Cdp {
        let req = format!("PUT /json/new?about:blank HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        let resp = raw_exchange(([127, 0, 0, 1], port).into(), req.as_bytes()).await;
        assert_eq!(status(&resp), 200, "{resp}");
        let body = resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        let target: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("json/new answered no JSON ({e}): {body}"));
        let url = target["webSocketDebuggerUrl"].as_str().expect("a page websocket URL").to_string();
        let (ws, _) = tokio::time::timeout(T, tokio_tungstenite::connect_async(url.as_str()))
            .await
            .expect("in time")
            .expect("DevTools connects");
        Cdp { ws, next_id: 1 }
    }

    /// Sends a command and returns its `result` (events in between are skipped).
    async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.ws
            .send(Message::text(json!({ "id": id, "method": method, "params": params }).to_string()))
            .await
            .unwrap();
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(20), self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("{method}: no answer"));
            let Some(Ok(Message::Text(t))) = msg else {
                assert!(matches!(msg, Some(Ok(_))), "{method}: DevTools connection ended: {msg:?}");
                continue;
            };
            let v: Value = serde_json::from_str(t.as_str()).expect("DevTools speaks JSON");
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method} failed: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Evaluates `expr` in the page and returns its (JSON-serialisable) value.
    async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expr, "returnByValue": true, "awaitPromise": true }),
            )
            .await;
        assert!(r.get("exceptionDetails").is_none(), "{expr} threw: {r}");
        r["result"]["value"].clone()
    }

    /// Sets the viewport (CSS pixels).
    async fn viewport(&mut self, width: u32, height: u32, scale: f64, mobile: bool) {
        let params = json!({ "width": width, "height": height, "deviceScaleFactor": scale, "mobile": mobile });
        self.call("Emulation.setDeviceMetricsOverride", params).await;
    }

    /// Captures the viewport as PNG, saves it to `path` and checks it is a real picture.
    async fn screenshot(&mut self, path: &Path) -> usize {
        let r = self.call("Page.captureScreenshot", json!({ "format": "png" })).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().expect("base64 PNG"))
            .expect("valid base64");
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
        // A blank or single-colour page compresses to a few KiB; a drawn dashboard does not.
        assert!(png.len() > 10 * 1024, "screenshot is only {} bytes: nothing drawn?", png.len());
        std::fs::write(path, &png).unwrap();
        png.len()
    }
}

/// Keeps a client echoing (one message every 200 ms) until aborted or closed.
fn echo_in_background(mut ws: Ws) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if ws.send(Message::text("tick")).await.is_err() {
                break;
            }
            match tokio::time::timeout(T, ws.next()).await {
                Ok(Some(Ok(Message::Text(_)))) => {}
                _ => break,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

#[tokio::test]
async fn dashboard_renders_live_data_in_a_real_browser() {
    let ok = Command::new("chromium")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("SKIPPED dashboard_renders_live_data_in_a_real_browser: no `chromium` on PATH (apt-get install chromium; .ci/run does)");
        return;
    }
    bounded(async {
        let b = backend("b1").await;
        let p = Proxy::start(&config("round_robin", &[b.addr], "admin:\n  bind: \"127.0.0.1:0\"\n"));
        // one finished connection, so the close-code table has a row
        let mut done = connect(&p.url("/")).await;
        assert_eq!(ask(&mut done, "hi").await, "hi");
        let normal = CloseFrame { code: CloseCode::Normal, reason: "".into() };
        let _ = done.close(Some(normal)).await;
        let mut ws = connect(&p.url("/")).await;
        assert_eq!(ask(&mut ws, "whoami").await, "b1");
        let echo = echo_in_background(ws);

        let dir = tempfile::tempdir().unwrap();
        let profile = dir.path().join("profile");
        std::fs::create_dir_all(&profile).unwrap();
        let mut browser = Browser::start(&profile).expect("chromium starts");
        let port = browser.devtools_port(&profile).await;
        let mut cdp = Cdp::open(port).await;
        cdp.viewport(1280, 900, 1.0, false).await;
        let url = format!("http://{}/", p.admin());
        cdp.call("Page.navigate", json!({ "url": url })).await;
        // real time: the page polls once a second
        tokio::time::sleep(Duration::from_secs(3)).await;

        let addr = b.addr.to_string();
        let probe = format!(
            r#"(() => {{
                const card = [...document.querySelectorAll('[data-pool="p"] [data-backend]')].find(e => e.dataset.backend === {addr:?});
                const q = (s) => card && card.querySelector(s) ? card.querySelector(s).textContent : null;
                return {{
                    text: document.body.innerText,
                    pool: document.querySelector('[data-pool="p"] .pool-name')?.textContent ?? null,
                    state: card ? card.dataset.state : null,
                    stateText: q('.state'),
                    active: q('.active-count'),
                    bytesIn: q('.bytes-in'),
                    serving: document.getElementById('serving').textContent,
                    shedRows: document.querySelectorAll('#shed tr').length,
                    closeCodes: document.getElementById('close-codes').innerText,
                }};
            }})()"#
        );
        let v = cdp.eval(&probe).await;
        let text = v["text"].as_str().unwrap_or("");
        assert_eq!(v["pool"], "p", "{v}");
        assert!(text.contains(&addr), "backend address not shown:\n{text}");
        assert_eq!((v["state"].as_str(), v["stateText"].as_str()), (Some("up"), Some("up")), "{v}");
        let active: u64 = v["active"].as_str().and_then(|a| a.parse().ok()).unwrap_or(0);
        assert!(active >= 1, "active count not rendered: {v}");
        assert!(v["bytesIn"].as_str().is_some_and(|s| s.ends_with("B/s")), "{v}");
        assert_eq!(v["serving"], "serving", "{v}");
        assert!(text.contains(env!("CARGO_PKG_VERSION")), "version not shown:\n{text}");
        assert!(v["shedRows"].as_u64().unwrap_or(0) >= 6, "shed counters not parsed from /metrics: {v}");
        assert!(v["closeCodes"].as_str().is_some_and(|c| c.contains("1000")), "close codes not shown: {v}");

        let shots = std::env::var_os("DASHBOARD_SCREENSHOT_DIR").map(std::path::PathBuf::from).unwrap_or_else(|| dir.path().to_path_buf());
        let desktop = shots.join("dashboard-desktop.png");
        let size = cdp.screenshot(&desktop).await;
        eprintln!("dashboard screenshot: {} ({size} bytes)", desktop.display());

        // the Drain button drives the API (its confirmation dialog accepted)
        cdp.eval(&format!(
            r#"window.confirm = () => true;
               [...document.querySelectorAll('[data-backend]')].find(e => e.dataset.backend === {addr:?}).querySelector('button.drain').click();
               true"#
        ))
        .await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let state = cdp.eval(&format!(r#"[...document.querySelectorAll('[data-backend]')].find(e => e.dataset.backend === {addr:?}).dataset.state"#)).await;
            if state == "draining" {
                break;
            }
            assert!(Instant::now() < deadline, "the page never showed the drained backend as draining (state {state})");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let (_, pools) = http_get(p.admin(), "/api/pools").await;
        assert!(pools.contains("\"state\":\"draining\""), "{pools}");

        // a phone-sized viewport still renders (and looks) like a dashboard
        cdp.viewport(390, 844, 2.0, true).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let phone = shots.join("dashboard-phone.png");
        let size = cdp.screenshot(&phone).await;
        eprintln!("dashboard screenshot: {} ({size} bytes)", phone.display());
        let overflow = cdp.eval("document.documentElement.scrollWidth <= window.innerWidth + 1").await;
        assert_eq!(overflow, true, "the page scrolls sideways on a phone");

        echo.abort();
        drop(browser);
    })
    .await
}
