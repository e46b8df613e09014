//! DNS discovery of backends: every backend entry with `discover: dns` (A/AAAA records of its
//! host) or `srv` (SRV records) is asked about every `refresh`, by one task per entry on the
//! control runtime. A new answer goes through the reload queue (`ReloadSource::Found`), which
//! rebuilds only that entry's pool: records that appeared are added with slow start, records
//! gone drain with `1012`, like a reload's additions and removals. An error or an empty
//! answer keeps the last answer (logged, counted in `switchyard_discovery_errors_total`), so
//! discovery never empties a pool. One supervisor task keeps the entry tasks in step with
//! reloads: an entry removed stops its task (the reload already drained its backends), a
//! changed `refresh` or `resolver:` restarts it.
//!
//! At start-up [`initial`] asks once for every entry before the pools are built, bounded by
//! twice `resolver.timeout`; an entry whose first lookup fails starts with no backends and
//! is asked again every `refresh`.

pub mod resolve;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;

use crate::config::{Config, Discover, ResolverConfig};
use crate::discovered::{EntryKey, FoundSets, HeldEntries};
use crate::shared::{FoundAnswer, ReloadReply, ReloadSource, Shared};
use resolve::{Failure, LookupError};

/// How often the supervisor compares the running tasks with the live config.
const TICK: Duration = Duration::from_millis(250);
/// After `/etc/resolv.conf` could not be used, how long until it is read again.
const RESOLVER_RETRY: Duration = Duration::from_secs(5);

/// The discovery entries of `config`: pool and entry, and what to ask.
fn entries(config: &Config) -> Vec<(EntryKey, Discover)> {
    let mut out = Vec::new();
    for (pool, pc) in &config.pools {
        for b in &pc.backends {
            if let Some(d) = &b.discover {
                out.push(((pool.clone(), b.address.clone()), d.clone()));
            }
        }
    }
    out
}

/// Asks once for every discovery entry of `config` (before the server starts), on a thread
/// of its own so it may be called from anywhere: at most twice `resolver.timeout`. Returns
/// the entries that answered; every failure is logged and counted.
pub fn initial(config: &Config) -> FoundSets {
    ask_once(config, |_, _| true).0
}

/// Asks, before a reload commits, for the discovery entries of `config` that `previous` did
/// not have (a new or renamed entry, another name, port or kind): a pool is never built
/// from entries nobody asked yet, so an entry renamed to a name with the same addresses
/// keeps its backends and their clients. Bounded like [`initial`]. Returns the answers and
/// one line per entry asked, saying what it found, for the reload's answer.
pub fn ask_new(config: &Config, previous: &Config) -> NewEntries {
    let known = entries(previous);
    let is_new = |key: &EntryKey, d: &Discover| !known.iter().any(|(k, kd)| k == key && kd.same_query(d));
    let (found, notes) = ask_once(config, is_new);
    NewEntries { found, notes }
}

/// What a reload's new discovery entries found.
#[derive(Debug, Default)]
pub struct NewEntries {
    /// The answers of those that answered.
    pub found: FoundSets,
    /// One line per entry asked, for the reload's answer.
    pub notes: Vec<String>,
}

impl NewEntries {
    /// The found sets and held entries a reload to `config` builds from, given the running
    /// runtime's (`kept`, `old_held`, from `old_config`): the answers of entries that stay
    /// and of new ones; and, for every pool of which some discovery entry has not answered
    /// yet, the entries this reload (or an earlier one) removed from it, held with their
    /// last answers until every entry of the pool has answered ([`HeldEntries`]). The lines
    /// for the reload's answer: what each entry asked found, then which pools hold on.
    pub fn merged(
        self,
        kept: &FoundSets,
        old_held: &HeldEntries,
        old_config: &Config,
        config: &Config,
    ) -> (FoundSets, HeldEntries, Vec<String>) {
        let NewEntries { found, mut notes } = self;
        let mut sets = kept.clone();
        sets.extend(found);
        let mut held = HeldEntries::new();
        for (pool, pc) in &config.pools {
            if crate::discovered::all_answered(pool, pc, &sets) {
                continue;
            }
            let mut h: Vec<crate::config::BackendConfig> = old_held.get(pool).cloned().unwrap_or_default();
            if let Some(opc) = old_config.pools.get(pool) {
                for b in opc.backends.iter().filter(|b| b.discover.is_some()) {
                    if !h.iter().any(|x| x.address == b.address) {
                        h.push(b.clone());
                    }
                }
            }
            // Only entries gone from the config, with an answer to hold.
            h.retain(|b| !crate::discovered::is_entry(pc, &b.address) && sets.contains_key(&(pool.clone(), b.address.clone())));
            if h.is_empty() {
                continue;
            }
            let n: usize = h
                .iter()
                .filter_map(|b| sets.get(&(pool.clone(), b.address.clone())))
                .map(Vec::len)
                .sum();
            let names: Vec<&str> = h.iter().map(|b| b.address.as_str()).collect();
            notes.push(format!(
                "pool {pool}: holds the {n} backend{} of {} until every entry of the pool has answered",
                if n == 1 { "" } else { "s" },
                names.join(", ")
            ));
            held.insert(pool.clone(), h);
        }
        (sets, held, notes)
    }
}

/// Asks once, on a thread of its own, for the entries of `config` that `wanted` picks.
fn ask_once(config: &Config, wanted: impl Fn(&EntryKey, &Discover) -> bool) -> (FoundSets, Vec<String>) {
    let entries: Vec<_> = entries(config).into_iter().filter(|(k, d)| wanted(k, d)).collect();
    if entries.is_empty() {
        return (FoundSets::new(), Vec::new());
    }
    let cfg = config.resolver.clone();
    let limit = cfg.timeout * 2;
    let work = move || -> (FoundSets, Vec<String>) {
        let mut notes = Vec::new();
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
            return (FoundSets::new(), notes);
        };
        rt.block_on(async move {
            let resolver = match resolve::build(&cfg) {
                Ok(r) => r,
                Err(e) => {
                    for (key, _) in &entries {
                        failed(key, &e, &mut None, 0);
                        notes.push(note(key, Err(&e)));
                    }
                    return (FoundSets::new(), notes);
                }
            };
            let rounds = entries.iter().map(|(key, d)| {
                let resolver = &resolver;
                async move { (key, tokio::time::timeout(limit, resolve::lookup(resolver, d)).await) }
            });
            let mut sets = FoundSets::new();
            for (key, result) in futures_util::future::join_all(rounds).await {
                match result.unwrap_or_else(|_| Err(timed_out(limit))) {
                    Ok(found) => {
                        crate::metrics::discovered_backends(&key.0, &key.1, found.len());
                        tracing::info!(pool = %key.0, name = %key.1, backends = found.len(), "discovered backends");
                        notes.push(note(key, Ok(found.len())));
                        sets.insert(key.clone(), found);
                    }
                    Err(e) => {
                        failed(key, &e, &mut None, 0);
                        notes.push(note(key, Err(&e)));
                    }
                }
            }
            (sets, notes)
        })
    };
    match std::thread::Builder::new().name("switchyard-dns".into()).spawn(work) {
        Ok(t) => t.join().unwrap_or_default(),
        Err(e) => {
            tracing::warn!("cannot start the discovery thread: {e}; discovered pools start empty");
            (FoundSets::new(), Vec::new())
        }
    }
}

/// What one entry's first lookup found, as a line of a reload's answer.
fn note(key: &EntryKey, result: Result<usize, &LookupError>) -> String {
    match result {
        Ok(n) => format!("pool {}: {} found {n} backend{}", key.0, key.1, if n == 1 { "" } else { "s" }),
        Err(e) => format!(
            "pool {}: {} found nothing yet ({}: {}); asked again every refresh",
            key.0,
            key.1,
            e.failure.reason(),
            e.detail
        ),
    }
}

fn timed_out(limit: Duration) -> LookupError {
    LookupError {
        failure: Failure::Timeout,
        detail: format!("no answer within {limit:?}"),
    }
}

/// Counts a failed round and logs it: a `warn` when the entry starts failing or fails for a
/// new reason, `debug` while it keeps failing the same way (the counter counts each).
/// `kept` is how many backends the entry still stands for (its last good answer).
fn failed(key: &EntryKey, e: &LookupError, failing: &mut Option<Failure>, kept: usize) {
    crate::metrics::discovery_error(&key.0, &key.1, e.failure.reason());
    crate::metrics::discovered_backends(&key.0, &key.1, kept);
    let reason = e.failure.reason();
    if *failing == Some(e.failure) {
        tracing::debug!(pool = %key.0, name = %key.1, reason, kept, "DNS discovery still failing: {}", e.detail);
    } else if kept == 0 {
        tracing::warn!(pool = %key.0, name = %key.1, reason, "DNS discovery failed; no backends for this entry until DNS answers: {}", e.detail);
    } else {
        tracing::warn!(pool = %key.0, name = %key.1, reason, kept, "DNS discovery failed; keeping the backends last found: {}", e.detail);
    }
    *failing = Some(e.failure);
}

/// Starts the supervisor (on the current runtime: the control one).
pub fn spawn(shared: &Arc<Shared>) {
    tokio::spawn(supervise(shared.clone()));
}

/// The task asking about one entry; aborted when dropped.
struct EntryTask {
    discover: Discover,
    resolver: ResolverConfig,
    handle: tokio::task::JoinHandle<()>,
}

impl Drop for EntryTask {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// Keeps exactly one task per discovery entry of the live config, each with the current
/// `refresh` and resolver (runs until the control runtime stops).
async fn supervise(shared: Arc<Shared>) {
    let mut tasks: HashMap<EntryKey, EntryTask> = HashMap::new();
    let mut resolver: Option<(ResolverConfig, Arc<TokioResolver>)> = None;
    let mut resolver_retry_at: Option<tokio::time::Instant> = None;
    // The entries of the start-up config were just asked by `initial`: their tasks wait one
    // `refresh` before asking again.
    let mut at_start = true;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let rt = shared.runtime.load_full();
        let wanted = entries(&rt.config);
        let resolver_cfg = &rt.config.resolver;
        tasks.retain(|key, t| {
            let same = wanted.iter().any(|(k, d)| k == key && *d == t.discover);
            if !wanted.iter().any(|(k, _)| k == key) {
                crate::metrics::discovered_backends(&key.0, &key.1, 0);
                tracing::info!(pool = %key.0, name = %key.1, "discovery entry removed: no longer asked");
            }
            same && t.resolver == *resolver_cfg && !t.handle.is_finished()
        });
        if wanted.is_empty() {
            resolver = None;
            at_start = false;
            continue;
        }
        if resolver.as_ref().is_none_or(|(cfg, _)| cfg != resolver_cfg) {
            if resolver_retry_at.is_some_and(|at| tokio::time::Instant::now() < at) {
                continue;
            }
            tasks.clear();
            resolver = match build_off_thread(resolver_cfg.clone()).await {
                Ok(r) => Some((resolver_cfg.clone(), Arc::new(r))),
                Err(e) => {
                    for (key, _) in &wanted {
                        let kept = rt.discovered.get(key).map_or(0, Vec::len);
                        failed(key, &e, &mut None, kept);
                    }
                    resolver_retry_at = Some(tokio::time::Instant::now() + RESOLVER_RETRY);
                    continue;
                }
            };
            resolver_retry_at = None;
        }
        let Some((_, r)) = &resolver else { continue };
        for (key, discover) in wanted {
            if tasks.contains_key(&key) {
                continue;
            }
            let first_wait = if at_start { jittered(discover.refresh()) } else { Duration::ZERO };
            let handle = tokio::spawn(keep_asking(
                shared.clone(),
                key.clone(),
                discover.clone(),
                r.clone(),
                resolve::round_limit(resolver_cfg),
                first_wait,
            ));
            tasks.insert(
                key,
                EntryTask {
                    discover,
                    resolver: resolver_cfg.clone(),
                    handle,
                },
            );
        }
        at_start = false;
    }
}

/// Builds a resolver on the blocking pool (it may read `/etc/resolv.conf`), bounded.
async fn build_off_thread(cfg: ResolverConfig) -> Result<TokioResolver, LookupError> {
    let built = tokio::time::timeout(Duration::from_secs(5), tokio::task::spawn_blocking(move || resolve::build(&cfg))).await;
    match built {
        Ok(Ok(r)) => r,
        _ => Err(LookupError {
            failure: Failure::ResolverConfig,
            detail: "the resolver could not be set up in time".into(),
        }),
    }
}

/// Asks about one entry every `refresh` (± 10 %), each round bounded by `limit`; hands a
/// new answer to the reload queue, keeps the last one on a failure.
async fn keep_asking(
    shared: Arc<Shared>,
    key: EntryKey,
    discover: Discover,
    resolver: Arc<TokioResolver>,
    limit: Duration,
    first_wait: Duration,
) {
    let mut failing: Option<Failure> = None;
    let mut wait = first_wait;
    loop {
        tokio::time::sleep(wait).await;
        wait = jittered(discover.refresh());
        let result = tokio::time::timeout(limit, resolve::lookup(&resolver, &discover))
            .await
            .unwrap_or_else(|_| Err(timed_out(limit)));
        let found = match result {
            Ok(found) => found,
            Err(e) => {
                let kept = shared.runtime.load().discovered.get(&key).map_or(0, Vec::len);
                failed(&key, &e, &mut failing, kept);
                continue;
            }
        };
        if failing.take().is_some() {
            tracing::info!(pool = %key.0, name = %key.1, backends = found.len(), "DNS discovery answers again");
        }
        crate::metrics::discovered_backends(&key.0, &key.1, found.len());
        if shared.runtime.load().discovered.get(&key) == Some(&found) {
            continue;
        }
        let answer = FoundAnswer {
            pool: key.0.clone(),
            entry: key.1.clone(),
            found,
        };
        if !shared.reloads.push(ReloadSource::Found(answer), ReloadReply::None) {
            return;
        }
    }
}

/// A discovery entry's new answer: only its pool is rebuilt (records that appeared are added
/// with slow start, those gone drain with 1012, nothing else is touched) and swapped in.
/// Not a config reload: not counted in `switchyard_config_reloads_total`.
pub(crate) fn apply_answer(shared: &Arc<Shared>, answer: FoundAnswer) -> crate::shared::ReloadOutcome {
    let old = shared.runtime.load_full();
    let FoundAnswer { pool, entry, found } = answer;
    let new = match old.with_found(&pool, &entry, found) {
        Ok(Some(rt)) => Arc::new(rt),
        Ok(None) => return Ok(Vec::new()),
        Err(e) => {
            tracing::warn!(pool = %pool, name = %entry, "discovered backends not applied: {e}");
            return Err(vec![e]);
        }
    };
    shared.runtime.store(new.clone());
    let now = crate::clock::now_ms();
    if let (Some(before), Some(after)) = (old.pools.get(&pool), new.pools.get(&pool)) {
        for b in after.backends.iter().filter(|b| !before.backends.iter().any(|o| Arc::ptr_eq(o, b))) {
            tracing::info!(pool = %pool, backend = %b.address, name = ?b.discovered_from(), "backend discovered: added");
        }
    }
    shared.drain_removed(&old, &new, now);
    Ok(Vec::new())
}

/// `d` ± 10 %, so entries with the same `refresh` drift apart.
fn jittered(d: Duration) -> Duration {
    d.mul_f64(rand::random_range(0.9..=1.1))
}
