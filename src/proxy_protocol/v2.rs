//! Version 2: a 12-byte signature, version and command, family and transport, the length of
//! the rest, the addresses, then TLVs (skipped); at most [`V2_MAX`] bytes here
//! (specification §2.2). Also the header the balancer writes to a backend.

use std::net::{IpAddr, SocketAddr};

use super::{invalid, Addresses, Header, Invalid, ParseError, Version, V2_MAX, V2_SIGNATURE};

/// Parses a v2 header at the start of `buf` (which starts with `\r`).
pub(super) fn parse(buf: &[u8]) -> Result<Header, ParseError> {
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
