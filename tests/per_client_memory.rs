//! What the per-client table costs: bytes allocated per tracked client, counted by a global
//! allocator, with a million distinct clients; and the bound that holds whatever arrives.
//! `cargo test --test per_client_memory -- --nocapture` prints the figures.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::IpAddr;
use std::sync::atomic::{AtomicIsize, Ordering::SeqCst};
use std::sync::Arc;

use switchyard::config::Limits;
use switchyard::limits::per_client::{capacity, ClientTable};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator, only counting sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, SeqCst);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, SeqCst);
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, SeqCst);
        System.realloc(p, l, new)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Admits one connection of each of `n` clients made by `ip` and holds them (`hold`) or
/// lets them go (with a rate limit an entry stays while its bucket refills). Returns
/// (tracked, bytes the table allocated).
fn fill(limits: &Limits, n: u32, hold: bool, ip: impl Fn(u32) -> IpAddr) -> (usize, isize) {
    let t = Arc::new(ClientTable::default());
    let mut held = Vec::with_capacity(if hold { n as usize } else { 0 });
    let before = LIVE.load(SeqCst);
    let now = switchyard::clock::now_ms();
    for i in 0..n {
        match t.admit(ip(i), limits, true, now) {
            Ok(slot) if hold => held.push(slot),
            Ok(_) => {}
            Err(e) => panic!("client {i}: {e:?}"),
        }
    }
    let bytes = LIVE.load(SeqCst) - before;
    let tracked = t.tracked();
    drop(held);
    (tracked, bytes)
}

#[test]
fn bytes_per_tracked_client_and_the_bound() {
    let v4 = |i: u32| IpAddr::from((0x0A00_0000 + i).to_be_bytes());
    let v6 = |i: u32| IpAddr::from(std::net::Ipv6Addr::from((0x2001_0db8_0000_0000u128 + u128::from(i)) << 64 | 1));
    // Room for a million, each holding a connection: what each one costs.
    let roomy = Limits {
        max_connections: 1_000_000,
        max_connections_per_client: 10,
        ..Limits::default()
    };
    for (family, ip) in [("IPv4", &v4 as &dyn Fn(u32) -> IpAddr), ("IPv6 /64", &v6)] {
        let (tracked, bytes) = fill(&roomy, 1_000_000, true, ip);
        assert_eq!(tracked, 1_000_000);
        let per = bytes as f64 / tracked as f64;
        println!("{family}: {tracked} clients tracked in {bytes} bytes: {per:.1} bytes per client");
        // 24 bytes an entry and one control byte, in power-of-two tables at most 7/8 full.
        assert!(per < 60.0, "{per}");
    }
    // The defaults (max_connections 100,000): a million distinct clients, each leaving an
    // entry behind (a slow rate keeps it refilling), never take more than the bound.
    let defaults = Limits {
        max_connections_per_client_per_second: 1,
        ..Limits::default()
    };
    let (tracked, bytes) = fill(&defaults, 1_000_000, false, v4);
    assert!(tracked <= capacity(&defaults), "{tracked}");
    println!(
        "defaults: a million distinct clients leave {tracked} tracked (bound {}), {bytes} bytes",
        capacity(&defaults)
    );
    assert!(bytes < 16 << 20, "{bytes}");
}
