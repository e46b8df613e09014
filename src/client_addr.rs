//! The real client address: the one value that hashing (`hash.key: client_ip`), per-client
//! limits, the `X-Forwarded-For`/`Forwarded` headers toward the backend, a backend's PROXY
//! header and the access log all use.
//!
//! A connection's [`Peer`] is fixed when it is accepted: the TCP peer, or the source a PROXY
//! protocol header named. The [`ClientAddr`] of a request is that peer, unless the peer is in
//! `limits.trusted_proxies`: then it is the right-most address of `X-Forwarded-For` that is
//! not a trusted proxy itself (walking from the right, skipping trusted entries; an entry
//! that is not an address stops the walk, since nothing left of it can be believed).

use std::net::{IpAddr, SocketAddr};

use crate::config::{any_contains, Cidr};

/// Who is at the other end of a client connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// The connection's source: the TCP peer, or what a PROXY header named (an IPv4-mapped
    /// IPv6 address is written as IPv4).
    pub addr: SocketAddr,
    /// What the client connected to: the listener socket's address, or the PROXY header's
    /// destination.
    pub local: SocketAddr,
    /// The TCP peer itself (a load balancer in front, when a PROXY header named another).
    pub socket: SocketAddr,
}

impl Peer {
    /// A peer as the socket says.
    pub fn socket(socket: SocketAddr, local: SocketAddr) -> Peer {
        let socket = canonical(socket);
        Peer {
            addr: socket,
            local,
            socket,
        }
    }

    /// A peer whose PROXY header named `source` → `destination`.
    pub fn proxied(socket: SocketAddr, source: SocketAddr, destination: SocketAddr) -> Peer {
        Peer {
            addr: canonical(source),
            local: canonical(destination),
            socket: canonical(socket),
        }
    }
}

/// The client of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAddr {
    /// The client; the port is 0 when `X-Forwarded-For` named it (the header carries none).
    pub addr: SocketAddr,
    /// Named by a trusted proxy's `X-Forwarded-For`, not by the connection: on a keep-alive
    /// connection from a proxy each request may come from another client.
    pub from_header: bool,
    /// `X-Forwarded-For` for the backend: the entries the request brought up to the client's
    /// own, then the client (the trusted hops that carried it here are the balancer's side
    /// and are dropped), so the right-most entry is always the client.
    pub forwarded_for: String,
}

impl ClientAddr {
    /// The client's IP address.
    pub fn ip(&self) -> IpAddr {
        self.addr.ip()
    }
}

/// The client of a request arriving from `peer` with these headers.
pub fn resolve(peer: &Peer, headers: &[httparse::Header<'_>], trusted: &[Cidr]) -> ClientAddr {
    let entries: Vec<&str> = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-for"))
        .flat_map(|h| std::str::from_utf8(h.value).unwrap_or("?").split(','))
        .map(str::trim)
        .collect();
    let mut client: Option<(usize, IpAddr, u16)> = None;
    if any_contains(trusted, peer.addr.ip()) {
        for (i, entry) in entries.iter().enumerate().rev() {
            let Some((ip, port)) = entry_addr(entry) else { break };
            client = Some((i, ip, port));
            if !any_contains(trusted, ip) {
                break;
            }
        }
    }
    match client {
        Some((i, ip, port)) => ClientAddr {
            addr: SocketAddr::new(ip, port),
            from_header: true,
            forwarded_for: entries[..=i].join(", "),
        },
        None if entries.is_empty() => direct(peer),
        None => ClientAddr {
            addr: peer.addr,
            from_header: false,
            forwarded_for: format!("{}, {}", entries.join(", "), peer.addr.ip()),
        },
    }
}

/// The client of a request that names none (no `X-Forwarded-For`): the connection's peer,
/// whoever it is. A connection's requests share it ([`resolve`] gives the same).
pub fn direct(peer: &Peer) -> ClientAddr {
    let mut forwarded_for = String::with_capacity(15);
    push_ip(&mut forwarded_for, peer.addr.ip());
    ClientAddr {
        addr: peer.addr,
        from_header: false,
        forwarded_for,
    }
}

/// Appends `ip` as text, as its `Display` writes it. An IPv4 address (every request's
/// forwarding fields carry one) is written digit by digit: through `core::fmt` it cost
/// about a tenth of the user-space instructions of a plain request (callgrind).
pub fn push_ip(out: &mut String, ip: IpAddr) {
    let IpAddr::V4(v4) = ip else {
        use std::fmt::Write as _;
        let _ = write!(out, "{ip}");
        return;
    };
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        if octet >= 100 {
            out.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            out.push(char::from(b'0' + octet / 10 % 10));
        }
        out.push(char::from(b'0' + octet % 10));
    }
}

/// An `X-Forwarded-For` entry: `192.0.2.1`, `2001:db8::1`, with a port (`192.0.2.1:5`,
/// `[2001:db8::1]:5`) or bracketed without one; anything else (`unknown`, obfuscated
/// names, garbage) is not an address.
fn entry_addr(entry: &str) -> Option<(IpAddr, u16)> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some((ip.to_canonical(), 0));
    }
    if let Ok(sa) = entry.parse::<SocketAddr>() {
        return Some((sa.ip().to_canonical(), sa.port()));
    }
    let inner = entry.strip_prefix('[')?.strip_suffix(']')?;
    inner
        .parse::<std::net::Ipv6Addr>()
        .ok()
        .map(|ip| (IpAddr::V6(ip).to_canonical(), 0))
}

/// `a` with an IPv4-mapped IPv6 address written as IPv4.
pub fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(s: &str) -> Peer {
        Peer::socket(s.parse().unwrap(), "127.0.0.1:80".parse().unwrap())
    }

    fn nets(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|n| Cidr::parse(n).unwrap()).collect()
    }

    fn client(p: &Peer, xff: &[&str], trusted: &[Cidr]) -> (String, bool, String) {
        let hs: Vec<httparse::Header<'_>> = xff
            .iter()
            .map(|v| httparse::Header {
                name: "X-Forwarded-For",
                value: v.as_bytes(),
            })
            .collect();
        let c = resolve(p, &hs, trusted);
        (c.addr.to_string(), c.from_header, c.forwarded_for)
    }

    #[test]
    fn ip_text_is_what_display_writes() {
        let ips = [
            "0.0.0.0",
            "127.0.0.1",
            "9.10.99.100",
            "255.255.255.255",
            "192.0.2.7",
            "10.200.0.19",
            "2001:db8::1",
            "::ffff:1.2.3.4",
        ];
        for text in ips {
            let ip: IpAddr = text.parse().unwrap();
            let mut out = String::from("x=");
            push_ip(&mut out, ip);
            assert_eq!(out, format!("x={ip}"));
        }
        for n in 0..=255u8 {
            let ip = IpAddr::from([n, 255 - n, n / 3, n.wrapping_mul(7)]);
            let mut out = String::new();
            push_ip(&mut out, ip);
            assert_eq!(out, ip.to_string());
        }
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let t = nets(&["10.0.0.0/8"]);
        let p = peer("192.0.2.7:5555");
        let r = |s: &str, h: bool, f: &str| (s.to_string(), h, f.to_string());
        assert_eq!(client(&p, &[], &t), r("192.0.2.7:5555", false, "192.0.2.7"));
        assert_eq!(
            client(&p, &["203.0.113.9"], &t),
            r("192.0.2.7:5555", false, "203.0.113.9, 192.0.2.7")
        );
        // Two header lines are one list, in order (RFC 9110 §5.3).
        assert_eq!(
            client(&p, &["1.1.1.1, 2.2.2.2", "3.3.3.3"], &[]),
            r("192.0.2.7:5555", false, "1.1.1.1, 2.2.2.2, 3.3.3.3, 192.0.2.7")
        );
        // An IPv4-mapped peer is its IPv4 address.
        assert_eq!(client(&peer("[::ffff:192.0.2.8]:1"), &[], &t).0, "192.0.2.8:1");
    }

    #[test]
    fn a_trusted_peer_names_the_right_most_untrusted_entry() {
        let t = nets(&["10.0.0.0/8", "2001:db8::/32"]);
        let p = peer("10.0.0.6:4000");
        let r = |s: &str, f: &str| (s.to_string(), true, f.to_string());
        assert_eq!(client(&p, &["203.0.113.9"], &t), r("203.0.113.9:0", "203.0.113.9"));
        // Trusted hops to the right are skipped and dropped from the forwarded list; what the
        // client itself claimed (left of it) is kept.
        assert_eq!(
            client(&p, &["6.6.6.6, 203.0.113.9, 10.0.0.5"], &t),
            r("203.0.113.9:0", "6.6.6.6, 203.0.113.9")
        );
        assert_eq!(
            client(&p, &["6.6.6.6", "203.0.113.9:443", "[2001:db8::1]:80"], &t),
            r("203.0.113.9:443", "6.6.6.6, 203.0.113.9:443")
        );
        assert_eq!(client(&p, &["[2001:db9::1]"], &t), r("[2001:db9::1]:0", "[2001:db9::1]"));
        // All trusted: the farthest one known.
        assert_eq!(client(&p, &["10.1.1.1, 10.2.2.2"], &t), r("10.1.1.1:0", "10.1.1.1"));
        // Garbage stops the walk: the last trusted hop before it is the client.
        assert_eq!(
            client(&p, &["6.6.6.6, unknown, 10.0.0.5"], &t),
            r("10.0.0.5:0", "6.6.6.6, unknown, 10.0.0.5")
        );
        // No header, or garbage right away: the peer.
        let peer_itself = ("10.0.0.6:4000".to_string(), false, "10.0.0.6".to_string());
        assert_eq!(client(&p, &[], &t), peer_itself);
        let garbage = client(&p, &["6.6.6.6, _hidden"], &t);
        assert_eq!(
            (garbage.0.as_str(), garbage.2.as_str()),
            ("10.0.0.6:4000", "6.6.6.6, _hidden, 10.0.0.6")
        );
    }
}
