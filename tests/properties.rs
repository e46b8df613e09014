//! Property tests (proptest) for the frame codec, the scanner and the handshake parser:
//! never panic on any input, never forward past what was read, and scanning a stream in
//! arbitrary pieces, or cut at any one byte, or fed byte by byte, gives the same result as
//! scanning it whole, on the client's side (masked) and the backend's (unmasked) alike.

use proptest::prelude::*;
use switchyard::ws::frame::{apply_mask, parse_header, write_header, Opcode};
use switchyard::ws::stream::{Event, Scanner, Side};
use switchyard::ws::CloseCode;

fn frame(fin: bool, op: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut h = [0u8; 14];
    let n = write_header(&mut h, fin, Opcode::from_u8(op), mask, payload.len() as u64);
    let mut v = h[..n].to_vec();
    let mut p = payload.to_vec();
    if let Some(m) = mask {
        apply_mask(&mut p, m, 0);
    }
    v.extend(p);
    v
}

/// Scans `bytes` fed in pieces of the given sizes (then the rest at once), as the relay does
/// (keeping carried bytes).
fn scan_in_pieces(side: Side, bytes: &[u8], cuts: &[usize]) -> (usize, Option<Event>, u64) {
    let mut s = Scanner::new(side, 0, 1 << 20);
    let mut buf = vec![0u8; bytes.len() + 256];
    let (mut filled, mut fed, mut forwarded) = (0usize, 0usize, 0usize);
    let mut sizes = cuts.iter().copied().chain(std::iter::repeat(usize::MAX));
    while fed < bytes.len() {
        let n = sizes.next().unwrap().clamp(1, bytes.len() - fed);
        buf[filled..filled + n].copy_from_slice(&bytes[fed..fed + n]);
        filled += n;
        fed += n;
        let r = s.scan(&mut buf, 0, &mut filled, None, false);
        assert!(r.forward <= filled, "never forwards past what was read");
        forwarded += r.forward;
        if r.event.is_some() {
            return (forwarded, r.event, s.take_messages());
        }
        buf.copy_within(r.forward..filled, 0);
        filled -= r.forward;
    }
    (forwarded, None, s.take_messages())
}

/// A valid stream of `msgs` as `side` sends it (masked from a client, not from a backend),
/// with fragmented messages carrying a ping between their fragments.
fn stream_of(side: Side, msgs: &[(Vec<u8>, bool, u8)], mask: [u8; 4]) -> Vec<u8> {
    let m = (side == Side::Client).then_some(mask);
    let mut bytes = Vec::new();
    for (payload, split, op) in msgs {
        if *split && payload.len() > 1 {
            let h = payload.len() / 2;
            bytes.extend(frame(false, *op, &payload[..h], m));
            bytes.extend(frame(true, 9, b"ping", m));
            bytes.extend(frame(true, 0, &payload[h..], m));
        } else {
            bytes.extend(frame(true, *op, payload, m));
        }
    }
    bytes
}

/// The scan of `bytes` whole, cut once at every byte, and fed one byte at a time all agree.
fn same_at_every_cut(side: Side, bytes: &[u8]) -> Result<(usize, Option<Event>, u64), TestCaseError> {
    let whole = scan_in_pieces(side, bytes, &[]);
    for cut in 1..bytes.len() {
        prop_assert_eq!(scan_in_pieces(side, bytes, &[cut]), whole, "cut at byte {}", cut);
    }
    prop_assert_eq!(scan_in_pieces(side, bytes, &vec![1; bytes.len()]), whole, "byte by byte");
    Ok(whole)
}

const SIDES: [Side; 2] = [Side::Client, Side::Backend];

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, .. ProptestConfig::default() })]

    #[test]
    fn valid_streams_pass_whole_when_cut_at_every_byte(
        msgs in proptest::collection::vec((proptest::collection::vec(any::<u8>(), 0..300), any::<bool>(), 1u8..3), 1..6),
        mask in any::<[u8; 4]>(),
    ) {
        for side in SIDES {
            let bytes = stream_of(side, &msgs, mask);
            let (fwd, ev, messages) = same_at_every_cut(side, &bytes)?;
            prop_assert_eq!(ev, None);
            prop_assert_eq!(fwd, bytes.len());
            prop_assert_eq!(messages, msgs.len() as u64);
        }
    }

    #[test]
    fn a_close_ends_the_stream_at_every_cut(
        msgs in proptest::collection::vec((proptest::collection::vec(any::<u8>(), 0..200), any::<bool>(), 1u8..3), 0..4),
        code in prop_oneof![1000u16..=1003, 1007u16..=1014, 3000u16..=4999],
        trailing in proptest::collection::vec(any::<u8>(), 0..64),
        mask in any::<[u8; 4]>(),
    ) {
        for side in SIDES {
            let mut bytes = stream_of(side, &msgs, mask);
            bytes.extend(frame(true, 8, &code.to_be_bytes(), (side == Side::Client).then_some(mask)));
            let end = bytes.len();
            bytes.extend(&trailing); // whatever follows a close is never forwarded
            let (fwd, ev, _) = same_at_every_cut(side, &bytes)?;
            prop_assert_eq!(ev, Some(Event::Close(code)));
            prop_assert_eq!(fwd, end);
        }
    }

    #[test]
    fn a_bad_frame_is_caught_at_its_start_at_every_cut(
        msgs in proptest::collection::vec((proptest::collection::vec(any::<u8>(), 0..200), any::<bool>(), 1u8..3), 0..4),
        bad in 0usize..6,
        mask in any::<[u8; 4]>(),
    ) {
        for side in SIDES {
            let m = (side == Side::Client).then_some(mask);
            let mut bytes = stream_of(side, &msgs, mask);
            let start = bytes.len();
            let wrong_mask = if m.is_some() { None } else { Some(mask) };
            let (frame_bytes, code) = match bad {
                0 => (frame(true, 1, b"x", wrong_mask), CloseCode::ProtocolError), // §5.1 masking
                1 => (frame(true, 3, b"x", m), CloseCode::ProtocolError),          // reserved opcode
                2 => (frame(true, 0, b"x", m), CloseCode::ProtocolError),          // stray continuation
                3 => (frame(true, 8, &[3], m), CloseCode::ProtocolError),          // 1-byte close
                4 => (frame(true, 8, &1005u16.to_be_bytes(), m), CloseCode::ProtocolError),
                _ => (frame(true, 8, &[0x03, 0xe8, 0xff], m), CloseCode::InvalidPayload),
            };
            bytes.extend(frame_bytes);
            bytes.extend(frame(true, 1, b"after", m));
            let (fwd, ev, _) = same_at_every_cut(side, &bytes)?;
            prop_assert_eq!(ev, Some(Event::Violation(code)));
            prop_assert_eq!(fwd, start, "nothing from the bad frame on is forwarded");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn header_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..32)) {
        if let Ok(Some(h)) = parse_header(&bytes) {
            prop_assert!(h.header_len <= bytes.len());
            prop_assert!(h.header_len >= 2 && h.header_len <= 14);
        }
    }

    #[test]
    fn scanner_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..2048), cuts in proptest::collection::vec(1usize..300, 0..16)) {
        let (fwd, _, _) = scan_in_pieces(Side::Client, &bytes, &cuts);
        prop_assert!(fwd <= bytes.len());
        let (fwd, _, _) = scan_in_pieces(Side::Backend, &bytes, &cuts);
        prop_assert!(fwd <= bytes.len());
    }

    #[test]
    fn valid_streams_pass_whole_in_any_pieces(
        msgs in proptest::collection::vec((proptest::collection::vec(any::<u8>(), 0..400), any::<bool>(), 1u8..3), 1..12),
        cuts in proptest::collection::vec(1usize..200, 0..32),
        mask in any::<[u8; 4]>(),
    ) {
        let mut bytes = Vec::new();
        for (payload, split, op) in &msgs {
            if *split && payload.len() > 1 {
                let h = payload.len() / 2;
                bytes.extend(frame(false, *op, &payload[..h], Some(mask)));
                bytes.extend(frame(true, 9, b"ping", Some(mask))); // control frames may interleave
                bytes.extend(frame(true, 0, &payload[h..], Some(mask)));
            } else {
                bytes.extend(frame(true, *op, payload, Some(mask)));
            }
        }
        let (fwd, ev, messages) = scan_in_pieces(Side::Client, &bytes, &cuts);
        prop_assert_eq!(ev, None);
        prop_assert_eq!(fwd, bytes.len());
        prop_assert_eq!(messages, msgs.len() as u64);
    }

    #[test]
    fn masking_twice_is_identity(data in proptest::collection::vec(any::<u8>(), 0..300), mask in any::<[u8; 4]>(), offset in 0usize..8) {
        let mut d = data.clone();
        apply_mask(&mut d, mask, offset);
        apply_mask(&mut d, mask, offset);
        prop_assert_eq!(d, data);
    }

    #[test]
    fn handshake_validation_never_panics(raw in "[ -~\r\n]{0,400}") {
        let mut hs = [httparse::EMPTY_HEADER; switchyard::handshake::MAX_HEADERS];
        let mut req = httparse::Request::new(&mut hs);
        if let Ok(httparse::Status::Complete(_)) = req.parse(raw.as_bytes()) {
            let _ = switchyard::handshake::validate(&req);
        }
    }
}

// ---- PROXY protocol headers (src/proxy_protocol.rs) ----

use std::net::{IpAddr, SocketAddr};
use switchyard::proxy_protocol::{self as pp, ParseError, V2Header};

/// A valid header and the source address it carries (`None`: the socket's stands).
fn proxy_header() -> impl Strategy<Value = (Vec<u8>, Option<SocketAddr>)> {
    let v4 = (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(IpAddr::from(ip), port));
    let v6 = (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(IpAddr::from(ip), port));
    let any_addr = prop_oneof![v4.clone(), v6.clone()];
    let tlvs = proptest::collection::vec(any::<u8>(), 0..300);
    prop_oneof![
        (v4.clone(), v4).prop_map(|(s, d)| {
            let line = format!("PROXY TCP4 {} {} {} {}\r\n", s.ip(), d.ip(), s.port(), d.port());
            (line.into_bytes(), Some(s))
        }),
        (v6.clone(), v6).prop_map(|(s, d)| {
            let line = format!("PROXY TCP6 {} {} {} {}\r\n", s.ip(), d.ip(), s.port(), d.port());
            (line.into_bytes(), Some(s))
        }),
        "[ -~]{0,80}".prop_map(|rest| {
            let line = if rest.is_empty() {
                "PROXY UNKNOWN\r\n".to_string()
            } else {
                format!("PROXY UNKNOWN {rest}\r\n")
            };
            (line.into_bytes(), None)
        }),
        (any_addr.clone(), any_addr, tlvs.clone()).prop_map(|(s, d, tlvs)| {
            let mut h = V2Header::proxy(s, d).as_bytes().to_vec();
            let len = u16::from_be_bytes([h[14], h[15]]) + tlvs.len() as u16;
            h[14..16].copy_from_slice(&len.to_be_bytes());
            h.extend(tlvs);
            (h, Some(s))
        }),
        (0u8..4, 0u8..3, tlvs).prop_map(|(family, transport, body)| {
            // LOCAL: whatever the family and body, the socket's endpoints stand.
            let mut h = V2Header::local().as_bytes().to_vec();
            h[13] = family << 4 | transport;
            h[14..16].copy_from_slice(&(body.len() as u16).to_be_bytes());
            h.extend(body);
            (h, None)
        }),
    ]
}

fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn proxy_header_round_trips_and_every_truncation_is_incomplete(
        (header, source) in proxy_header(),
        after in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut bytes = header.clone();
        bytes.extend(&after);
        let h = pp::parse(&bytes).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        prop_assert_eq!(h.len, header.len(), "the bytes after the header are not the header's");
        prop_assert_eq!(h.addresses.map(|a| canonical(a.source)), source.map(canonical));
        for cut in 0..header.len() {
            match pp::parse(&header[..cut]) {
                // Never asks for a byte past the header: a reader taking exactly what is asked
                // leaves the request that follows in the socket.
                Err(ParseError::Incomplete(n)) => prop_assert!(n >= 1 && cut + n <= header.len(), "cut {} asks {}", cut, n),
                other => prop_assert!(false, "cut {}: {:?}", cut, other),
            }
        }
        // What `read` does: take exactly what is asked until the header is whole.
        let mut have = 0;
        loop {
            match pp::parse(&bytes[..have]) {
                Ok(h) => { prop_assert_eq!(h.len, have); break; }
                Err(ParseError::Incomplete(n)) => have += n,
                Err(e) => prop_assert!(false, "{:?}", e),
            }
        }
    }

    #[test]
    fn proxy_parser_never_panics_nor_asks_past_the_bounds(
        prefix in prop_oneof![Just(&b""[..]), Just(&b"PROXY "[..]), Just(&b"PROXY TCP4 "[..]), Just(&b"PROXY TCP6 "[..]), Just(&pp::V2_SIGNATURE[..])],
        tail in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let mut bytes = prefix.to_vec();
        bytes.extend(tail);
        match pp::parse(&bytes) {
            Ok(h) => prop_assert!(h.len <= bytes.len()),
            Err(ParseError::Incomplete(n)) => prop_assert!(n >= 1 && bytes.len() + n <= pp::V2_MAX),
            Err(ParseError::Invalid(_)) => {}
        }
    }
}

/// An upgrade request built from a grammar: each part the handshake checks is right, wrong
/// or missing, in any header order, among noise headers; with whether it is valid. Random
/// text almost never parses as a request, so it rarely reached `validate` at all.
fn upgrade_from_grammar() -> impl Strategy<Value = (String, bool)> {
    fn part(choices: Vec<(Option<&'static str>, bool)>) -> impl Strategy<Value = (Option<&'static str>, bool)> {
        proptest::sample::select(choices)
    }
    let method = part(vec![(Some("GET"), true), (Some("POST"), false), (Some("get"), false)]);
    let version = part(vec![(Some("HTTP/1.1"), true), (Some("HTTP/1.0"), false)]);
    let host = part(vec![(Some("Host: example.com"), true), (Some("Host: "), false), (None, false)]);
    let upgrade = part(vec![
        (Some("Upgrade: websocket"), true),
        (Some("Upgrade: WebSocket"), true),
        (Some("Upgrade: h2c, websocket"), true),
        (Some("Upgrade: h2c"), false),
        (None, false),
    ]);
    let connection = part(vec![
        (Some("Connection: Upgrade"), true),
        (Some("Connection: keep-alive, Upgrade"), true),
        (Some("Connection: keep-alive"), false),
        (Some("Connection: Upgrade, Host"), false),
        (None, false),
    ]);
    let key = part(vec![
        (Some("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="), true),
        (Some("Sec-WebSocket-Key: c2hvcnQ="), false),
        (None, false),
    ]);
    let ws_version = part(vec![
        (Some("Sec-WebSocket-Version: 13"), true),
        (Some("Sec-WebSocket-Version: 8"), false),
        (None, false),
    ]);
    let body = part(vec![
        (None, true),
        (Some("Content-Length: 0"), true),
        (Some("Content-Length: 5"), false),
        (Some("Transfer-Encoding: chunked"), false),
    ]);
    let second_host = part(vec![(None, true), (Some("Host: other.example"), false)]);
    let reserved = |n: &str| {
        let n = n.to_ascii_lowercase();
        ["host", "upgrade", "connection", "content-length", "transfer-encoding"].contains(&n.as_str()) || n.starts_with("sec-websocket")
    };
    let noise = proptest::collection::vec(("[A-Za-z][A-Za-z0-9-]{0,12}", "[ -~]{0,20}"), 0..6).prop_map(move |v| {
        v.into_iter()
            .filter(|(n, _)| !reserved(n))
            .map(|(n, val)| format!("{n}: {}", val.trim()))
            .collect::<Vec<_>>()
    });
    (
        (method, version, host, upgrade, connection),
        (key, ws_version, body, second_host, noise),
    )
        .prop_flat_map(|((m, v, h, u, c), (k, w, b, h2, noise))| {
            // Exactly one Host, and not empty (the second is only wrong beside a first).
            let hosts: Vec<&str> = [h.0, h2.0].into_iter().flatten().collect();
            let one_host = hosts.len() == 1 && hosts[0] != "Host: ";
            let valid = one_host && [m, v, u, c, k, w, b].iter().all(|(_, ok)| *ok);
            let mut lines: Vec<String> = [h, u, c, k, w, b, h2].iter().filter_map(|(l, _)| l.map(str::to_string)).collect();
            lines.extend(noise);
            let start = format!("{} /chat {}", m.0.unwrap_or("GET"), v.0.unwrap_or("HTTP/1.1"));
            (Just(start), Just(lines).prop_shuffle(), Just(valid))
        })
        .prop_map(|(start, lines, valid)| {
            let mut raw = start + "\r\n";
            for l in lines {
                raw.push_str(&l);
                raw.push_str("\r\n");
            }
            raw.push_str("\r\n");
            (raw, valid)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn handshake_validation_accepts_exactly_the_valid_requests((raw, valid) in upgrade_from_grammar()) {
        let mut hs = [httparse::EMPTY_HEADER; switchyard::handshake::MAX_HEADERS];
        let mut req = httparse::Request::new(&mut hs);
        let parsed = req.parse(raw.as_bytes());
        prop_assert!(matches!(parsed, Ok(httparse::Status::Complete(_))), "{raw:?} does not parse: {parsed:?}");
        let verdict = switchyard::handshake::validate(&req);
        prop_assert_eq!(verdict.is_ok(), valid, "{:?}: {:?}", raw, verdict);
    }
}
