//! Tests of the PROXY protocol parser, reader and writer.

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
