//! The dashboard in a real browser: headless Chromium driven over the Chrome DevTools
//! Protocol renders live data from a running balancer, its Drain button works, and its
//! screenshots are real pictures. Skipped (with a message) where `chromium` is absent.

mod common;
use common::*;

use common::browser::{chromium_or_skip, Browser, Cdp};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

/// The admin token of the test balancer.
const TOKEN: &str = "dashboard-test-token-0123";

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
    if !chromium_or_skip("dashboard_renders_live_data_in_a_real_browser") {
        return;
    }
    bounded(async {
        let b = backend("b1").await;
        // With an admin token: the page takes it from its link and sends it with every call.
        let p = Proxy::start(&config(
            "round_robin",
            &[b.addr],
            &format!("admin:\n  bind: \"127.0.0.1:0\"\n  token: \"{TOKEN}\"\n"),
        ));
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
        let url = format!("http://{}/#token={TOKEN}", p.admin());
        cdp.call("Page.navigate", json!({ "url": url })).await;
        // Real time: the page polls once a second; rates need two polls. Waited for (bounded)
        // until everything the assertions below look at has been drawn.

        let addr = b.addr.to_string();
        let probe = format!(
            r#"(() => {{
                const card = [...document.querySelectorAll('[data-pool="p"] [data-backend]')].find(e => e.dataset.backend === {addr:?});
                const q = (s) => card && card.querySelector(s) ? card.querySelector(s).textContent : null;
                return {{
                    text: document.body?.innerText ?? '',
                    pool: document.querySelector('[data-pool="p"] .pool-name')?.textContent ?? null,
                    state: card ? card.dataset.state : null,
                    stateText: q('.state'),
                    active: q('.active-count'),
                    bytesIn: q('.bytes-in'),
                    requests: q('.http-req'),
                    serving: document.getElementById('serving')?.textContent ?? null,
                    shedRows: document.querySelectorAll('#shed tr').length,
                    closeCodes: document.getElementById('close-codes')?.innerText ?? '',
                    h2: document.getElementById('sum-h2')?.textContent ?? null,
                    throttled: document.getElementById('sum-throttled')?.textContent ?? null,
                }};
            }})()"#
        );
        let drawn = |v: &serde_json::Value| {
            v["state"] == "up"
                && v["bytesIn"].as_str().is_some_and(|s| s.ends_with("B/s"))
                && v["requests"].as_str().is_some_and(|s| s.ends_with("/s"))
                && v["shedRows"].as_u64().unwrap_or(0) >= 6
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut v = cdp.eval(&probe).await;
        while !drawn(&v) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            v = cdp.eval(&probe).await;
        }
        assert_eq!(v["h2"], "0 · 0 streams", "the HTTP/2 summary is drawn from /api/status: {v}");
        assert_eq!(v["throttled"], "0", "the throttled count is drawn from /api/status: {v}");
        let text = v["text"].as_str().unwrap_or("");
        assert_eq!(v["pool"], "p", "{v}");
        assert!(text.contains(&addr), "backend address not shown:\n{text}");
        assert_eq!((v["state"].as_str(), v["stateText"].as_str()), (Some("up"), Some("up")), "{v}");
        let active: u64 = v["active"].as_str().and_then(|a| a.parse().ok()).unwrap_or(0);
        assert!(active >= 1, "active count not rendered: {v}");
        assert!(v["bytesIn"].as_str().is_some_and(|s| s.ends_with("B/s")), "{v}");
        assert!(v["requests"].as_str().is_some_and(|s| s.ends_with("/s")), "plain HTTP request rate shown: {v}");
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
        let (_, pools) = http_with(p.admin(), "GET", "/api/pools", &format!("Authorization: Bearer {TOKEN}\r\n"), "").await;
        assert!(pools.contains("\"state\":\"draining\""), "{pools}");

        // a phone-sized viewport still renders (and looks) like a dashboard
        cdp.viewport(390, 844, 2.0, true).await;
        // Two animation frames: the new viewport is laid out and painted (a second at most).
        cdp.eval("new Promise(done => { requestAnimationFrame(() => requestAnimationFrame(() => done(true))); setTimeout(() => done(true), 1000); })")
            .await;
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

#[tokio::test]
async fn dashboard_names_the_dns_entry_of_discovered_backends() {
    if !chromium_or_skip("dashboard_names_the_dns_entry_of_discovered_backends") {
        return;
    }
    bounded(async {
        let found = backend("found").await;
        let fixed = backend("fixed").await;
        let dns = common::dns::Dns::start();
        dns.set_addrs("dash.sy.test.", &["127.0.0.1"]).await;
        let entry = format!("dash.sy.test:{}", found.addr.port());
        let p = Proxy::start(&format!(
            "{}      - address: \"{entry}\"\n        discover: dns\n        refresh: 1s\nadmin:\n  bind: \"127.0.0.1:0\"\n{}",
            config("round_robin", &[fixed.addr], ""),
            dns.resolver_yaml("1s")
        ));
        let dir = tempfile::tempdir().unwrap();
        let profile = dir.path().join("profile");
        std::fs::create_dir_all(&profile).unwrap();
        let mut browser = Browser::start(&profile).expect("chromium starts");
        let port = browser.devtools_port(&profile).await;
        let mut cdp = Cdp::open(port).await;
        cdp.viewport(1280, 700, 1.0, false).await;
        cdp.call("Page.navigate", json!({ "url": format!("http://{}/", p.admin()) })).await;
        let source = |addr: String| {
            format!(r#"[...document.querySelectorAll('[data-pool="p"] [data-backend]')].find(e => e.dataset.backend === {addr:?})?.querySelector('.source')?.textContent ?? null"#)
        };
        // The page's first poll has drawn the discovered backend (bounded wait).
        let deadline = Instant::now() + Duration::from_secs(15);
        while cdp.eval(&source(found.addr.to_string())).await.is_null() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(cdp.eval(&source(found.addr.to_string())).await, format!("via DNS {entry}"));
        assert_eq!(cdp.eval(&source(fixed.addr.to_string())).await, "", "a configured backend names no entry");
        let summary = cdp.eval(r#"document.querySelector('[data-pool="p"] .pool-discovery').textContent"#).await;
        assert_eq!(summary, format!("DNS {entry}: 1 found"));
        let shots = std::env::var_os("DASHBOARD_SCREENSHOT_DIR").map(std::path::PathBuf::from).unwrap_or_else(|| dir.path().to_path_buf());
        let shot = shots.join("dashboard-discovery.png");
        let size = cdp.screenshot(&shot).await;
        eprintln!("dashboard screenshot: {} ({size} bytes)", shot.display());
        drop(browser);
    })
    .await
}
