//! DNS discovery of backends against a real DNS server (hickory-server on 127.0.0.1:0,
//! `common::dns`), never the machine's resolver: A/AAAA and SRV entries, records appearing
//! and disappearing, failures that keep the last answer, reloads that keep what was found.
//!
//! An A record carries no port: the backends of an A/AAAA entry share the entry's port on
//! distinct loopback addresses (127.0.0.1, 127.0.0.3, …), the port taken from port 0.

mod common;
use common::dns::Dns;
use common::*;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;

/// Echo backends named `names`, one on each of `ips`, all on one port (found from port 0 on
/// the first address; tried again with a new port if another address has it taken).
async fn backends_on_one_port(ips: &[&str], names: &[&'static str]) -> (u16, Vec<Backend>) {
    'again: for _ in 0..20 {
        let first = TcpListener::bind((ips[0], 0)).await.unwrap();
        let port = first.local_addr().unwrap().port();
        let mut listeners = vec![first];
        for ip in &ips[1..] {
            match TcpListener::bind((*ip, port)).await {
                Ok(l) => listeners.push(l),
                Err(_) => continue 'again,
            }
        }
        let backends = listeners.into_iter().zip(names).map(|(l, n)| backend_on(l, n)).collect();
        return (port, backends);
    }
    panic!("no port free on every address of {ips:?}");
}

/// A pool `p` on a listener on port 0 with the given backend entries (YAML lines indented
/// for `backends:`), an admin listener, and `extra` top-level YAML.
fn discovery_config(algorithm: &str, entries: &str, pool_extra: &str, extra: &str) -> String {
    format!(
        "listeners:\n  - name: l\n    bind: \"127.0.0.1:0\"\n    routes:\n      - pool: p\nadmin:\n  bind: \"127.0.0.1:0\"\npools:\n  p:\n    algorithm: {algorithm}\n    connect_timeout: 2s\n{pool_extra}    backends:\n{entries}{extra}"
    )
}

/// A `discover: dns` entry for `name:port`.
fn dns_entry(name: &str, port: u16, refresh: &str) -> String {
    format!("      - address: \"{name}:{port}\"\n        discover: dns\n        refresh: {refresh}\n")
}

/// The backends' addresses pool `p` has now, in its order.
fn pool_addrs(p: &Proxy) -> Vec<String> {
    p.server.shared.runtime.load().pools["p"]
        .backends
        .iter()
        .map(|b| b.address.clone())
        .collect()
}

/// Who answers `whoami` for a new client (the client is closed again).
async fn who(p: &Proxy) -> String {
    let mut ws = connect(&p.url("/")).await;
    let name = ask(&mut ws, "whoami").await;
    let _ = ws.close(None).await;
    name
}

/// A metric's value on the admin listener's `/metrics`: the line of `name` carrying every
/// label pair of `labels` (0 when there is none).
async fn metric(p: &Proxy, name: &str, labels: &[(&str, &str)]) -> f64 {
    let (code, body) = http_get(p.admin(), "/metrics").await;
    assert_eq!(code, 200);
    body.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .and_then(|l| l.rsplit_once(' '))
        .map_or(0.0, |(_, v)| v.parse().unwrap())
}

/// Waits (bounded) until the metric reaches `at_least`; returns its value.
async fn metric_reaches(p: &Proxy, name: &str, labels: &[(&str, &str)], at_least: f64) -> f64 {
    let t0 = Instant::now();
    loop {
        let v = metric(p, name, labels).await;
        if v >= at_least || t0.elapsed() > T {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn discovered_backends_share_the_traffic_and_show_their_source() {
    bounded(async {
        let (port, backends) = backends_on_one_port(&["127.0.0.1", "127.0.0.3"], &["b1", "b3"]).await;
        let dns = Dns::start();
        dns.set_addrs("chat.sy.test.", &["127.0.0.3", "127.0.0.1"]).await;
        let entry = format!("chat.sy.test:{port}");
        let p = Proxy::start(&discovery_config(
            "round_robin",
            &dns_entry("chat.sy.test", port, "1s"),
            "",
            &dns.resolver_yaml("1s"),
        ));
        // Asked at start: both are there before the first client, in canonical order.
        let a1 = format!("127.0.0.1:{port}");
        let a3 = format!("127.0.0.3:{port}");
        assert_eq!(pool_addrs(&p), [a1.clone(), a3.clone()]);
        let mut answers = Vec::new();
        for _ in 0..10 {
            answers.push(who(&p).await);
        }
        assert_eq!(answers.iter().filter(|n| *n == "b1").count(), 5, "{answers:?}");
        assert_eq!(answers.iter().filter(|n| *n == "b3").count(), 5, "{answers:?}");
        assert_eq!(backends[0].accepted.load(std::sync::atomic::Ordering::SeqCst), 5);
        assert_eq!(backends[1].accepted.load(std::sync::atomic::Ordering::SeqCst), 5);

        // The admin API: each backend by its own address, with the entry it came from.
        let (code, body) = http_get(p.admin(), "/api/pools").await;
        assert_eq!(code, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let pool = &v["pools"][0];
        let listed: Vec<(&str, &str)> = pool["backends"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| (b["address"].as_str().unwrap(), b["discovered_from"].as_str().unwrap()))
            .collect();
        assert_eq!(listed, [(a1.as_str(), entry.as_str()), (a3.as_str(), entry.as_str())]);
        assert_eq!(pool["backends"][0]["total"], 5);
        let d = &pool["discovery"][0];
        assert_eq!(
            (d["name"].as_str(), d["kind"].as_str(), d["query"].as_str()),
            (Some(entry.as_str()), Some("dns"), Some("chat.sy.test"))
        );
        assert_eq!(
            (d["answered"].as_bool(), d["backends"].as_u64(), d["refresh_ms"].as_u64()),
            (Some(true), Some(2), Some(1000))
        );

        // Metrics: the per-backend series by address, an info series naming the entry, and
        // the number of backends the entry stands for.
        for a in [&a1, &a3] {
            assert_eq!(
                metric(&p, "switchyard_connections_total", &[("pool", "p"), ("backend", a)]).await,
                5.0
            );
            assert_eq!(
                metric(
                    &p,
                    "switchyard_backend_discovered_from",
                    &[("pool", "p"), ("backend", a), ("name", &entry)]
                )
                .await,
                1.0
            );
        }
        assert_eq!(
            metric(&p, "switchyard_discovered_backends", &[("pool", "p"), ("name", &entry)]).await,
            2.0
        );
    })
    .await
}

#[tokio::test]
async fn a_record_added_reaches_traffic_within_refresh() {
    bounded(async {
        let (port, _backends) = backends_on_one_port(&["127.0.0.1", "127.0.0.4"], &["b1", "b4"]).await;
        let dns = Dns::start();
        dns.set_addrs("grow.sy.test.", &["127.0.0.1"]).await;
        let refresh = Duration::from_millis(300);
        let p = Proxy::start(&discovery_config(
            "round_robin",
            &dns_entry("grow.sy.test", port, "300ms"),
            "",
            &dns.resolver_yaml("1s"),
        ));
        assert_eq!(who(&p).await, "b1");
        let before = p.backend(0);
        let mut took = Vec::new();
        // Three times, each change at another point of the refresh period.
        for delay_ms in [0u64, 110, 220] {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            let changed = Instant::now();
            dns.set_addrs("grow.sy.test.", &["127.0.0.1", "127.0.0.4"]).await;
            // The new record is given out in one round only (every later A query fails, and a
            // failed round keeps the last set): it reaches traffic only if the first round that
            // sees it applies it, whatever the time it takes on a loaded machine.
            dns.ration_a(Some(1));
            // New clients until one lands on the new backend (round robin: every other one,
            // once it is in the pool).
            let mut first = None;
            while changed.elapsed() < T {
                if who(&p).await == "b4" {
                    first = Some(changed.elapsed());
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            took.push(first.expect("the added record gets a connection").as_millis());
            dns.ration_a(None);
            // And a bound no loaded machine reaches with one refresh of 300 ms.
            assert!(changed.elapsed() < Duration::from_secs(5), "{:?}", changed.elapsed());
            // The backend that stayed is the same object, untouched by the change.
            assert!(Arc::ptr_eq(&before, &p.backend(0)));
            assert_eq!(pool_addrs(&p), [format!("127.0.0.1:{port}"), format!("127.0.0.4:{port}")]);
            dns.set_addrs("grow.sy.test.", &["127.0.0.1"]).await;
            assert!(eventually(T, || pool_addrs(&p).len() == 1).await.is_some());
        }
        eprintln!(
            "DNS change -> first connection on the new backend: {took:?} ms (refresh {} ms, ±10 % jitter)",
            refresh.as_millis()
        );
        // The refresh runs at its period, counted in rounds rather than by a wall-clock bound
        // on one change: a round asks A and AAAA, so 3 s at 300 ms are about 20 queries (a
        // loaded machine delays rounds a little, it does not halve them); a refresh of 1 s
        // or more would ask 8 at most, a loop with no period hundreds.
        let (q0, t0) = (dns.queries(), Instant::now());
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (asked, span) = (dns.queries() - q0, t0.elapsed());
        let rounds_at_refresh = 2 * (span.as_millis() / refresh.as_millis()) as u32;
        assert!(
            (12..=rounds_at_refresh + 8).contains(&asked),
            "{asked} queries in {span:?}: not one round of A and AAAA every {refresh:?}"
        );
    })
    .await
}

#[tokio::test]
async fn an_added_record_ramps_with_slow_start_and_touches_nothing_else() {
    bounded(async {
        let (port, _backends) = backends_on_one_port(&["127.0.0.1", "127.0.0.5"], &["b1", "b5"]).await;
        let dns = Dns::start();
        dns.set_addrs("ramp.sy.test.", &["127.0.0.1"]).await;
        let p = Proxy::start(&discovery_config(
            "least_connections",
            &format!(
                "{}      - address: \"127.0.0.1:{}\"\n",
                dns_entry("ramp.sy.test", port, "200ms"),
                dead_port().await.port()
            ),
            "    slow_start: 30s\n",
            &dns.resolver_yaml("1s"),
        ));
        let before: Vec<_> = (0..2).map(|i| p.backend(i)).collect();
        // The backends found at start take their full share at once, like configured ones.
        assert_eq!(before[0].ramp_factor(switchyard::clock::now_ms()), 1.0);
        dns.set_addrs("ramp.sy.test.", &["127.0.0.5", "127.0.0.1"]).await;
        assert!(eventually(T, || pool_addrs(&p).len() == 3).await.is_some(), "{:?}", pool_addrs(&p));
        let rt = p.server.shared.runtime.load();
        let pool = &rt.pools["p"];
        let added = pool.backend(&format!("127.0.0.5:{port}")).expect("the new record's backend");
        assert_eq!(
            added.config.discovered_from.as_deref(),
            Some(format!("ramp.sy.test:{port}").as_str())
        );
        let now = switchyard::clock::now_ms();
        assert!(
            added.ramp_factor(now) < 0.5,
            "a discovered addition ramps: {}",
            added.ramp_factor(now)
        );
        // Everything else is the same object, untouched.
        assert!(Arc::ptr_eq(&pool.backends[0], &before[0]));
        assert!(Arc::ptr_eq(&pool.backends[2], &before[1]), "the configured backend stays");
        assert_eq!(before[0].ramp_factor(now), 1.0);
    })
    .await
}

#[tokio::test]
async fn a_record_removed_drains_its_connection_with_1012_and_new_clients_go_elsewhere() {
    bounded(async {
        let (port, backends) = backends_on_one_port(&["127.0.0.1", "127.0.0.6"], &["b1", "b6"]).await;
        let dns = Dns::start();
        dns.set_addrs("shrink.sy.test.", &["127.0.0.1", "127.0.0.6"]).await;
        let p = Proxy::start(&discovery_config(
            "round_robin",
            &dns_entry("shrink.sy.test", port, "200ms"),
            "",
            &format!("limits:\n  drain_timeout: 200ms\n{}", dns.resolver_yaml("1s")),
        ));
        let mut on_b6 = None;
        let mut on_b1 = None;
        for _ in 0..4 {
            let mut ws = connect(&p.url("/")).await;
            match ask(&mut ws, "whoami").await.as_str() {
                "b6" => on_b6 = Some(ws),
                _ => on_b1 = Some(ws),
            }
        }
        let (mut on_b6, mut on_b1) = (on_b6.expect("a client on b6"), on_b1.expect("a client on b1"));
        let removed = p.backend(1);
        dns.set_addrs("shrink.sy.test.", &["127.0.0.1"]).await;
        assert_eq!(expect_close(&mut on_b6).await.0, 1012);
        assert_eq!(removed.state(), switchyard::backend::BackendState::Draining);
        assert_eq!(pool_addrs(&p), [format!("127.0.0.1:{port}")]);
        for _ in 0..5 {
            assert_eq!(who(&p).await, "b1");
        }
        // The connection on the backend that stayed was not touched.
        assert_eq!(ask(&mut on_b1, "still").await, "still");
        assert!(eventually(T, || backends[1].live.load(std::sync::atomic::Ordering::SeqCst) == 0)
            .await
            .is_some());
    })
    .await
}

#[tokio::test]
async fn failed_or_empty_answers_keep_the_last_set_and_are_counted() {
    bounded(async {
        let (port, _backends) = backends_on_one_port(&["127.0.0.1", "127.0.0.7"], &["b1", "b7"]).await;
        let mut dns = Dns::start();
        dns.set_addrs("flaky.sy.test.", &["127.0.0.1", "127.0.0.7"]).await;
        let entry = format!("flaky.sy.test:{port}");
        let p = Proxy::start(&discovery_config(
            "round_robin",
            &dns_entry("flaky.sy.test", port, "150ms"),
            "",
            &dns.resolver_yaml("200ms"),
        ));
        let objects: Vec<_> = (0..2).map(|i| p.backend(i)).collect();
        let errors = |reason: &'static str| vec![("pool", "p"), ("name", entry.as_str()), ("reason", reason)];
        let serves_both = || async {
            let mut seen = Vec::new();
            for _ in 0..4 {
                seen.push(who(&p).await);
            }
            seen.sort();
            assert_eq!(seen, ["b1", "b1", "b7", "b7"]);
        };

        // SERVFAIL.
        dns.servfail(true);
        assert!(metric_reaches(&p, "switchyard_discovery_errors_total", &errors("servfail"), 2.0).await >= 2.0);
        serves_both().await;
        // The name gone (NXDOMAIN).
        dns.servfail(false);
        dns.set_addrs("flaky.sy.test.", &[]).await;
        assert!(metric_reaches(&p, "switchyard_discovery_errors_total", &errors("nxdomain"), 2.0).await >= 2.0);
        serves_both().await;
        // The server gone: no answer at all (a timeout, or a refusal of the TCP retry).
        dns.stop();
        let t0 = Instant::now();
        let mut gone = 0.0;
        while gone < 1.0 && t0.elapsed() < T {
            tokio::time::sleep(Duration::from_millis(50)).await;
            gone = metric(&p, "switchyard_discovery_errors_total", &errors("timeout")).await
                + metric(&p, "switchyard_discovery_errors_total", &errors("unreachable")).await;
        }
        assert!(gone >= 1.0);
        serves_both().await;

        let rt = p.server.shared.runtime.load();
        let pool = &rt.pools["p"];
        assert_eq!(pool.backends.len(), 2);
        for (b, o) in pool.backends.iter().zip(&objects) {
            assert!(Arc::ptr_eq(b, o), "{} was never replaced", b.address);
            assert_eq!(b.state(), switchyard::backend::BackendState::Up);
        }
        assert_eq!(
            metric(&p, "switchyard_discovered_backends", &[("pool", "p"), ("name", &entry)]).await,
            2.0
        );
    })
    .await
}

#[tokio::test]
async fn a_pool_whose_first_lookup_fails_starts_empty_and_fills_when_dns_answers() {
    bounded(async {
        let (port, _backends) = backends_on_one_port(&["127.0.0.1"], &["b1"]).await;
        let dns = Dns::start();
        let p = Proxy::start(&discovery_config(
            "round_robin",
            &dns_entry("late.sy.test", port, "200ms"),
            "",
            &dns.resolver_yaml("1s"),
        ));
        assert!(pool_addrs(&p).is_empty());
        // Nothing to send to: the client gets the handshake, then 1013.
        let mut ws = connect(&p.url("/")).await;
        assert_eq!(expect_close(&mut ws).await.0, 1013);
        let (_, body) = http_get(p.admin(), "/api/pools").await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["pools"][0]["discovery"][0]["answered"], false);

        dns.set_addrs("late.sy.test.", &["127.0.0.1"]).await;
        assert!(eventually(T, || !pool_addrs(&p).is_empty()).await.is_some());
        assert_eq!(who(&p).await, "b1");
    })
    .await
}

#[tokio::test]
async fn srv_records_give_ports_and_weights() {
    bounded(async {
        let heavy = backend("heavy").await;
        let light = backend("light").await;
        let backup = backend("backup").await;
        let dns = Dns::start();
        dns.set_addrs("a.sy.test.", &["127.0.0.1"]).await;
        dns.set_addrs("b.sy.test.", &["127.0.0.1"]).await;
        // Priority 0 is used; priority 1 is a fall-back, not used.
        dns.set_srv(
            "_ws._tcp.chat.sy.test.",
            &[
                (1, 50, backup.addr.port(), "a.sy.test."),
                (0, 10, light.addr.port(), "b.sy.test."),
                (0, 30, heavy.addr.port(), "a.sy.test."),
            ],
        )
        .await;
        let p = Proxy::start(&discovery_config(
            "round_robin",
            "      - srv: _ws._tcp.chat.sy.test\n        refresh: 1s\n",
            "",
            &dns.resolver_yaml("1s"),
        ));
        let rt = p.server.shared.runtime.load();
        let weights: Vec<(SocketAddr, u32)> = rt.pools["p"]
            .backends
            .iter()
            .map(|b| (b.address.parse().unwrap(), b.weight()))
            .collect();
        let mut expected = vec![(heavy.addr, 30), (light.addr, 10)];
        expected.sort();
        assert_eq!(weights, expected);
        // Smooth weighted round robin: exactly 30 : 10 over one cycle of 40.
        let mut counts = std::collections::HashMap::new();
        for _ in 0..40 {
            *counts.entry(who(&p).await).or_insert(0) += 1;
        }
        assert_eq!(
            (counts.get("heavy"), counts.get("light"), counts.get("backup")),
            (Some(&30), Some(&10), None)
        );
        let (_, body) = http_get(p.admin(), "/api/pools").await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        for b in v["pools"][0]["backends"].as_array().unwrap() {
            assert_eq!(b["discovered_from"], "_ws._tcp.chat.sy.test");
        }
        assert_eq!(v["pools"][0]["discovery"][0]["kind"], "srv");
    })
    .await
}

#[tokio::test]
async fn reloads_keep_discovered_backends_and_the_entry_follows_the_config() {
    bounded(async {
        let (port, _backends) = backends_on_one_port(&["127.0.0.1", "127.0.0.8"], &["b1", "b8"]).await;
        let other = backend("other").await;
        let dns = Dns::start();
        dns.set_addrs("keep.sy.test.", &["127.0.0.1", "127.0.0.8"]).await;
        let yaml = |entries: &str, bind: &str, timeout: &str| {
            let resolver = dns.resolver_yaml(timeout);
            discovery_config("round_robin", entries, "", &format!("limits:\n  drain_timeout: 200ms\n{resolver}"))
                .replace("bind: \"127.0.0.1:0\"\n    routes", &format!("bind: \"{bind}\"\n    routes"))
        };
        let dir = tempfile::tempdir().unwrap();
        let (p, path) = Proxy::start_file(dir.path(), &yaml(&dns_entry("keep.sy.test", port, "200ms"), "127.0.0.1:0", "1s"));
        let bind = p.addr.to_string();
        let found: Vec<_> = (0..2).map(|i| p.backend(i)).collect();
        let mut clients = Vec::new();
        for _ in 0..2 {
            let mut ws = connect(&p.url("/")).await;
            let name = ask(&mut ws, "whoami").await;
            clients.push((name, ws));
        }
        let same_objects = |p: &Proxy| {
            let rt = p.server.shared.runtime.load();
            let now = &rt.pools["p"].backends;
            now.len() == 2 && now.iter().zip(&found).all(|(a, b)| Arc::ptr_eq(a, b))
        };

        // The same config again: nothing is drained or rebuilt.
        std::fs::write(&path, yaml(&dns_entry("keep.sy.test", port, "200ms"), &bind, "1s")).unwrap();
        switchyard::reload::reload(&p.server.shared).expect("reload ok");
        assert!(same_objects(&p));
        // Another refresh and resolver timeout: the entry's task restarts with them (a new
        // resolver); the backends stay.
        std::fs::write(&path, yaml(&dns_entry("keep.sy.test", port, "400ms"), &bind, "2s")).unwrap();
        switchyard::reload::reload(&p.server.shared).expect("reload ok");
        assert!(same_objects(&p));
        // A record removed after that reload is seen by the restarted task.
        dns.set_addrs("keep.sy.test.", &["127.0.0.1"]).await;
        assert!(eventually(T, || pool_addrs(&p).len() == 1).await.is_some());
        let (name8, ws8) = clients.iter_mut().find(|(n, _)| n == "b8").expect("a client on b8");
        assert_eq!(name8, "b8");
        assert_eq!(expect_close(ws8).await.0, 1012);
        dns.set_addrs("keep.sy.test.", &["127.0.0.1", "127.0.0.8"]).await;
        assert!(eventually(T, || pool_addrs(&p).len() == 2).await.is_some());
        for (name, ws) in clients.iter_mut().filter(|(n, _)| n == "b1") {
            assert_eq!(ask(ws, "still").await, "still", "{name} kept its connection");
        }

        // The entry removed: its backends drain with 1012, and it is no longer asked.
        let mut on_found = connect(&p.url("/")).await;
        let _ = ask(&mut on_found, "whoami").await;
        std::fs::write(&path, yaml(&format!("      - address: \"{}\"\n", other.addr), &bind, "2s")).unwrap();
        switchyard::reload::reload(&p.server.shared).expect("reload ok");
        assert_eq!(expect_close(&mut on_found).await.0, 1012);
        assert_eq!(pool_addrs(&p), [other.addr.to_string()]);
        assert!(p.server.shared.runtime.load().discovered.is_empty());
        // Records appearing for the removed entry change nothing.
        dns.set_addrs("keep.sy.test.", &["127.0.0.1", "127.0.0.8", "127.0.0.9"]).await;
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(pool_addrs(&p), [other.addr.to_string()]);
        assert_eq!(who(&p).await, "other");
    })
    .await
}

/// Issue 26, findings 1 and 5: A and AAAA are asked separately, and a round is all or
/// nothing: one family failing (SERVFAIL, REFUSED, no answer) keeps the whole last set, so
/// no client of either family is disconnected, and the failure is counted with its own
/// reason (a timeout as `timeout`, never as `empty`).
#[tokio::test]
async fn one_failing_address_family_removes_nothing_and_is_counted_by_its_reason() {
    bounded(async {
        use common::dns::Fault;
        let (port, _backends) = backends_on_one_port(&["127.0.0.1", "::1"], &["b4", "b6"]).await;
        let dns = Dns::start();
        dns.set_addrs("dual.sy.test.", &["127.0.0.1", "::1"]).await;
        let entry = format!("dual.sy.test:{port}");
        let p = Proxy::start(&discovery_config(
            "round_robin",
            &dns_entry("dual.sy.test", port, "150ms"),
            "",
            &dns.resolver_yaml("200ms"),
        ));
        assert_eq!(pool_addrs(&p), [format!("127.0.0.1:{port}"), format!("[::1]:{port}")]);
        let objects: Vec<_> = (0..2).map(|i| p.backend(i)).collect();
        let mut clients = Vec::new();
        for _ in 0..2 {
            let mut ws = connect(&p.url("/")).await;
            let name = ask(&mut ws, "whoami").await;
            clients.push((name, ws));
        }
        let mut names: Vec<_> = clients.iter().map(|(n, _)| n.clone()).collect();
        names.sort();
        assert_eq!(names, ["b4", "b6"], "one client on each family");
        let errors = |reason: &'static str| vec![("pool", "p"), ("name", entry.as_str()), ("reason", reason)];
        for (v6, fault, reason) in [
            (true, Fault::ServFail, "servfail"),
            (true, Fault::Refused, "refused"),
            (true, Fault::Silent, "timeout"),
            (false, Fault::ServFail, "servfail"),
            (false, Fault::Silent, "timeout"),
        ] {
            let before = metric(&p, "switchyard_discovery_errors_total", &errors(reason)).await;
            let empty_before = metric(&p, "switchyard_discovery_errors_total", &errors("empty")).await;
            dns.fault(v6, fault);
            let after = metric_reaches(&p, "switchyard_discovery_errors_total", &errors(reason), before + 2.0).await;
            assert!(
                after >= before + 2.0,
                "{fault:?} on {}: {reason} counted {before} -> {after}",
                if v6 { "AAAA" } else { "A" }
            );
            assert_eq!(
                metric(&p, "switchyard_discovery_errors_total", &errors("empty")).await,
                empty_before,
                "{fault:?} counted as empty"
            );
            dns.fault(v6, Fault::None);
            let rt = p.server.shared.runtime.load();
            let now = &rt.pools["p"].backends;
            assert_eq!(now.len(), 2, "{fault:?}: a backend was removed");
            assert!(
                now.iter().zip(&objects).all(|(a, b)| Arc::ptr_eq(a, b)),
                "{fault:?}: a backend was rebuilt"
            );
            for (name, ws) in clients.iter_mut() {
                assert_eq!(ask(ws, "still").await, "still", "{name} kept its connection through {fault:?}");
            }
        }
    })
    .await
}

/// Issue 26, finding 2: renaming a discovery entry to a name with the same addresses keeps
/// the backend (its connections, counters, health) and sheds nobody: the reload asks the
/// new name before it commits. A rename to a name that does not answer keeps serving: the
/// new entry holds the backends of the one it replaces until it answers.
#[tokio::test]
async fn a_renamed_entry_keeps_its_backends_and_a_rename_to_a_silent_name_keeps_serving() {
    bounded(async {
        let (port, _backends) = backends_on_one_port(&["127.0.0.1"], &["b1"]).await;
        let dns = Dns::start();
        dns.set_addrs("chat.sy.test.", &["127.0.0.1"]).await;
        dns.set_addrs("chat2.sy.test.", &["127.0.0.1"]).await;
        let yaml = |name: &str, bind: &str| {
            discovery_config("round_robin", &dns_entry(name, port, "5s"), "", &dns.resolver_yaml("300ms"))
                .replace("bind: \"127.0.0.1:0\"\n    routes", &format!("bind: \"{bind}\"\n    routes"))
        };
        let dir = tempfile::tempdir().unwrap();
        let (p, path) = Proxy::start_file(dir.path(), &yaml("chat.sy.test", "127.0.0.1:0"));
        let bind = p.addr.to_string();
        let object = p.backend(0);
        let mut ws = connect(&p.url("/")).await;
        assert_eq!(ask(&mut ws, "whoami").await, "b1");
        let sheds = || async { metric(&p, "switchyard_shed_total", &[("reason", "no_backend")]).await };
        let shed_before = sheds().await;

        std::fs::write(&path, yaml("chat2.sy.test", &bind)).unwrap();
        let notes = switchyard::reload::reload(&p.server.shared).expect("reload ok");
        assert!(
            notes.iter().any(|n| n.contains(&format!("chat2.sy.test:{port} found 1 backend"))),
            "{notes:?}"
        );
        assert!(Arc::ptr_eq(&p.backend(0), &object), "the same backend, found by another name");
        assert_eq!(
            p.backend(0).discovered_from().as_deref().map(String::as_str),
            Some(format!("chat2.sy.test:{port}").as_str())
        );
        assert_eq!(ask(&mut ws, "still").await, "still");
        assert_eq!(who(&p).await, "b1");

        // A name DNS does not know: the reload is applied, says so, and the pool keeps serving.
        // Through the admin API, whose answer says what the new entry found.
        std::fs::write(&path, yaml("nothing.sy.test", &bind)).unwrap();
        let (code, answer) = http(p.admin(), "POST", "/api/reload", "").await;
        assert_eq!(code, 200, "{answer}");
        assert!(answer.starts_with("ok\n"), "{answer}");
        assert!(
            answer.contains(&format!("nothing.sy.test:{port} found nothing yet (nxdomain")),
            "{answer}"
        );
        assert!(answer.contains("holds the 1 backend"), "{answer}");
        assert!(Arc::ptr_eq(&p.backend(0), &object));
        for _ in 0..5 {
            assert_eq!(who(&p).await, "b1", "new clients are served");
        }
        assert_eq!(ask(&mut ws, "still").await, "still");
        assert_eq!(sheds().await, shed_before, "nobody shed for want of a backend");
    })
    .await
}

/// Attack review of issue 26: a discovered address that is also configured is one backend
/// whatever the order; renamed entries of which only some answer, or an entry added before
/// its name exists and the old one removed later, never empty the pool or close its clients.
#[tokio::test]
async fn held_entries_keep_serving_until_every_entry_has_answered() {
    bounded(async {
        let (port, _backends) = backends_on_one_port(&["127.0.0.1", "127.0.0.3"], &["b1", "b3"]).await;
        let dns = Dns::start();
        dns.set_addrs("a.sy.test.", &["127.0.0.1"]).await;
        dns.set_addrs("b.sy.test.", &["127.0.0.3"]).await;
        let yaml = |entries: &[&str], bind: &str| {
            let list: String = entries.iter().map(|n| dns_entry(n, port, "150ms")).collect();
            discovery_config("round_robin", &list, "", &dns.resolver_yaml("300ms"))
                .replace("bind: \"127.0.0.1:0\"\n    routes", &format!("bind: \"{bind}\"\n    routes"))
        };
        let dir = tempfile::tempdir().unwrap();
        let (p, path) = Proxy::start_file(dir.path(), &yaml(&["a.sy.test", "b.sy.test"], "127.0.0.1:0"));
        let bind = p.addr.to_string();
        let objects: Vec<_> = (0..2).map(|i| p.backend(i)).collect();
        let mut clients = Vec::new();
        for _ in 0..4 {
            let mut ws = connect(&p.url("/")).await;
            let name = ask(&mut ws, "whoami").await;
            clients.push((name, ws));
        }
        let same = |p: &Proxy| {
            let rt = p.server.shared.runtime.load();
            let now = &rt.pools["p"].backends;
            now.len() == 2 && objects.iter().all(|o| now.iter().any(|b| Arc::ptr_eq(b, o)))
        };
        // Both entries renamed to names that do not answer yet: a's and b's backends held.
        std::fs::write(&path, yaml(&["a2.sy.test", "b2.sy.test"], &bind)).unwrap();
        let notes = switchyard::reload::reload(&p.server.shared).expect("reload ok");
        assert!(notes.iter().any(|n| n.contains("holds the 2 backends")), "{notes:?}");
        assert!(same(&p), "{:?}", pool_addrs(&p));
        // a2 answers first: the hold stays while b2 has not answered (b's backend is kept).
        dns.set_addrs("a2.sy.test.", &["127.0.0.1"]).await;
        let a2 = ("p".to_string(), format!("a2.sy.test:{port}"));
        assert!(eventually(T, || p.server.shared.runtime.load().discovered.contains_key(&a2))
            .await
            .is_some());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(same(&p), "{:?}", pool_addrs(&p));
        // An entry added before its name exists, then the old ones removed: still held.
        std::fs::write(&path, yaml(&["a2.sy.test", "b2.sy.test", "c.sy.test"], &bind)).unwrap();
        switchyard::reload::reload(&p.server.shared).expect("reload ok");
        std::fs::write(&path, yaml(&["c.sy.test"], &bind)).unwrap();
        switchyard::reload::reload(&p.server.shared).expect("reload ok");
        assert!(same(&p), "{:?}", pool_addrs(&p));
        for (name, ws) in clients.iter_mut() {
            assert_eq!(ask(ws, "still").await, "still", "{name} kept its connection");
        }
        // c answers with both addresses: the held entries are let go, the backends stay.
        dns.set_addrs("c.sy.test.", &["127.0.0.1", "127.0.0.3"]).await;
        assert!(
            eventually(T, || p.server.shared.runtime.load().held.is_empty()).await.is_some(),
            "held until the pool's entries answered"
        );
        assert!(same(&p), "{:?}", pool_addrs(&p));
        for (name, ws) in clients.iter_mut() {
            assert_eq!(ask(ws, "still").await, "still", "{name} kept its connection");
        }
    })
    .await
}

#[tokio::test]
async fn a_discovered_address_also_configured_is_one_backend() {
    bounded(async {
        let (port, _backends) = backends_on_one_port(&["127.0.0.1", "127.0.0.3"], &["b1", "b3"]).await;
        let dns = Dns::start();
        dns.set_addrs("dup.sy.test.", &["127.0.0.1"]).await;
        let entries = format!(
            "{}      - address: \"127.0.0.1:{port}\"\n      - address: \"127.0.0.3:{port}\"\n",
            dns_entry("dup.sy.test", port, "150ms")
        );
        let p = Proxy::start(&discovery_config("round_robin", &entries, "", &dns.resolver_yaml("300ms")));
        let mut addrs = pool_addrs(&p);
        addrs.sort();
        assert_eq!(addrs, [format!("127.0.0.1:{port}"), format!("127.0.0.3:{port}")]);
        let mut clients = Vec::new();
        for _ in 0..6 {
            let mut ws = connect(&p.url("/")).await;
            let name = ask(&mut ws, "whoami").await;
            clients.push((name, ws));
        }
        let mut names: Vec<_> = clients.iter().map(|(n, _)| n.as_str()).collect();
        names.sort();
        assert_eq!(
            names,
            ["b1", "b1", "b1", "b3", "b3", "b3"],
            "an even spread: one backend per address"
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
        for (name, ws) in clients.iter_mut() {
            assert_eq!(ask(ws, "still").await, "still", "{name} kept its connection");
        }
    })
    .await
}
