//! Consistent hashing with optional bounded loads: the same key (client IP, header, cookie,
//! query parameter or path) goes to the same backend while it is eligible, and removing a
//! backend only moves the keys that were on it.
//!
//! Ring: each backend gets [`VNODES_PER_WEIGHT`] points per unit of weight (scaled down so
//! the ring holds at most [`MAX_RING_POINTS`], at least one point per backend), placed by
//! hashing its *address*, so points do not depend on list order. A key is hashed to a point
//! and the ring is walked clockwise to the first eligible backend.
//!
//! Key fallback: when the configured key is missing or empty in the request (no such
//! header, cookie or query parameter), the client IP is hashed instead.
//!
//! Bounded loads (Mirrokni, Thorup & Zadimoghaddam, "Consistent Hashing with Bounded
//! Loads", 2018): with factor `c`, a backend is skipped (the walk goes on) when taking this
//! connection would put it above `ceil(c × (A + 1) × w / W)`, `A` being the live connections
//! on the eligible backends, `w` its effective weight and `W` their sum; with equal weights
//! that is `ceil(c × (A + 1) / n)`. No backend ends up above `c` times its fair share.
//!
//! Slow start: a ramping backend at factor `f` takes a key only if a per-key hash fraction
//! is below `f`, so its share of keys grows with the ramp and a key it accepted stays.
//!
//! Hashing: FNV-1a 64 followed by the MurmurHash3 64-bit finaliser, written here with fixed
//! constants, so placement is identical across processes, restarts and versions (never
//! `RandomState`). Lock-free: the ring is immutable after `new`; picks read atomics only.

use std::net::IpAddr;
use std::sync::Arc;

use super::{Balancer, PickContext};
use crate::backend::Backend;
use crate::config::{HashConfig, HashKey};

/// Ring points per unit of weight (ketama's figure).
pub const VNODES_PER_WEIGHT: u64 = 160;
/// Most points on one ring (≈ 100 per backend at 1,000 backends of weight 1).
pub const MAX_RING_POINTS: u64 = 100_000;

/// Consistent-hash ring over one pool's backends.
#[derive(Debug)]
pub struct ConsistentHash {
    key: HashKey,
    /// Bounded-load factor `c` (≥ 1), if any.
    bounded_load: Option<f64>,
    /// Ring points, ascending.
    points: Vec<u64>,
    /// `owners[k]` is the backend index of `points[k]`.
    owners: Vec<u32>,
    /// Per-backend hash of its address: the slow-start draw is per (key, backend).
    seeds: Vec<u64>,
}

impl ConsistentHash {
    /// Builds the ring for `backends` (same order as passed to `pick`) and their weights.
    pub fn new(cfg: &HashConfig, backends: &[Arc<Backend>]) -> Self {
        let total_weight: u64 = backends.iter().map(|b| b.weight() as u64).sum();
        let per_weight = (MAX_RING_POINTS as f64 / total_weight.max(1) as f64).min(VNODES_PER_WEIGHT as f64);
        let mut ring: Vec<(u64, u32)> = Vec::new();
        let mut seeds = Vec::with_capacity(backends.len());
        for (i, b) in backends.iter().enumerate() {
            let vnodes = ((b.weight() as f64 * per_weight).round() as u64).max(1);
            let base = fnv1a(FNV_OFFSET, b.address.as_bytes());
            seeds.push(mix(base));
            for v in 0..vnodes {
                ring.push((mix(fnv1a(base, &v.to_le_bytes())), i as u32));
            }
        }
        // Ties (two backends' points equal, a 64-bit collision) are broken by address, not
        // list position: the ring depends only on the set of addresses and weights, so
        // instances given the same backends in any order (e.g. DNS answers) agree.
        ring.sort_unstable_by(|a, b| {
            let addr = |p: &(u64, u32)| backends[p.1 as usize].address.as_str();
            a.0.cmp(&b.0).then_with(|| addr(a).cmp(addr(b)))
        });
        let bounded_load = cfg.bounded_load.filter(|c| c.is_finite()).map(|c| c.max(1.0));
        ConsistentHash {
            key: cfg.key.clone(),
            bounded_load,
            points: ring.iter().map(|p| p.0).collect(),
            owners: ring.iter().map(|p| p.1).collect(),
            seeds,
        }
    }

    /// The hash of the request's key (client IP when the key is missing).
    fn key_hash(&self, ctx: &PickContext<'_>) -> u64 {
        let key = match &self.key {
            HashKey::ClientIp => None,
            HashKey::Header(name) => header(ctx, name),
            HashKey::Cookie(name) => cookie(ctx, name),
            HashKey::Query(name) => query(ctx.target, name),
            HashKey::Path => Some(path(ctx.target).as_bytes()),
            HashKey::PathSegment(n) => path_segment(ctx.target, *n),
        };
        match key.filter(|k| !k.is_empty()) {
            Some(k) => hash_bytes(k),
            None => hash_ip(ctx.client_ip),
        }
    }
}

impl Balancer for ConsistentHash {
    fn pick(&self, backends: &[Arc<Backend>], ctx: &PickContext<'_>) -> Option<usize> {
        let len = self.points.len();
        if len == 0 {
            return None;
        }
        let h = self.key_hash(ctx);
        // Bounded loads: live connections and effective weight over the eligible backends.
        let bound = self.bounded_load.map(|c| {
            let (mut active, mut weight) = (0u64, 0.0);
            for (_, b) in backends.iter().enumerate().filter(|(i, b)| ctx.eligible(*i, b)) {
                active += b.active();
                weight += b.effective_weight(ctx.now_ms);
            }
            // Capacity per unit of effective weight.
            c * (active + 1) as f64 / weight
        });
        let start = self.points.partition_point(|&p| p < h);
        // First eligible backend skipped only for its ramp or its bound: used if every
        // backend is skipped (rounding, or loads moving under us).
        let mut fallback = None;
        for k in 0..len {
            let slot = (start + k) % len;
            let i = self.owners[slot] as usize;
            let Some(b) = backends.get(i) else { continue };
            if !ctx.eligible(i, b) {
                continue;
            }
            let ramp = b.ramp_factor(ctx.now_ms);
            if ramp < 1.0 && unit(mix(h ^ self.seeds.get(i).copied().unwrap_or(0))) >= ramp {
                fallback = fallback.or(Some(i));
                continue;
            }
            if let Some(per_weight) = bound {
                // The small epsilon keeps an exact integer bound from rounding up.
                let cap = (per_weight * b.effective_weight(ctx.now_ms) - 1e-9).ceil();
                if (b.active() + 1) as f64 > cap {
                    fallback = fallback.or(Some(i));
                    continue;
                }
            }
            return Some(i);
        }
        fallback
    }
}

/// The first non-empty value of header `name` (case-insensitive), trimmed.
fn header<'a>(ctx: &PickContext<'a>, name: &str) -> Option<&'a [u8]> {
    ctx.headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value.trim_ascii())
        .find(|v| !v.is_empty())
}

/// The value of cookie `name` (case-sensitive, RFC 6265 §5.4) from any `Cookie` header,
/// surrounding quotes removed.
fn cookie<'a>(ctx: &PickContext<'a>, name: &str) -> Option<&'a [u8]> {
    cookie_value(ctx.headers, name)
}

/// The value of cookie `name` in the request's `Cookie` headers (quotes removed).
pub fn cookie_value<'a>(headers: &[httparse::Header<'a>], name: &str) -> Option<&'a [u8]> {
    headers.iter().filter(|h| h.name.eq_ignore_ascii_case("cookie")).find_map(|h| {
        h.value.split(|&c| c == b';').find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&c| c == b'=')?;
            let (n, v) = (pair[..eq].trim_ascii(), pair[eq + 1..].trim_ascii());
            let v = v.strip_prefix(b"\"").and_then(|v| v.strip_suffix(b"\"")).unwrap_or(v);
            (n == name.as_bytes() && !v.is_empty()).then_some(v)
        })
    })
}

/// The raw (not percent-decoded) value of query parameter `name`.
fn query<'a>(target: &'a str, name: &str) -> Option<&'a [u8]> {
    let (_, q) = target.split_once('?')?;
    let q = q.split_once('#').map_or(q, |(q, _)| q);
    q.split('&').find_map(|pair| {
        let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
        (n == name && !v.is_empty()).then_some(v.as_bytes())
    })
}

/// The `n`-th segment of the path (from 1): `/sockjs/123/abcd/xhr`, 3 → `abcd`.
fn path_segment(target: &str, n: usize) -> Option<&[u8]> {
    path(target)
        .split('/')
        .filter(|s| !s.is_empty())
        .nth(n.checked_sub(1)?)
        .map(str::as_bytes)
}

/// The request target without query or fragment.
fn path(target: &str) -> &str {
    target.split(['?', '#']).next().unwrap_or(target)
}

pub(crate) const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64 over `bytes`, continuing from state `h`.
pub(crate) fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// MurmurHash3's 64-bit finaliser: spreads FNV's weak high bits over the whole word.
fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Stable 64-bit hash of a key.
fn hash_bytes(bytes: &[u8]) -> u64 {
    mix(fnv1a(FNV_OFFSET, bytes))
}

/// Stable hash of an address; an IPv4-mapped IPv6 address hashes as its IPv4 form.
fn hash_ip(ip: IpAddr) -> u64 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => hash_bytes(&v4.octets()),
        IpAddr::V6(v6) => hash_bytes(&v6.octets()),
    }
}

/// A hash as a fraction in [0, 1).
fn unit(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod segment_tests {
    #[test]
    fn path_segments_count_from_one() {
        assert_eq!(super::path_segment("/echo/123/abc/xhr_streaming?t=1", 3), Some(&b"abc"[..]));
        assert_eq!(super::path_segment("/echo/123/abc/xhr", 1), Some(&b"echo"[..]));
        assert_eq!(super::path_segment("/echo", 2), None);
        assert_eq!(super::path_segment("/a", 0), None);
    }
}

#[cfg(test)]
#[path = "hash_tests.rs"]
mod tests;
