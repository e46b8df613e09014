//! The DNS side of discovery: a hickory resolver built from `resolver:` (or
//! `/etc/resolv.conf`), asked for one entry's A/AAAA or SRV records, with every failure
//! named by a short reason for logs and `switchyard_discovery_errors_total`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::future::join_all;
use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig as HickoryConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::{IntoName, ResolveError, TokioResolver};

use crate::config::{Discover, ResolverConfig};
use crate::discovered::Found;

/// Retries of one query after its first try times out (each try bounded by `resolver.timeout`).
const ATTEMPTS: usize = 2;

/// Why a lookup gave nothing usable: a label value of `switchyard_discovery_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The name does not exist (`NXDOMAIN`).
    NxDomain,
    /// The name exists but has no records of the type asked (or none usable: every SRV
    /// target without an address, or the SRV "no service" target `.`).
    Empty,
    /// The server answered `SERVFAIL`.
    ServFail,
    /// The server answered `REFUSED`.
    Refused,
    /// The server answered another error code.
    Rcode,
    /// No answer in time.
    Timeout,
    /// No server could be reached (connection errors).
    Unreachable,
    /// `/etc/resolv.conf` could not be read or used.
    ResolverConfig,
    /// Anything else.
    Other,
}

impl Failure {
    /// Every reason, for pre-registering the counter.
    pub const ALL: [Failure; 9] = [
        Failure::NxDomain,
        Failure::Empty,
        Failure::ServFail,
        Failure::Refused,
        Failure::Rcode,
        Failure::Timeout,
        Failure::Unreachable,
        Failure::ResolverConfig,
        Failure::Other,
    ];

    /// The label value.
    pub fn reason(self) -> &'static str {
        match self {
            Failure::NxDomain => "nxdomain",
            Failure::Empty => "empty",
            Failure::ServFail => "servfail",
            Failure::Refused => "refused",
            Failure::Rcode => "rcode",
            Failure::Timeout => "timeout",
            Failure::Unreachable => "unreachable",
            Failure::ResolverConfig => "resolver_config",
            Failure::Other => "error",
        }
    }

    /// Classifies a resolver error.
    fn of(e: &ResolveError) -> Failure {
        let Some(proto) = e.proto() else { return Failure::Other };
        match proto.kind() {
            ProtoErrorKind::NoRecordsFound { response_code, .. } => match *response_code {
                ResponseCode::NXDomain => Failure::NxDomain,
                ResponseCode::NoError => Failure::Empty,
                ResponseCode::ServFail => Failure::ServFail,
                ResponseCode::Refused => Failure::Refused,
                _ => Failure::Rcode,
            },
            ProtoErrorKind::Timeout => Failure::Timeout,
            ProtoErrorKind::Io(_) | ProtoErrorKind::NoConnections | ProtoErrorKind::Busy => Failure::Unreachable,
            _ => Failure::Other,
        }
    }

    /// Is this an answer that the records are not there (as opposed to no answer)?
    fn is_no_records(self) -> bool {
        matches!(self, Failure::NxDomain | Failure::Empty)
    }
}

/// A lookup that failed: why, and the resolver's own words for the log.
#[derive(Debug, Clone)]
pub struct LookupError {
    /// The reason label.
    pub failure: Failure,
    /// What the resolver said.
    pub detail: String,
}

impl LookupError {
    fn new(failure: Failure, detail: impl Into<String>) -> Self {
        LookupError {
            failure,
            detail: detail.into(),
        }
    }

    fn of(e: &ResolveError) -> Self {
        LookupError::new(Failure::of(e), e.to_string())
    }
}

/// Builds a resolver for `cfg`: its `servers` over UDP and TCP (TCP for truncated answers),
/// or `/etc/resolv.conf`'s servers, search list and options (reads the file: call it off the
/// async threads). Every query is bounded by `cfg.timeout`; nothing is cached across
/// refreshes (a zero TTL cap: each refresh asks the servers), and `/etc/hosts` is not used.
pub fn build(cfg: &ResolverConfig) -> Result<TokioResolver, LookupError> {
    let provider = TokioConnectionProvider::default();
    let mut builder = match &cfg.servers {
        Some(servers) => {
            let mut hc = HickoryConfig::new();
            for &addr in servers {
                hc.add_name_server(NameServerConfig::new(addr, Protocol::Udp));
                hc.add_name_server(NameServerConfig::new(addr, Protocol::Tcp));
            }
            TokioResolver::builder_with_config(hc, provider)
        }
        None => {
            TokioResolver::builder(provider).map_err(|e| LookupError::new(Failure::ResolverConfig, format!("/etc/resolv.conf: {e}")))?
        }
    };
    let opts = builder.options_mut();
    opts.timeout = cfg.timeout;
    opts.attempts = ATTEMPTS;
    // Only `lookup_ip` reads it; discovery asks A and AAAA separately (`addresses`).
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    opts.use_hosts_file = ResolveHosts::Never;
    opts.cache_size = 0;
    opts.positive_max_ttl = Some(Duration::ZERO);
    opts.negative_max_ttl = Some(Duration::ZERO);
    opts.preserve_intermediates = false;
    Ok(builder.build())
}

/// The longest one round of lookups for an entry may take (an SRV query, then its targets'
/// A/AAAA queries, each with its retries): past it the round counts as `timeout`.
pub fn round_limit(cfg: &ResolverConfig) -> Duration {
    cfg.timeout * (2 * (ATTEMPTS as u32 + 1)) + Duration::from_millis(500)
}

/// Asks DNS for the backends of one entry. Never `Ok` with an empty list: no usable record
/// is [`Failure::Empty`] (or `NxDomain`), so the caller keeps what it had.
pub async fn lookup(resolver: &TokioResolver, discover: &Discover) -> Result<Vec<Found>, LookupError> {
    let found = match discover {
        Discover::Hosts { name, port, .. } => hosts(resolver, name, *port).await?,
        Discover::Srv { name, .. } => srv(resolver, name).await?,
    };
    if found.is_empty() {
        return Err(LookupError::new(
            Failure::Empty,
            format!("no usable record for {}", discover.name()),
        ));
    }
    Ok(crate::discovered::canonical(found))
}

/// Every A and AAAA record of `name`, at `port`.
async fn hosts(resolver: &TokioResolver, name: &str, port: u16) -> Result<Vec<Found>, LookupError> {
    let ips = addresses(resolver, name).await?;
    Ok(ips
        .into_iter()
        .map(|ip| Found {
            addr: SocketAddr::new(ip, port),
            weight: 1,
        })
        .collect())
}

/// The A and the AAAA records of `name`, asked separately, so that one family's failure is
/// never read as that family having no records (hickory's dual-stack lookup answers with
/// whichever family succeeded, and with no error): see [`both_families`].
async fn addresses<N: IntoName + Clone>(resolver: &TokioResolver, name: N) -> Result<Vec<IpAddr>, LookupError> {
    let (v4, v6) = tokio::join!(resolver.ipv4_lookup(name.clone()), resolver.ipv6_lookup(name));
    let v4 = v4
        .map(|l| l.iter().map(|a| IpAddr::V4(a.0)).collect())
        .map_err(|e| LookupError::of(&e));
    let v6 = v6
        .map(|l| l.iter().map(|a| IpAddr::V6(a.0)).collect())
        .map_err(|e| LookupError::of(&e));
    both_families(v4, v6)
}

/// One round's addresses from the answers of both families, all or nothing: "no such name"
/// or "no records" is an empty family; any other failure (a timeout, `SERVFAIL`, `REFUSED`,
/// no server) fails the round with its own reason, so the caller keeps its last good set.
/// Both families empty is [`Failure::NxDomain`] when both said so, else [`Failure::Empty`].
fn both_families(v4: Result<Vec<IpAddr>, LookupError>, v6: Result<Vec<IpAddr>, LookupError>) -> Result<Vec<IpAddr>, LookupError> {
    for r in [&v4, &v6] {
        if let Err(e) = r {
            if !e.failure.is_no_records() {
                return Err(e.clone());
            }
        }
    }
    match (v4, v6) {
        (Err(a), Err(b)) => {
            let failure = match (a.failure, b.failure) {
                (Failure::NxDomain, Failure::NxDomain) => Failure::NxDomain,
                _ => Failure::Empty,
            };
            Err(LookupError::new(failure, format!("A: {}; AAAA: {}", a.detail, b.detail)))
        }
        (a, b) => Ok(a.unwrap_or_default().into_iter().chain(b.unwrap_or_default()).collect()),
    }
}

/// The SRV records of `name` with the lowest priority value (RFC 2782: the others are
/// fall-backs, not used here), each target's A and AAAA records at the record's port with
/// its weight. A target with no address is left out; a target whose lookup fails for another
/// reason fails the round (so a passing failure never removes a backend).
async fn srv(resolver: &TokioResolver, name: &str) -> Result<Vec<Found>, LookupError> {
    let answer = resolver.srv_lookup(name).await.map_err(|e| LookupError::of(&e))?;
    let records: Vec<_> = answer.iter().filter(|r| !r.target().is_root()).cloned().collect();
    let Some(best) = records.iter().map(|r| r.priority()).min() else {
        return Ok(Vec::new());
    };
    let records: Vec<_> = records.into_iter().filter(|r| r.priority() == best).collect();
    let mut targets: Vec<_> = records.iter().map(|r| r.target().clone()).collect();
    targets.sort();
    targets.dedup();
    let answers = join_all(targets.iter().map(|t| addresses(resolver, t.clone()))).await;
    let mut found = Vec::new();
    for (target, answer) in targets.iter().zip(answers) {
        let ips = match answer {
            Ok(ips) => ips,
            Err(e) if e.failure.is_no_records() => continue,
            Err(e) => return Err(LookupError::new(e.failure, format!("SRV target {target}: {}", e.detail))),
        };
        for r in records.iter().filter(|r| r.target() == target) {
            found.extend(ips.iter().map(|ip| Found {
                addr: SocketAddr::new(*ip, r.port()),
                weight: u32::from(r.weight()),
            }));
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(f: Failure) -> Result<Vec<IpAddr>, LookupError> {
        Err(LookupError::new(f, f.reason()))
    }

    fn ok(ips: &[&str]) -> Result<Vec<IpAddr>, LookupError> {
        Ok(ips.iter().map(|i| i.parse().unwrap()).collect())
    }

    #[test]
    fn a_round_is_all_or_nothing_over_both_families() {
        let both = both_families(ok(&["127.0.0.1"]), ok(&["::1"])).unwrap();
        assert_eq!(both.len(), 2);
        // A family with no records is empty; the other stands.
        assert_eq!(both_families(ok(&["127.0.0.1"]), err(Failure::Empty)).unwrap().len(), 1);
        assert_eq!(both_families(err(Failure::NxDomain), ok(&["::1"])).unwrap().len(), 1);
        // Any other failure of either family fails the round, with its own reason.
        for f in [
            Failure::ServFail,
            Failure::Refused,
            Failure::Timeout,
            Failure::Unreachable,
            Failure::Rcode,
        ] {
            assert_eq!(both_families(ok(&["127.0.0.1"]), err(f)).unwrap_err().failure, f);
            assert_eq!(both_families(err(f), ok(&["::1"])).unwrap_err().failure, f);
            assert_eq!(both_families(err(Failure::Empty), err(f)).unwrap_err().failure, f);
        }
        assert_eq!(
            both_families(err(Failure::NxDomain), err(Failure::NxDomain)).unwrap_err().failure,
            Failure::NxDomain
        );
        assert_eq!(
            both_families(err(Failure::NxDomain), err(Failure::Empty)).unwrap_err().failure,
            Failure::Empty
        );
        assert_eq!(both_families(ok(&[]), err(Failure::Empty)).unwrap(), Vec::<IpAddr>::new());
    }
}
