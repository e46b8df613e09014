//! Metric series of removed backends are dropped once their connections are gone (issue 17,
//! fault 12): after 50 reloads, each with a new backend address, `/metrics` holds series for
//! the live backends only.

mod common;
use common::*;

#[tokio::test]
async fn fifty_reloads_with_new_addresses_leave_series_of_live_backends_only() {
    bounded(async {
        let a = backend("a").await;
        let dir = tempfile::tempdir().unwrap();
        let yaml = |other: std::net::SocketAddr| config("round_robin", &[a.addr, other], "admin:\n  bind: \"127.0.0.1:0\"\n");
        let (p, path) = Proxy::start_file(dir.path(), &yaml(dead_port().await));
        // A client stays connected to the backend that stays throughout.
        let mut ws = connect(&p.url("/")).await;
        assert_eq!(ask(&mut ws, "whoami").await, "a");
        let mut last = a.addr;
        for _ in 0..50 {
            last = dead_port().await;
            std::fs::write(&path, yaml(last)).unwrap();
            switchyard::reload::reload(&p.server.shared).expect("reload ok");
        }
        let up_lines = |m: &str| {
            let mut v: Vec<String> = m
                .lines()
                .filter(|l| l.starts_with("switchyard_backend_up{"))
                .map(str::to_string)
                .collect();
            v.sort();
            v
        };
        let mut expected = vec![
            format!("switchyard_backend_up{{pool=\"p\",backend=\"{}\"}} 1", a.addr),
            format!("switchyard_backend_up{{pool=\"p\",backend=\"{last}\"}} 1"),
        ];
        expected.sort();
        let mut metrics = String::new();
        let settled = eventually(T, || {
            metrics = switchyard::metrics::render();
            up_lines(&metrics) == expected
        })
        .await;
        assert!(settled.is_some(), "{:?}", up_lines(&metrics));
        // The same through the admin listener, for every per-backend family.
        let (code, body) = http_get(p.admin(), "/metrics").await;
        assert_eq!(code, 200);
        assert_eq!(up_lines(&body), expected);
        assert_eq!(body.lines().filter(|l| l.starts_with("switchyard_connections_active{")).count(), 2);
        // Two a backend: by direction, or by the client's protocol.
        for family in [
            "switchyard_connections_total{",
            "switchyard_bytes_total{",
            "switchyard_messages_total{",
        ] {
            assert_eq!(body.lines().filter(|l| l.starts_with(family)).count(), 4, "{family}");
        }
        let active_a = format!("switchyard_connections_active{{pool=\"p\",backend=\"{}\"}} 1", a.addr);
        assert!(body.lines().any(|l| l == active_a), "{body}");
        assert_eq!(ask(&mut ws, "still").await, "still");
    })
    .await
}
