//! The custom-load poller: one task per backend of a `custom_load` pool, GETting
//! `custom_load.path` every `custom_load.interval` (± 10 %) and storing the report on the
//! backend for the balancer. `drain` is recorded as a full load (no new connections while
//! others have room); `down` marks the backend down until a later report says otherwise.
//! Failed polls and malformed reports are counted every time but logged once per backend
//! until a good report arrives; the balancer itself falls back when reports go stale.

use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::{next_run, transition_metric};
use crate::backend::{Backend, BackendState, CHECK_FAILED};
use crate::balance::custom_load::{parse_report, record, Report};
use crate::clock;
use crate::config::{Algorithm, CustomLoadConfig};
use crate::runtime::Pool;
use crate::shared::Shared;

/// Longest time one poll may take (capped further by the interval).
const MAX_POLL_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest report body read.
const MAX_REPORT_BYTES: usize = 256;

/// Why a poll brought no usable report.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    /// No answer in time.
    #[error("timed out")]
    Timeout,
    /// Connecting or the exchange failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// An HTTP answer other than 2xx.
    #[error("HTTP status {0}")]
    Status(u16),
    /// A body that is neither a load figure nor a known word.
    #[error("malformed report {0:?}")]
    Malformed(String),
}

/// Fetches and parses one report from `b`.
pub async fn poll(pool: &Pool, b: &Backend, cfg: &CustomLoadConfig) -> Result<Report, PollError> {
    let limit = cfg.interval.min(MAX_POLL_TIMEOUT);
    let fetch = async {
        let mut s = crate::upstream::connect(pool, b, None).await?;
        let resp = super::http::get(&mut s, &b.address, &cfg.path, MAX_REPORT_BYTES).await;
        let _ = s.shutdown().await;
        Ok::<_, PollError>(resp?)
    };
    let resp = tokio::time::timeout(limit, fetch).await.map_err(|_| PollError::Timeout)??;
    if !(200..300).contains(&resp.status) {
        return Err(PollError::Status(resp.status));
    }
    let text = String::from_utf8_lossy(&resp.body);
    match parse_report(&text) {
        Report::Malformed => Err(PollError::Malformed(text.chars().take(40).collect())),
        r => Ok(r),
    }
}

/// Whether this backend's poll problems were already logged (reset by a good report).
#[derive(Debug, Default)]
pub struct Complaint {
    logged: bool,
}

/// Applies one poll outcome to the backend.
pub fn apply(b: &Backend, outcome: Result<Report, PollError>, has_health_check: bool, complaint: &mut Complaint, now_ms: u64) {
    let report = match outcome {
        Ok(r) => r,
        Err(e) => {
            b.metrics.custom_load_error();
            if matches!(e, PollError::Malformed(_)) {
                record(b, Report::Malformed, now_ms);
            }
            if !complaint.logged {
                complaint.logged = true;
                tracing::warn!(backend = %b.address, pool = %b.pool, "load report unusable: {e} (logged once until a good report)");
            }
            return;
        }
    };
    if std::mem::take(&mut complaint.logged) {
        tracing::info!(backend = %b.address, pool = %b.pool, "load reports usable again");
    }
    match report {
        Report::Down => {
            b.reported_down.store(true, Relaxed);
            if b.set_state_if(BackendState::Up, BackendState::Down, now_ms) {
                tracing::warn!(backend = %b.address, pool = %b.pool, "backend down: its load report says down");
                transition_metric(b, BackendState::Down);
            }
        }
        // Full load: the balancer sends it nothing while others have room.
        Report::Drain => {
            clear_reported_down(b, has_health_check, now_ms);
            record(b, Report::Load(100.0), now_ms);
        }
        r => {
            clear_reported_down(b, has_health_check, now_ms);
            record(b, r, now_ms);
        }
    }
}

/// A report no longer says `down`: mark the backend up again, unless its active checks
/// (when configured) currently fail — then the checker brings it up after `rise`.
fn clear_reported_down(b: &Backend, has_health_check: bool, now_ms: u64) {
    if !b.reported_down.swap(false, Relaxed) {
        return;
    }
    if has_health_check && b.last_check_ok.load(Relaxed) == CHECK_FAILED {
        return;
    }
    if b.return_to_service(BackendState::Down, now_ms) == Some(BackendState::Up) {
        tracing::info!(backend = %b.address, pool = %b.pool, "backend up: its load report no longer says down");
        transition_metric(b, BackendState::Up);
    }
}

/// The poll settings of the pool now holding `backend`, if it uses `custom_load`.
fn settings(pool: &Pool) -> Option<CustomLoadConfig> {
    (pool.config.algorithm == Algorithm::CustomLoad).then(|| pool.config.custom_load.clone().unwrap_or_default())
}

/// The poller task of one backend: runs until the backend leaves the runtime or its pool
/// stops using `custom_load` (the supervisor then calls [`release`]). Holds only a weak
/// reference between polls.
pub async fn run(shared: Arc<Shared>, backend: Weak<Backend>) {
    let mut complaint = Complaint::default();
    let mut first = true;
    loop {
        let interval_of = |p: &Pool| settings(p).map(|c| c.interval);
        let Some((b, pool)) = next_run(&shared, &backend, &mut first, interval_of).await else {
            return;
        };
        let Some(cfg) = settings(&pool) else { return };
        let outcome = poll(&pool, &b, &cfg).await;
        apply(&b, outcome, pool.config.health_check.is_some(), &mut complaint, clock::now_ms());
    }
}

/// `pool` stopped using custom load: a `down` report no longer holds the backend down.
pub fn release(b: &Backend, pool: &Pool) {
    clear_reported_down(b, pool.config.health_check.is_some(), clock::now_ms());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::LOAD_UNKNOWN;

    #[test]
    fn reports_move_load_and_state() {
        let b = Backend::for_test("a:1", 1);
        let mut c = Complaint::default();
        apply(&b, Ok(Report::Load(30.0)), false, &mut c, 10);
        assert_eq!(b.custom_load.load(Relaxed), 30);
        apply(&b, Ok(Report::Drain), false, &mut c, 20);
        assert_eq!((b.custom_load.load(Relaxed), b.custom_load_at_ms.load(Relaxed)), (100, 20));
        apply(&b, Ok(Report::Down), false, &mut c, 30);
        assert_eq!(b.state(), BackendState::Down);
        apply(&b, Ok(Report::Down), false, &mut c, 40);
        apply(&b, Ok(Report::Load(5.0)), false, &mut c, 50);
        assert_eq!(b.state(), BackendState::Up);
        assert!(!b.reported_down.load(Relaxed));
    }

    #[test]
    fn errors_are_logged_once_and_malformed_forgets_the_figure() {
        let b = Backend::for_test("a:1", 1);
        let mut c = Complaint::default();
        apply(&b, Ok(Report::Load(30.0)), false, &mut c, 10);
        apply(&b, Err(PollError::Timeout), false, &mut c, 20);
        assert!(c.logged);
        assert_eq!(b.custom_load.load(Relaxed), 30, "a failed poll leaves the figure to go stale");
        apply(&b, Err(PollError::Malformed("x".into())), false, &mut c, 30);
        assert_eq!(b.custom_load.load(Relaxed), LOAD_UNKNOWN);
        apply(&b, Ok(Report::Load(1.0)), false, &mut c, 40);
        assert!(!c.logged);
    }

    #[test]
    fn a_failing_active_check_keeps_it_down_and_drain_is_untouched() {
        let b = Backend::for_test("a:1", 1);
        let mut c = Complaint::default();
        apply(&b, Ok(Report::Down), true, &mut c, 10);
        b.last_check_ok.store(CHECK_FAILED, Relaxed);
        apply(&b, Ok(Report::Load(1.0)), true, &mut c, 20);
        assert_eq!(b.state(), BackendState::Down);
        let d = Backend::for_test("d:1", 1);
        d.set_state(BackendState::Draining, 1);
        apply(&d, Ok(Report::Down), false, &mut c, 10);
        apply(&d, Ok(Report::Load(1.0)), false, &mut c, 20);
        assert_eq!(d.state(), BackendState::Draining);
    }
}
