//! Tests of the consistent-hash balancer (kept apart so `hash.rs` stays short).

use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;

use super::*;
use crate::backend::BackendState;

fn backends(weights: &[u32]) -> Vec<Arc<Backend>> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &w)| Backend::for_test(&format!("10.0.0.{i}:80"), w))
        .collect()
}

fn ring(key: HashKey, bounded_load: Option<f64>, bs: &[Arc<Backend>]) -> ConsistentHash {
    ConsistentHash::new(&HashConfig { key, bounded_load }, bs)
}

/// The address each of `keys` user ids lands on (keyed by `?user=`).
fn placement(h: &ConsistentHash, bs: &[Arc<Backend>], keys: usize) -> Vec<String> {
    (0..keys)
        .map(|k| {
            let target = format!("/ws?room=1&user={k}");
            let ctx = PickContext {
                target: &target,
                ..PickContext::bare(1)
            };
            bs[h.pick(bs, &ctx).expect("a pick")].address.clone()
        })
        .collect()
}

#[test]
fn removing_a_backend_moves_only_its_keys_and_restoring_it_restores_all() {
    let bs = backends(&[1; 5]);
    let q = || HashKey::Query("user".into());
    let before = placement(&ring(q(), None, &bs), &bs, 10_000);
    let gone = bs[2].address.clone();
    let on_gone = before.iter().filter(|a| **a == gone).count();
    // ≈ 1/N of the keys were on it (2,000 ± 30 %).
    assert!((1_400..2_600).contains(&on_gone), "{on_gone}");

    let fewer: Vec<_> = bs.iter().filter(|b| b.address != gone).cloned().collect();
    let after = placement(&ring(q(), None, &fewer), &fewer, 10_000);
    let mut moved = 0;
    for (b, a) in before.iter().zip(&after) {
        if b != a {
            assert_eq!(*b, gone, "a key on a surviving backend moved");
            moved += 1;
        }
    }
    assert_eq!(moved, on_gone);

    // Marking it down instead of removing it gives the same placement.
    let h = ring(q(), None, &bs);
    bs[2].set_state(BackendState::Down, 1);
    assert_eq!(placement(&h, &bs, 10_000), after);
    // Back up (or back in the list): every key returns to its original backend.
    bs[2].set_state(BackendState::Up, 2);
    assert_eq!(placement(&h, &bs, 10_000), before);
    assert_eq!(placement(&ring(q(), None, &bs), &bs, 10_000), before);
}

#[test]
fn placement_ignores_list_order() {
    let bs = backends(&[1; 4]);
    let reversed: Vec<_> = bs.iter().rev().cloned().collect();
    let q = || HashKey::Query("user".into());
    assert_eq!(
        placement(&ring(q(), None, &bs), &bs, 2_000),
        placement(&ring(q(), None, &reversed), &reversed, 2_000)
    );
}

#[test]
fn placement_depends_only_on_the_set_of_backends() {
    // Mixed weights, a shuffled list (as DNS answers come): same keys, same addresses.
    let bs: Vec<_> = (0..24u32)
        .map(|i| Backend::for_test(&format!("10.1.0.{i}:9000"), 1 + i % 3))
        .collect();
    let mut shuffled = bs.clone();
    let mut seed = 0x9e37_79b9_u64;
    for i in (1..shuffled.len()).rev() {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        shuffled.swap(i, (seed >> 33) as usize % (i + 1));
    }
    assert_ne!(
        bs.iter().map(|b| &b.address).collect::<Vec<_>>(),
        shuffled.iter().map(|b| &b.address).collect::<Vec<_>>()
    );
    for bounded in [None, Some(1.25)] {
        let q = || HashKey::Query("user".into());
        assert_eq!(
            placement(&ring(q(), bounded, &bs), &bs, 5_000),
            placement(&ring(q(), bounded, &shuffled), &shuffled, 5_000)
        );
    }
}

#[test]
fn weights_change_the_ring_share() {
    let bs = backends(&[1, 1, 3, 1]);
    let addrs = placement(&ring(HashKey::Query("user".into()), None, &bs), &bs, 20_000);
    let count = |i: usize| addrs.iter().filter(|a| **a == bs[i].address).count() as f64;
    let light = (count(0) + count(1) + count(3)) / 3.0;
    let ratio = count(2) / light;
    // Weight 3 gets 3× the keys of a weight-1 backend, ±20 %.
    assert!((2.4..3.6).contains(&ratio), "{ratio}");
}

#[test]
fn bounded_load_caps_every_backend() {
    for (keys, c) in [(3usize, 1.25), (10_000, 1.1), (1, 1.5)] {
        let bs = backends(&[1; 5]);
        let h = ring(HashKey::Query("user".into()), Some(c), &bs);
        for m in 1..=1_000usize {
            let target = format!("/?user={}", m % keys);
            let ctx = PickContext {
                target: &target,
                ..PickContext::bare(1)
            };
            let i = h.pick(&bs, &ctx).unwrap();
            bs[i].active.fetch_add(1, Relaxed);
            let cap = (c * m as f64 / 5.0 - 1e-9).ceil() as u64;
            let max = bs.iter().map(|b| b.active()).max().unwrap();
            assert!(max <= cap, "{keys} keys, c = {c}: {max} > {cap} after {m}");
        }
    }
}

#[test]
fn bounded_load_respects_weights() {
    let bs = backends(&[1, 3]);
    let h = ring(HashKey::Path, Some(1.25), &bs);
    // One hot key: the bound alone decides, so the split follows the capacities.
    for _ in 0..400 {
        let i = h.pick(&bs, &PickContext::bare(1)).unwrap();
        bs[i].active.fetch_add(1, Relaxed);
    }
    assert!(
        bs[0].active() <= 125 && bs[1].active() <= 375,
        "{} {}",
        bs[0].active(),
        bs[1].active()
    );
}

#[test]
fn keys_are_extracted_with_client_ip_fallback() {
    let bs = backends(&[1; 8]);
    let ip_a: IpAddr = "192.0.2.1".parse().unwrap();
    let pick = |h: &ConsistentHash, ctx: &PickContext<'_>| h.key_hash(ctx);
    let base = PickContext {
        client_ip: ip_a,
        ..PickContext::bare(1)
    };

    let hdrs = [
        httparse::Header {
            name: "X-Session",
            value: b" abc ",
        },
        httparse::Header {
            name: "Cookie",
            value: b"theme=dark; sid=\"s1\"",
        },
        httparse::Header {
            name: "cookie",
            value: b"other=1; SID=wrong; tenant=t9",
        },
    ];
    let ctx = PickContext {
        headers: &hdrs,
        target: "/chat/room?x=1&user=u7#frag",
        ..base
    };
    let header = ring(HashKey::Header("x-session".into()), None, &bs);
    assert_eq!(pick(&header, &ctx), hash_bytes(b"abc"));
    let sid = ring(HashKey::Cookie("sid".into()), None, &bs);
    assert_eq!(pick(&sid, &ctx), hash_bytes(b"s1"));
    let tenant = ring(HashKey::Cookie("tenant".into()), None, &bs);
    assert_eq!(pick(&tenant, &ctx), hash_bytes(b"t9"));
    let user = ring(HashKey::Query("user".into()), None, &bs);
    assert_eq!(pick(&user, &ctx), hash_bytes(b"u7"));
    let path_key = ring(HashKey::Path, None, &bs);
    assert_eq!(pick(&path_key, &ctx), hash_bytes(b"/chat/room"));
    let ip = ring(HashKey::ClientIp, None, &bs);
    assert_eq!(pick(&ip, &ctx), hash_ip(ip_a));

    // Missing or empty keys fall back to the client IP.
    let bare = PickContext {
        target: "/chat?user=&x",
        ..base
    };
    for h in [&header, &sid, &user] {
        assert_eq!(pick(h, &bare), hash_ip(ip_a));
    }
    // An IPv4-mapped IPv6 client hashes like its IPv4 form.
    let mapped = PickContext {
        client_ip: "::ffff:192.0.2.1".parse().unwrap(),
        ..base
    };
    assert_eq!(pick(&ip, &mapped), hash_ip(ip_a));
}

#[test]
fn same_client_ip_sticks_and_ips_spread() {
    let bs = backends(&[1; 4]);
    let h = ring(HashKey::ClientIp, None, &bs);
    let mut counts = [0usize; 4];
    for k in 0..4_000u32 {
        let ctx = PickContext {
            client_ip: IpAddr::from((0x0a00_0000 + k).to_be_bytes()),
            ..PickContext::bare(1)
        };
        let i = h.pick(&bs, &ctx).unwrap();
        assert_eq!(h.pick(&bs, &ctx), Some(i));
        counts[i] += 1;
    }
    // Each ≈ 1,000 ± 25 % (ring variance at 160 points per backend).
    assert!(counts.iter().all(|c| (750..1_250).contains(c)), "{counts:?}");
}

#[test]
fn exclusions_ramp_and_none() {
    let bs = backends(&[1; 3]);
    let h = ring(HashKey::ClientIp, None, &bs);
    let first = h.pick(&bs, &PickContext::bare(1)).unwrap();
    let ctx = PickContext {
        exclude: &[first],
        ..PickContext::bare(1)
    };
    let second = h.pick(&bs, &ctx).unwrap();
    assert_ne!(first, second);
    let all = [0, 1, 2];
    assert_eq!(
        h.pick(
            &bs,
            &PickContext {
                exclude: &all,
                ..PickContext::bare(1)
            }
        ),
        None
    );
    assert_eq!(h.pick(&[], &PickContext::bare(1)), None);

    // A backend at 5 % of its ramp takes ≈ 5 % of the keys it would own.
    let bs = backends(&[1; 2]);
    let h = ring(HashKey::Query("user".into()), None, &bs);
    let full = placement(&h, &bs, 10_000).iter().filter(|a| **a == bs[1].address).count() as f64;
    bs[1].slow_start_ms.store(10_000, Relaxed);
    bs[1].ramp_start_ms.store(1, Relaxed); // bare(1): factor clamps to 5 %
    let ramping = placement(&h, &bs, 10_000).iter().filter(|a| **a == bs[1].address).count() as f64;
    assert!((0.03..0.08).contains(&(ramping / full)), "{ramping} of {full}");
}

#[test]
fn hash_is_stable() {
    // FNV-1a 64 reference vectors; the ring must not change between builds or processes.
    assert_eq!(fnv1a(FNV_OFFSET, b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1a(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(fnv1a(FNV_OFFSET, b"foobar"), 0x8594_4171_f739_67e8);
    let bs = backends(&[1; 3]);
    let a = ring(HashKey::Path, None, &bs);
    let b = ring(HashKey::Path, None, &bs);
    assert_eq!(a.points, b.points);
    assert_eq!(a.points.len(), 480);
}
