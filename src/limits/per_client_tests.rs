//! Tests of the per-client table: keys, both limits, release, sweeping, the bound.

use super::*;
use crate::clock;

fn limits(max: u64, rate: u64) -> Limits {
    Limits {
        max_connections_per_client: max,
        max_connections_per_client_per_second: rate,
        ..Limits::default()
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn v4(n: u32) -> IpAddr {
    IpAddr::from(n.to_be_bytes())
}

#[test]
fn keys_are_ipv4_addresses_and_ipv6_slash_64s() {
    assert_eq!(key(ip("192.0.2.1")), key(ip("::ffff:192.0.2.1")), "IPv4-mapped is IPv4");
    assert_ne!(key(ip("192.0.2.1")), key(ip("192.0.2.2")));
    assert_eq!(key(ip("2001:db8:1:2::1")), key(ip("2001:db8:1:2:ffff::9")), "one /64");
    assert_ne!(key(ip("2001:db8:1:2::1")), key(ip("2001:db8:1:3::1")));
    // No unicast /64 shares a key with an IPv4 address.
    assert_ne!(key(ip("192.0.2.1")), key(ip("ffff:ffff:c000:201::")) ^ 1);
    assert_eq!(key(ip("0.0.0.0")) >> 32, 0xFFFF_FFFF);
}

#[test]
fn the_connection_cap_counts_live_connections_per_client() {
    let t = Arc::new(ClientTable::default());
    let l = limits(2, 0);
    let now = clock::now_ms();
    let a1 = t.admit(ip("127.0.0.1"), &l, true, now).unwrap();
    let a2 = t.admit(ip("127.0.0.1"), &l, true, now).unwrap();
    assert!(a1.is_some() && a2.is_some());
    assert_eq!(t.admit(ip("127.0.0.1"), &l, true, now).unwrap_err(), Refused::OverLimit);
    assert_eq!(t.admit(ip("::ffff:127.0.0.1"), &l, true, now).unwrap_err(), Refused::OverLimit);
    let b = t.admit(ip("127.0.0.2"), &l, true, now).unwrap();
    assert!(b.is_some(), "another client has its own count");
    drop(a1);
    let a3 = t.admit(ip("127.0.0.1"), &l, true, now).unwrap();
    assert!(a3.is_some(), "a connection that ended gave its place back");
    assert_eq!(t.tracked(), 2);
    drop((a2, a3, b));
    assert_eq!(t.tracked(), 0, "no rate: an entry goes with its last connection");
    // Both limits off: nothing is counted.
    assert!(t.admit(ip("127.0.0.1"), &limits(0, 0), true, now).unwrap().is_none());
    assert_eq!(t.tracked(), 0);
}

#[test]
fn the_rate_bursts_one_second_then_refills_and_only_new_connections_pay() {
    let t = Arc::new(ClientTable::default());
    let l = limits(0, 3);
    let now = clock::now_ms();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(t.admit(ip("10.0.0.1"), &l, true, now).unwrap());
    }
    assert_eq!(t.admit(ip("10.0.0.1"), &l, true, now).unwrap_err(), Refused::OverLimit);
    // A request carried on a proxy's connection is counted but takes no token.
    assert!(t.admit(ip("10.0.0.1"), &l, false, now).unwrap().is_some());
    assert_eq!(t.admit(ip("10.0.0.1"), &l, true, now + 200).unwrap_err(), Refused::OverLimit);
    assert!(
        t.admit(ip("10.0.0.1"), &l, true, now + 340).unwrap().is_some(),
        "one token after 1/3 s"
    );
    assert!(t.admit(ip("10.0.0.2"), &l, true, now).unwrap().is_some(), "another client");
    drop(held);
    // Its bucket is still refilling: the entry stays after its connections end.
    assert!(t.tracked() >= 1);
}

#[test]
fn refilled_entries_are_swept_and_refilling_ones_evicted_when_full() {
    let t = Arc::new(ClientTable::default());
    let l = limits(0, 10);
    let now = clock::now_ms();
    for n in 0..10_000u32 {
        drop(t.admit(v4(n), &l, true, now).unwrap());
    }
    let after_burst = t.tracked();
    assert!(after_burst > 0 && after_burst <= 10_000);
    // A second later every bucket is full again: the next insertions sweep them out.
    let later = now + 1_000;
    for n in 0..10_000u32 {
        drop(t.admit(v4(1_000_000 + n), &l, true, later).unwrap());
    }
    assert!(
        t.tracked() < 2 * 10_000 / SHARDS * SHARDS,
        "refilled entries were swept: {}",
        t.tracked()
    );
}

#[test]
fn a_million_distinct_clients_never_grow_the_table_past_its_bound() {
    // Rate only: every client leaves an entry that is still refilling.
    let t = Arc::new(ClientTable::default());
    let l = limits(0, 5);
    let cap = capacity(&l);
    assert_eq!(cap, 2 * 100_000, "twice the default max_connections");
    let now = clock::now_ms();
    for n in 0..1_000_000u32 {
        let slot = t.admit(v4(n), &l, true, now).expect("a free entry is evicted to make room");
        drop(slot);
    }
    assert!(t.tracked() <= cap, "{} > {cap}", t.tracked());

    // Live connections: the table refuses new clients once full, and only then.
    let t = Arc::new(ClientTable::default());
    let l = Limits {
        max_connections: 1_000,
        ..limits(1, 0)
    };
    assert_eq!(capacity(&l), MIN_CAPACITY);
    let mut held = Vec::new();
    let mut full = 0;
    for n in 0..1_000_000u32 {
        match t.admit(v4(n), &l, true, now) {
            Ok(slot) => held.push(slot),
            Err(Refused::TableFull) => full += 1,
            Err(e) => panic!("{e:?}"),
        }
    }
    assert!(t.tracked() <= MIN_CAPACITY);
    assert_eq!(held.len() + full, 1_000_000);
    assert!(held.len() > MIN_CAPACITY / 2, "shards fill evenly: {}", held.len());
    drop(held);
    assert_eq!(t.tracked(), 0);
}

#[test]
fn a_clients_connections_share_one_message_allowance_that_outlives_a_reconnect() {
    let table = Arc::new(ClientTable::default());
    let mut l = limits(0, 0);
    l.messages.max_messages_per_second_per_client = 10;
    let a = ip("192.0.2.1");
    let now = clock::now_ms();
    // Not counted: no allowance to share.
    assert!(table.message_bucket(a, 10, now).is_none());
    let s1 = table.admit(a, &l, true, now).unwrap().expect("counted with the message limit on");
    let s2 = table.admit(a, &l, true, now).unwrap().unwrap();
    let b1 = table.message_bucket(a, 10, now).unwrap();
    let b2 = table.message_bucket(a, 10, now).unwrap();
    assert!(Arc::ptr_eq(&b1, &b2), "one allowance for the client's connections");
    let other = table.admit(ip("192.0.2.2"), &l, true, now).unwrap().unwrap();
    assert!(!Arc::ptr_eq(&b1, &table.message_bucket(ip("192.0.2.2"), 10, now).unwrap()));
    b1.take(10);
    assert_eq!((b2.available(now), b2.wait_ms()), (0, 100), "a token every 100 ms at 10/s");
    assert_eq!(b2.available(now + 100), 1);
    // Deep in debt (1,000 s at 10/s): both leave and one comes back: the same allowance, not
    // a fresh burst.
    b1.take(10_000);
    drop((s1, s2));
    let _s3 = table.admit(a, &l, true, now + 100).unwrap().unwrap();
    let b3 = table.message_bucket(a, 10, now + 100).unwrap();
    assert!(Arc::ptr_eq(&b1, &b3));
    assert_eq!(b3.available(now + 100), 0);
    drop(other);
    assert_eq!(
        table.tracked(),
        1,
        "a client whose allowance is full is forgotten with its last connection"
    );
}

#[test]
fn once_the_shared_allowance_runs_short_its_connections_take_turns() {
    let now = 1_000;
    let b = SharedBucket::new(10, now);
    b.take(10);
    // Nobody waits: whoever asks gets what there is (no lock on the way).
    assert_eq!(b.available_for(7, now + 100), 1);
    // A flooder held back joins the queue; a light sender that asks meanwhile gets nothing
    // while the flooder's turn is first, and queues behind it.
    assert_eq!(b.turn(1, true, now + 100), 0);
    assert_eq!(b.available_for(4, now + 100), 0);
    assert_eq!(b.turn(4, true, now + 100), 1);
    assert_eq!(b.turn_wait_ms(1), b.wait_ms() + 100, "one turn ahead: a token period more");
    // The flooder's turn: it takes, and goes to the back.
    assert_eq!(b.available_for(1, now + 100), 1);
    b.take(1);
    assert_eq!(b.turn(1, true, now + 100), 1);
    // Another flooder must wait for the light sender's turn, which comes next.
    assert_eq!(b.available_for(2, now + 200), 0);
    assert_eq!(b.turn(2, true, now + 200), 2);
    assert_eq!(b.available_for(4, now + 200), 1);
    b.take(1);
    assert_eq!(b.turn(4, false, now + 200), 0, "it sent what it had: out of the queue");
    // A head that does not come back for its turn (three periods) loses it.
    assert_eq!(b.available(now + 400), 2);
    assert_eq!(
        b.available_for(2, now + 400),
        0,
        "tokens there, but the head's turn (not stale yet)"
    );
    assert_eq!(b.available_for(2, now + 501), 3, "the stale head went to the back");
    assert_eq!(b.turn(2, false, now + 501), 0);
    assert_eq!(b.turn(1, false, now + 501), 0);
    assert_eq!(b.available_for(9, now + 2_000), 10, "nobody waits: the whole burst again");
}
