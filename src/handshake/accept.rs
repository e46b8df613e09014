//! `Sec-WebSocket-Key` / `Sec-WebSocket-Accept` (RFC 6455 §4.2.2, §1.3).

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sha1::{Digest, Sha1};

const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// A valid key is base64 that decodes to exactly 16 bytes (RFC 6455 §4.1).
pub fn key_is_valid(key: &str) -> bool {
    key.len() == 24 && STANDARD.decode(key).is_ok_and(|b| b.len() == 16)
}

/// A fresh random key, as a client sends it (16 random bytes, base64).
pub fn new_key() -> String {
    STANDARD.encode(rand::random::<[u8; 16]>())
}

/// `base64(sha1(key + GUID))`, 28 ASCII bytes.
pub fn accept_key(key: &str) -> [u8; 28] {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(GUID);
    let digest = h.finalize();
    let mut out = [0u8; 28];
    // 20 bytes always encode to 28; the slice is sized for it.
    let n = STANDARD.encode_slice(digest, &mut out).unwrap_or(0);
    debug_assert_eq!(n, 28);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_example() {
        // RFC 6455 §1.3
        assert_eq!(&accept_key("dGhlIHNhbXBsZSBub25jZQ=="), b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert!(key_is_valid("dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!key_is_valid("dGhlIHNhbXBsZSBub25jZQ"));
        assert!(!key_is_valid("c2hvcnQ="));
    }
}
