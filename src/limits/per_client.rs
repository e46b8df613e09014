//! Per-client limits: live connections (`limits.max_connections_per_client`) and new
//! connections per second (`limits.max_connections_per_client_per_second`, a token bucket
//! with a burst of one second's worth) of one client. A client is an IPv4 address or an
//! IPv6 /64 (one subscriber usually holds a whole /64); an IPv4-mapped IPv6 address is its
//! IPv4 address.
//!
//! The table is bounded. It is sharded (one lock per shard, taken once when a connection is
//! admitted and once when it ends; never per frame), and a client's entry goes when its last
//! connection ends and its bucket is full again. Entries with no live connection but a bucket
//! still refilling are swept when a shard doubles, and evicted first when a shard is full
//! (the client then starts over with a full bucket). A shard full of clients that all hold
//! live connections refuses new clients ([`Refused::TableFull`]): admitting them untracked
//! would let a new client open any number of connections exactly when the balancer is under
//! the heaviest load, while the bound ([`capacity`]: twice `max_connections`, at least
//! 65,536) is only reached when the process itself is at its connection cap.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};

use crate::config::Limits;

/// Shards of the table (a power of two).
const SHARDS: usize = 64;
/// Fewest clients the table holds whatever `max_connections` is.
pub const MIN_CAPACITY: usize = 65_536;
/// Most clients the table holds whatever `max_connections` is.
pub const MAX_CAPACITY: usize = 1 << 23;
/// A shard is swept of refilled entries when it reaches twice its size after the last sweep
/// (and at least this).
const MIN_SWEEP: usize = 64;

/// The key of a client: the /64 of an IPv6 address, or an IPv4 address in a range no /64
/// can be a source in (`ffff:ffff::/32`, multicast).
pub fn key(ip: IpAddr) -> u64 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => 0xFFFF_FFFF_0000_0000 | u64::from(u32::from(v4)),
        IpAddr::V6(v6) => (u128::from(v6) >> 64) as u64,
    }
}

/// How many clients the table may hold for these limits.
pub fn capacity(limits: &Limits) -> usize {
    let conns = usize::try_from(limits.max_connections).unwrap_or(usize::MAX);
    conns.saturating_mul(2).clamp(MIN_CAPACITY, MAX_CAPACITY)
}

/// Why a client is not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Over one of its limits.
    OverLimit,
    /// A new client, and the table is full of clients with live connections.
    TableFull,
}

/// One client's state: 16 bytes (24 with its key in the map).
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Live connections admitted.
    count: u32,
    /// Tokens left in its bucket at `last_ms`.
    tokens: f32,
    /// When `tokens` was computed (process clock, ms).
    last_ms: u64,
}

impl Entry {
    /// Tokens at `now_ms` at `rate`/s, at most `rate` (the burst).
    fn tokens_at(&self, rate: u64, now_ms: u64) -> f64 {
        let gained = now_ms.saturating_sub(self.last_ms) as f64 * rate as f64 / 1000.0;
        (f64::from(self.tokens) + gained).min(rate as f64)
    }

    /// Refills its bucket up to `now_ms`.
    fn refill(&mut self, rate: u64, now_ms: u64) {
        self.tokens = self.tokens_at(rate, now_ms) as f32;
        self.last_ms = now_ms;
    }

    /// No live connection and a full bucket: the entry says nothing a new one would not.
    fn idle(&self, rate: u64, now_ms: u64) -> bool {
        self.count == 0 && (rate == 0 || self.tokens_at(rate, now_ms) >= rate as f64)
    }
}

/// A token bucket shared by every connection of one client (messages client → backend),
/// taken from by each connection's relay without a lock: thousandths of a token, refilled
/// per millisecond by whoever comes first (the one that moves `last_ms` gets the time).
///
/// Once it runs short, its connections take turns: one it held back joins a queue, and
/// while anyone waits in it only its head takes (then goes to the back if it still waits).
/// Without turns the connections that send all the time take every token the moment it
/// appears, and one that sends now and then never gets one. The queue (a lock) is touched
/// only while someone waits, never on a connection's way when nobody does.
#[derive(Debug)]
pub struct SharedBucket {
    /// Tokens per second (also the burst); a reload may change it.
    rate: AtomicU64,
    /// Thousandths of a token; below zero when connections took more at once.
    milli: std::sync::atomic::AtomicI64,
    last_ms: AtomicU64,
    /// Connections waiting for a turn, by id, in order; and since when its head is.
    turns: Mutex<(std::collections::VecDeque<u64>, u64)>,
    /// How many wait (the queue's length, read without its lock).
    waiting: AtomicU64,
}

/// A head that has not taken its turn for this many token periods (and at least
/// [`MIN_STALE_MS`]) loses it: it waits on something else (its own limits) or is gone.
const STALE_PERIODS: u64 = 3;
const MIN_STALE_MS: u64 = 20;

impl SharedBucket {
    /// A full bucket of `rate` tokens per second.
    pub fn new(rate: u64, now_ms: u64) -> SharedBucket {
        SharedBucket {
            rate: AtomicU64::new(rate),
            milli: std::sync::atomic::AtomicI64::new(rate as i64 * 1000),
            last_ms: AtomicU64::new(now_ms),
            turns: Mutex::new((std::collections::VecDeque::new(), 0)),
            waiting: AtomicU64::new(0),
        }
    }

    fn period_ms(&self) -> u64 {
        1000u64.div_ceil(self.rate.load(Relaxed).max(1))
    }

    /// Whole tokens connection `id` may take at `now_ms`: all there are while nobody waits;
    /// else only on its turn (a stale head is sent to the back first).
    pub fn available_for(&self, id: u64, now_ms: u64) -> u64 {
        let a = self.available(now_ms);
        if self.waiting.load(Relaxed) == 0 {
            return a;
        }
        let mut turns = self.turns.lock().unwrap_or_else(PoisonError::into_inner);
        let (queue, head_since) = &mut *turns;
        if queue.front() != Some(&id) && now_ms >= *head_since + (STALE_PERIODS * self.period_ms()).max(MIN_STALE_MS) {
            queue.rotate_left(1.min(queue.len()));
            *head_since = now_ms;
        }
        match queue.front() {
            Some(&head) if head == id => a,
            None => a,
            _ => 0,
        }
    }

    /// After connection `id` took its share: `waits` = it was held back by this bucket (it
    /// joins the queue, or goes to its back after its turn); else it leaves the queue.
    /// Returns how many turns are ahead of it.
    pub fn turn(&self, id: u64, waits: bool, now_ms: u64) -> u64 {
        let mut turns = self.turns.lock().unwrap_or_else(PoisonError::into_inner);
        let (queue, head_since) = &mut *turns;
        let was_head = queue.front() == Some(&id);
        if let Some(i) = queue.iter().position(|&q| q == id) {
            if !waits || was_head {
                queue.remove(i);
            }
        }
        if waits && (was_head || !queue.contains(&id)) {
            queue.push_back(id);
        }
        if was_head || queue.len() == 1 {
            *head_since = now_ms;
        }
        self.waiting.store(queue.len() as u64, Relaxed);
        queue.iter().position(|&q| q == id).unwrap_or(0) as u64
    }

    /// Milliseconds until the turn of a connection with `ahead` turns before it.
    pub fn turn_wait_ms(&self, ahead: u64) -> u64 {
        self.wait_ms() + ahead * self.period_ms()
    }

    /// Whole tokens available at `now_ms` (refilled first).
    pub fn available(&self, now_ms: u64) -> u64 {
        let rate = self.rate.load(Relaxed) as i64;
        let last = self.last_ms.load(Relaxed);
        if now_ms > last && self.last_ms.compare_exchange(last, now_ms, Relaxed, Relaxed).is_ok() {
            let gained = (now_ms - last).min(1_000_000) as i64 * rate;
            let cap = rate * 1000;
            let before = self.milli.fetch_add(gained, Relaxed);
            if before + gained > cap {
                self.milli.fetch_min(cap, Relaxed);
            }
        }
        (self.milli.load(Relaxed) / 1000).max(0) as u64
    }

    /// Holds its whole burst again at `now_ms`.
    pub fn full(&self, now_ms: u64) -> bool {
        self.available(now_ms) >= self.rate.load(Relaxed)
    }

    /// Takes `n` tokens.
    pub fn take(&self, n: u64) {
        self.milli.fetch_sub(n as i64 * 1000, Relaxed);
    }

    /// Milliseconds until a token is available (at least 1).
    pub fn wait_ms(&self) -> u64 {
        let rate = self.rate.load(Relaxed).max(1) as i64;
        let missing = 1000 - self.milli.load(Relaxed);
        (missing.max(1) as u64).div_ceil(rate as u64).max(1)
    }

    /// A reload's rate.
    pub fn set_rate(&self, rate: u64) {
        self.rate.store(rate, Relaxed);
    }
}

#[derive(Debug, Default)]
struct Shard {
    map: HashMap<u64, Entry>,
    sweep_at: usize,
    /// The message allowances the connections of a client share
    /// (`limits.max_messages_per_second_per_client`), made by the first that asks; only
    /// for clients in `map`, and only with that limit on (an entry stays 16 bytes).
    messages: HashMap<u64, Arc<SharedBucket>>,
}

impl Shard {
    /// Removes the entries of clients with no live connection and a full bucket; with
    /// `evict_refilling`, those whose bucket is still refilling too.
    fn sweep(&mut self, rate: u64, now_ms: u64, evict_refilling: bool) {
        self.map.retain(|_, e| e.count > 0 || (!evict_refilling && !e.idle(rate, now_ms)));
        if !self.messages.is_empty() {
            let map = &self.map;
            self.messages.retain(|k, _| map.contains_key(k));
        }
        self.sweep_at = (self.map.len() * 2).max(MIN_SWEEP);
        // Give back what an attack made it grow to.
        if self.map.capacity() > 4 * self.sweep_at {
            self.map.shrink_to(self.sweep_at);
        }
    }
}

/// The per-client table, shared by every worker.
#[derive(Debug)]
pub struct ClientTable {
    shards: Box<[Mutex<Shard>]>,
    /// The per-client rate in force (written at each admission), for releases.
    rate: AtomicU64,
    /// Per-process seed of the shard choice, so nobody can aim at one shard.
    seed: u64,
}

impl Default for ClientTable {
    fn default() -> Self {
        ClientTable {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            rate: AtomicU64::new(0),
            seed: rand::random(),
        }
    }
}

/// Holds one live connection of a client until dropped.
#[derive(Debug)]
pub struct ClientSlot {
    table: Arc<ClientTable>,
    key: u64,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.table.release(self.key);
    }
}

impl ClientTable {
    fn shard(&self, key: u64) -> std::sync::MutexGuard<'_, Shard> {
        let i = ((key ^ self.seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize % SHARDS;
        self.shards[i].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits one connection of the client at `ip`: counts it (the slot gives it back), and
    /// with `new_connection` takes a token of its rate (a request of a client carried on a
    /// proxy's connection is not a new connection). `Ok(None)` when both limits are off.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, limits: &Limits, new_connection: bool, now_ms: u64) -> Result<Option<ClientSlot>, Refused> {
        let (max, rate) = (limits.max_connections_per_client, limits.max_connections_per_client_per_second);
        if max == 0 && rate == 0 && limits.messages.max_messages_per_second_per_client == 0 {
            return Ok(None);
        }
        self.rate.store(rate, Relaxed);
        let per_shard = capacity(limits) / SHARDS;
        let key = key(ip);
        let mut shard = self.shard(key);
        if !shard.map.contains_key(&key) {
            if shard.map.len() >= shard.sweep_at.max(MIN_SWEEP) {
                shard.sweep(rate, now_ms, false);
            }
            if shard.map.len() >= per_shard {
                shard.sweep(rate, now_ms, true);
                if shard.map.len() >= per_shard {
                    return Err(Refused::TableFull);
                }
            }
        }
        let e = shard.map.entry(key).or_insert(Entry {
            count: 0,
            tokens: rate as f32,
            last_ms: now_ms,
        });
        if max != 0 && u64::from(e.count) >= max {
            return Err(Refused::OverLimit);
        }
        if rate != 0 && new_connection {
            e.refill(rate, now_ms);
            if e.tokens < 1.0 {
                return Err(Refused::OverLimit);
            }
            e.tokens -= 1.0;
        }
        e.count += 1;
        Ok(Some(ClientSlot { table: self.clone(), key }))
    }

    /// The message allowance the connections of the client at `ip` share, at `rate` per
    /// second; `None` when the client has no live connection counted here.
    pub fn message_bucket(&self, ip: IpAddr, rate: u64, now_ms: u64) -> Option<Arc<SharedBucket>> {
        let k = key(ip);
        let mut shard = self.shard(k);
        if !shard.map.contains_key(&k) {
            return None;
        }
        Some(
            shard
                .messages
                .entry(k)
                .or_insert_with(|| Arc::new(SharedBucket::new(rate, now_ms)))
                .clone(),
        )
    }

    fn release(&self, key: u64) {
        let rate = self.rate.load(Relaxed);
        let now_ms = crate::clock::now_ms();
        let mut shard = self.shard(key);
        // A message allowance still refilling stays with its client, like its connection
        // rate's tokens: leaving and coming back does not buy a fresh burst.
        let refilling = shard.messages.get(&key).is_some_and(|m| !m.full(now_ms));
        if let Some(e) = shard.map.get_mut(&key) {
            e.count = e.count.saturating_sub(1);
            if e.idle(rate, now_ms) && !refilling {
                shard.map.remove(&key);
                shard.messages.remove(&key);
            }
        }
    }

    /// Clients tracked now.
    pub fn tracked(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).map.len())
            .sum()
    }

    /// Bytes the table's maps have allocated (buckets and control bytes, estimated from
    /// their capacity), for measurements.
    pub fn allocated_bytes(&self) -> usize {
        let per_bucket = std::mem::size_of::<(u64, Entry)>() + 1;
        self.shards
            .iter()
            .map(|s| {
                let c = s.lock().unwrap_or_else(PoisonError::into_inner).map.capacity();
                // hashbrown keeps buckets at a power of two with at most 7/8 of them used.
                (c * 8 / 7).next_power_of_two() * per_bucket
            })
            .sum()
    }
}

#[cfg(test)]
#[path = "per_client_tests.rs"]
mod tests;
