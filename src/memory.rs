//! Giving freed memory back to the kernel after load drops. What a burst of connections
//! freed (a reconnect storm, a wave of slow request heads, a backend's clients moving) would
//! otherwise stay resident at the burst's peak: with glibc's allocator, a 90 s chaos run (500
//! connections, a reconnect storm, 2,000 slowloris heads) left 30 MB resident after everyone
//! had gone, of which 0.9 MB was in use. The program's allocator is mimalloc ([`Allocator`]):
//! it returns free pages on its own shortly after they empty, and keeps no
//! per-thread caches that count as in use the way glibc's did (those moved the resident size
//! after a burst by up to ±0.5 MB, and turning them off cost 3.5–5 % of the CPU of every
//! handshake and plain request). Once a second the control thread compares the live
//! connections (admitted and pending) with their high-water mark since the last trim; when
//! they fell to half of it or less, by at least [`MIN_DROP`], it asks each worker thread to
//! free its spare relay buffers (up to 16 × 32 KiB per worker, resident and counted
//! as in use, so what a round of traffic leaves on those lists moved the resident size by up
//! to 1 MiB) and to have the allocator collect that thread's free memory at once. Off the hot
//! path: the relay never allocates per frame, and a trim only follows a drop in load.

use std::sync::Arc;
use std::time::Duration;

use crate::shared::Shared;

/// The allocator of the `switchyard` program (its `main` declares it global; tests that
/// count allocations use their own).
pub use mimalloc::MiMalloc as Allocator;

/// Smaller drops in live connections free too little to be worth a trim.
pub const MIN_DROP: u64 = 256;
/// How often the live connection count is looked at.
const TICK: Duration = Duration::from_secs(1);

/// Decides when a trim is due from successive live-connection counts.
#[derive(Debug, Default)]
pub struct TrimPolicy {
    high: u64,
}

impl TrimPolicy {
    /// Records a count; true when the count fell to half of the high-water mark since the
    /// last trim (or lower) by at least [`MIN_DROP`], which then starts again from here.
    pub fn observe(&mut self, live: u64) -> bool {
        self.high = self.high.max(live);
        let due = live.saturating_mul(2) <= self.high && self.high - live >= MIN_DROP;
        if due {
            self.high = live;
        }
        due
    }
}

/// Returns the allocator's free pages of the calling thread (and any abandoned by threads
/// that ended) to the kernel now, instead of after mimalloc's purge delay.
pub fn trim() {
    extern "C" {
        fn mi_collect(force: bool);
    }
    // SAFETY: mi_collect takes no pointers and may be called from any thread, whether or not
    // mimalloc is the global allocator (it is linked either way, see [`Allocator`]).
    unsafe { mi_collect(true) }
}

/// The control thread's task: watches the live connection count and trims after drops.
pub async fn run(shared: Arc<Shared>) {
    let mut policy = TrimPolicy::default();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let live = shared.admission.active() + shared.admission.pending();
        if policy.observe(live) {
            // each worker frees its spare buffers, then trims (every arena, this thread's too)
            for w in &shared.workers {
                let _ = w.send(crate::listeners::WorkerCmd::Trim);
            }
            tracing::debug!(live, "returned free memory to the kernel");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_live_connections_halve_by_enough() {
        let mut p = TrimPolicy::default();
        let seen: Vec<bool> = [0, 8000, 10_000, 8000, 5001, 5000, 5000, 2400, 2500, 1000, 999, 0]
            .into_iter()
            .map(|n| p.observe(n))
            .collect();
        // 10,000 → 5,000 is half: trim; then from 5,000: 2,400 is under half; then from
        // 2,500 (the new high): 1,000; from 1,000 down to 0 the drop reaches half and 256
        assert_eq!(
            seen,
            [false, false, false, false, false, true, false, true, false, true, false, true]
        );
    }

    #[test]
    fn small_drops_are_not_worth_a_trim() {
        let mut p = TrimPolicy::default();
        assert!(!p.observe(200));
        assert!(!p.observe(0)); // everyone left, but 200 connections free little
        assert!(!p.observe(300));
        assert!(!p.observe(100)); // under half, but a drop of 200 < MIN_DROP
        assert!(p.observe(40)); // 300 → 40: under half and 260 ≥ MIN_DROP
    }

    #[test]
    fn trim_can_be_called_any_time() {
        let v = vec![1u8; 1 << 20];
        drop(v);
        trim();
        trim();
    }
}
