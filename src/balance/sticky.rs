//! Cookie stickiness: a pool with `sticky: { cookie }` pins a client to the backend named by
//! its cookie while that backend is available; otherwise the pool's algorithm picks and the
//! balancer (re)issues the cookie.
//!
//! The cookie value is opaque: the first 8 bytes of SHA-1(secret, 0, address) in hex. It
//! does not show the address, and it is the same on every instance with the same config
//! and after a restart, so instances behind an L4 spreader honour each other's cookies.

use std::sync::Arc;

use sha1::{Digest, Sha1};

use super::hash::cookie_value;
use crate::backend::Backend;
use crate::config::StickyConfig;

/// How a sticky pool chose (the `result` label of `switchyard_sticky_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StickyResult {
    /// The cookie named an available backend: used.
    Hit = 0,
    /// No (known) cookie: the algorithm picked and a cookie is set.
    Assigned,
    /// The cookie named a backend that is not available: another was picked, cookie re-issued.
    Reassigned,
}

impl StickyResult {
    /// Every result, in discriminant order.
    pub const ALL: [StickyResult; 3] = [StickyResult::Hit, StickyResult::Assigned, StickyResult::Reassigned];

    /// Label value.
    pub fn label(self) -> &'static str {
        match self {
            StickyResult::Hit => "hit",
            StickyResult::Assigned => "assigned",
            StickyResult::Reassigned => "reassigned",
        }
    }
}

/// The cookie name and every backend's cookie value, computed once per runtime.
#[derive(Debug)]
pub struct Sticky {
    /// Cookie name.
    pub cookie: String,
    /// `tokens[i]` is backend `i`'s cookie value.
    tokens: Vec<String>,
}

impl Sticky {
    /// Tokens for `backends` (same order as the pool's list).
    pub fn new(cfg: &StickyConfig, backends: &[Arc<Backend>]) -> Sticky {
        let tokens = backends.iter().map(|b| token(&cfg.secret, &b.address)).collect();
        Sticky {
            cookie: cfg.cookie.clone(),
            tokens,
        }
    }

    /// Which backend the request's cookie names: `Some(Some(i))` a known one, `Some(None)`
    /// a cookie naming no current backend, `None` no cookie.
    pub fn lookup(&self, headers: &[httparse::Header<'_>]) -> Option<Option<usize>> {
        let v = cookie_value(headers, &self.cookie)?;
        Some(self.tokens.iter().position(|t| t.as_bytes() == v))
    }

    /// The `Set-Cookie` value pinning a client to backend `i`.
    pub fn set_cookie(&self, i: usize, secure: bool) -> String {
        let token = self.tokens.get(i).map_or("", String::as_str);
        let secure = if secure { "; Secure" } else { "" };
        format!("{}={token}; Path=/; HttpOnly; SameSite=Lax{secure}", self.cookie)
    }
}

/// The opaque value for one backend address.
fn token(secret: &str, address: &str) -> String {
    let mut h = Sha1::new();
    h.update(secret.as_bytes());
    h.update([0u8]);
    h.update(address.as_bytes());
    let d = h.finalize();
    d[..8].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sticky(secret: &str, addrs: &[&str]) -> Sticky {
        let bs: Vec<_> = addrs.iter().map(|a| Backend::for_test(a, 1)).collect();
        let cfg = StickyConfig {
            cookie: "SYID".into(),
            secret: secret.into(),
        };
        Sticky::new(&cfg, &bs)
    }

    #[test]
    fn values_are_opaque_stable_and_keyed() {
        let a = sticky("s", &["127.0.0.1:9001", "127.0.0.1:9002"]);
        let b = sticky("s", &["127.0.0.1:9002", "127.0.0.1:9001"]);
        assert_eq!(a.tokens[0], b.tokens[1], "same value whatever the list order");
        assert_eq!(a.tokens[0].len(), 16);
        assert!(!a.tokens[0].contains("9001"));
        assert_ne!(sticky("other", &["127.0.0.1:9001"]).tokens[0], a.tokens[0]);
        let c = a.set_cookie(1, true);
        assert_eq!(c, format!("SYID={}; Path=/; HttpOnly; SameSite=Lax; Secure", a.tokens[1]));
    }

    #[test]
    fn lookup_finds_the_backend() {
        let s = sticky("s", &["127.0.0.1:9001", "127.0.0.1:9002"]);
        let v = format!("a=1; SYID={}; b=2", s.tokens[1]);
        let h = [httparse::Header {
            name: "Cookie",
            value: v.as_bytes(),
        }];
        assert_eq!(s.lookup(&h), Some(Some(1)));
        let h = [httparse::Header {
            name: "Cookie",
            value: b"SYID=deadbeef",
        }];
        assert_eq!(s.lookup(&h), Some(None));
        assert_eq!(s.lookup(&[]), None);
    }
}
