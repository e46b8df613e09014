//! Reading an HTTP head (request or response) into a bounded buffer.

use tokio::io::{AsyncRead, AsyncReadExt};

/// Why a head could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    /// More than the limit arrived without the blank line.
    #[error("head larger than {0} bytes")]
    TooLarge(usize),
    /// The peer closed before the head was complete.
    #[error("connection closed before the head was complete")]
    Closed,
    /// A socket error.
    #[error("read error: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads until the blank line ending an HTTP head. Returns the buffer and the head's length;
/// bytes after it (pipelined frames) stay in the buffer. The buffer starts small and grows
/// only as data arrives, never past `limit` (+ one read of slack).
pub async fn read_head<S: AsyncRead + Unpin>(s: &mut S, limit: usize) -> Result<(Vec<u8>, usize), HeadError> {
    let mut buf: Vec<u8> = Vec::with_capacity(1024.min(limit));
    let mut scanned: usize = 0;
    loop {
        if buf.len() == buf.capacity() {
            if buf.len() >= limit {
                return Err(HeadError::TooLarge(limit));
            }
            buf.reserve((buf.capacity()).min(limit - buf.len()).max(256));
        }
        let n = s.read_buf(&mut buf).await?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
        // Look for CRLFCRLF from a little before the new bytes.
        let from = scanned.saturating_sub(3);
        if let Some(i) = buf[from..].windows(4).position(|w| w == b"\r\n\r\n") {
            let end = from + i + 4;
            if end > limit {
                return Err(HeadError::TooLarge(limit));
            }
            return Ok((buf, end));
        }
        scanned = buf.len();
        if buf.len() > limit {
            return Err(HeadError::TooLarge(limit));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_head_and_keeps_the_rest() {
        let data = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nEXTRA".to_vec();
        let (buf, end) = read_head(&mut &data[..], 1024).await.unwrap();
        assert_eq!(&buf[end..], b"EXTRA");
    }

    #[tokio::test]
    async fn refuses_oversized_heads() {
        let mut data = b"GET / HTTP/1.1\r\n".to_vec();
        data.extend(std::iter::repeat_n(b'a', 5000));
        assert!(matches!(read_head(&mut &data[..], 1024).await, Err(HeadError::TooLarge(1024))));
        assert!(matches!(read_head(&mut &b"GET /"[..], 1024).await, Err(HeadError::Closed)));
    }
}
