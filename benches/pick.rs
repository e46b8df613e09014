//! `Balancer::pick` for every algorithm at 3, 100 and 1,000 backends, with varied live
//! state (connections, byte rates, latency samples, load reports) so that the "least"
//! algorithms do real comparisons rather than scanning ties.

use std::hint::black_box;
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use switchyard::backend::Backend;
use switchyard::balance::{build, PickContext};
use switchyard::config::{Algorithm, HashConfig, HashKey, PoolConfig, RebalanceConfig};

const NOW: u64 = 10_000_000;

fn pool(algorithm: Algorithm, hash: Option<HashConfig>, backends: &[Arc<Backend>]) -> PoolConfig {
    PoolConfig {
        algorithm,
        hash,
        backends: backends.iter().map(|b| b.config.clone()).collect(),
        health_check: None,
        slow_start: None,
        custom_load: None,
        bandwidth_window: Duration::from_secs(10),
        rebalance: RebalanceConfig::default(),
        connect_timeout: Duration::from_secs(3),
        max_attempts: 3,
        sticky: None,
        passive_health: Default::default(),
    }
}

/// `n` backends with weights 1–3 and pseudo-random live state.
fn backends(n: usize) -> Vec<Arc<Backend>> {
    (0..n)
        .map(|i| {
            let b = Backend::for_test(&format!("10.0.{}.{}:8080", i / 250, i % 250), 1 + (i % 3) as u32);
            let r = (i as u64).wrapping_mul(2_654_435_761) % 1_000;
            b.active.store(r, Relaxed);
            b.rate_b2c.set(r as f64 * 1_500.0);
            b.observe_latency(0.005 + r as f64 / 100_000.0, NOW - 1_000, 10_000.0);
            b.custom_load.store((r % 100) as u32, Relaxed);
            b.custom_load_at_ms.store(NOW - 500, Relaxed);
            b
        })
        .collect()
}

fn bench_pick(c: &mut Criterion) {
    let headers = [
        httparse::Header {
            name: "Host",
            value: b"chat.example.com",
        },
        httparse::Header {
            name: "Cookie",
            value: b"theme=dark; sid=8f14e45fceea167a5a36dedd4bea2543",
        },
    ];
    let ctx = PickContext {
        now_ms: NOW,
        client_ip: IpAddr::from([198, 51, 100, 7]),
        target: "/ws?room=42",
        headers: &headers,
        exclude: &[],
    };
    let cookie = |bounded_load| {
        Some(HashConfig {
            key: HashKey::Cookie("sid".into()),
            bounded_load,
        })
    };
    let mut group = c.benchmark_group("pick");
    for n in [3usize, 100, 1_000] {
        let bs = backends(n);
        let mut cases: Vec<(&str, PoolConfig)> = Algorithm::ALL
            .iter()
            .map(|&(name, alg)| (name, pool(alg, if alg == Algorithm::Hash { cookie(None) } else { None }, &bs)))
            .collect();
        cases.push(("hash_bounded", pool(Algorithm::Hash, cookie(Some(1.25)), &bs)));
        for (name, cfg) in cases {
            let balancer = build(&cfg, &bs);
            group.bench_with_input(BenchmarkId::new(name, n), &n, |bench, _| {
                bench.iter(|| black_box(balancer.pick(black_box(&bs), black_box(&ctx))))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_pick);
criterion_main!(benches);
