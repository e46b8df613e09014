//! Frame header codec (RFC 6455 §5.2) and masking (§5.3), allocation-free.

/// Frame opcodes (RFC 6455 §5.2, §11.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    /// 0x0
    Continuation,
    /// 0x1
    Text,
    /// 0x2
    Binary,
    /// 0x8
    Close,
    /// 0x9
    Ping,
    /// 0xA
    Pong,
    /// 0x3–0x7, 0xB–0xF: reserved, a protocol error.
    Reserved(u8),
}

impl Opcode {
    /// Decodes the low nibble of the first header byte.
    pub fn from_u8(v: u8) -> Opcode {
        match v {
            0 => Opcode::Continuation,
            1 => Opcode::Text,
            2 => Opcode::Binary,
            8 => Opcode::Close,
            9 => Opcode::Ping,
            10 => Opcode::Pong,
            r => Opcode::Reserved(r),
        }
    }

    /// The wire value.
    pub fn as_u8(self) -> u8 {
        match self {
            Opcode::Continuation => 0,
            Opcode::Text => 1,
            Opcode::Binary => 2,
            Opcode::Close => 8,
            Opcode::Ping => 9,
            Opcode::Pong => 10,
            Opcode::Reserved(r) => r,
        }
    }

    /// Control frames have the high bit of the opcode set (RFC 6455 §5.5).
    pub fn is_control(self) -> bool {
        self.as_u8() & 0x8 != 0
    }
}

/// A parsed frame header: a small `Copy` value, no payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// FIN bit.
    pub fin: bool,
    /// RSV1..3 as the three low bits (RSV1 = 0b100).
    pub rsv: u8,
    /// Opcode.
    pub opcode: Opcode,
    /// Masking key, when the MASK bit is set.
    pub mask: Option<[u8; 4]>,
    /// Payload length.
    pub len: u64,
    /// Bytes the header occupies (2–14).
    pub header_len: usize,
}

/// Why a header cannot be accepted even though it is complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    /// The 64-bit length has its most significant bit set (RFC 6455 §5.2).
    LengthOverflow,
}

/// Longest possible header: 2 + 8 (length) + 4 (mask).
pub const MAX_HEADER_LEN: usize = 14;

/// Parses a header from the start of `buf`. `Ok(None)` means more bytes are needed.
#[inline]
pub fn parse_header(buf: &[u8]) -> Result<Option<FrameHeader>, HeaderError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let b0 = buf[0];
    let b1 = buf[1];
    let masked = b1 & 0x80 != 0;
    let (len, mut pos) = match b1 & 0x7f {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            let l = u64::from_be_bytes(b);
            if l >> 63 != 0 {
                return Err(HeaderError::LengthOverflow);
            }
            (l, 10)
        }
        l => (l as u64, 2),
    };
    let mask = if masked {
        if buf.len() < pos + 4 {
            return Ok(None);
        }
        let m = [buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]];
        pos += 4;
        Some(m)
    } else {
        None
    };
    Ok(Some(FrameHeader {
        fin: b0 & 0x80 != 0,
        rsv: (b0 >> 4) & 0x7,
        opcode: Opcode::from_u8(b0 & 0x0f),
        mask,
        len,
        header_len: pos,
    }))
}

/// Writes a header into `out` (at least [`MAX_HEADER_LEN`] bytes); returns its length.
pub fn write_header(out: &mut [u8], fin: bool, opcode: Opcode, mask: Option<[u8; 4]>, len: u64) -> usize {
    out[0] = (if fin { 0x80 } else { 0 }) | opcode.as_u8();
    let mbit = if mask.is_some() { 0x80 } else { 0 };
    let mut pos = if len < 126 {
        out[1] = mbit | len as u8;
        2
    } else if len <= u16::MAX as u64 {
        out[1] = mbit | 126;
        out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        out[1] = mbit | 127;
        out[2..10].copy_from_slice(&len.to_be_bytes());
        10
    };
    if let Some(m) = mask {
        out[pos..pos + 4].copy_from_slice(&m);
        pos += 4;
    }
    pos
}

/// XORs `data` with `mask`, where `data` starts `offset` bytes into the payload
/// (RFC 6455 §5.3). Works a machine word at a time.
#[inline]
pub fn apply_mask(data: &mut [u8], mask: [u8; 4], offset: usize) {
    let mut m = [0u8; 4];
    for (i, b) in m.iter_mut().enumerate() {
        *b = mask[(offset + i) % 4];
    }
    let m32 = u32::from_ne_bytes(m);
    let m64 = (m32 as u64) | ((m32 as u64) << 32);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) ^ m64;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= m[i % 4];
    }
}

/// A complete control frame built on the stack (header ≤ 6 bytes + payload ≤ 125).
#[derive(Clone, Copy)]
pub struct ControlFrame {
    buf: [u8; 2 + 4 + 125],
    len: u8,
}

impl std::fmt::Debug for ControlFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlFrame").field("bytes", &self.as_bytes()).finish()
    }
}

impl ControlFrame {
    /// A control frame with `payload` (truncated to 125 bytes), masked when `mask` is set.
    pub fn new(opcode: Opcode, payload: &[u8], mask: Option<[u8; 4]>) -> Self {
        let payload = &payload[..payload.len().min(125)];
        let mut buf = [0u8; 131];
        let h = write_header(&mut buf, true, opcode, mask, payload.len() as u64);
        buf[h..h + payload.len()].copy_from_slice(payload);
        if let Some(m) = mask {
            apply_mask(&mut buf[h..h + payload.len()], m, 0);
        }
        ControlFrame {
            buf,
            len: (h + payload.len()) as u8,
        }
    }

    /// A close frame with `code` and `reason` (reason cut at a char boundary to fit); 1005
    /// ("no status received", which must not go on the wire) is a close without a payload.
    pub fn close(code: u16, reason: &str, mask: Option<[u8; 4]>) -> Self {
        if code == super::close::NO_STATUS {
            return Self::new(Opcode::Close, &[], mask);
        }
        let mut p = [0u8; 125];
        p[..2].copy_from_slice(&code.to_be_bytes());
        let mut r = reason.len().min(123);
        while !reason.is_char_boundary(r) {
            r -= 1;
        }
        p[2..2 + r].copy_from_slice(&reason.as_bytes()[..r]);
        Self::new(Opcode::Close, &p[..2 + r], mask)
    }

    /// The wire bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_all_length_forms() {
        for &len in &[0u64, 1, 125, 126, 65535, 65536, 8 << 20] {
            for mask in [None, Some([1, 2, 3, 4])] {
                let mut b = [0u8; MAX_HEADER_LEN];
                let n = write_header(&mut b, true, Opcode::Binary, mask, len);
                let h = parse_header(&b[..n]).unwrap().unwrap();
                assert_eq!((h.len, h.mask, h.header_len, h.fin), (len, mask, n, true));
                // every strict prefix is incomplete, never an error
                for k in 0..n {
                    assert_eq!(parse_header(&b[..k]), Ok(None));
                }
            }
        }
    }

    #[test]
    fn msb_of_64_bit_length_is_rejected() {
        let b = [0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 1];
        assert_eq!(parse_header(&b), Err(HeaderError::LengthOverflow));
    }

    #[test]
    fn mask_matches_bytewise_at_any_offset() {
        let mask = [0xa1, 0x02, 0xf3, 0x44];
        for offset in 0..5 {
            let orig: Vec<u8> = (0..37u8).collect();
            let mut fast = orig.clone();
            apply_mask(&mut fast, mask, offset);
            let slow: Vec<u8> = orig.iter().enumerate().map(|(i, b)| b ^ mask[(i + offset) % 4]).collect();
            assert_eq!(fast, slow);
        }
    }

    #[test]
    fn close_frame_carries_code_and_reason() {
        let f = ControlFrame::close(4001, "bye", None);
        assert_eq!(f.as_bytes(), &[0x88, 5, 0x0f, 0xa1, b'b', b'y', b'e']);
        let long = "é".repeat(100);
        let f = ControlFrame::close(1000, &long, Some([9, 9, 9, 9]));
        let h = parse_header(f.as_bytes()).unwrap().unwrap();
        assert!(h.len <= 125);
    }
}
