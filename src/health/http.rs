//! A minimal HTTP/1.1 GET over an already open backend connection, for the `http` check
//! and the custom-load poller: one request, `Connection: close`, a bounded body.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::handshake::{has_token, header, read_head, MAX_HEADERS};

/// Largest response head read.
const MAX_HEAD: usize = 16 * 1024;

/// A response: its status and (at most `max_body` bytes of) its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Body, decoded from chunked encoding when used; truncated at the caller's limit.
    pub body: Vec<u8>,
}

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Sends `GET path` with `Host: host` and reads the answer. With `max_body = 0` only the
/// status line and headers are read (the check needs nothing more).
pub async fn get<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, host: &str, path: &str, max_body: usize) -> io::Result<Response> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: switchyard-health\r\nAccept: */*\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let (buf, end) = read_head(s, MAX_HEAD).await.map_err(io::Error::other)?;
    let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut hs);
    match resp.parse(&buf[..end]) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(invalid("unparsable response head")),
    }
    let status = resp.code.ok_or_else(|| invalid("no status code"))?;
    if max_body == 0 {
        return Ok(Response { status, body: Vec::new() });
    }
    let headers: &[httparse::Header<'_>] = resp.headers;
    let chunked = header(headers, "transfer-encoding").is_some_and(|v| has_token(v, "chunked"));
    let length = header(headers, "content-length")
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    // Read what the body needs: the announced length, or until the peer closes.
    let want = if chunked { usize::MAX } else { length.unwrap_or(usize::MAX) };
    let mut raw = buf[end..].to_vec();
    let cap = if chunked {
        max_body.saturating_mul(2).saturating_add(256)
    } else {
        max_body
    };
    let mut chunk = [0u8; 2048];
    while raw.len() < want.min(cap) && !(chunked && chunked_complete(&raw)) {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&chunk[..n]);
    }
    let mut body = if chunked { decode_chunked(&raw) } else { raw };
    body.truncate(want.min(max_body));
    Ok(Response { status, body })
}

/// Has a chunked body reached its last (zero-length) chunk?
fn chunked_complete(raw: &[u8]) -> bool {
    walk_chunks(raw).1
}

/// Concatenates the chunks present in `raw` (an incomplete last chunk is cut off).
fn decode_chunked(raw: &[u8]) -> Vec<u8> {
    walk_chunks(raw).0
}

/// Decodes chunks from the start of `raw`: (data so far, whether the final chunk was seen).
/// Chunk extensions are ignored; trailers are not read.
fn walk_chunks(raw: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut rest = raw;
    loop {
        let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
            return (out, false);
        };
        let size_text = rest[..eol].split(|&c| c == b';').next().unwrap_or_default();
        let Some(size) = std::str::from_utf8(size_text)
            .ok()
            .and_then(|t| usize::from_str_radix(t.trim(), 16).ok())
        else {
            return (out, false);
        };
        if size == 0 {
            return (out, true);
        }
        let data = &rest[eol + 2..];
        if data.len() < size {
            out.extend_from_slice(data);
            return (out, false);
        }
        out.extend_from_slice(&data[..size]);
        rest = data.get(size + 2..).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn answer(raw: &'static [u8], max_body: usize) -> io::Result<Response> {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let srv = tokio::spawn(async move {
            let _ = read_head(&mut server, MAX_HEAD).await;
            server.write_all(raw).await.unwrap();
            server.shutdown().await.unwrap();
        });
        let r = get(&mut client, "b:1", "/load", max_body).await;
        srv.await.unwrap();
        r
    }

    #[tokio::test]
    async fn reads_status_and_bodies() {
        let r = answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n42", 64).await.unwrap();
        assert_eq!((r.status, &r.body[..]), (200, &b"42"[..]));
        let r = answer(b"HTTP/1.1 503 Busy\r\n\r\n", 0).await.unwrap();
        assert_eq!((r.status, r.body.len()), (503, 0));
        let r = answer(b"HTTP/1.1 200 OK\r\n\r\nuntil close", 64).await.unwrap();
        assert_eq!(r.body, b"until close");
        let r = answer(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;x=y\r\n75\r\n1\r\n%\r\n0\r\n\r\n",
            64,
        )
        .await
        .unwrap();
        assert_eq!(r.body, b"75%");
        let r = answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789", 4).await.unwrap();
        assert_eq!(r.body, b"0123");
        assert!(answer(b"garbage\r\n\r\n", 64).await.is_err());
        assert!(answer(b"HTTP/1.1 200", 64).await.is_err());
    }
}
