//! Custom load: backends report their own load (0–100, e.g. CPU or queue depth) on an HTTP
//! endpoint polled by the pool (the poller lives elsewhere; this file holds the pure parts:
//! [`parse_report`], [`record`] and the selection).
//!
//! Selection: the eligible backend with the lowest `load / effective_weight`, where `load`
//! is on the reported 0–100 scale for every backend:
//!
//! - **fresh report** (younger than the staleness limit, 3 poll intervals by default):
//!   `reported + k × connections placed here since that report`. A report only moves every
//!   poll interval; the second term makes each new connection count at once, so one low
//!   report does not attract every connection accepted until the next poll;
//! - **stale or unknown report**: `k × (active + 1)`, a load estimated from its connections;
//! - `k`, the load points one connection is worth, is calibrated on the fresh backends:
//!   `Σ reported / Σ (active + 1)` over the eligible fresh ones. With no fresh report at
//!   all the choice is plain weighted least connections.
//!
//! So a backend whose reports stop keeps its share in proportion to its connections instead
//! of being starved or flooded. Lock-free: atomics only (the "since that report" baseline is
//! one atomic pair per backend in the balancer).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use super::select::least_score;
use super::{Balancer, PickContext};
use crate::backend::{Backend, LOAD_UNKNOWN};

/// Smallest per-connection load, so connections still break ties when all report 0.
const MIN_LOAD_PER_CONNECTION: f64 = 1e-6;

/// One parsed load report (a backend's reply body).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Report {
    /// A load figure in 0–100 (`42`, `42.5`, `42%`).
    Load(f64),
    /// `drain`: take no new connections, keep the live ones.
    Drain,
    /// `down`: treat as failed.
    Down,
    /// `up` / `ready`: alive, no new figure; the previous figure stays current.
    Ready,
    /// Anything else: the load becomes unknown.
    Malformed,
}

/// Parses a report body: a number 0–100 (integer or float, surrounding whitespace trimmed,
/// a trailing `%` tolerated), or one of HAProxy's agent-check words `drain`, `down`, `up`,
/// `ready` (case-insensitive). Never panics; anything else is [`Report::Malformed`].
pub fn parse_report(body: &str) -> Report {
    let s = body.trim();
    for (word, report) in [
        ("drain", Report::Drain),
        ("down", Report::Down),
        ("up", Report::Ready),
        ("ready", Report::Ready),
    ] {
        if s.eq_ignore_ascii_case(word) {
            return report;
        }
    }
    let number = s.strip_suffix('%').unwrap_or(s).trim_end();
    // `f64::from_str` also takes "inf", "NaN" and "1e2"; only plain decimals are loads.
    if number.is_empty() || !number.bytes().all(|c| c.is_ascii_digit() || c == b'.') {
        return Report::Malformed;
    }
    match number.parse::<f64>() {
        Ok(v) if (0.0..=100.0).contains(&v) => Report::Load(v),
        _ => Report::Malformed,
    }
}

/// Stores a report's load figure on the backend: `Load` sets `custom_load` (rounded) and
/// its time, `Ready` refreshes the time of a known figure, `Malformed` makes the load
/// unknown. `Drain` and `Down` are state changes left to the caller (health/admin).
pub fn record(b: &Backend, report: Report, now_ms: u64) {
    match report {
        Report::Load(v) => {
            b.custom_load.store(v.round().clamp(0.0, 100.0) as u32, Relaxed);
            b.custom_load_at_ms.store(now_ms, Relaxed);
        }
        Report::Ready if b.custom_load.load(Relaxed) != LOAD_UNKNOWN => b.custom_load_at_ms.store(now_ms, Relaxed),
        Report::Malformed => b.custom_load.store(LOAD_UNKNOWN, Relaxed),
        Report::Ready | Report::Drain | Report::Down => {}
    }
}

/// Where counting "connections since the report" starts for one backend.
#[derive(Debug, Default)]
struct Baseline {
    /// `custom_load_at_ms` of the report this baseline belongs to.
    report_at_ms: AtomicU64,
    /// The backend's `total` when this balancer first saw that report.
    total: AtomicU64,
}

/// Least reported load per weight, least connections for backends without a fresh report.
#[derive(Debug)]
pub struct CustomLoad {
    stale_after_ms: u64,
    baselines: Vec<Baseline>,
    rotor: AtomicUsize,
}

impl CustomLoad {
    /// A balancer for `backends` (same order as passed to `pick`) treating reports older
    /// than `stale_after_ms` as stale.
    pub fn new(backends: &[Arc<Backend>], stale_after_ms: u64) -> Self {
        let baselines = backends.iter().map(|_| Baseline::default()).collect();
        CustomLoad {
            stale_after_ms,
            baselines,
            rotor: AtomicUsize::new(0),
        }
    }

    /// The fresh reported load of `b`, if any.
    fn fresh(&self, b: &Backend, now_ms: u64) -> Option<f64> {
        let load = b.custom_load.load(Relaxed);
        let at = b.custom_load_at_ms.load(Relaxed);
        let fresh = load != LOAD_UNKNOWN && at != 0 && now_ms.saturating_sub(at) <= self.stale_after_ms;
        fresh.then_some(load as f64)
    }

    /// Connections placed on backend `i` since its current report was first seen.
    fn since_report(&self, i: usize, b: &Backend) -> u64 {
        let Some(base) = self.baselines.get(i) else { return 0 };
        let at = b.custom_load_at_ms.load(Relaxed);
        let total = b.total.load(Relaxed);
        if base.report_at_ms.load(Relaxed) != at {
            // A new report: it already counts the connections placed so far. Racing picks
            // may both reset; either value is a fine baseline.
            base.total.store(total, Relaxed);
            base.report_at_ms.store(at, Relaxed);
            return 0;
        }
        total.saturating_sub(base.total.load(Relaxed))
    }
}

impl Balancer for CustomLoad {
    fn pick(&self, backends: &[Arc<Backend>], ctx: &PickContext<'_>) -> Option<usize> {
        let (mut load_sum, mut conn_sum, mut any_fresh) = (0.0, 0.0, false);
        for (i, b) in backends.iter().enumerate() {
            if let Some(load) = self.fresh(b, ctx.now_ms).filter(|_| ctx.eligible(i, b)) {
                load_sum += load;
                conn_sum += (b.active() + 1) as f64;
                any_fresh = true;
            }
        }
        let k = if any_fresh {
            (load_sum / conn_sum).max(MIN_LOAD_PER_CONNECTION)
        } else {
            1.0
        };
        let rotor = self.rotor.fetch_add(1, Relaxed);
        least_score(backends, ctx, rotor, |i, b| match self.fresh(b, ctx.now_ms) {
            Some(load) => load + k * self.since_report(i, b) as f64,
            None => k * (b.active() + 1) as f64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{ActiveGuard, BackendState};

    const NOW: u64 = 100_000;

    fn report(b: &Backend, load: f64) {
        record(b, Report::Load(load), NOW - 500);
    }

    #[test]
    fn parses_numbers_words_and_garbage() {
        assert_eq!(parse_report("42"), Report::Load(42.0));
        assert_eq!(parse_report(" 42.5\n"), Report::Load(42.5));
        assert_eq!(parse_report("75%"), Report::Load(75.0));
        assert_eq!(parse_report("75 %"), Report::Load(75.0));
        assert_eq!(parse_report("0"), Report::Load(0.0));
        assert_eq!(parse_report("100"), Report::Load(100.0));
        assert_eq!(parse_report("DRAIN"), Report::Drain);
        assert_eq!(parse_report("down\r\n"), Report::Down);
        assert_eq!(parse_report("up"), Report::Ready);
        assert_eq!(parse_report("Ready"), Report::Ready);
        for bad in ["", "%", "101", "-1", "1e2", "NaN", "inf", "4 2", "1.2.3", "42%%", "maint", "é"] {
            assert_eq!(parse_report(bad), Report::Malformed, "{bad:?}");
        }
    }

    #[test]
    fn record_keeps_the_figure_in_range() {
        let b = Backend::for_test("a:1", 1);
        record(&b, Report::Load(42.6), 10);
        assert_eq!((b.custom_load.load(Relaxed), b.custom_load_at_ms.load(Relaxed)), (43, 10));
        record(&b, Report::Ready, 20);
        assert_eq!((b.custom_load.load(Relaxed), b.custom_load_at_ms.load(Relaxed)), (43, 20));
        record(&b, Report::Drain, 30);
        assert_eq!(b.custom_load_at_ms.load(Relaxed), 20);
        record(&b, Report::Malformed, 40);
        assert_eq!(b.custom_load.load(Relaxed), LOAD_UNKNOWN);
    }

    #[test]
    fn high_reported_load_gets_fewer_picks() {
        let bs: Vec<_> = (0..3).map(|i| Backend::for_test(&format!("b{i}:1"), 1)).collect();
        for b in &bs {
            b.active.store(100, Relaxed);
        }
        report(&bs[0], 90.0);
        report(&bs[1], 10.0);
        report(&bs[2], 10.0);
        let cl = CustomLoad::new(&bs, 6_000);
        let mut counts = [0usize; 3];
        let mut guards = Vec::new();
        for _ in 0..300 {
            let i = cl.pick(&bs, &PickContext::bare(NOW)).unwrap();
            guards.push(ActiveGuard::new(bs[i].clone()));
            counts[i] += 1;
        }
        assert!(counts[0] * 10 < counts[1] && counts[0] * 10 < counts[2], "{counts:?}");
        // The two equal reporters share evenly (connections since the report count).
        assert!(counts[1].abs_diff(counts[2]) <= 1, "{counts:?}");
    }

    #[test]
    fn stale_reports_fall_back_to_connections() {
        let bs: Vec<_> = (0..3).map(|i| Backend::for_test(&format!("b{i}:1"), 1)).collect();
        let cl = CustomLoad::new(&bs, 6_000);
        // b0 fresh at 50 % with 99 connections: k = 50 / 100 = 0.5 points per connection.
        bs[0].active.store(99, Relaxed);
        report(&bs[0], 50.0);
        // b1's report is stale (10 s old), b2 never reported; 40 and 200 connections.
        bs[1].custom_load.store(0, Relaxed);
        bs[1].custom_load_at_ms.store(NOW - 10_000, Relaxed);
        bs[1].active.store(40, Relaxed);
        bs[2].active.store(200, Relaxed);
        // Scores: b0 50, b1 0.5 × 41 = 20.5, b2 0.5 × 201 = 100.5.
        assert_eq!(cl.pick(&bs, &PickContext::bare(NOW)), Some(1));
        // Nothing fresh at all: weighted least connections.
        let later = PickContext::bare(NOW + 60_000);
        assert_eq!(cl.pick(&bs, &later), Some(1));
        bs[1].active.store(300, Relaxed);
        assert_eq!(cl.pick(&bs, &later), Some(0));
    }

    #[test]
    fn weights_ties_and_exclusions() {
        let bs = vec![
            Backend::for_test("a:1", 1),
            Backend::for_test("b:1", 1),
            Backend::for_test("c:1", 2),
        ];
        for b in &bs {
            report(b, 40.0);
        }
        let cl = CustomLoad::new(&bs, 6_000);
        // Per weight, c (40 / 2) beats a and b (40 / 1).
        assert_eq!(cl.pick(&bs, &PickContext::bare(NOW)), Some(2));
        bs[2].set_state(BackendState::Down, 1);
        let mut counts = [0; 3];
        for _ in 0..100 {
            counts[cl.pick(&bs, &PickContext::bare(NOW)).unwrap()] += 1;
        }
        assert_eq!(counts, [50, 50, 0]);
        let ctx = PickContext {
            exclude: &[0, 1],
            ..PickContext::bare(NOW)
        };
        assert_eq!(cl.pick(&bs, &ctx), None);
    }
}
