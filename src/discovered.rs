//! Backends found by DNS discovery as the runtime holds them: the last good answer of each
//! discovery entry, and the expansion of a pool's configured entries into the concrete
//! backends it balances over. Pure: the lookups themselves live in `discovery/`.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::config::{BackendConfig, BackendTls, Discover, PoolConfig};

/// One backend a discovery entry found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Found {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The SRV record's weight (summed over records naming the same address); unused for
    /// A/AAAA entries, whose backends take the entry's `weight`.
    pub weight: u32,
}

/// Which entry an answer belongs to: the pool's name and the entry's `address` (the SRV name
/// for an `srv` entry), unique within a pool.
pub type EntryKey = (String, String);

/// The last good (non-empty) answer of every discovery entry that has had one.
pub type FoundSets = BTreeMap<EntryKey, Vec<Found>>;

/// An answer in canonical form: sorted by address, one item per address (weights of SRV
/// records naming the same address are added up). Whatever order the DNS answer came in,
/// the pool's list, and every algorithm that looks at its order, is the same.
pub fn canonical(mut found: Vec<Found>) -> Vec<Found> {
    found.sort_unstable();
    let mut out: Vec<Found> = Vec::with_capacity(found.len());
    for f in found {
        match out.last_mut() {
            Some(last) if last.addr == f.addr => last.weight = last.weight.saturating_add(f.weight),
            _ => out.push(f),
        }
    }
    out
}

/// The concrete backends of pool `pool`: its configured backends in config order, each
/// discovery entry replaced by the backends of its last good answer in `sets` (canonical
/// order; none before the first answer), then the entries a reload removed that the pool
/// still holds (`held`, see [`HeldEntries`]). An address is listed once: a configured
/// backend wherever it is written, else the first entry that found it.
pub fn expand(pool: &str, config: &PoolConfig, sets: &FoundSets, held: &[BackendConfig]) -> Vec<BackendConfig> {
    let mut out: Vec<BackendConfig> = Vec::with_capacity(config.backends.len());
    let configured = |address: &str| config.backends.iter().any(|b| b.discover.is_none() && b.address == address);
    for entry in config.backends.iter().chain(held) {
        let Some(discover) = &entry.discover else {
            out.push(entry.clone());
            continue;
        };
        let Some(found) = sets.get(&(pool.to_string(), entry.address.clone())) else {
            continue;
        };
        for f in found {
            let address = f.addr.to_string();
            if configured(&address) || out.iter().any(|b| b.address == address) {
                continue;
            }
            out.push(found_backend(entry, discover, f, address));
        }
    }
    out
}

/// The backend `f` of discovery entry `entry`: the entry's settings, its own address, the
/// SRV weight for an `srv` entry, and TLS checked against the configured name.
fn found_backend(entry: &BackendConfig, discover: &Discover, f: &Found, address: String) -> BackendConfig {
    let weight = match discover {
        Discover::Hosts { .. } => entry.weight,
        // RFC 2782: weight 0 is "very small chance"; here it is the smallest share there is.
        Discover::Srv { .. } => f.weight.max(1),
    };
    let tls = entry.tls.as_ref().map(|t| BackendTls {
        server_name: t.server_name.clone().or_else(|| Some(discover.tls_name().to_string())),
        ..t.clone()
    });
    BackendConfig {
        address,
        weight,
        max_connections: entry.max_connections,
        tls,
        discover: None,
        discovered_from: Some(entry.address.clone()),
        proxy_protocol: entry.proxy_protocol,
    }
}

/// Discovery entries a reload removed from a pool while entries of the pool had not
/// answered yet (renamed to a name DNS does not know yet, or added earlier and still
/// silent): their last answers keep serving until every discovery entry of the pool has
/// answered once, so a reload never empties a pool, nor drops the backends of one renamed
/// entry because another answered. By pool name.
pub type HeldEntries = BTreeMap<String, Vec<BackendConfig>>;

/// Has every discovery entry of pool `pool` (configured as `config`) answered once?
pub fn all_answered(pool: &str, config: &PoolConfig, sets: &FoundSets) -> bool {
    config
        .backends
        .iter()
        .filter(|b| b.discover.is_some())
        .all(|b| sets.contains_key(&(pool.to_string(), b.address.clone())))
}

/// Is `entry` a discovery entry of the pool `config`? (An answer for an entry a reload
/// removed is dropped.)
pub fn is_entry(config: &PoolConfig, entry: &str) -> bool {
    config.backends.iter().any(|b| b.discover.is_some() && b.address == entry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn found(addr: &str, weight: u32) -> Found {
        Found {
            addr: addr.parse().unwrap(),
            weight,
        }
    }

    fn pool(yaml_backends: Vec<BackendConfig>) -> PoolConfig {
        let text =
            "listeners: [{name: l, bind: \"127.0.0.1:0\", routes: [{pool: p}]}]\npools: {p: {backends: [{address: \"127.0.0.1:1\"}]}}\n";
        let mut cfg = crate::config::parse(text, std::path::Path::new(".")).unwrap();
        let mut p = cfg.pools.remove("p").unwrap();
        p.backends = yaml_backends;
        p
    }

    fn entry(address: &str, discover: Option<Discover>) -> BackendConfig {
        BackendConfig {
            address: address.into(),
            weight: 3,
            max_connections: Some(7),
            tls: None,
            discover,
            discovered_from: None,
            proxy_protocol: None,
        }
    }

    #[test]
    fn canonical_sorts_and_merges_whatever_the_answer_order() {
        let a = canonical(vec![found("10.0.0.2:80", 1), found("10.0.0.1:80", 2), found("10.0.0.2:80", 3)]);
        let b = canonical(vec![found("10.0.0.2:80", 3), found("10.0.0.2:80", 1), found("10.0.0.1:80", 2)]);
        assert_eq!(a, b);
        assert_eq!(a, vec![found("10.0.0.1:80", 2), found("10.0.0.2:80", 4)]);
    }

    #[test]
    fn entries_expand_in_place_with_their_settings_and_no_duplicates() {
        let hosts = Discover::Hosts {
            name: "chat.test".into(),
            port: 80,
            refresh: Duration::from_secs(1),
        };
        let srv = Discover::Srv {
            name: "_ws._tcp.chat.test".into(),
            refresh: Duration::from_secs(1),
        };
        let mut tls_entry = entry("_ws._tcp.chat.test", Some(srv));
        tls_entry.tls = Some(BackendTls::default());
        let p = pool(vec![entry("10.0.0.9:80", None), entry("chat.test:80", Some(hosts)), tls_entry]);
        let mut sets = FoundSets::new();
        // Nothing found yet: only the configured backend.
        assert_eq!(expand("p", &p, &sets, &[]).len(), 1);
        let key = |e: &str| ("p".to_string(), e.to_string());
        sets.insert(key("chat.test:80"), vec![found("10.0.0.1:80", 0), found("10.0.0.9:80", 0)]);
        sets.insert(key("_ws._tcp.chat.test"), vec![found("10.0.0.1:80", 5), found("10.0.0.3:81", 0)]);
        let all = expand("p", &p, &sets, &[]);
        let addrs: Vec<&str> = all.iter().map(|b| b.address.as_str()).collect();
        assert_eq!(addrs, ["10.0.0.9:80", "10.0.0.1:80", "10.0.0.3:81"]);
        assert_eq!(all[0].discovered_from, None);
        assert_eq!(all[1].discovered_from.as_deref(), Some("chat.test:80"));
        assert_eq!((all[1].weight, all[1].max_connections), (3, Some(7)), "the entry's settings");
        assert_eq!(all[2].discovered_from.as_deref(), Some("_ws._tcp.chat.test"));
        assert_eq!(all[2].weight, 1, "SRV weight 0 is the smallest share");
        let tls = all[2].tls.as_ref().unwrap();
        assert_eq!(tls.server_name.as_deref(), Some("chat.test"), "checked against the service's name");
        assert!(all.iter().all(|b| b.discover.is_none()));
        // AAAA records: the address is written with brackets.
        sets.insert(key("chat.test:80"), vec![found("[fd00::1]:80", 0)]);
        assert_eq!(expand("p", &p, &sets, &[])[1].address, "[fd00::1]:80");
    }
}
