//! Active checks: one task per backend of a pool with `health_check`, probing it every
//! `interval` (± 10 % jitter, the first one after a random fraction of an interval so many
//! backends do not fire in lockstep) with a `tcp`, `http` or `websocket` check bounded by
//! `timeout`. `rise` consecutive successes mark a down backend up, `fall` consecutive
//! failures mark an up one down; a drained backend keeps being checked but never flipped.

use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::{next_run, transition_metric};
use crate::backend::{Backend, BackendState, CHECK_FAILED, CHECK_OK};
use crate::clock;
use crate::config::{CheckKind, HealthCheckConfig};
use crate::runtime::Pool;
use crate::shared::Shared;
use crate::ws::frame::Opcode;
use crate::ws::peer::{client_handshake, read_frame, write_frame};

/// Why one check failed (logged at debug level, and on the transition to down).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// No answer within the check's timeout.
    #[error("timed out")]
    Timeout,
    /// Connecting, TLS, or the exchange failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// An HTTP answer other than 2xx.
    #[error("HTTP status {0}")]
    Status(u16),
    /// The pong did not carry the ping's payload.
    #[error("pong payload does not match the ping")]
    WrongPong,
}

/// Runs one check of `b` (bounded by the config's timeout).
pub async fn check(pool: &Pool, b: &Backend, hc: &HealthCheckConfig) -> Result<(), CheckError> {
    match tokio::time::timeout(hc.timeout, check_unbounded(pool, b, hc)).await {
        Ok(r) => r,
        Err(_) => Err(CheckError::Timeout),
    }
}

async fn check_unbounded(pool: &Pool, b: &Backend, hc: &HealthCheckConfig) -> Result<(), CheckError> {
    let mut s = crate::upstream::connect(pool, b, None).await?;
    let r = match hc.kind {
        CheckKind::Tcp => Ok(()),
        CheckKind::Http => {
            let resp = super::http::get(&mut s, &b.address, &hc.path, 0).await?;
            if (200..300).contains(&resp.status) {
                Ok(())
            } else {
                Err(CheckError::Status(resp.status))
            }
        }
        CheckKind::WebSocket => websocket_check(&mut s, &b.address, &hc.path).await,
    };
    let _ = s.shutdown().await;
    r
}

/// Upgrade (with a verified `Sec-WebSocket-Accept`), a ping with a random payload that must
/// come back in a pong (RFC 6455 §5.5.3), then a normal close (1000).
async fn websocket_check<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, host: &str, path: &str) -> Result<(), CheckError> {
    let mut pending = client_handshake(s, host, path).await?;
    let payload: [u8; 8] = rand::random();
    // RFC 6455 §5.3: a client masks every frame.
    write_frame(s, true, Opcode::Ping, &payload, true).await?;
    loop {
        let f = read_frame(s, &mut pending).await?;
        match f.opcode {
            Opcode::Pong if f.payload == payload => break,
            // RFC 6455 §5.5.3: an unsolicited pong may arrive; ignore those.
            Opcode::Pong => continue,
            Opcode::Ping => write_frame(s, true, Opcode::Pong, &f.payload, true).await?,
            Opcode::Close => {
                return Err(CheckError::Io(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "closed before the pong",
                )))
            }
            // A backend may greet with data first.
            _ => continue,
        }
    }
    write_frame(s, true, Opcode::Close, &1000u16.to_be_bytes(), true).await?;
    Ok(())
}

/// What a checker remembers between checks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Streak {
    /// Consecutive successes.
    pub ok: u32,
    /// Consecutive failures.
    pub failed: u32,
}

/// State change decided by one check result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to change.
    Stay,
    /// `rise` successes in a row on a down backend.
    MarkUp,
    /// `fall` failures in a row on an up backend.
    MarkDown,
}

impl Streak {
    /// Folds one result in and says what the backend's `state` should become.
    pub fn record(&mut self, ok: bool, state: BackendState, rise: u32, fall: u32) -> Verdict {
        if ok {
            self.ok = self.ok.saturating_add(1);
            self.failed = 0;
            if state == BackendState::Down && self.ok >= rise.max(1) {
                return Verdict::MarkUp;
            }
        } else {
            self.failed = self.failed.saturating_add(1);
            self.ok = 0;
            if state == BackendState::Up && self.failed >= fall.max(1) {
                return Verdict::MarkDown;
            }
        }
        Verdict::Stay
    }
}

/// Applies a check result to the backend: records it, and flips the state when the streak
/// says so. Draining backends are never flipped; a backend whose own load report says
/// `down` is not marked up.
pub fn apply(b: &Backend, streak: &mut Streak, result: &Result<(), CheckError>, hc: &HealthCheckConfig, now_ms: u64) {
    b.last_check_ok.store(if result.is_ok() { CHECK_OK } else { CHECK_FAILED }, Relaxed);
    b.last_check_ms.store(now_ms, Relaxed);
    match streak.record(result.is_ok(), b.state(), hc.rise, hc.fall) {
        Verdict::Stay => {}
        Verdict::MarkUp => {
            if b.return_to_service(BackendState::Down, now_ms) == Some(BackendState::Up) {
                tracing::info!(backend = %b.address, pool = %b.pool, successes = streak.ok, "backend up: health checks pass");
                transition_metric(b, BackendState::Up);
            }
        }
        Verdict::MarkDown => {
            if b.set_state_if(BackendState::Up, BackendState::Down, now_ms) {
                let why = result.as_ref().err().map(ToString::to_string).unwrap_or_default();
                tracing::warn!(backend = %b.address, pool = %b.pool, failures = streak.failed, "backend down: health checks fail ({why})");
                transition_metric(b, BackendState::Down);
            }
        }
    }
}

/// The checker task of one backend: runs until the backend leaves the runtime or its pool
/// drops `health_check` (the supervisor then calls [`release`]). Holds only a weak
/// reference between checks.
pub async fn run(shared: Arc<Shared>, backend: Weak<Backend>) {
    let mut streak = Streak::default();
    let mut first = true;
    loop {
        let interval_of = |p: &Pool| p.config.health_check.as_ref().map(|hc| hc.interval);
        let Some((b, pool)) = next_run(&shared, &backend, &mut first, interval_of).await else {
            return;
        };
        let Some(hc) = pool.config.health_check.clone() else { return };
        let result = check(&pool, &b, &hc).await;
        if let Err(e) = &result {
            tracing::debug!(backend = %b.address, pool = %b.pool, "health check failed: {e}");
        }
        apply(&b, &mut streak, &result, &hc, clock::now_ms());
    }
}

/// Active checks were turned off for a backend still in `pool`: without them a backend is
/// up (passive checks only), so one they left down comes back.
pub fn release(b: &Backend, _pool: &Pool) {
    b.last_check_ok.store(crate::backend::CHECK_UNKNOWN, Relaxed);
    if b.return_to_service(BackendState::Down, clock::now_ms()) == Some(BackendState::Up) {
        tracing::info!(backend = %b.address, pool = %b.pool, "backend up: active health checks turned off");
        transition_metric(b, BackendState::Up);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CheckKind;
    use std::time::Duration;

    fn hc(rise: u32, fall: u32) -> HealthCheckConfig {
        HealthCheckConfig {
            kind: CheckKind::Tcp,
            path: "/".into(),
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(50),
            rise,
            fall,
        }
    }

    fn fail() -> Result<(), CheckError> {
        Err(CheckError::Timeout)
    }

    #[test]
    fn fall_then_rise_with_one_transition_each() {
        let b = Backend::for_test("a:1", 1);
        let (cfg, mut s) = (hc(2, 3), Streak::default());
        apply(&b, &mut s, &fail(), &cfg, 10);
        apply(&b, &mut s, &fail(), &cfg, 20);
        assert_eq!(b.state(), BackendState::Up);
        apply(&b, &mut s, &fail(), &cfg, 30);
        assert_eq!(b.state(), BackendState::Down);
        assert_eq!((b.last_check_ok.load(Relaxed), b.last_check_ms.load(Relaxed)), (CHECK_FAILED, 30));
        // More failures change nothing.
        assert_eq!(s.record(false, BackendState::Down, 2, 3), Verdict::Stay);
        apply(&b, &mut s, &Ok(()), &cfg, 40);
        assert_eq!(b.state(), BackendState::Down);
        apply(&b, &mut s, &fail(), &cfg, 50);
        apply(&b, &mut s, &Ok(()), &cfg, 60);
        assert_eq!(b.state(), BackendState::Down, "a failure resets the rise streak");
        apply(&b, &mut s, &Ok(()), &cfg, 70);
        assert_eq!(b.state(), BackendState::Up);
        assert_eq!(b.last_check_ok.load(Relaxed), CHECK_OK);
    }

    #[test]
    fn draining_is_never_flipped_and_reported_down_stays_down() {
        let b = Backend::for_test("a:1", 1);
        let (cfg, mut s) = (hc(1, 1), Streak::default());
        b.set_state(BackendState::Draining, 1);
        apply(&b, &mut s, &fail(), &cfg, 10);
        apply(&b, &mut s, &Ok(()), &cfg, 20);
        assert_eq!(b.state(), BackendState::Draining);
        assert_eq!(b.last_check_ok.load(Relaxed), CHECK_OK);
        b.set_state(BackendState::Down, 1);
        b.reported_down.store(true, Relaxed);
        apply(&b, &mut s, &Ok(()), &cfg, 30);
        assert_eq!(b.state(), BackendState::Down);
    }

    #[tokio::test]
    async fn websocket_check_against_the_echo_peer() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(crate::ws::peer::serve_echo(server, None));
        websocket_check(&mut client, "b:1", "/health").await.unwrap();
        // A plain-HTTP answer (no 101) fails.
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            let _ = crate::handshake::read_head(&mut server, 4096).await;
            let _ = server.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
        });
        assert!(websocket_check(&mut client, "b:1", "/health").await.is_err());
    }
}
