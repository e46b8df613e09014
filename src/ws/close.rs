//! Close codes (RFC 6455 §7.4) and the rules for codes a peer may send.

/// Close codes the proxy sends or reasons about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    /// 1000
    Normal,
    /// 1001: shutdown, idle timeout, ping timeout, client gone (to the backend).
    GoingAway,
    /// 1002: a peer broke RFC 6455 (sent to that peer).
    ProtocolError,
    /// 1007: a close reason that is not UTF-8.
    InvalidPayload,
    /// 1008: a client over its message or byte rate (`client_limit_action: close`).
    PolicyViolation,
    /// 1009: a message over `max_message_bytes`.
    MessageTooBig,
    /// 1011: unexpected condition: the backend was lost or broke RFC 6455 (to the client).
    InternalError,
    /// 1012: backend drained, removed or rebalanced.
    ServiceRestart,
    /// 1013: shed (overload, no backend).
    TryAgainLater,
    /// 1014: the backend connection died mid-stream.
    BadGateway,
}

impl CloseCode {
    /// The wire value.
    pub fn code(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::GoingAway => 1001,
            CloseCode::ProtocolError => 1002,
            CloseCode::InvalidPayload => 1007,
            CloseCode::PolicyViolation => 1008,
            CloseCode::MessageTooBig => 1009,
            CloseCode::InternalError => 1011,
            CloseCode::ServiceRestart => 1012,
            CloseCode::TryAgainLater => 1013,
            CloseCode::BadGateway => 1014,
        }
    }
}

/// 1005: the code that stands for a close frame without a payload; never on the wire.
pub const NO_STATUS: u16 = 1005;

/// May a peer put `code` in a close frame (RFC 6455 §7.4.1, §7.4.2; IANA registry)?
pub fn is_sendable(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Checks a close frame's (unmasked) payload: empty, or a sendable code and a UTF-8 reason.
/// Returns the code (1005 "no status" for an empty payload) or the close code to answer with.
pub fn check_close_payload(payload: &[u8]) -> Result<u16, CloseCode> {
    match payload.len() {
        0 => Ok(NO_STATUS),
        1 => Err(CloseCode::ProtocolError),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !is_sendable(code) {
                return Err(CloseCode::ProtocolError);
            }
            if std::str::from_utf8(&payload[2..]).is_err() {
                return Err(CloseCode::InvalidPayload);
            }
            Ok(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_payload_rules() {
        assert_eq!(check_close_payload(&[]), Ok(1005));
        assert_eq!(check_close_payload(&[3]), Err(CloseCode::ProtocolError));
        assert_eq!(check_close_payload(&[0x0f, 0xa1, b'o', b'k']), Ok(4001));
        assert_eq!(check_close_payload(&1005u16.to_be_bytes()), Err(CloseCode::ProtocolError));
        assert_eq!(check_close_payload(&999u16.to_be_bytes()), Err(CloseCode::ProtocolError));
        assert_eq!(check_close_payload(&[0x03, 0xe8, 0xff]), Err(CloseCode::InvalidPayload));
    }
}
