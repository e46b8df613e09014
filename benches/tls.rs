//! TLS handshakes per second the balancer terminates: each iteration is a TCP connect, a
//! TLS 1.3 handshake (ECDSA P-256 certificate) and a WebSocket upgrade through the balancer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["bench.test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.path().join("c.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("k.pem"), key.serialize_pem()).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let backend = rt.block_on(switchyard::demo::spawn_echo_backend()).unwrap();
    let yaml = format!(
        "listeners:\n  - name: l\n    bind: \"127.0.0.1:0\"\n    tls: {{ cert: c.pem, key: k.pem }}\n    routes:\n      - pool: p\npools:\n  p:\n    backends:\n      - address: \"{backend}\"\nlimits:\n  max_connections_per_second: 0\nprocess:\n  access_log: false\n  workers: 1\n"
    );
    let cfg = switchyard::config::parse(&yaml, dir.path()).unwrap();
    let server = switchyard::Server::start(cfg, None).unwrap();
    let addr = server.addrs()[0].1;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let cc = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cc));
    let mut g = c.benchmark_group("tls");
    g.throughput(Throughput::Elements(1));
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("handshake_and_upgrade", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let t0 = Instant::now();
                for _ in 0..iters {
                    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
                    let name = rustls::pki_types::ServerName::try_from("bench.test").unwrap();
                    let mut tls = connector.connect(name, tcp).await.unwrap();
                    switchyard::ws::peer::client_handshake(&mut tls, "bench.test", "/").await.unwrap();
                }
                t0.elapsed()
            })
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
