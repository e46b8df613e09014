//! The table of live proxied connections: what drain, shutdown, rebalance and idle eviction
//! act on. A connection is inserted once after its handshake and removed when it ends; the
//! relay never touches the table, only its own `ConnShared` atomics.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use futures_util::task::AtomicWaker;

use crate::backend::Backend;
use crate::config::MessageLimits;

/// A shard keeps room for this many connections however few are left.
const MIN_SHARD_CAPACITY: usize = 64;

/// `close_at_ms` value meaning "no close requested".
const NEVER: u64 = u64::MAX;

/// State of one live connection that other tasks may read or poke.
#[derive(Debug)]
pub struct ConnShared {
    /// Unique id.
    pub id: u64,
    /// Its backend.
    pub backend: Arc<Backend>,
    /// Pool name.
    pub pool: Arc<str>,
    /// Listener the client came in on (its name then).
    pub listener: Arc<str>,
    /// The listening socket that accepted it ([`crate::listeners::BoundListener::sockets`]):
    /// what it belongs to whatever the listener is called by later reloads.
    pub socket: u64,
    close_at_ms: AtomicU64,
    close_code: AtomicU16,
    /// Woken when a close is requested.
    pub waker: AtomicWaker,
    /// Last data frame in either direction (ms, process clock).
    pub last_data_ms: AtomicU64,
    /// The route it came by ([`crate::config::Route::key`]): a reload finds its message
    /// limits by it.
    pub route: u64,
    /// A reload's message limits for it, until its relay takes them.
    limits: Mutex<Option<Box<MessageLimits>>>,
    limits_changed: AtomicBool,
}

impl ConnShared {
    /// Asks the connection to close with `code` at `at_ms` (an earlier request wins).
    pub fn request_close(&self, at_ms: u64, code: u16) {
        if at_ms < self.close_at_ms.load(Relaxed) {
            self.close_code.store(code, Relaxed);
            self.close_at_ms.store(at_ms, Relaxed);
            self.waker.wake();
        }
    }

    /// Gives the connection new message limits (a reload); its relay takes them at once.
    pub fn set_limits(&self, limits: MessageLimits) {
        if let Ok(mut l) = self.limits.lock() {
            *l = Some(Box::new(limits));
            self.limits_changed.store(true, Relaxed);
            self.waker.wake();
        }
    }

    /// New limits wait for the relay (one load per wake-up).
    pub fn limits_changed(&self) -> bool {
        self.limits_changed.load(Relaxed)
    }

    /// The new limits, taken.
    pub fn take_limits(&self) -> Option<MessageLimits> {
        self.limits_changed.store(false, Relaxed);
        self.limits.lock().ok()?.take().map(|b| *b)
    }

    /// The requested close, if any: (when, code).
    pub fn close_request(&self) -> Option<(u64, u16)> {
        let at = self.close_at_ms.load(Relaxed);
        (at != NEVER).then(|| (at, self.close_code.load(Relaxed)))
    }
}

/// Live connections, sharded to keep insert/remove contention low.
#[derive(Debug)]
pub struct ConnTable {
    shards: Vec<Mutex<HashMap<u64, Arc<ConnShared>>>>,
    next_id: AtomicU64,
}

impl Default for ConnTable {
    fn default() -> Self {
        ConnTable {
            shards: (0..16).map(|_| Mutex::new(HashMap::new())).collect(),
            next_id: AtomicU64::new(1),
        }
    }
}

/// Removes the connection from the table when dropped.
#[derive(Debug)]
pub struct Registration {
    table: Arc<ConnTable>,
    /// The shared state.
    pub shared: Arc<ConnShared>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let id = self.shared.id;
        if let Ok(mut s) = self.table.shards[(id % 16) as usize].lock() {
            s.remove(&id);
            // Give back what a peak left: a shard under a quarter full halves or more (a
            // rehash of what is left, at most once per halving of its connections).
            if s.capacity() > MIN_SHARD_CAPACITY && s.len() * 4 < s.capacity() {
                let keep = (s.len() * 2).max(MIN_SHARD_CAPACITY);
                s.shrink_to(keep);
            }
        }
    }
}

impl ConnTable {
    /// Registers a new connection on `backend`.
    pub fn register(self: &Arc<Self>, backend: Arc<Backend>, (listener, route): (Arc<str>, u64), socket: u64, now_ms: u64) -> Registration {
        let id = self.next_id.fetch_add(1, Relaxed);
        let shared = Arc::new(ConnShared {
            id,
            pool: backend.pool.clone(),
            listener,
            socket,
            backend,
            close_at_ms: AtomicU64::new(NEVER),
            close_code: AtomicU16::new(0),
            waker: AtomicWaker::new(),
            last_data_ms: AtomicU64::new(now_ms),
            route,
            limits: Mutex::new(None),
            limits_changed: AtomicBool::new(false),
        });
        if let Ok(mut s) = self.shards[(id % 16) as usize].lock() {
            s.insert(id, shared.clone());
        }
        Registration {
            table: self.clone(),
            shared,
        }
    }

    /// A snapshot of the connections for which `keep` holds.
    pub fn select(&self, keep: impl Fn(&ConnShared) -> bool) -> Vec<Arc<ConnShared>> {
        let mut out = Vec::new();
        for s in &self.shards {
            if let Ok(s) = s.lock() {
                out.extend(s.values().filter(|c| keep(c)).cloned());
            }
        }
        out
    }

    /// Number of live connections.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map(|s| s.len()).unwrap_or(0)).sum()
    }

    /// No live connections?
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Schedules a close with `code` for each of `conns`, spread evenly over `window_ms` from
    /// `now_ms` with ±50 % jitter of one slot, so clients do not reconnect in lockstep.
    pub fn spread_close(conns: &[Arc<ConnShared>], now_ms: u64, window_ms: u64, code: u16) {
        let n = conns.len().max(1) as u64;
        let slot = window_ms / n;
        for (i, c) in conns.iter().enumerate() {
            let jitter = if slot > 1 { rand::random_range(0..slot) } else { 0 };
            let at = now_ms + (i as u64 * slot + jitter).min(window_ms.saturating_sub(1));
            c.request_close(at, code);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capacity(t: &ConnTable) -> usize {
        t.shards.iter().map(|s| s.lock().unwrap().capacity()).sum()
    }

    #[test]
    fn shards_give_back_room_after_a_peak() {
        let t = Arc::new(ConnTable::default());
        let b = Backend::for_test("a:1", 1);
        let listener: Arc<str> = "l".into();
        let mut regs: Vec<Registration> = (0..8_000).map(|_| t.register(b.clone(), (listener.clone(), 0), 0, 1)).collect();
        assert_eq!(t.len(), 8_000);
        let peak = capacity(&t);
        assert!(peak >= 8_000, "{peak}");
        // (`capacity()` also drops by one for each removal that leaves a tombstone, so only
        // upper bounds are asserted after removals.)
        // Down to 1,000 (62 or 63 a shard, under a quarter of its room): already given back,
        // room for at most twice what is left, rounded up to hashbrown's 7/8 of a power of two.
        drop(regs.split_off(1_000));
        assert_eq!(t.len(), 1_000);
        let mid = capacity(&t);
        assert!(mid <= 16 * 224, "{peak} -> {mid}");
        // every shard back to its floor: room for at most twice MIN_SHARD_CAPACITY
        drop(regs);
        assert!(t.is_empty());
        let after = capacity(&t);
        assert!(after <= 16 * 2 * MIN_SHARD_CAPACITY, "{peak} -> {after}");
    }
}
