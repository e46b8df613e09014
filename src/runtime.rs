//! The live state built from a `Config`: pools with their backends and balancers. A reload
//! builds a new `Runtime` that reuses the `Backend` of every address that stays, so counts,
//! EWMAs, health and slow start survive; the server swaps it in atomically.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use crate::backend::{Backend, BackendState};
use crate::balance::sticky::{Sticky, StickyResult};
use crate::balance::{self, Balancer, PickContext};
use crate::clock;
use crate::config::{BackendConfig, Config, PoolConfig};
use crate::discovered::{Found, FoundSets, HeldEntries};

/// TLS settings to reach one backend.
pub type BackendTlsConnector = (tokio_rustls::TlsConnector, rustls::pki_types::ServerName<'static>);

/// A pool of backends with its balancer.
pub struct Pool {
    /// Name.
    pub name: Arc<str>,
    /// Its config.
    pub config: PoolConfig,
    /// Backends, in config order.
    pub backends: Vec<Arc<Backend>>,
    /// Chooses among `backends`.
    pub balancer: Box<dyn Balancer>,
    /// `switchyard_handshake_duration_seconds{pool}`, looked up once.
    pub handshake_duration: metrics::Histogram,
    /// `switchyard_http_request_duration_seconds{pool}`, looked up once.
    pub request_duration: metrics::Histogram,
    /// Cookie stickiness, when the pool has `sticky`.
    pub sticky: Option<Sticky>,
    /// `switchyard_sticky_total{pool,result}` by [`StickyResult`], looked up once (with `sticky`).
    sticky_counters: Option<[metrics::Counter; 3]>,
    /// `limits.tcp_keepalive`, for the sockets opened to this pool's backends.
    pub tcp_keepalive: Option<std::time::Duration>,
    tls: HashMap<String, BackendTlsConnector>,
    /// What real traffic may do to the backends' standing.
    passive: crate::passive::PassiveHealth,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.name)
            .field("backends", &self.backends.len())
            .finish()
    }
}

impl Pool {
    /// TLS connector and server name for a backend with `tls` set.
    pub fn tls_for(&self, address: &str) -> Option<&BackendTlsConnector> {
        self.tls.get(address)
    }

    /// Chooses a backend for a request: the one its sticky cookie names while that one is
    /// eligible, else the pool's algorithm. The second value says how stickiness went
    /// (`None` for a pool without it).
    pub fn pick(&self, ctx: &PickContext<'_>) -> Option<(usize, Option<StickyResult>)> {
        let Some(sticky) = &self.sticky else {
            return self.balancer.pick(&self.backends, ctx).map(|i| (i, None));
        };
        let named = sticky.lookup(ctx.headers);
        if let Some(Some(i)) = named {
            if self.backends.get(i).is_some_and(|b| ctx.eligible(i, b)) {
                return Some((i, Some(StickyResult::Hit)));
            }
        }
        let i = self.balancer.pick(&self.backends, ctx)?;
        let result = if named.is_some() || !ctx.exclude.is_empty() {
            StickyResult::Reassigned
        } else {
            StickyResult::Assigned
        };
        Some((i, Some(result)))
    }

    /// The next backend to try for a request: picks among those not in `tried` (and adds
    /// the pick to it). With none left, why: the pool's exhaustion reason on the first try,
    /// `no_backend` once every candidate failed.
    pub fn pick_next(
        &self,
        client_ip: std::net::IpAddr,
        target: &str,
        headers: &[httparse::Header<'_>],
        tried: &mut Tried,
    ) -> Result<(usize, Option<StickyResult>), crate::limits::ShedReason> {
        let now_ms = clock::now_ms();
        let ctx = PickContext {
            now_ms,
            client_ip,
            target,
            headers,
            exclude: tried.as_slice(),
        };
        match self.pick(&ctx) {
            Some((i, sticky)) => {
                tried.push(i);
                Ok((i, sticky))
            }
            None if tried.is_empty() => Err(crate::limits::ShedReason::from_label(balance::exhaustion_reason(
                &self.backends,
                now_ms,
            ))),
            None => Err(crate::limits::ShedReason::NoBackend),
        }
    }

    /// Counts what stickiness did for one request or upgrade.
    pub fn count_sticky(&self, r: StickyResult) {
        if let Some(c) = &self.sticky_counters {
            c[r as usize].increment(1);
        }
    }

    /// The `Set-Cookie` value to send with a response from backend `i`, when stickiness
    /// assigned or reassigned it.
    pub fn sticky_cookie(&self, i: usize, result: Option<StickyResult>, secure: bool) -> Option<String> {
        match (result?, &self.sticky) {
            (StickyResult::Hit, _) | (_, None) => None,
            (_, Some(s)) => Some(s.set_cookie(i, secure)),
        }
    }

    /// Records how a request or upgrade on backend `b` of this pool ended: passive health
    /// takes the backend's share ([`crate::blame`]).
    pub fn record(&self, b: &Backend, outcome: crate::blame::Outcome) {
        self.passive.record(&self.backends, b, outcome, clock::now_ms());
    }

    /// A backend by address.
    pub fn backend(&self, address: &str) -> Option<&Arc<Backend>> {
        self.backends.iter().find(|b| b.address == address)
    }
}

/// A map keyed by the operator's names (pool names; backend addresses from the config or
/// its DNS), looked up per request: hashed with FNV-1a instead of SipHash, which was 2 % of
/// a plain request's user-space instructions (callgrind). No client chooses these keys, so
/// hash flooding is no concern.
pub type NameMap<V> = HashMap<String, V, std::hash::BuildHasherDefault<NameHasher>>;

/// FNV-1a over the bytes written (see [`NameMap`]), the hash ring's own function.
pub struct NameHasher(u64);

impl Default for NameHasher {
    fn default() -> Self {
        NameHasher(balance::hash::FNV_OFFSET)
    }
}

impl std::hash::Hasher for NameHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0 = balance::hash::fnv1a(self.0, bytes);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Everything derived from one config (and the backends DNS discovery found for it).
pub struct Runtime {
    /// The config it was built from.
    pub config: Config,
    /// Pools by name (looked up on every plain request).
    pub pools: NameMap<Arc<Pool>>,
    /// TLS acceptors by listener name.
    pub tls: HashMap<String, tokio_rustls::TlsAcceptor>,
    /// The last good answer of every discovery entry of `config` that has had one (and of
    /// the entries in `held`); the pools' backends were expanded from them.
    pub discovered: Arc<FoundSets>,
    /// Discovery entries reloads removed whose backends still serve until the pool's
    /// entries have all answered ([`HeldEntries`]).
    pub held: Arc<HeldEntries>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("pools", &self.pools).finish()
    }
}

/// A runtime built aside, not yet live: backends that stay are shared with the running
/// runtime but nothing of theirs has been written yet. A reload prepares one, binds its new
/// listeners, and only then commits it, so a reload rejected at any step changes nothing.
pub struct Prepared {
    config: Config,
    pools: Vec<PreparedPool>,
    tls: HashMap<String, tokio_rustls::TlsAcceptor>,
    discovered: Arc<FoundSets>,
    held: Arc<HeldEntries>,
}

struct PreparedPool {
    name: Arc<str>,
    config: PoolConfig,
    /// The concrete backends' settings (configured ones and those found by discovery), in
    /// the order of `backends`.
    settings: Vec<BackendConfig>,
    backends: Vec<Arc<Backend>>,
    tls: HashMap<String, BackendTlsConnector>,
}

impl PreparedPool {
    /// Builds a pool's backends aside: those of `old` with the same address, TLS settings
    /// and PROXY mode are kept (not written to), whichever entry found them; new ones ramp
    /// when `ramp`.
    fn new(
        name: &str,
        pc: &PoolConfig,
        old: Option<&Pool>,
        found: &FoundSets,
        held: &HeldEntries,
        ramp: bool,
        reuse_tls: bool,
    ) -> Result<Self, String> {
        let now = clock::now_ms();
        let pname: Arc<str> = old.map(|o| o.name.clone()).unwrap_or_else(|| Arc::from(name));
        let settings = crate::discovered::expand(name, pc, found, held.get(name).map_or(&[], Vec::as_slice));
        let mut backends = Vec::with_capacity(settings.len());
        let mut tls = HashMap::new();
        let slow_ms = pc.slow_start.map(|d| d.as_millis() as u64).unwrap_or(0);
        for bc in &settings {
            let kept = old
                .and_then(|o| o.backend(&bc.address))
                // A backend is its address and how it is spoken to (TLS, PROXY header): a
                // change of those makes a new backend, so a connection never uses a stale
                // setting. Which entry found it does not matter: an address found under a
                // renamed or another entry keeps its connections, counters and health.
                .filter(|b| b.config.tls == bc.tls && b.config.proxy_protocol == bc.proxy_protocol);
            let b = match kept {
                Some(b) => b.clone(),
                None => {
                    let b = Backend::new(pname.clone(), bc.clone());
                    b.slow_start_ms.store(slow_ms, Relaxed);
                    if ramp {
                        b.start_ramp(now);
                    }
                    b
                }
            };
            if let Some(t) = &bc.tls {
                let reused = reuse_tls
                    .then(|| kept.and(old).and_then(|o| o.tls_for(&bc.address)).cloned())
                    .flatten();
                let c = match reused {
                    Some(c) => c,
                    None => {
                        crate::tls::client_connector(t, &bc.address).map_err(|e| format!("pool {name}, backend {}: {e}", bc.address))?
                    }
                };
                tls.insert(bc.address.clone(), c);
            }
            backends.push(b);
        }
        Ok(PreparedPool {
            name: pname,
            config: pc.clone(),
            settings,
            backends,
            tls,
        })
    }

    /// Writes the new weight, `max_connections` and slow start into every backend (the kept
    /// ones are live) and builds the balancer from them; `tcp_keepalive` is the config's.
    fn commit(self, tcp_keepalive: Option<std::time::Duration>) -> Pool {
        let slow_ms = self.config.slow_start.map(|d| d.as_millis() as u64).unwrap_or(0);
        for (b, bc) in self.backends.iter().zip(&self.settings) {
            b.set_discovered_from(bc.discovered_from.as_ref());
            b.set_weight(bc.weight);
            b.set_max_connections(bc.max_connections);
            b.slow_start_ms.store(slow_ms, Relaxed);
        }
        let balancer = balance::build(&self.config, &self.backends);
        let sticky = self.config.sticky.as_ref().map(|s| Sticky::new(s, &self.backends));
        Pool {
            handshake_duration: crate::metrics::handshake_histogram(&self.name),
            request_duration: crate::metrics::request_histogram(&self.name),
            sticky_counters: sticky
                .is_some()
                .then(|| StickyResult::ALL.map(|r| crate::metrics::sticky_counter(&self.name, r.label()))),
            sticky,
            tcp_keepalive,
            passive: crate::passive::PassiveHealth::new(&self.name, &self.config),
            name: self.name,
            config: self.config,
            backends: self.backends,
            balancer,
            tls: self.tls,
        }
    }
}

impl Prepared {
    /// The config it was prepared from.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Writes the new weight, `max_connections` and slow start into every backend (the kept
    /// ones are live) and builds the balancers from them: the point of no return.
    pub fn commit(self) -> Runtime {
        let keepalive = self.config.limits.tcp_keepalive;
        let pools = self
            .pools
            .into_iter()
            .map(|p| (p.name.to_string(), Arc::new(p.commit(keepalive))))
            .collect();
        Runtime {
            config: self.config,
            pools,
            tls: self.tls,
            discovered: self.discovered,
            held: self.held,
        }
    }
}

impl Runtime {
    /// Builds the runtime at once ([`Runtime::prepare`] then [`Prepared::commit`]).
    pub fn build(config: Config, previous: Option<&Runtime>, found: &FoundSets) -> Result<Runtime, String> {
        Ok(Runtime::prepare(config, previous, found, HeldEntries::new())?.commit())
    }

    /// Builds everything that can fail, aside: backends of `previous` with the same pool,
    /// address and TLS settings are kept with all their live state (a drain in progress,
    /// health, ejection, counters) and are not written to; new ones start their slow-start
    /// ramp. Discovery entries expand to the backends of their answer in `found` (answers
    /// of entries `config` no longer has are dropped).
    pub fn prepare(config: Config, previous: Option<&Runtime>, found: &FoundSets, held: HeldEntries) -> Result<Prepared, String> {
        let is_held = |pool: &str, entry: &str| held.get(pool).is_some_and(|h| h.iter().any(|b| b.address == entry));
        let found: FoundSets = found
            .iter()
            .filter(|((pool, entry), _)| {
                config.pools.get(pool).is_some_and(|p| crate::discovered::is_entry(p, entry)) || is_held(pool, entry)
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut pools = Vec::with_capacity(config.pools.len());
        for (name, pc) in &config.pools {
            let old = previous.and_then(|p| p.pools.get(name)).map(|p| &**p);
            pools.push(PreparedPool::new(name, pc, old, &found, &held, previous.is_some(), false)?);
        }
        let mut tls_acceptors = HashMap::new();
        for l in &config.listeners {
            if let Some(t) = &l.tls {
                let sc = crate::tls::server_config(t, l.http2).map_err(|e| format!("listener {}: {e}", l.name))?;
                tls_acceptors.insert(l.name.clone(), tokio_rustls::TlsAcceptor::from(sc));
            }
        }
        Ok(Prepared {
            config,
            pools,
            tls: tls_acceptors,
            discovered: Arc::new(found),
            held: Arc::new(held),
        })
    }

    /// This runtime with discovery entry `entry` of pool `pool` answered by `found`
    /// (canonical): only that pool is rebuilt — its backends that stay are shared, new ones
    /// ramp like a reload's additions — and every other pool is the same object. `Ok(None)`
    /// when the answer is the one in use or the entry is no longer configured.
    pub fn with_found(&self, pool: &str, entry: &str, found: Vec<Found>) -> Result<Option<Runtime>, String> {
        let Some(pc) = self.config.pools.get(pool).filter(|pc| crate::discovered::is_entry(pc, entry)) else {
            return Ok(None);
        };
        let key = (pool.to_string(), entry.to_string());
        if self.discovered.get(&key) == Some(&found) {
            return Ok(None);
        }
        let mut sets = (*self.discovered).clone();
        sets.insert(key, found);
        // Once every discovery entry of the pool has answered, the entries a reload removed
        // are let go: their backends that no answer holds drain like any removal.
        let mut held = (*self.held).clone();
        if held.contains_key(pool) && crate::discovered::all_answered(pool, pc, &sets) {
            if let Some(gone) = held.remove(pool) {
                for h in gone {
                    sets.remove(&(pool.to_string(), h.address));
                }
            }
        }
        let old = self.pools.get(pool).map(|p| &**p);
        let rebuilt = PreparedPool::new(pool, pc, old, &sets, &held, true, true)?.commit(self.config.limits.tcp_keepalive);
        let mut pools = self.pools.clone();
        pools.insert(pool.to_string(), Arc::new(rebuilt));
        Ok(Some(Runtime {
            config: self.config.clone(),
            pools,
            tls: self.tls.clone(),
            discovered: Arc::new(sets),
            held: Arc::new(held),
        }))
    }

    /// Is `b` a backend of this runtime (the same object, not just the same address), and
    /// not draining? A connection that registered on a backend for which this is false was
    /// missed by the drain or reload that took the backend away.
    pub fn serves(&self, b: &Arc<Backend>) -> bool {
        b.state() != BackendState::Draining
            && self
                .pools
                .get(&*b.pool)
                .and_then(|p| p.backend(&b.address))
                .is_some_and(|cur| Arc::ptr_eq(cur, b))
    }

    /// The TLS acceptor of a listener, if it terminates TLS.
    pub fn tls_acceptor(&self, listener: &str) -> Option<&tokio_rustls::TlsAcceptor> {
        self.tls.get(listener)
    }
}

/// The backends already tried for one client: the first few inline, so the usual one or
/// two attempts allocate nothing.
#[derive(Debug, Default)]
pub struct Tried {
    inline: [usize; 4],
    len: usize,
    /// Every index once there are more than fit inline.
    spilled: Vec<usize>,
}

impl Tried {
    /// The indices, in the order tried.
    pub fn as_slice(&self) -> &[usize] {
        match self.spilled.is_empty() {
            true => &self.inline[..self.len],
            false => &self.spilled,
        }
    }

    /// Adds backend `i`.
    pub fn push(&mut self, i: usize) {
        if self.spilled.is_empty() && self.len < self.inline.len() {
            self.inline[self.len] = i;
            self.len += 1;
            return;
        }
        if self.spilled.is_empty() {
            self.spilled.extend_from_slice(&self.inline[..self.len]);
        }
        self.spilled.push(i);
    }

    /// Nothing tried yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::Tried;

    #[test]
    fn tried_keeps_every_index_in_order_past_the_inline_room() {
        let mut t = Tried::default();
        assert!(t.is_empty());
        assert_eq!(t.as_slice(), &[] as &[usize]);
        for i in [7, 3, 9, 1, 4, 8] {
            t.push(i);
            assert!(!t.is_empty());
        }
        assert_eq!(t.as_slice(), &[7, 3, 9, 1, 4, 8]);
        let mut short = Tried::default();
        short.push(2);
        short.push(5);
        assert_eq!(short.as_slice(), &[2, 5]);
    }
}
