//! End-to-end relay: the same closed-loop echo workload (1 KiB binary messages, 16
//! connections) direct to a backend and through the balancer, in the same run; prints the
//! throughput ratio proxied / direct.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

const CONNS: usize = 16;
const MSG: usize = 1024;

fn backend_thread() -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            tx.send(switchyard::demo::spawn_echo_backend().await.unwrap()).unwrap();
            std::future::pending::<()>().await
        });
    });
    rx.recv().unwrap()
}

/// Echoes `per_conn` messages on each of CONNS connections; returns the elapsed time.
async fn run(url: &str, per_conn: u64) -> Duration {
    let mut conns = Vec::new();
    for _ in 0..CONNS {
        conns.push(tokio_tungstenite::connect_async(url).await.unwrap().0);
    }
    let t0 = Instant::now();
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                let payload = vec![0x5au8; MSG];
                for _ in 0..per_conn {
                    ws.send(Message::binary(payload.clone())).await.unwrap();
                    while !matches!(ws.next().await, Some(Ok(Message::Binary(_)))) {}
                }
                let _ = ws.close(None).await;
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    t0.elapsed()
}

fn bench(c: &mut Criterion) {
    let backend = backend_thread();
    let yaml = format!(
        "listeners:\n  - name: l\n    bind: \"127.0.0.1:0\"\n    routes:\n      - pool: p\npools:\n  p:\n    backends:\n      - address: \"{backend}\"\nlimits:\n  max_connections_per_second: 0\nprocess:\n  access_log: false\n  workers: 1\n"
    );
    let cfg = switchyard::config::parse(&yaml, std::path::Path::new(".")).unwrap();
    let server = switchyard::Server::start(cfg, None).unwrap();
    let proxied = format!("ws://{}/", server.addrs()[0].1);
    let direct = format!("ws://{backend}/");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();

    let mut g = c.benchmark_group("echo_1KiB_x16");
    g.throughput(Throughput::Elements(CONNS as u64));
    g.sample_size(10);
    let mut totals = [(Duration::ZERO, 0u64); 2];
    for (i, (name, url)) in [("direct", &direct), ("proxied", &proxied)].into_iter().enumerate() {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let d = rt.block_on(run(url, iters));
                totals[i].0 += d;
                totals[i].1 += iters;
                d
            })
        });
    }
    g.finish();
    let rate = |(d, n): (Duration, u64)| (n * CONNS as u64) as f64 / d.as_secs_f64();
    let (rd, rp) = (rate(totals[0]), rate(totals[1]));
    if rd > 0.0 && rp > 0.0 {
        println!(
            "echo 1KiB x{CONNS}: direct {rd:.0} msg/s, proxied {rp:.0} msg/s, ratio proxied/direct {:.2}",
            rp / rd
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
