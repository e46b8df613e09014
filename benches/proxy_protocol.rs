//! The cost a `proxy_protocol` listener adds to each handshake: parsing a v1 (text) and a
//! v2 (binary) header, as the reader does it (growing the input by what the parser asks),
//! and writing a backend's v2 header.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use switchyard::proxy_protocol::{parse, ParseError, V2Header};

/// Parses `bytes` the way `proxy_protocol::read` does: from nothing, taking exactly the
/// bytes the parser asks for each time. Returns the header length.
fn read_like(bytes: &[u8]) -> usize {
    let mut have = 0;
    loop {
        match parse(&bytes[..have]) {
            Ok(h) => return h.len,
            Err(ParseError::Incomplete(n)) => have += n,
            Err(ParseError::Invalid(e)) => panic!("{e}"),
        }
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("proxy_protocol");
    g.throughput(Throughput::Elements(1));
    let v1 = b"PROXY TCP4 198.51.100.7 203.0.113.1 54321 443\r\nGET / HTTP/1.1\r\n".to_vec();
    let v1_6 = b"PROXY TCP6 2001:db8:85a3::8a2e:370:7334 2001:db8::1 54321 443\r\nGET / HTTP/1.1\r\n".to_vec();
    let mut v2 = V2Header::proxy("198.51.100.7:54321".parse().unwrap(), "203.0.113.1:443".parse().unwrap())
        .as_bytes()
        .to_vec();
    v2.extend_from_slice(b"GET / HTTP/1.1\r\n");
    let mut v2_6 = V2Header::proxy("[2001:db8::7]:54321".parse().unwrap(), "[2001:db8::1]:443".parse().unwrap())
        .as_bytes()
        .to_vec();
    v2_6.extend_from_slice(b"GET / HTTP/1.1\r\n");
    g.bench_function("parse_v1_tcp4_whole", |b| b.iter(|| parse(black_box(&v1))));
    g.bench_function("parse_v1_tcp4_as_read", |b| b.iter(|| read_like(black_box(&v1))));
    g.bench_function("parse_v1_tcp6_as_read", |b| b.iter(|| read_like(black_box(&v1_6))));
    g.bench_function("parse_v2_inet_whole", |b| b.iter(|| parse(black_box(&v2))));
    g.bench_function("parse_v2_inet_as_read", |b| b.iter(|| read_like(black_box(&v2))));
    g.bench_function("parse_v2_inet6_as_read", |b| b.iter(|| read_like(black_box(&v2_6))));
    g.bench_function("write_v2_inet", |b| {
        let (s, d) = ("198.51.100.7:54321".parse().unwrap(), "203.0.113.1:443".parse().unwrap());
        b.iter(|| V2Header::proxy(black_box(s), black_box(d)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
