//! Headless Chromium driven over the Chrome DevTools Protocol, in real time (no virtual
//! time budget: pages here hold streams open).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use super::{raw_exchange, status, T};

/// Is `chromium` on PATH?
pub fn chromium_available() -> bool {
    Command::new("chromium")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether a test that needs `chromium` can run: outside CI a missing browser skips it with
/// a message; under CI (`CI` set, as `.ci/run` does) it is a failure, never a silent pass.
pub fn chromium_or_skip(test: &str) -> bool {
    if chromium_available() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: chromium missing under CI (.ci/run installs it)"
    );
    eprintln!("SKIPPED {test}: no `chromium` on PATH (apt-get install chromium; .ci/run does)");
    false
}

/// Headless Chromium in its own process group; the whole group is killed on drop.
pub struct Browser {
    child: Child,
}

impl Browser {
    /// Starts Chromium with remote debugging on a port of its choosing; `None` if absent.
    pub fn start(profile: &Path) -> Option<Browser> {
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
    pub async fn devtools_port(&mut self, profile: &Path) -> u16 {
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
pub struct Cdp {
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    next_id: u64,
}

impl Cdp {
    /// Opens a new tab through the JSON endpoint and attaches to it.
    pub async fn open(port: u16) -> Cdp {
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
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.ws
            .send(Message::text(json!({ "id": id, "method": method, "params": params }).to_string()))
            .await
            .unwrap();
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(45), self.ws.next())
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
    pub async fn eval(&mut self, expr: &str) -> Value {
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
    pub async fn viewport(&mut self, width: u32, height: u32, scale: f64, mobile: bool) {
        let params = json!({ "width": width, "height": height, "deviceScaleFactor": scale, "mobile": mobile });
        self.call("Emulation.setDeviceMetricsOverride", params).await;
    }

    /// Captures the viewport as PNG, saves it to `path` and checks it is a real picture.
    pub async fn screenshot(&mut self, path: &Path) -> usize {
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

/// Chromium with a fresh profile and one attached page.
pub struct Page {
    pub cdp: Cdp,
    _browser: Browser,
    _dir: tempfile::TempDir,
}

impl Page {
    /// Starts Chromium and opens a blank page.
    pub async fn new() -> Page {
        let dir = tempfile::tempdir().unwrap();
        let profile = dir.path().join("profile");
        std::fs::create_dir_all(&profile).unwrap();
        let mut browser = Browser::start(&profile).expect("chromium starts");
        let port = browser.devtools_port(&profile).await;
        let cdp = Cdp::open(port).await;
        Page {
            cdp,
            _browser: browser,
            _dir: dir,
        }
    }

    /// Navigates and waits (bounded) until the document has loaded.
    pub async fn goto(&mut self, url: &str) {
        self.cdp.call("Page.navigate", json!({ "url": url })).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let state = self.cdp.eval("document.readyState + ' ' + location.href").await;
            if state.as_str().is_some_and(|s| s.starts_with("complete ") && s.ends_with(url)) {
                return;
            }
            assert!(Instant::now() < deadline, "{url} did not load: {state}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
