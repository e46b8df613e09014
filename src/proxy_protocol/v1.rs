//! Version 1: one line of text, `PROXY TCP4 src dst sport dport\r\n` (or `TCP6`, or
//! `UNKNOWN` and anything up to the line's end), at most [`V1_MAX`] bytes (specification §2.1).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{invalid, Addresses, Header, Invalid, ParseError, Version, MIN_LEN, V1_MAX};

const V1_PREFIX: &[u8] = b"PROXY ";

/// A v1 field that follows the protocol name, with the shortest and longest valid text.
#[derive(Clone, Copy)]
enum Field {
    Ip4,
    Ip6,
    Port,
}

impl Field {
    fn min(self) -> usize {
        match self {
            Field::Ip4 => 7, // 0.0.0.0
            Field::Ip6 => 2, // ::
            Field::Port => 1,
        }
    }
    fn max(self) -> usize {
        match self {
            Field::Ip4 => 15,
            Field::Ip6 => 45, // with an embedded IPv4 address
            Field::Port => 5,
        }
    }
    fn allows(self, c: u8) -> bool {
        match self {
            Field::Ip4 => c.is_ascii_digit() || c == b'.',
            Field::Ip6 => c.is_ascii_hexdigit() || c == b':' || c == b'.',
            Field::Port => c.is_ascii_digit(),
        }
    }
}

const TCP4_FIELDS: [Field; 4] = [Field::Ip4, Field::Ip4, Field::Port, Field::Port];
const TCP6_FIELDS: [Field; 4] = [Field::Ip6, Field::Ip6, Field::Port, Field::Port];

/// Parses a v1 header at the start of `buf` (which starts with `P`).
pub(super) fn parse(buf: &[u8]) -> Result<Header, ParseError> {
    let window = &buf[..buf.len().min(V1_MAX)];
    if let Some(lf) = window.iter().position(|&c| c == b'\n') {
        // The line ends at the first `\n`, which must follow a `\r`.
        let line = lf.checked_sub(1).filter(|&cr| buf[cr] == b'\r').map(|cr| &buf[..cr]);
        return match line.and_then(v1_line) {
            Some(addresses) => Ok(Header {
                len: lf + 1,
                version: Version::V1,
                addresses,
            }),
            None => invalid(Invalid::Malformed),
        };
    }
    if buf.len() >= V1_MAX {
        return invalid(Invalid::TooLong);
    }
    let need = v1_needs(buf)?;
    if buf.len() + need > V1_MAX {
        return invalid(Invalid::TooLong);
    }
    Err(ParseError::Incomplete(need))
}

/// A whole v1 line (without its `\r\n`): the addresses, `Some(None)` for `UNKNOWN`, `None`
/// when malformed.
fn v1_line(line: &[u8]) -> Option<Option<Addresses>> {
    let rest = line.strip_prefix(V1_PREFIX)?;
    if rest == b"UNKNOWN" || rest.starts_with(b"UNKNOWN ") {
        // §2.1: what follows UNKNOWN is ignored (but it is still one line of text).
        return rest.iter().all(|&c| c != b'\r' && c != b'\n').then_some(None);
    }
    let mut parts = rest.split(|&c| c == b' ');
    let proto = parts.next()?;
    let (src, dst, sport, dport) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    fn text(b: &[u8]) -> Option<&str> {
        std::str::from_utf8(b).ok()
    }
    let (src, dst): (IpAddr, IpAddr) = match proto {
        b"TCP4" => (
            text(src)?.parse::<Ipv4Addr>().ok()?.into(),
            text(dst)?.parse::<Ipv4Addr>().ok()?.into(),
        ),
        b"TCP6" => (
            text(src)?.parse::<Ipv6Addr>().ok()?.into(),
            text(dst)?.parse::<Ipv6Addr>().ok()?.into(),
        ),
        _ => return None,
    };
    Some(Some(Addresses {
        source: SocketAddr::new(src, port(sport)?),
        destination: SocketAddr::new(dst, port(dport)?),
    }))
}

/// A decimal port, 1 to 5 digits.
fn port(b: &[u8]) -> Option<u16> {
    if b.is_empty() || b.len() > 5 {
        return None;
    }
    let mut n: u32 = 0;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u32::from(c - b'0');
    }
    u16::try_from(n).ok()
}

/// For a v1 line without its `\r\n` yet: the fewest bytes any valid completion still has,
/// or why no completion can be valid.
fn v1_needs(buf: &[u8]) -> Result<usize, ParseError> {
    if buf.len() < V1_PREFIX.len() {
        if !V1_PREFIX.starts_with(buf) {
            return invalid(Invalid::Missing);
        }
        // The shortest header is `PROXY UNKNOWN\r\n`.
        return Ok(MIN_LEN - buf.len());
    }
    if !buf.starts_with(V1_PREFIX) {
        return invalid(Invalid::Missing);
    }
    let rest = &buf[V1_PREFIX.len()..];
    if rest.last() == Some(&b'\r') {
        // Only `\n` can follow: the line is whole or it is invalid.
        return Ok(1);
    }
    if rest.iter().any(|&c| c == b'\r' || c == b'\n') {
        return invalid(Invalid::Malformed);
    }
    let mut tokens = rest.split(|&c| c == b' ');
    let proto = tokens.next().unwrap_or_default();
    let Some(first_field) = tokens.next() else {
        // Still in the protocol name: the cheapest protocol it can still become.
        let cost = |name: &[u8], fields: &[Field]| {
            name.starts_with(proto)
                .then(|| name.len() - proto.len() + fields.iter().map(|f| 1 + f.min()).sum::<usize>() + 2)
        };
        return [cost(b"UNKNOWN", &[]), cost(b"TCP4", &TCP4_FIELDS), cost(b"TCP6", &TCP6_FIELDS)]
            .into_iter()
            .flatten()
            .min()
            .ok_or(ParseError::Invalid(Invalid::Malformed));
    };
    let fields: &[Field] = match proto {
        // Anything may follow `UNKNOWN ` up to the line's end.
        b"UNKNOWN" => return Ok(2),
        b"TCP4" => &TCP4_FIELDS,
        b"TCP6" => &TCP6_FIELDS,
        _ => return invalid(Invalid::Malformed),
    };
    // Every field before the last one is whole; the last one may be partial.
    let mut last = (0, first_field);
    for (i, text) in std::iter::once(first_field).chain(tokens).enumerate() {
        let Some(field) = fields.get(i) else {
            return invalid(Invalid::Malformed);
        };
        // The field before this one had to be whole.
        if i > 0 && last.1.len() < fields[i - 1].min() {
            return invalid(Invalid::Malformed);
        }
        if text.len() > field.max() || !text.iter().all(|&c| field.allows(c)) {
            return invalid(Invalid::Malformed);
        }
        last = (i, text);
    }
    let (i, partial) = last;
    let this = fields[i].min().saturating_sub(partial.len());
    let later: usize = fields[i + 1..].iter().map(|f| 1 + f.min()).sum();
    Ok(this + later + 2)
}
