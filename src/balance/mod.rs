//! Backend selection: the [`Balancer`] trait and one file per algorithm.
//!
//! Algorithms only compare numbers that `backend.rs` measures; they never do I/O and never
//! take a lock shared by all accepts (see each file for how it stays lock-free).

pub mod custom_load;
pub mod hash;
pub mod least_bandwidth;
mod least_connections;
pub mod least_response_time;
mod power_of_two;
mod random;
mod round_robin;
mod select;
pub mod sticky;

pub use custom_load::{parse_report, CustomLoad, Report};
pub use hash::ConsistentHash;
pub use least_bandwidth::{sample_rates, LeastBandwidth, RateSampler};
pub use least_connections::LeastConnections;
pub use least_response_time::LeastResponseTime;
pub use power_of_two::PowerOfTwo;
pub use random::Random;
pub use round_robin::RoundRobin;

use std::net::IpAddr;
use std::sync::Arc;

use crate::backend::{Backend, BackendState};
use crate::config::{defaults, Algorithm, HashConfig, HashKey, PoolConfig};

/// What a balancer may look at for one pick.
#[derive(Debug, Clone, Copy)]
pub struct PickContext<'a> {
    /// Process clock (ms), see `clock::now_ms`.
    pub now_ms: u64,
    /// The client's address.
    pub client_ip: IpAddr,
    /// Request target as sent (path and query).
    pub target: &'a str,
    /// Request headers.
    pub headers: &'a [httparse::Header<'a>],
    /// Indices already tried for this client (skip them).
    pub exclude: &'a [usize],
}

impl<'a> PickContext<'a> {
    /// A context with no request data, for tests and health code.
    pub fn bare(now_ms: u64) -> PickContext<'static> {
        PickContext {
            now_ms,
            client_ip: IpAddr::from([127, 0, 0, 1]),
            target: "/",
            headers: &[],
            exclude: &[],
        }
    }

    /// May backend `i` be picked: available and not already tried?
    pub fn eligible(&self, i: usize, b: &Backend) -> bool {
        b.is_available(self.now_ms) && !self.exclude.contains(&i)
    }
}

/// A backend-selection algorithm. `pick` returns an index into `backends`, or `None` when
/// every backend is excluded (down, draining, ejected, full or already tried).
pub trait Balancer: Send + Sync + std::fmt::Debug {
    /// Chooses a backend for a new connection.
    fn pick(&self, backends: &[Arc<Backend>], ctx: &PickContext<'_>) -> Option<usize>;
}

/// Builds the balancer a pool's config asks for. `backends` must be the list later passed
/// to `pick` (same order): round robin, hash and custom load precompute per-index data.
pub fn build(cfg: &PoolConfig, backends: &[Arc<Backend>]) -> Box<dyn Balancer> {
    match cfg.algorithm {
        Algorithm::RoundRobin => Box::new(RoundRobin::new(backends)),
        Algorithm::LeastConnections => Box::new(LeastConnections::default()),
        Algorithm::LeastBandwidth => Box::new(LeastBandwidth::default()),
        Algorithm::LeastResponseTime => Box::new(LeastResponseTime::default()),
        Algorithm::PowerOfTwo => Box::new(PowerOfTwo::new(backends)),
        Algorithm::Hash => {
            let default = HashConfig {
                key: HashKey::ClientIp,
                bounded_load: None,
            };
            Box::new(ConsistentHash::new(cfg.hash.as_ref().unwrap_or(&default), backends))
        }
        Algorithm::CustomLoad => {
            // A report older than three poll intervals is stale (the config's contract).
            let interval = cfg.custom_load.as_ref().map_or(defaults::CUSTOM_LOAD_INTERVAL, |c| c.interval);
            let stale_after_ms = u64::try_from(interval.as_millis().saturating_mul(3)).unwrap_or(u64::MAX);
            Box::new(CustomLoad::new(backends, stale_after_ms))
        }
        Algorithm::Random => Box::new(Random::new(backends)),
    }
}

/// Why no backend could be picked, for `switchyard_shed_total{reason}`.
pub fn exhaustion_reason(backends: &[Arc<Backend>], now_ms: u64) -> &'static str {
    let any_up = backends.iter().any(|b| b.state() == BackendState::Up && !b.is_ejected(now_ms));
    if any_up {
        "backend_full"
    } else {
        "no_backend"
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    use super::*;

    /// `n` picks with a fresh context each; returns the count per backend.
    pub fn distribution(bal: &dyn Balancer, backends: &[Arc<Backend>], n: usize) -> Vec<usize> {
        let mut counts = vec![0; backends.len()];
        for _ in 0..n {
            let i = bal.pick(backends, &PickContext::bare(1_000_000)).expect("a pick");
            counts[i] += 1;
        }
        counts
    }
}

#[cfg(test)]
mod empty_pool_tests {
    use super::*;

    /// A pool whose discovery has not answered yet has no backends: every algorithm (and the
    /// exhaustion reason) copes.
    #[test]
    fn every_algorithm_picks_nothing_from_an_empty_pool() {
        let text =
            "listeners: [{name: l, bind: \"127.0.0.1:0\", routes: [{pool: p}]}]\npools: {p: {backends: [{address: \"127.0.0.1:1\"}]}}\n";
        let mut pool = crate::config::parse(text, std::path::Path::new("."))
            .unwrap()
            .pools
            .remove("p")
            .unwrap();
        for (_, algorithm) in Algorithm::ALL {
            pool.algorithm = algorithm;
            pool.hash = (algorithm == Algorithm::Hash).then_some(HashConfig {
                key: HashKey::ClientIp,
                bounded_load: Some(1.25),
            });
            let b = build(&pool, &[]);
            assert_eq!(b.pick(&[], &PickContext::bare(1_000)), None, "{}", algorithm.name());
        }
        assert_eq!(exhaustion_reason(&[], 1_000), "no_backend");
    }
}
