//! Checked reading of tree nodes: every wrong key, type or range becomes a
//! [`ConfigError`] collected in a [`Ctx`], and reading goes on so that one run reports
//! every problem of the file.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use super::units::{parse_duration, parse_size};
use super::yaml::{Node, NodeKind};
use super::ConfigError;

/// Collects errors while a config is decoded.
#[derive(Default)]
pub struct Ctx {
    /// Every problem found so far.
    pub errors: Vec<ConfigError>,
}

/// The fields of one mapping whose keys were all checked against the known ones.
pub struct Fields<'a> {
    /// The mapping itself (its position is used for "missing key" errors).
    pub node: &'a Node,
    pairs: &'a [(Node, Node)],
}

impl<'a> Fields<'a> {
    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&'a Node> {
        self.pairs.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v)
    }

    /// The key node of `key`, if present (errors about a whole setting point at it).
    pub fn key(&self, key: &str) -> Option<&'a Node> {
        self.pairs.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(k, _)| k)
    }
}

/// "did you mean `X`?" when a candidate is within edit distance 2 or equal ignoring case.
pub fn did_you_mean<'c>(word: &str, candidates: impl IntoIterator<Item = &'c str>) -> Option<String> {
    let lower = word.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| {
            (
                if c.to_ascii_lowercase() == lower {
                    0
                } else {
                    edit_distance(word, c)
                },
                c,
            )
        })
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| format!("did you mean `{c}`?"))
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = substitute.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

impl Ctx {
    /// Records an error at `node`.
    pub fn error(&mut self, node: &Node, message: impl Into<String>) {
        self.errors.push(node.error(message));
    }

    /// Records an error at `node` with an optional hint.
    pub fn error_hint(&mut self, node: &Node, message: impl Into<String>, hint: Option<String>) {
        let mut e = node.error(message);
        e.hint = hint;
        self.errors.push(e);
    }

    /// Reads a mapping (an empty value counts as an empty mapping) and reports every
    /// key not in `known`, with a did-you-mean hint.
    pub fn fields<'a>(&mut self, node: &'a Node, what: &str, known: &[&str]) -> Option<Fields<'a>> {
        let pairs: &[(Node, Node)] = match &node.kind {
            NodeKind::Map(pairs) => pairs,
            NodeKind::Null => &[],
            _ => {
                self.error(node, format!("{what} must be a mapping, found {}", node.describe()));
                return None;
            }
        };
        for (key, _) in pairs {
            match key.as_str() {
                Some(k) if known.contains(&k) => {}
                Some(k) => {
                    let hint = did_you_mean(k, known.iter().copied());
                    self.error_hint(key, format!("unknown key `{k}` in {what}"), hint);
                }
                None => self.error(key, format!("keys of {what} must be plain names")),
            }
        }
        Some(Fields { node, pairs })
    }

    /// The value of a required key; reports it missing at the mapping.
    pub fn required<'a>(&mut self, fields: &Fields<'a>, key: &str, what: &str) -> Option<&'a Node> {
        let value = fields.get(key);
        if value.is_none() {
            self.error(fields.node, format!("{what} is missing required key `{key}`"));
        }
        value
    }

    /// A scalar as text (numbers and booleans too, as written).
    pub fn string(&mut self, node: &Node, what: &str) -> Option<String> {
        match node.as_str() {
            Some(s) => Some(s.to_string()),
            None => {
                self.error(node, format!("{what} must be a string, found {}", node.describe()));
                None
            }
        }
    }

    /// A non-empty string.
    pub fn name(&mut self, node: &Node, what: &str) -> Option<String> {
        let s = self.string(node, what)?;
        if s.trim().is_empty() {
            self.error(node, format!("{what} must not be empty"));
            return None;
        }
        Some(s)
    }

    /// A sequence of items.
    pub fn seq<'a>(&mut self, node: &'a Node, what: &str) -> Option<&'a [Node]> {
        match &node.kind {
            NodeKind::Seq(items) => Some(items),
            _ => {
                self.error(node, format!("{what} must be a sequence, found {}", node.describe()));
                None
            }
        }
    }

    /// A sequence of strings.
    pub fn strings(&mut self, node: &Node, what: &str) -> Option<Vec<String>> {
        let items = self.seq(node, what)?;
        let out: Vec<_> = items
            .iter()
            .filter_map(|item| self.string(item, &format!("each of {what}")))
            .collect();
        (out.len() == items.len()).then_some(out)
    }

    /// `true` or `false`.
    pub fn bool(&mut self, node: &Node, what: &str) -> Option<bool> {
        match node.as_str() {
            Some("true" | "True" | "TRUE") => Some(true),
            Some("false" | "False" | "FALSE") => Some(false),
            _ => {
                self.error(node, format!("{what} must be `true` or `false`"));
                None
            }
        }
    }

    /// An integer in `min..=max`.
    pub fn int(&mut self, node: &Node, what: &str, min: u64, max: u64) -> Option<u64> {
        let Some(text) = node.as_str() else {
            self.error(node, format!("{what} must be an integer, found {}", node.describe()));
            return None;
        };
        let n = match text.parse::<i128>() {
            Ok(n) => n,
            Err(_) => {
                self.error(node, format!("{what} must be an integer, found `{text}`"));
                return None;
            }
        };
        if n < i128::from(min) || n > i128::from(max) {
            // Bounds at the type's limit are not worth a mention.
            let unbounded = max >= u64::from(u32::MAX);
            let msg = match (min, max) {
                (0, _) if n < 0 => format!("{what} must not be negative, found {n}"),
                _ if unbounded && n < i128::from(min) => {
                    format!("{what} must be at least {min}, found {n}")
                }
                _ if unbounded => format!("{what} is too large (at most {max}), found {n}"),
                _ => format!("{what} must be between {min} and {max}, found {n}"),
            };
            self.error(node, msg);
            return None;
        }
        u64::try_from(n).ok()
    }

    /// An integer ≥ `min` that fits in u32.
    pub fn u32(&mut self, node: &Node, what: &str, min: u32) -> Option<u32> {
        self.int(node, what, u64::from(min), u64::from(u32::MAX))
            .and_then(|n| u32::try_from(n).ok())
    }

    /// A finite number.
    pub fn float(&mut self, node: &Node, what: &str) -> Option<f64> {
        match node.as_str().map(|s| s.parse::<f64>()) {
            Some(Ok(f)) if f.is_finite() => Some(f),
            _ => {
                self.error(node, format!("{what} must be a number"));
                None
            }
        }
    }

    /// A duration (`250ms`, `2s`, …).
    pub fn duration(&mut self, node: &Node, what: &str) -> Option<Duration> {
        let Some(text) = node.as_str() else {
            self.error(node, format!("{what} must be a duration like `2s`, found {}", node.describe()));
            return None;
        };
        parse_duration(text).map_err(|e| self.error(node, format!("{what}: {e}"))).ok()
    }

    /// A duration that must be greater than zero.
    pub fn positive_duration(&mut self, node: &Node, what: &str) -> Option<Duration> {
        let d = self.duration(node, what)?;
        if d.is_zero() {
            self.error(node, format!("{what} must be greater than 0"));
            return None;
        }
        Some(d)
    }

    /// A duration where `0s` or `off` mean "never".
    pub fn optional_duration(&mut self, node: &Node, what: &str) -> Option<Option<Duration>> {
        if node.as_str() == Some("off") {
            return Some(None);
        }
        self.duration(node, what).map(|d| (!d.is_zero()).then_some(d))
    }

    /// A size (`16KiB`, plain bytes, …).
    pub fn size(&mut self, node: &Node, what: &str) -> Option<u64> {
        let Some(text) = node.as_str() else {
            self.error(node, format!("{what} must be a size like `16KiB`, found {}", node.describe()));
            return None;
        };
        parse_size(text).map_err(|e| self.error(node, format!("{what}: {e}"))).ok()
    }

    /// One of the named `options`, with a did-you-mean hint.
    pub fn choice<T: Copy>(&mut self, node: &Node, what: &str, options: &[(&str, T)]) -> Option<T> {
        let text = self.string(node, what)?;
        if let Some((_, v)) = options.iter().find(|(n, _)| *n == text) {
            return Some(*v);
        }
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        let hint = did_you_mean(&text, names.iter().copied());
        self.error_hint(node, format!("unknown {what} `{text}`; expected one of {}", names.join(", ")), hint);
        None
    }
}

/// Checks a backend address: `host:port` where host is an IPv4 address, `[IPv6]` or a
/// DNS name, and port is 1-65535.
pub fn check_address(s: &str) -> Result<(), String> {
    if s.contains("://") {
        return Err(format!(
            "backend address `{s}` must be host:port without a scheme (use `tls: true` for wss)"
        ));
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (ip, port) = rest
            .split_once("]:")
            .ok_or_else(|| format!("backend address `{s}` must be `[IPv6]:port`"))?;
        ip.parse::<Ipv6Addr>()
            .map_err(|_| format!("`{ip}` in backend address `{s}` is not an IPv6 address"))?;
        (ip, port)
    } else {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("backend address `{s}` needs a port, e.g. `{s}:80`"))?;
        if host.contains(':') {
            return Err(format!(
                "backend address `{s}`: write an IPv6 address in brackets, e.g. `[::1]:9001`"
            ));
        }
        if host.chars().all(|c| c.is_ascii_digit() || c == '.') {
            host.parse::<Ipv4Addr>()
                .map_err(|_| format!("`{host}` in backend address `{s}` is not an IPv4 address"))?;
        } else if !is_dns_name(host) {
            return Err(format!("`{host}` in backend address `{s}` is not a valid host name"));
        }
        (host, port)
    };
    match port.parse::<u16>() {
        Ok(p) if p >= 1 => Ok(()),
        _ => Err(format!("port `{port}` of backend `{host}` must be between 1 and 65535")),
    }
}

/// RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens.
fn is_dns_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// A name SRV records may sit under: a DNS name whose labels may also start with `_`
/// (`_ws._tcp.chat.example.com`).
pub fn is_srv_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    let plain: Vec<String> = name
        .split('.')
        .map(|label| label.strip_prefix('_').unwrap_or(label).to_string())
        .collect();
    !name.is_empty() && name.len() <= 253 && is_dns_name(&plain.join("."))
}

/// Reports a bind address used twice (port 0 excepted), at its later use in the file.
pub fn check_binds(ctx: &mut Ctx, binds: &mut [(SocketAddr, &Node)]) {
    binds.sort_by_key(|(_, n)| (n.line, n.col));
    for (i, (addr, node)) in binds.iter().enumerate() {
        if addr.port() == 0 {
            continue;
        }
        if let Some((_, first)) = binds[..i].iter().find(|(a, _)| a == addr) {
            ctx.error(node, format!("address {addr} is already bound on line {}", first.line));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("algoritm", "algorithm"), 1);
        assert_eq!(edit_distance("round-robin", "round_robin"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn addresses() {
        for ok in [
            "127.0.0.1:9001",
            "[::1]:9001",
            "backend-1.internal:443",
            "localhost:1",
            "a.b.:65535",
        ] {
            assert_eq!(check_address(ok), Ok(()), "{ok}");
        }
        let cases = [
            ("127.0.0.1", "needs a port"),
            ("ws://a:1", "without a scheme"),
            ("::1:9001", "in brackets"),
            ("[::g]:1", "not an IPv6"),
            ("300.1.1.1:80", "not an IPv4"),
            ("bad_host:80", "not a valid host name"),
            ("-a.com:80", "not a valid host name"),
            ("a:0", "between 1 and 65535"),
            ("a:70000", "between 1 and 65535"),
            ("a:", "between 1 and 65535"),
        ];
        for (bad, msg) in cases {
            let e = check_address(bad).unwrap_err();
            assert!(e.contains(msg), "{bad}: {e}");
        }
    }

    #[test]
    fn hints() {
        let keys = ["algorithm", "backends", "hash"];
        assert_eq!(did_you_mean("algoritm", keys), Some("did you mean `algorithm`?".into()));
        assert_eq!(did_you_mean("BACKENDS", keys), Some("did you mean `backends`?".into()));
        assert_eq!(did_you_mean("zzzzzzz", keys), None);
    }
}
