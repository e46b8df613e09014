//! The PROXY protocol (haproxy.org, `proxy-protocol.txt`): the header a layer-4 load balancer
//! in front writes before a connection's first byte to say whom the connection is for, and the
//! one the balancer writes to a backend for the same reason.
//!
//! [`parse`] is a pure function over the bytes read so far. When they are not a whole header
//! yet it says how many more bytes are needed *at least*, never more than a valid header
//! still has: [`read`] reads exactly that many, so it never consumes a byte past the header,
//! and whatever follows (a TLS ClientHello, an HTTP request) stays in the socket for the
//! next reader. No buffer, no peeking.
//!
//! Bounds: a v1 line is at most [`V1_MAX`] bytes (the specification's limit); a v2 header
//! at most [`V2_MAX`] (16 bytes, the addresses, TLVs; real senders — HAProxy, AWS NLB,
//! Google and Azure load balancers — stay far below).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

/// Longest v1 header, `\r\n` included (specification §2.1).
pub const V1_MAX: usize = 107;
/// Longest v2 header accepted: the 16-byte preamble and up to 2,032 bytes of addresses and
/// TLVs (the specification allows 65,535; HAProxy's own SSL and unique-id TLVs take a few
/// hundred at most).
pub const V2_MAX: usize = 2048;
/// Shortest possible header (`PROXY UNKNOWN\r\n`): what is read first.
const MIN_LEN: usize = 15;

/// The v2 signature (specification §2.2).
pub const V2_SIGNATURE: [u8; 12] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A];
const V1_PREFIX: &[u8] = b"PROXY ";

/// Which version a header was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// Text.
    V1,
    /// Binary.
    V2,
}

/// A whole header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Bytes it takes at the start of the connection.
    pub len: usize,
    /// v1 or v2.
    pub version: Version,
    /// The connection's real endpoints; `None` for a v2 `LOCAL` command (the sender's own
    /// connection, e.g. a health check), `UNKNOWN` or a family the balancer does not use
    /// (`AF_UNIX`, `AF_UNSPEC`): the socket's own addresses stand.
    pub addresses: Option<Addresses>,
}

/// Source and destination of the proxied connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addresses {
    /// The client.
    pub source: SocketAddr,
    /// What the client connected to.
    pub destination: SocketAddr,
}

/// Why [`parse`] gives no header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Not a whole header yet: at least this many more bytes are needed (≥ 1).
    Incomplete(usize),
    /// Not a valid header, whatever follows.
    Invalid(Invalid),
}

/// What is wrong with a header (the `reason` of `switchyard_proxy_protocol_errors_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// The connection does not start with a PROXY header at all.
    #[error("no PROXY protocol header")]
    Missing,
    /// It starts like one but breaks a rule of the specification.
    #[error("malformed PROXY protocol header")]
    Malformed,
    /// Longer than [`V1_MAX`] / [`V2_MAX`].
    #[error("PROXY protocol header too long")]
    TooLong,
}

impl Invalid {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Invalid::Missing => "missing",
            Invalid::Malformed => "malformed",
            Invalid::TooLong => "too_long",
        }
    }
}

/// Parses the header at the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<Header, ParseError> {
    match buf.first() {
        None => Err(ParseError::Incomplete(MIN_LEN)),
        Some(b'P') => parse_v1(buf),
        Some(0x0D) => parse_v2(buf),
        Some(_) => Err(ParseError::Invalid(Invalid::Missing)),
    }
}

fn invalid<T>(why: Invalid) -> Result<T, ParseError> {
    Err(ParseError::Invalid(why))
}

// ---- v1: "PROXY TCP4 src dst sport dport\r\n" ----

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

fn parse_v1(buf: &[u8]) -> Result<Header, ParseError> {
    let window = &buf[..buf.len().min(V1_MAX)];
    if let Some(end) = window.windows(2).position(|w| w == b"\r\n") {
        return match v1_line(&buf[..end]) {
            Some(addresses) => Ok(Header {
                len: end + 2,
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
    let text = |b: &[u8]| std::str::from_utf8(b).ok().map(str::to_owned);
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
    if b.is_empty() || b.len() > 5 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(b).ok()?.parse().ok()
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
    let seen: Vec<&[u8]> = std::iter::once(first_field).chain(tokens).collect();
    if seen.len() > fields.len() {
        return invalid(Invalid::Malformed);
    }
    let last = seen.len() - 1;
    for (i, (text, field)) in seen.iter().zip(fields).enumerate() {
        let whole_ok = field.min() <= text.len();
        if text.len() > field.max() || !text.iter().all(|&c| field.allows(c)) || (i < last && !whole_ok) {
            return invalid(Invalid::Malformed);
        }
    }
    let partial = seen[last].len();
    let this = fields[last].min().saturating_sub(partial);
    let later: usize = fields[last + 1..].iter().map(|f| 1 + f.min()).sum();
    Ok(this + later + 2)
}

// ---- v2: signature, version/command, family/transport, length, addresses, TLVs ----

fn parse_v2(buf: &[u8]) -> Result<Header, ParseError> {
    let sig = buf.len().min(V2_SIGNATURE.len());
    if buf[..sig] != V2_SIGNATURE[..sig] {
        return invalid(Invalid::Missing);
    }
    if let Some(&ver_cmd) = buf.get(12) {
        // Version 2; command LOCAL (0) or PROXY (1).
        if ver_cmd >> 4 != 2 || ver_cmd & 0x0F > 1 {
            return invalid(Invalid::Malformed);
        }
    }
    if let Some(&fam) = buf.get(13) {
        // Family UNSPEC, INET, INET6 or UNIX; transport UNSPEC, STREAM or DGRAM.
        if fam >> 4 > 3 || fam & 0x0F > 2 {
            return invalid(Invalid::Malformed);
        }
    }
    if buf.len() < 16 {
        // With the length's high byte known, the header's size is known to within 255.
        let at_least = 16 + buf.get(14).map_or(0, |&hi| usize::from(hi) << 8);
        if at_least > V2_MAX {
            return invalid(Invalid::TooLong);
        }
        return Err(ParseError::Incomplete(at_least - buf.len()));
    }
    let len = 16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if len > V2_MAX {
        return invalid(Invalid::TooLong);
    }
    if buf.len() < len {
        return Err(ParseError::Incomplete(len - buf.len()));
    }
    let body = &buf[16..len];
    let local = buf[12] & 0x0F == 0;
    let addresses = match (local, buf[13] >> 4) {
        // §2.2: LOCAL keeps the connection's own endpoints, whatever the family says.
        (true, _) => None,
        (false, 1) => {
            let b: &[u8; 12] = body
                .get(..12)
                .and_then(|b| b.try_into().ok())
                .ok_or(ParseError::Invalid(Invalid::Malformed))?;
            let ip = |o: usize| IpAddr::from([b[o], b[o + 1], b[o + 2], b[o + 3]]);
            Some(Addresses {
                source: SocketAddr::new(ip(0), u16::from_be_bytes([b[8], b[9]])),
                destination: SocketAddr::new(ip(4), u16::from_be_bytes([b[10], b[11]])),
            })
        }
        (false, 2) => {
            let b: &[u8; 36] = body
                .get(..36)
                .and_then(|b| b.try_into().ok())
                .ok_or(ParseError::Invalid(Invalid::Malformed))?;
            let ip = |o: usize| {
                let mut a = [0u8; 16];
                a.copy_from_slice(&b[o..o + 16]);
                IpAddr::from(a)
            };
            Some(Addresses {
                source: SocketAddr::new(ip(0), u16::from_be_bytes([b[32], b[33]])),
                destination: SocketAddr::new(ip(16), u16::from_be_bytes([b[34], b[35]])),
            })
        }
        // UNSPEC or UNIX: the receiver keeps the socket's endpoints (§2.2).
        (false, _) => None,
    };
    Ok(Header {
        len,
        version: Version::V2,
        addresses,
    })
}

/// A v2 header the balancer writes to a backend (at most 52 bytes: no TLVs).
#[derive(Debug, Clone, Copy)]
pub struct V2Header {
    bytes: [u8; 52],
    len: usize,
}

impl V2Header {
    /// `PROXY` with the client's endpoints. Mixed families are both written as IPv6 (an
    /// IPv4 address as `::ffff:a.b.c.d`), as §2.2 wants one family for both.
    pub fn proxy(source: SocketAddr, destination: SocketAddr) -> V2Header {
        let mut h = V2Header::preamble(0x21);
        let (s, d) = (source.ip().to_canonical(), destination.ip().to_canonical());
        let addrs = match (s, d) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                h.bytes[13] = 0x11; // INET, STREAM
                h.bytes[16..20].copy_from_slice(&s.octets());
                h.bytes[20..24].copy_from_slice(&d.octets());
                8
            }
            _ => {
                let v6 = |ip: IpAddr| match ip {
                    IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                    IpAddr::V6(v6) => v6,
                };
                h.bytes[13] = 0x21; // INET6, STREAM
                h.bytes[16..32].copy_from_slice(&v6(s).octets());
                h.bytes[32..48].copy_from_slice(&v6(d).octets());
                32
            }
        };
        h.bytes[16 + addrs..18 + addrs].copy_from_slice(&source.port().to_be_bytes());
        h.bytes[18 + addrs..20 + addrs].copy_from_slice(&destination.port().to_be_bytes());
        let body = (addrs + 4) as u16;
        h.bytes[14..16].copy_from_slice(&body.to_be_bytes());
        h.len = 16 + addrs + 4;
        h
    }

    /// `LOCAL`: the connection is the balancer's own (a health check), no client behind it.
    pub fn local() -> V2Header {
        V2Header::preamble(0x20)
    }

    fn preamble(ver_cmd: u8) -> V2Header {
        let mut bytes = [0u8; 52];
        bytes[..12].copy_from_slice(&V2_SIGNATURE);
        bytes[12] = ver_cmd;
        V2Header { bytes, len: 16 }
    }

    /// The bytes to write.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Why no header could be read from a connection.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The bytes are not a valid header.
    #[error("{0}")]
    Invalid(#[from] Invalid),
    /// The peer closed (or the socket failed) before a whole header.
    #[error("connection closed before a whole PROXY header: {0}")]
    Closed(#[from] std::io::Error),
}

/// Reads one header from `r`, consuming exactly its bytes (see the module's notes). The
/// caller bounds the time it may take.
pub async fn read<R: AsyncRead + Unpin>(r: &mut R) -> Result<Header, ReadError> {
    let mut buf = [0u8; V2_MAX];
    let mut have = 0;
    loop {
        match parse(&buf[..have]) {
            Ok(h) => return Ok(h),
            Err(ParseError::Invalid(why)) => return Err(why.into()),
            Err(ParseError::Incomplete(n)) => {
                // `parse` never asks past the longest valid header.
                let Some(dst) = buf.get_mut(have..have + n) else {
                    return Err(Invalid::TooLong.into());
                };
                r.read_exact(dst).await?;
                have += n;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_headers() {
        let h = parse(b"PROXY TCP4 198.51.100.7 203.0.113.1 54321 443\r\nGET / HTTP/1.1\r\n").unwrap();
        assert_eq!((h.len, h.version), (47, Version::V1));
        assert_eq!(
            h.addresses,
            Some(Addresses {
                source: sa("198.51.100.7:54321"),
                destination: sa("203.0.113.1:443")
            })
        );
        let h = parse(b"PROXY TCP6 2001:db8::7 ::1 1 65535\r\n").unwrap();
        assert_eq!(h.addresses.unwrap().source, sa("[2001:db8::7]:1"));
        for unknown in [&b"PROXY UNKNOWN\r\n"[..], b"PROXY UNKNOWN whatever 1 2\r\n"] {
            let h = parse(unknown).unwrap();
            assert_eq!((h.len, h.addresses), (unknown.len(), None));
        }
        for bad in [
            &b"PROXY TCP4 198.51.100.7 203.0.113.1 54321\r\n"[..],
            b"PROXY TCP4 198.51.100.7  203.0.113.1 1 2\r\n",
            b"PROXY TCP4 2001:db8::1 203.0.113.1 1 2\r\n",
            b"PROXY TCP6 198.51.100.7 ::1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 1\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
        ] {
            assert_eq!(
                parse(bad),
                Err(ParseError::Invalid(Invalid::Malformed)),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = format!("PROXY UNKNOWN {}\r\n", "x".repeat(100));
        assert_eq!(parse(long.as_bytes()), Err(ParseError::Invalid(Invalid::TooLong)));
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(ParseError::Invalid(Invalid::Missing)));
        assert_eq!(parse(b"PRX"), Err(ParseError::Invalid(Invalid::Missing)));
    }

    #[test]
    fn v1_needs_the_fewest_bytes_a_valid_header_still_has() {
        assert_eq!(parse(b""), Err(ParseError::Incomplete(15)));
        assert_eq!(parse(b"PROXY "), Err(ParseError::Incomplete(9)), "UNKNOWN\\r\\n");
        // "TCP" can only become TCP4 or TCP6; TCP6 with "::" addresses is the shortest.
        assert_eq!(parse(b"PROXY TCP"), Err(ParseError::Incomplete(1 + 3 + 3 + 2 + 2 + 2)));
        assert_eq!(parse(b"PROXY TCP4 19"), Err(ParseError::Incomplete(5 + 8 + 2 + 2 + 2)));
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r"), Err(ParseError::Incomplete(1)));
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 22"), Err(ParseError::Incomplete(2)));
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4x"), Err(ParseError::Invalid(Invalid::Malformed)));
        assert_eq!(parse(b"PROXY TCP5"), Err(ParseError::Invalid(Invalid::Malformed)));
    }

    #[test]
    fn v2_round_trips_and_reads_local_and_tlvs() {
        for (s, d) in [
            ("198.51.100.7:54321", "203.0.113.1:443"),
            ("[2001:db8::7]:1", "[2001:db8::1]:8443"),
            ("198.51.100.7:5", "[2001:db8::1]:6"),
        ] {
            let h = V2Header::proxy(sa(s), sa(d));
            let p = parse(h.as_bytes()).unwrap();
            assert_eq!((p.len, p.version), (h.as_bytes().len(), Version::V2));
            let a = p.addresses.unwrap();
            let canon = |x: SocketAddr| SocketAddr::new(x.ip().to_canonical(), x.port());
            assert_eq!((canon(a.source), canon(a.destination)), (sa(s), sa(d)));
        }
        assert_eq!(V2Header::proxy(sa("1.2.3.4:5"), sa("6.7.8.9:10")).as_bytes().len(), 28);
        assert_eq!(V2Header::proxy(sa("[::2]:5"), sa("[::3]:10")).as_bytes().len(), 52);
        let local = parse(V2Header::local().as_bytes()).unwrap();
        assert_eq!((local.len, local.addresses), (16, None));
        // TLVs after the addresses are skipped; the length covers them.
        let mut with_tlv = V2Header::proxy(sa("1.2.3.4:5"), sa("6.7.8.9:10")).as_bytes().to_vec();
        with_tlv.extend_from_slice(&[0x05, 0x00, 0x03, b'a', b'b', b'c']);
        with_tlv[15] += 6;
        with_tlv.extend_from_slice(b"GET");
        let p = parse(&with_tlv).unwrap();
        assert_eq!((p.len, p.addresses.unwrap().source), (34, sa("1.2.3.4:5")));
    }

    #[test]
    fn v2_rules() {
        let good = V2Header::proxy(sa("1.2.3.4:5"), sa("6.7.8.9:10")).as_bytes().to_vec();
        let with = |i: usize, v: u8| {
            let mut b = good.clone();
            b[i] = v;
            parse(&b)
        };
        assert_eq!(with(12, 0x11), Err(ParseError::Invalid(Invalid::Malformed)), "version 1");
        assert_eq!(with(12, 0x22), Err(ParseError::Invalid(Invalid::Malformed)), "command 2");
        assert_eq!(with(13, 0x41), Err(ParseError::Invalid(Invalid::Malformed)), "family 4");
        assert_eq!(with(15, 4), Err(ParseError::Invalid(Invalid::Malformed)), "INET needs 12 bytes");
        assert_eq!(with(13, 0x01).unwrap().addresses, None, "UNSPEC keeps the socket's");
        assert_eq!(with(14, 0x08), Err(ParseError::Invalid(Invalid::TooLong)));
        assert_eq!(parse(&good[..15]), Err(ParseError::Incomplete(1)));
        assert_eq!(parse(&good[..16]), Err(ParseError::Incomplete(12)));
        assert_eq!(with(3, 0), Err(ParseError::Invalid(Invalid::Missing)));
    }

    #[tokio::test]
    async fn read_takes_exactly_the_header() {
        let mut input: &[u8] = b"PROXY TCP4 198.51.100.7 203.0.113.1 54321 443\r\nGET / HTTP/1.1\r\n\r\n";
        let h = read(&mut input).await.unwrap();
        assert_eq!(h.addresses.unwrap().source, sa("198.51.100.7:54321"));
        assert_eq!(input, b"GET / HTTP/1.1\r\n\r\n");
        let mut v2 = V2Header::proxy(sa("[2001:db8::9]:7"), sa("[::1]:80")).as_bytes().to_vec();
        v2.extend_from_slice(b"\x16\x03\x01");
        let mut input = &v2[..];
        read(&mut input).await.unwrap();
        assert_eq!(input, b"\x16\x03\x01");
        let mut short: &[u8] = b"PROXY TCP4 1.2.3.4";
        assert!(matches!(read(&mut short).await, Err(ReadError::Closed(_))));
        let mut plain: &[u8] = b"GET / HTTP/1.1\r\n\r\n";
        assert!(matches!(read(&mut plain).await, Err(ReadError::Invalid(Invalid::Missing))));
    }
}
