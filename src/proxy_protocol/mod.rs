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

mod v1;
mod v2;

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt};

pub use v2::V2Header;

/// Longest v1 header, `\r\n` included (specification §2.1).
pub const V1_MAX: usize = 107;
/// Longest v2 header accepted: the 16-byte preamble and up to 2,032 bytes of addresses and
/// TLVs (the specification allows 65,535; HAProxy's own SSL and unique-id TLVs take a few
/// hundred at most).
pub const V2_MAX: usize = 2048;
/// Shortest possible header (`PROXY UNKNOWN\r\n`): what is read first.
pub(crate) const MIN_LEN: usize = 15;

/// The v2 signature (specification §2.2).
pub const V2_SIGNATURE: [u8; 12] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A];

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
        Some(b'P') => v1::parse(buf),
        Some(0x0D) => v2::parse(buf),
        Some(_) => Err(ParseError::Invalid(Invalid::Missing)),
    }
}

pub(crate) fn invalid<T>(why: Invalid) -> Result<T, ParseError> {
    Err(ParseError::Invalid(why))
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
mod tests;
