//! Frame header parsing, masking and whole-buffer scanning throughput.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use switchyard::ws::frame::{apply_mask, parse_header, write_header, Opcode};
use switchyard::ws::stream::{Scanner, Side};

fn frames(n: usize, size: usize) -> Vec<u8> {
    let mut v = Vec::new();
    for _ in 0..n {
        let mut h = [0u8; 14];
        let l = write_header(&mut h, true, Opcode::Binary, Some([1, 2, 3, 4]), size as u64);
        v.extend_from_slice(&h[..l]);
        v.extend(std::iter::repeat_n(0x5au8, size));
    }
    v
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame");
    let hdr = frames(1, 1024);
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse_header", |b| b.iter(|| parse_header(black_box(&hdr))));
    let mut data = vec![0u8; 64 * 1024];
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("apply_mask_64KiB", |b| b.iter(|| apply_mask(black_box(&mut data), [1, 2, 3, 4], 1)));
    for size in [64usize, 1024] {
        let buf = frames(32 * 1024 / (size + 8), size);
        g.throughput(Throughput::Bytes(buf.len() as u64));
        g.bench_function(format!("scan_32KiB_of_{size}B_frames"), |b| {
            let mut s = Scanner::new(Side::Client, 0, 0);
            let mut work = buf.clone();
            b.iter(|| {
                let mut filled = work.len();
                let r = s.scan(black_box(&mut work), 0, &mut filled, None, false);
                s.take_messages();
                r.forward
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
