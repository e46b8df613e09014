//! Header rewriting for forwarded plain HTTP: hop-by-hop fields removed in both directions
//! (RFC 9110 §7.6.1), `X-Forwarded-For`, `X-Forwarded-Proto` and `Forwarded` (RFC 7239)
//! added to requests as for upgrades, and the framing checks that refuse request smuggling
//! (RFC 9112 §6.1, §6.3).

use std::net::IpAddr;
use std::sync::OnceLock;

use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, FORWARDED};

use crate::client_addr::ClientAddr;

/// Hop-by-hop fields, never forwarded (plus any the `Connection` header names).
const HOP_BY_HOP: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    // Answered by the proxy's own HTTP server (hyper sends `100 Continue`).
    "expect",
];

/// Removes hop-by-hop fields and the fields named by `Connection`. Allocates only for a
/// `Connection` token that is not itself a hop-by-hop field (rare: `Connection: keep-alive`
/// and `close` name nothing more).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry one hop-by-hop field at most (`Connection: keep-alive`): one pass
    // over the names finds which, and only those are removed (a lookup each).
    let mut present = 0u16;
    for k in headers.keys() {
        if let Some(i) = hop_by_hop(k.as_str()) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    if present & 1 != 0 {
        let mut named: Vec<HeaderName> = Vec::new();
        for token in headers.get_all(CONNECTION).iter().flat_map(|v| v.as_bytes().split(|&b| b == b',')) {
            let token = token.trim_ascii();
            // `close`, `keep-alive`, `upgrade`: nothing more to remove (or removed below).
            if token.is_empty()
                || token.eq_ignore_ascii_case(b"close")
                || HOP_BY_HOP.iter().any(|h| h.as_bytes().eq_ignore_ascii_case(token))
            {
                continue;
            }
            if let Ok(n) = HeaderName::from_bytes(token) {
                named.push(n);
            }
        }
        for n in named {
            headers.remove(n);
        }
    }
    for (i, n) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            // `remove` looks a `&str` up without making a name of it.
            headers.remove(*n);
        }
    }
}

/// The index of a (lowercase) field name in [`HOP_BY_HOP`].
fn hop_by_hop(name: &str) -> Option<usize> {
    // Told apart by length first: most names are none of them.
    let i = match name.len() {
        10 => match name {
            "connection" => 0,
            "keep-alive" => 1,
            _ => return None,
        },
        16 => 2,
        18 => 3,
        19 => 4,
        2 => 5,
        7 => match name {
            "trailer" => 6,
            "upgrade" => 8,
            _ => return None,
        },
        17 => 7,
        6 => 9,
        _ => return None,
    };
    (HOP_BY_HOP[i] == name).then_some(i)
}

/// `http` or `https`, for `X-Forwarded-Proto` and `Forwarded`.
pub fn scheme(tls: bool) -> &'static str {
    if tls {
        "https"
    } else {
        "http"
    }
}

/// This hop's `Forwarded` element (RFC 7239 §4): `for` (an IPv6 address quoted and
/// bracketed), `proto` and `host` (quotes dropped so it stays one quoted-string).
pub fn forwarded_element(ip: IpAddr, tls: bool, host: &str) -> String {
    let mut out = String::with_capacity(64 + host.len());
    push_forwarded_element(&mut out, ip, tls, host);
    out
}

/// Appends [`forwarded_element`] to `out`.
fn push_forwarded_element(out: &mut String, ip: IpAddr, tls: bool, host: &str) {
    match ip {
        IpAddr::V6(_) => {
            out.push_str("for=\"[");
            crate::client_addr::push_ip(out, ip);
            out.push_str("]\"");
        }
        IpAddr::V4(_) => {
            out.push_str("for=");
            crate::client_addr::push_ip(out, ip);
        }
    }
    out.push_str(";proto=");
    out.push_str(scheme(tls));
    out.push_str(";host=\"");
    match host.contains('"') {
        false => out.push_str(host),
        true => out.extend(host.chars().filter(|&c| c != '"')),
    }
    out.push('"');
}

/// `X-Forwarded-For`, `X-Forwarded-Proto`: names made once (a `&str` name is copied into
/// a new `HeaderName` on every insert).
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// The forwarding values of one client connection's own client, made on its first request
/// and shared by the next ones (a clone of a value is a reference count): on a keep-alive
/// connection every request that brings no forwarding fields of its own gets the same
/// `X-Forwarded-For`, and the same `Forwarded` while it names the same host.
#[derive(Debug, Default)]
pub struct Forwarding {
    forwarded_for: OnceLock<HeaderValue>,
    /// The host it was made for, and the `Forwarded` value.
    element: OnceLock<(Box<str>, HeaderValue)>,
}

/// A value made from text the balancer wrote: the buffer becomes the value (checked, not
/// copied).
fn value_of(text: String) -> Option<HeaderValue> {
    HeaderValue::from_maybe_shared(bytes::Bytes::from(text.into_bytes().into_boxed_slice())).ok()
}

/// Adds the client's address and scheme: `X-Forwarded-For` (the client last, see
/// [`ClientAddr::forwarded_for`]), `X-Forwarded-Proto` (replaced: a client must not choose
/// it) and `Forwarded` (this hop's element appended; several lines are one list).
/// `reuse`: the connection's [`Forwarding`], when `client` is the connection's own (the
/// request named no client of its own).
pub fn add_forwarded(headers: &mut HeaderMap, client: &ClientAddr, tls: bool, host: &str, reuse: Option<&Forwarding>) {
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(scheme(tls)));
    // A request that brings `Forwarded` gets its own list.
    if let Some(f) = reuse.filter(|_| !headers.contains_key(FORWARDED)) {
        if let Some(v) = f.forwarded_for.get().cloned().or_else(|| value_of(client.forwarded_for.clone())) {
            let _ = f.forwarded_for.set(v.clone());
            headers.insert(X_FORWARDED_FOR.clone(), v);
        }
        let element = match f.element.get() {
            Some((made_for, v)) if **made_for == *host => Some(v.clone()),
            _ => value_of(forwarded_element(client.ip(), tls, host)).inspect(|v| {
                let _ = f.element.set((host.into(), v.clone()));
            }),
        };
        if let Some(v) = element {
            headers.insert(FORWARDED, v);
        }
        return;
    }
    let mut fwd = String::with_capacity(64 + host.len());
    for v in headers.get_all(FORWARDED).iter().filter_map(|v| v.to_str().ok()) {
        fwd.push_str(v);
        fwd.push_str(", ");
    }
    push_forwarded_element(&mut fwd, client.ip(), tls, host);
    if let Ok(v) = HeaderValue::from_str(&client.forwarded_for) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    if let Some(v) = value_of(fwd) {
        headers.insert(FORWARDED, v);
    }
}

/// Why a request's framing is refused (each is a `400` and the connection closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Smuggling {
    /// Both `Content-Length` and `Transfer-Encoding`.
    LengthAndChunked,
    /// Two `Content-Length` values that differ (or one that is not a number).
    BadLength,
    /// A `Transfer-Encoding` whose last coding is not `chunked`.
    BadTransferEncoding,
}

impl Smuggling {
    /// The body of the `400`.
    pub fn reason(self) -> &'static str {
        match self {
            Smuggling::LengthAndChunked => "both Content-Length and Transfer-Encoding",
            Smuggling::BadLength => "invalid or conflicting Content-Length",
            Smuggling::BadTransferEncoding => "Transfer-Encoding must end with chunked, once",
        }
    }
}

/// Checks the framing headers of a request head the proxy parsed itself (obs-fold lines
/// are already refused by the parser).
pub fn check_framing(headers: &[httparse::Header<'_>]) -> Result<(), Smuggling> {
    let mut length: Option<&[u8]> = None;
    // The codings of every `Transfer-Encoding` line, in order: several lines are one list
    // (RFC 9110 §5.3).
    let mut codings = 0usize;
    let mut chunked = 0usize;
    let mut last_chunked = false;
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = h.value.trim_ascii();
            // A list of equal values is one value (RFC 9112 §6.3 p5); anything else is not.
            for part in v.split(|&b| b == b',') {
                let part = part.trim_ascii();
                if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
                    return Err(Smuggling::BadLength);
                }
                match length {
                    Some(prev) if prev != part => return Err(Smuggling::BadLength),
                    _ => length = Some(part),
                }
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            for c in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii).filter(|c| !c.is_empty()) {
                codings += 1;
                last_chunked = c.eq_ignore_ascii_case(b"chunked");
                chunked += usize::from(last_chunked);
            }
            codings += usize::from(h.value.trim_ascii().is_empty());
            last_chunked &= !h.value.trim_ascii().is_empty();
        }
    }
    if codings > 0 {
        if length.is_some() {
            return Err(Smuggling::LengthAndChunked);
        }
        // RFC 9112 §6.1: chunked last, and once (a second one would be decoded by one side
        // and not the other).
        if !last_chunked || chunked > 1 {
            return Err(Smuggling::BadTransferEncoding);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h<'a>(pairs: &'a [(&'a str, &'a str)]) -> Vec<httparse::Header<'a>> {
        pairs
            .iter()
            .map(|(n, v)| httparse::Header {
                name: n,
                value: v.as_bytes(),
            })
            .collect()
    }

    #[test]
    fn framing_checks() {
        assert_eq!(check_framing(&h(&[("Content-Length", "5")])), Ok(()));
        assert_eq!(check_framing(&h(&[("Content-Length", "5"), ("content-length", "5")])), Ok(()));
        assert_eq!(check_framing(&h(&[("Content-Length", "5, 5")])), Ok(()));
        assert_eq!(
            check_framing(&h(&[("Content-Length", "5"), ("Content-Length", "6")])),
            Err(Smuggling::BadLength)
        );
        assert_eq!(check_framing(&h(&[("Content-Length", "-1")])), Err(Smuggling::BadLength));
        assert_eq!(
            check_framing(&h(&[("Content-Length", "5"), ("Transfer-Encoding", "chunked")])),
            Err(Smuggling::LengthAndChunked)
        );
        assert_eq!(
            check_framing(&h(&[("Transfer-Encoding", "chunked, gzip")])),
            Err(Smuggling::BadTransferEncoding)
        );
        assert_eq!(check_framing(&h(&[("Transfer-Encoding", "gzip, chunked")])), Ok(()));
        for twice in [
            &[("Transfer-Encoding", "chunked, chunked")][..],
            &[("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "chunked")],
        ] {
            assert_eq!(check_framing(&h(twice)), Err(Smuggling::BadTransferEncoding), "{twice:?}");
        }
        // One list over two lines.
        assert_eq!(
            check_framing(&h(&[("Transfer-Encoding", "gzip"), ("Transfer-Encoding", "chunked")])),
            Ok(())
        );
        assert_eq!(
            check_framing(&h(&[("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "gzip")])),
            Err(Smuggling::BadTransferEncoding)
        );
        assert_eq!(check_framing(&h(&[("Transfer-Encoding", "")])), Err(Smuggling::BadTransferEncoding));
    }

    #[test]
    fn hop_by_hop_and_named_fields_are_removed() {
        let mut m = HeaderMap::new();
        m.insert("connection", HeaderValue::from_static("keep-alive, X-Secret"));
        m.insert("x-secret", HeaderValue::from_static("1"));
        m.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        m.insert("upgrade", HeaderValue::from_static("h2c"));
        m.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut m);
        assert_eq!(m.len(), 1);
        assert!(m.contains_key("x-kept"));
        // without a Connection field, each hop-by-hop one present still goes (all its values)
        let mut m = HeaderMap::new();
        m.append("te", HeaderValue::from_static("trailers"));
        m.append("x-kept", HeaderValue::from_static("1"));
        m.append("expect", HeaderValue::from_static("100-continue"));
        m.append("te", HeaderValue::from_static("gzip"));
        strip_hop_by_hop(&mut m);
        assert_eq!(m.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-kept"]);
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn forwarded_fields_append() {
        let mut m = HeaderMap::new();
        m.append("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        m.append("x-forwarded-for", HeaderValue::from_static("10.0.0.2"));
        m.insert("x-forwarded-proto", HeaderValue::from_static("spoofed"));
        m.append("forwarded", HeaderValue::from_static("for=a"));
        m.append("forwarded", HeaderValue::from_static("for=b"));
        let hs: Vec<httparse::Header<'_>> = m
            .iter()
            .map(|(n, v)| httparse::Header {
                name: n.as_str(),
                value: v.as_bytes(),
            })
            .collect();
        let peer = crate::client_addr::Peer::socket("192.0.2.7:5".parse().unwrap(), "127.0.0.1:80".parse().unwrap());
        let client = crate::client_addr::resolve(&peer, &hs, &[]);
        drop(hs);
        add_forwarded(&mut m, &client, false, "h", None);
        assert_eq!(m["x-forwarded-for"], "10.0.0.1, 10.0.0.2, 192.0.2.7");
        assert_eq!(m.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(m["x-forwarded-proto"], "http");
        assert_eq!(m["forwarded"], "for=a, for=b, for=192.0.2.7;proto=http;host=\"h\"");
    }

    #[test]
    fn a_connections_own_client_reuses_its_values_per_host() {
        let peer = crate::client_addr::Peer::socket("192.0.2.7:5".parse().unwrap(), "127.0.0.1:80".parse().unwrap());
        let client = crate::client_addr::direct(&peer);
        let f = Forwarding::default();
        let mut first = HeaderMap::new();
        first.insert("x-forwarded-proto", HeaderValue::from_static("spoofed"));
        add_forwarded(&mut first, &client, true, "a", Some(&f));
        assert_eq!(first["x-forwarded-for"], "192.0.2.7");
        assert_eq!(first["x-forwarded-proto"], "https");
        assert_eq!(first.get_all("x-forwarded-proto").iter().count(), 1);
        assert_eq!(first["forwarded"], "for=192.0.2.7;proto=https;host=\"a\"");
        // the same host: the same values (shared, not made again)
        let mut again = HeaderMap::new();
        add_forwarded(&mut again, &client, true, "a", Some(&f));
        assert_eq!(again["forwarded"].as_bytes().as_ptr(), first["forwarded"].as_bytes().as_ptr());
        assert_eq!(
            again["x-forwarded-for"].as_bytes().as_ptr(),
            first["x-forwarded-for"].as_bytes().as_ptr()
        );
        // another host: its own element
        let mut other = HeaderMap::new();
        add_forwarded(&mut other, &client, true, "b", Some(&f));
        assert_eq!(other["forwarded"], "for=192.0.2.7;proto=https;host=\"b\"");
        // a request that brings Forwarded: its list, then this hop
        let mut listed = HeaderMap::new();
        listed.insert("forwarded", HeaderValue::from_static("for=x"));
        add_forwarded(&mut listed, &client, true, "a", Some(&f));
        assert_eq!(listed["forwarded"], "for=x, for=192.0.2.7;proto=https;host=\"a\"");
        assert_eq!(listed["x-forwarded-for"], "192.0.2.7");
    }

    #[test]
    fn hop_by_hop_names_are_told_by_length_then_text() {
        for (i, n) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop(n), Some(i), "{n}");
        }
        for n in [
            "connectiox",
            "te2",
            "tx",
            "host",
            "content-length",
            "proxy-connectiox",
            "upgradf",
            "expecx",
            "",
        ] {
            assert_eq!(hop_by_hop(n), None, "{n}");
        }
    }

    #[test]
    fn connection_close_and_keep_alive_name_nothing_more() {
        let mut m = HeaderMap::new();
        m.insert("connection", HeaderValue::from_static("Close, , Keep-Alive,UPGRADE"));
        m.insert("close", HeaderValue::from_static("kept: not hop-by-hop"));
        m.insert("upgrade", HeaderValue::from_static("websocket"));
        strip_hop_by_hop(&mut m);
        assert_eq!(m.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["close"]);
    }

    #[test]
    fn forwarded_element_quotes_ipv6_and_drops_quotes_from_the_host() {
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(forwarded_element(v6, true, "a\"b"), "for=\"[2001:db8::1]\";proto=https;host=\"ab\"");
        let v4: IpAddr = "10.0.0.255".parse().unwrap();
        assert_eq!(
            forwarded_element(v4, false, "example.com:80"),
            "for=10.0.0.255;proto=http;host=\"example.com:80\""
        );
    }
}
