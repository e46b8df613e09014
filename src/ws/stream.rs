//! Per-direction frame scanner: walks the bytes of one direction of a WebSocket stream,
//! frame header by frame header, without copying or unmasking payloads. It decides how
//! many bytes may be forwarded, keeps control frames whole, validates the frames of both
//! sides (RFC 6455 §5, RFC 7692 §6), enforces the client's message size limit, counts
//! messages and spots close frames.

use super::close::{check_close_payload, CloseCode};
use super::frame::{apply_mask, parse_header, FrameHeader, Opcode};

/// RSV1 as the scanner sees it (the three RSV bits are the low bits, RSV1 the highest).
const RSV1: u8 = 0b100;

/// Whose frames a scanner reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Frames from the client: masked, validated strictly.
    Client,
    /// Frames from the backend: unmasked, validated by the same rules.
    Backend,
}

/// What stopped a scan early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A close frame with this code (1005 = empty) is included in the forwardable bytes;
    /// anything after it is to be dropped.
    Close(u16),
    /// The frame at the end of the forwardable bytes breaks the rules: close with this code.
    Violation(CloseCode),
}

/// Result of one scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scanned {
    /// Bytes before this offset may be forwarded.
    pub forward: usize,
    /// Why the scan stopped early, if it did.
    pub event: Option<Event>,
    /// A pong answering the proxy's own ping was found and cut out of the buffer.
    pub own_pong: bool,
    /// Data frame bytes (a header or payload) passed: activity for the idle timer.
    pub data_seen: bool,
    /// Stopped before a data frame its [`Allowance`] did not cover.
    pub throttled: bool,
}

/// What a scan may pass on (message and bandwidth limits): every data frame, ping and pong
/// (not the proxy's own pong, not a close) needs a message and the byte allowance above
/// zero, and costs one message and its bytes, header included (a whole frame goes once it
/// starts: the bytes may end below zero, a debt the next frames wait for).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowance {
    /// Messages that may start.
    pub messages: u64,
    /// Payload bytes that may still pass.
    pub bytes: i64,
}

impl Allowance {
    /// No limit.
    pub const UNLIMITED: Allowance = Allowance {
        messages: u64::MAX,
        bytes: i64::MAX,
    };
}

/// State of one direction between reads.
#[derive(Debug, Clone)]
pub struct Scanner {
    side: Side,
    /// Payload bytes of the current data frame not yet passed.
    remaining: u64,
    /// Inside a fragmented data message.
    fragmented: bool,
    /// Bytes of the current message so far.
    msg_len: u64,
    /// RSV bits an extension negotiated (RSV1 = 0b100 for permessage-deflate).
    rsv_allowed: u8,
    /// 0 = unlimited.
    max_message: u64,
    /// Complete data messages seen and not yet taken by [`Scanner::take_messages`].
    messages: u64,
}

impl Scanner {
    /// A scanner for `side` with the extensions' RSV bits and the message limit.
    pub fn new(side: Side, rsv_allowed: u8, max_message: u64) -> Self {
        Scanner {
            side,
            remaining: 0,
            fragmented: false,
            msg_len: 0,
            rsv_allowed,
            max_message,
            messages: 0,
        }
    }

    /// Between frames (nothing of a frame's payload pending)?
    pub fn at_boundary(&self) -> bool {
        self.remaining == 0
    }

    /// Messages counted since the last call.
    pub fn take_messages(&mut self) -> u64 {
        std::mem::take(&mut self.messages)
    }

    /// Scans `buf[start..*filled]`. Forwardable bytes end at `Scanned::forward`; the bytes
    /// from there to `*filled` are an incomplete header or control frame to keep for the next
    /// read (or, after an event, to drop). A pong whose payload equals `own_ping` is cut out
    /// (`*filled` shrinks). With `stop_at_boundary`, stops at the first frame boundary after
    /// `start` so the caller can insert a frame there.
    pub fn scan(&mut self, buf: &mut [u8], start: usize, filled: &mut usize, own_ping: Option<&[u8]>, stop_at_boundary: bool) -> Scanned {
        self.scan_limited(buf, start, filled, own_ping, stop_at_boundary, None)
    }

    /// [`Scanner::scan`], passing on only the data frames `allow` covers (and taking them
    /// from it); stops before the first it does not (`Scanned::throttled`).
    pub fn scan_limited(
        &mut self,
        buf: &mut [u8],
        start: usize,
        filled: &mut usize,
        own_ping: Option<&[u8]>,
        stop_at_boundary: bool,
        mut allow: Option<&mut Allowance>,
    ) -> Scanned {
        let mut out = Scanned {
            forward: start,
            event: None,
            own_pong: false,
            data_seen: false,
            throttled: false,
        };
        let mut pos = start;
        loop {
            let avail = *filled - pos;
            if self.remaining > 0 {
                if avail == 0 {
                    break;
                }
                let k = (self.remaining.min(avail as u64)) as usize;
                pos += k;
                out.data_seen = true; // payload bytes are activity too, not only headers
                self.remaining -= k as u64;
                if stop_at_boundary && self.remaining == 0 {
                    break;
                }
                continue;
            }
            if avail == 0 || (stop_at_boundary && pos > start) {
                break;
            }
            let h = match parse_header(&buf[pos..*filled]) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(_) => {
                    out.forward = pos;
                    out.event = Some(Event::Violation(CloseCode::ProtocolError));
                    return out;
                }
            };
            if let Err(code) = self.check(&h) {
                out.forward = pos;
                out.event = Some(Event::Violation(code));
                return out;
            }
            if h.opcode.is_control() {
                let total = h.header_len + h.len as usize;
                if avail < total {
                    break; // keep a control frame whole (≤ 139 bytes)
                }
                let mut payload = [0u8; 125];
                let p = &mut payload[..h.len as usize];
                p.copy_from_slice(&buf[pos + h.header_len..pos + total]);
                if let Some(m) = h.mask {
                    apply_mask(p, m, 0);
                }
                let own_pong = h.opcode == Opcode::Pong && own_ping == Some(&*p);
                if let (Some(a), false, false) = (allow.as_deref_mut(), own_pong, h.opcode == Opcode::Close) {
                    // A ping or pong of the peer's own costs a message and its bytes too (a
                    // ping flood makes the other side answer each); a close always passes.
                    if a.messages == 0 || a.bytes <= 0 {
                        out.throttled = true;
                        break;
                    }
                    a.messages -= 1;
                    a.bytes = a.bytes.saturating_sub(total as i64);
                }
                match h.opcode {
                    Opcode::Close => {
                        // §5.5.1, §7.4: from either side; a backend's invalid close is stopped
                        // here, not passed on for the client to fail on.
                        let code = match check_close_payload(p) {
                            Ok(c) => c,
                            Err(c) => {
                                out.forward = pos;
                                out.event = Some(Event::Violation(c));
                                return out;
                            }
                        };
                        out.forward = pos + total;
                        out.event = Some(Event::Close(code));
                        return out;
                    }
                    Opcode::Pong if own_pong => {
                        buf.copy_within(pos + total..*filled, pos);
                        *filled -= total;
                        out.own_pong = true;
                        continue;
                    }
                    _ => pos += total,
                }
                continue;
            }
            // Data frame (RFC 6455 §5.4 fragmentation rules are checked in `check`).
            if let Some(a) = allow.as_deref_mut() {
                // Every frame costs a message (a message cut into many empty fragments is many)
                // and its bytes, header included.
                if a.messages == 0 || a.bytes <= 0 {
                    out.throttled = true;
                    break;
                }
                a.messages -= 1;
                let bytes = (h.header_len as u64).saturating_add(h.len).min(i64::MAX as u64) as i64;
                a.bytes = a.bytes.saturating_sub(bytes);
            }
            out.data_seen = true;
            self.msg_len = if h.opcode == Opcode::Continuation {
                self.msg_len + h.len
            } else {
                h.len
            };
            if h.fin {
                self.fragmented = false;
                self.messages += 1;
            } else {
                self.fragmented = true;
            }
            pos += h.header_len;
            self.remaining = h.len;
        }
        out.forward = pos;
        out
    }

    /// RFC 6455 rules for one header, the same for both sides but for masking; only
    /// client messages have a size limit.
    fn check(&self, h: &FrameHeader) -> Result<(), CloseCode> {
        // §5.1: a client masks every frame, a server none.
        if h.mask.is_some() != (self.side == Side::Client) {
            return Err(CloseCode::ProtocolError);
        }
        // §5.2: RSV bits only as negotiated by an extension.
        if h.rsv & !self.rsv_allowed != 0 {
            return Err(CloseCode::ProtocolError);
        }
        // RFC 7692 §6: permessage-deflate sets RSV1 only on the first frame of a message.
        if self.rsv_allowed == RSV1 && h.rsv & RSV1 != 0 && (h.opcode.is_control() || h.opcode == Opcode::Continuation) {
            return Err(CloseCode::ProtocolError);
        }
        match h.opcode {
            Opcode::Reserved(_) => Err(CloseCode::ProtocolError),
            // §5.5: control frames are ≤ 125 bytes and not fragmented.
            op if op.is_control() => {
                if !h.fin || h.len > 125 {
                    Err(CloseCode::ProtocolError)
                } else {
                    Ok(())
                }
            }
            // §5.4: continuation only inside a fragmented message, a new message only outside.
            Opcode::Continuation if !self.fragmented => Err(CloseCode::ProtocolError),
            Opcode::Text | Opcode::Binary if self.fragmented => Err(CloseCode::ProtocolError),
            op => {
                let so_far = if op == Opcode::Continuation { self.msg_len } else { 0 };
                if self.max_message != 0 && so_far.saturating_add(h.len) > self.max_message {
                    Err(CloseCode::MessageTooBig)
                } else {
                    Ok(())
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::frame::ControlFrame;

    use crate::ws::peer::frame_bytes as frame;

    const M: Option<[u8; 4]> = Some([1, 2, 3, 4]);

    fn scan_all(s: &mut Scanner, bytes: &[u8]) -> (Scanned, Vec<u8>) {
        let mut buf = bytes.to_vec();
        let mut filled = buf.len();
        let r = s.scan(&mut buf, 0, &mut filled, Some(b"sy-ping!"), false);
        buf.truncate(filled);
        (r, buf)
    }

    #[test]
    fn forwards_whole_frames_and_counts_messages() {
        let mut s = Scanner::new(Side::Client, 0, 0);
        let mut bytes = frame(true, Opcode::Text, b"hello", M);
        bytes.extend(frame(false, Opcode::Binary, &[7; 300], M));
        bytes.extend(frame(true, Opcode::Ping, b"p", M));
        bytes.extend(frame(true, Opcode::Continuation, &[8; 70000], M));
        let (r, _) = scan_all(&mut s, &bytes);
        assert_eq!(r.forward, bytes.len());
        assert_eq!(r.event, None);
        assert_eq!(s.take_messages(), 2);
    }

    #[test]
    fn split_header_and_payload_across_reads() {
        let mut s = Scanner::new(Side::Client, 0, 0);
        let bytes = frame(true, Opcode::Binary, &[1; 1000], M);
        // 2 bytes, a 16-bit length, a 4-byte mask: the header is 8 bytes.
        let header = 8;
        for cut in [1usize, 3, 7, 8, 9, 500, 1007] {
            let mut s2 = s.clone();
            let mut buf = bytes[..cut].to_vec();
            let mut filled = cut;
            let r = s2.scan(&mut buf, 0, &mut filled, None, false);
            // An incomplete header is kept back whole; once the header is parsed, every
            // payload byte read so far flows (data is never held for the rest of the frame).
            let expected = if cut < header { 0 } else { cut };
            assert_eq!(r.forward, expected, "cut {cut}: {r:?}");
        }
        let (r, _) = scan_all(&mut s, &bytes);
        assert_eq!(r.forward, bytes.len());
    }

    #[test]
    fn control_frames_are_kept_whole() {
        let mut s = Scanner::new(Side::Client, 0, 0);
        let bytes = frame(true, Opcode::Ping, b"abcdef", M);
        let mut buf = bytes.clone();
        let mut filled = bytes.len() - 1;
        let r = s.scan(&mut buf, 0, &mut filled, None, false);
        assert_eq!(r.forward, 0);
    }

    #[test]
    fn rfc_violations_from_clients() {
        let cases: Vec<(Vec<u8>, CloseCode)> = vec![
            (frame(true, Opcode::Text, b"x", None), CloseCode::ProtocolError), // unmasked
            (frame(true, Opcode::Reserved(3), b"x", M), CloseCode::ProtocolError),
            (frame(true, Opcode::Reserved(0xb), b"x", M), CloseCode::ProtocolError),
            (frame(false, Opcode::Ping, b"x", M), CloseCode::ProtocolError), // fragmented control
            (frame(true, Opcode::Ping, &[0; 126], M), CloseCode::ProtocolError), // big control
            (frame(true, Opcode::Continuation, b"x", M), CloseCode::ProtocolError), // stray continuation
            (
                {
                    let mut v = frame(true, Opcode::Text, b"x", M);
                    v[0] |= 0x40; // RSV1 without an extension
                    v
                },
                CloseCode::ProtocolError,
            ),
            (frame(true, Opcode::Close, &[3], M), CloseCode::ProtocolError),
        ];
        for (bytes, code) in cases {
            let mut s = Scanner::new(Side::Client, 0, 0);
            let mut all = frame(true, Opcode::Text, b"ok", M);
            let first = all.len();
            all.extend(bytes);
            let (r, _) = scan_all(&mut s, &all);
            assert_eq!(r.event, Some(Event::Violation(code)));
            assert_eq!(r.forward, first, "bytes before the bad frame still go");
        }
        // a new message inside a fragmented one
        let mut s = Scanner::new(Side::Client, 0, 0);
        let mut all = frame(false, Opcode::Text, b"a", M);
        all.extend(frame(true, Opcode::Text, b"b", M));
        assert_eq!(scan_all(&mut s, &all).0.event, Some(Event::Violation(CloseCode::ProtocolError)));
        // RSV1 is fine once permessage-deflate is negotiated
        let mut s = Scanner::new(Side::Client, 0b100, 0);
        let mut v = frame(true, Opcode::Text, b"x", M);
        v[0] |= 0x40;
        assert_eq!(scan_all(&mut s, &v).0.event, None);
    }

    #[test]
    fn rfc_violations_from_backends() {
        let close = |code: u16, reason: &[u8]| {
            let mut p = code.to_be_bytes().to_vec();
            p.extend_from_slice(reason);
            frame(true, Opcode::Close, &p, None)
        };
        let cases: Vec<(&str, Vec<u8>, CloseCode)> = vec![
            ("masked", frame(true, Opcode::Text, b"x", M), CloseCode::ProtocolError),
            ("1-byte close", frame(true, Opcode::Close, &[3], None), CloseCode::ProtocolError),
            ("close 1005", close(1005, b""), CloseCode::ProtocolError),
            ("close 1006", close(1006, b""), CloseCode::ProtocolError),
            ("close 1015", close(1015, b""), CloseCode::ProtocolError),
            ("reason not UTF-8", close(1000, &[0xff]), CloseCode::InvalidPayload),
            (
                "reserved opcode",
                frame(true, Opcode::Reserved(3), b"x", None),
                CloseCode::ProtocolError,
            ),
            (
                "stray continuation",
                frame(true, Opcode::Continuation, b"x", None),
                CloseCode::ProtocolError,
            ),
        ];
        for (what, bytes, code) in cases {
            let mut s = Scanner::new(Side::Backend, 0, 0);
            let mut all = frame(true, Opcode::Text, b"ok", None);
            let first = all.len();
            all.extend(bytes);
            let (r, _) = scan_all(&mut s, &all);
            assert_eq!(r.event, Some(Event::Violation(code)), "{what}");
            assert_eq!(r.forward, first, "{what}: bytes before the bad frame still go");
        }
        let mut s = Scanner::new(Side::Backend, 0, 0);
        assert_eq!(scan_all(&mut s, &close(1000, b"bye")).0.event, Some(Event::Close(1000)));
    }

    #[test]
    fn rsv1_only_on_the_first_frame_of_a_deflated_message() {
        for (side, mask) in [(Side::Client, M), (Side::Backend, None)] {
            let rsv1 = |fin: bool, op: Opcode| {
                let mut f = frame(fin, op, b"z", mask);
                f[0] |= 0x40;
                f
            };
            let mut ok = rsv1(false, Opcode::Binary);
            ok.extend(frame(true, Opcode::Continuation, b"z", mask));
            ok.extend(rsv1(true, Opcode::Text));
            let mut s = Scanner::new(side, 0b100, 0);
            assert_eq!(
                scan_all(&mut s, &ok).0,
                Scanned {
                    forward: ok.len(),
                    event: None,
                    own_pong: false,
                    data_seen: true,
                    throttled: false,
                }
            );
            for bad in [
                rsv1(true, Opcode::Continuation),
                rsv1(true, Opcode::Ping),
                rsv1(true, Opcode::Close),
            ] {
                let mut all = frame(false, Opcode::Text, b"a", mask);
                let first = all.len();
                all.extend(bad);
                let mut s = Scanner::new(side, 0b100, 0);
                let (r, _) = scan_all(&mut s, &all);
                assert_eq!(
                    (r.forward, r.event),
                    (first, Some(Event::Violation(CloseCode::ProtocolError))),
                    "{side:?}"
                );
            }
            // An unknown extension may use the RSV bits as it likes: not checked.
            let mut s = Scanner::new(side, 0b111, 0);
            let mut all = frame(false, Opcode::Text, b"a", mask);
            all.extend(rsv1(true, Opcode::Continuation));
            assert_eq!(scan_all(&mut s, &all).0.event, None);
        }
    }

    #[test]
    fn message_limit_counts_fragments() {
        let mut s = Scanner::new(Side::Client, 0, 100);
        let mut all = frame(false, Opcode::Binary, &[0; 60], M);
        let first = all.len();
        all.extend(frame(true, Opcode::Continuation, &[0; 41], M));
        let (r, _) = scan_all(&mut s, &all);
        assert_eq!(r.event, Some(Event::Violation(CloseCode::MessageTooBig)));
        assert_eq!(r.forward, first);
        let mut s = Scanner::new(Side::Client, 0, 100);
        assert_eq!(scan_all(&mut s, &frame(true, Opcode::Binary, &[0; 100], M)).0.event, None);
    }

    #[test]
    fn close_is_found_and_own_pong_is_cut() {
        let mut s = Scanner::new(Side::Client, 0, 0);
        let mut all = frame(true, Opcode::Pong, b"sy-ping!", M);
        let other_pong = frame(true, Opcode::Pong, b"theirs", M);
        all.extend(&other_pong);
        all.extend(ControlFrame::close(4001, "bye", M).as_bytes());
        let (r, buf) = scan_all(&mut s, &all);
        assert!(r.own_pong);
        assert_eq!(r.event, Some(Event::Close(4001)));
        assert_eq!(&buf[..other_pong.len()], &other_pong[..], "only the proxy's pong is removed");
        assert_eq!(r.forward, buf.len());
    }

    #[test]
    fn an_oversized_backend_control_frame_is_a_violation_not_a_panic() {
        let mut s = Scanner::new(Side::Backend, 0, 0);
        let mut bytes = vec![0x89, 126, 0x01, 0x00];
        bytes.extend([0u8; 256]);
        assert_eq!(scan_all(&mut s, &bytes).0.event, Some(Event::Violation(CloseCode::ProtocolError)));
    }

    #[test]
    fn stop_at_boundary_stops_after_the_current_frame() {
        let mut s = Scanner::new(Side::Backend, 0, 0);
        let a = frame(true, Opcode::Binary, &[1; 10], None);
        let mut all = a.clone();
        all.extend(frame(true, Opcode::Binary, &[2; 10], None));
        let mut buf = all.clone();
        let mut filled = buf.len();
        let r = s.scan(&mut buf, 0, &mut filled, None, true);
        assert_eq!(r.forward, a.len());
        assert!(s.at_boundary());
    }

    #[test]
    fn an_allowance_stops_before_the_first_frame_it_does_not_cover() {
        let mut s = Scanner::new(Side::Client, 0, 0);
        let one = frame(true, Opcode::Text, b"abc", M);
        let ping = frame(true, Opcode::Ping, b"p", M);
        let own_pong = frame(true, Opcode::Pong, b"sy-ping!", M);
        let first = frame(false, Opcode::Text, b"ab", M);
        let cont = frame(true, Opcode::Continuation, b"cd", M);
        let close = frame(true, Opcode::Close, &[0x03, 0xe8], M);
        let mut all = one.clone();
        all.extend(&ping);
        all.extend(&own_pong);
        all.extend(&first);
        all.extend(&cont);
        all.extend(&close);
        let mut buf = all.clone();
        let mut filled = buf.len();
        // two: the message and the ping; the proxy's own pong is cut out for free; then it
        // stops before the fragmented message
        let mut a = Allowance {
            messages: 2,
            bytes: i64::MAX,
        };
        let r = s.scan_limited(&mut buf, 0, &mut filled, Some(b"sy-ping!"), false, Some(&mut a));
        assert!(r.throttled && r.own_pong);
        assert_eq!(r.forward, one.len() + ping.len());
        assert_eq!(filled, all.len() - own_pong.len());
        assert_eq!((a.messages, s.take_messages()), (0, 1));
        // each fragment costs one (a message of many empty fragments is many); the close
        // always passes
        a.messages = 1;
        let r = s.scan_limited(&mut buf, r.forward, &mut filled, None, false, Some(&mut a));
        assert!(r.throttled);
        assert_eq!(r.forward, one.len() + ping.len() + first.len());
        a.messages = 1;
        let r = s.scan_limited(&mut buf, r.forward, &mut filled, None, false, Some(&mut a));
        assert_eq!(r.event, Some(Event::Close(1000)), "{r:?}");
        assert_eq!(a.messages, 0);
        // bytes, headers included: a frame starts while any are left (a debt after it)
        let mut s = Scanner::new(Side::Client, 0, 0);
        let mut buf = one.clone();
        let mut filled = buf.len();
        let mut a = Allowance {
            messages: u64::MAX,
            bytes: 1,
        };
        let r = s.scan_limited(&mut buf, 0, &mut filled, None, false, Some(&mut a));
        assert!(!r.throttled, "it started with a byte left");
        assert_eq!(a.bytes, 1 - one.len() as i64);
        let mut s = Scanner::new(Side::Client, 0, 0);
        let r = s.scan_limited(&mut buf, 0, &mut filled, None, false, Some(&mut a));
        assert!(r.throttled && r.forward == 0, "no bytes left: nothing passes");
        let mut all_of_it = Allowance::UNLIMITED;
        assert!(
            !s.scan_limited(&mut buf, 0, &mut filled, None, false, Some(&mut all_of_it))
                .throttled
        );
    }
}
