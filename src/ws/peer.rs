//! A small, allocation-happy WebSocket endpoint for the proxy's own use off the hot path:
//! the demo's echo backends and load, and the websocket health check.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::frame::{apply_mask, parse_header, write_header, Opcode};
use crate::handshake::{accept_key, header, read_head, validate, MAX_HEADERS};

/// Largest frame payload this endpoint accepts.
pub const MAX_PAYLOAD: u64 = 16 * 1024 * 1024;

/// A frame read by [`read_frame`], payload unmasked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// FIN bit.
    pub fin: bool,
    /// Opcode.
    pub opcode: Opcode,
    /// Unmasked payload.
    pub payload: Vec<u8>,
}

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Reads one frame, using `pending` for bytes already read past the previous one.
pub async fn read_frame<S: AsyncRead + Unpin>(s: &mut S, pending: &mut Vec<u8>) -> io::Result<Frame> {
    loop {
        if let Some(h) = parse_header(pending).map_err(|_| invalid("bad frame length"))? {
            if h.len > MAX_PAYLOAD {
                return Err(invalid("frame too large"));
            }
            let total = h.header_len + h.len as usize;
            if pending.len() >= total {
                let mut payload = pending[h.header_len..total].to_vec();
                if let Some(m) = h.mask {
                    apply_mask(&mut payload, m, 0);
                }
                pending.drain(..total);
                return Ok(Frame {
                    fin: h.fin,
                    opcode: h.opcode,
                    payload,
                });
            }
        }
        let mut chunk = [0u8; 8192];
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        pending.extend_from_slice(&chunk[..n]);
    }
}

/// One whole frame's bytes, masked with `mask` when given (as a client sends).
pub fn frame_bytes(fin: bool, opcode: Opcode, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![0u8; 14 + payload.len()];
    let h = write_header(&mut out, fin, opcode, mask, payload.len() as u64);
    out[h..h + payload.len()].copy_from_slice(payload);
    if let Some(m) = mask {
        apply_mask(&mut out[h..h + payload.len()], m, 0);
    }
    out.truncate(h + payload.len());
    out
}

/// Writes one frame (masked with a random key when `masked`).
pub async fn write_frame<S: AsyncWrite + Unpin>(s: &mut S, fin: bool, opcode: Opcode, payload: &[u8], masked: bool) -> io::Result<()> {
    let mask = masked.then(rand::random::<[u8; 4]>);
    s.write_all(&frame_bytes(fin, opcode, payload, mask)).await
}

/// Client side of the opening handshake on `path`; returns bytes read past the 101.
pub async fn client_handshake<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, host: &str, path: &str) -> io::Result<Vec<u8>> {
    let key = crate::handshake::new_key();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let (buf, end) = read_head(s, 16 * 1024).await.map_err(io::Error::other)?;
    let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut hs);
    resp.parse(&buf[..end]).map_err(|_| invalid("unparsable response"))?;
    if resp.code != Some(101) {
        return Err(invalid("no 101"));
    }
    let headers: &[httparse::Header<'_>] = resp.headers;
    if header(headers, "sec-websocket-accept").map(<[u8]>::trim_ascii) != Some(&accept_key(&key)[..]) {
        return Err(invalid("wrong Sec-WebSocket-Accept"));
    }
    Ok(buf[end..].to_vec())
}

/// What an incoming request to [`serve_echo`] was.
enum Incoming {
    Upgrade(Vec<u8>),
    Http(String),
}

async fn server_handshake<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> io::Result<Incoming> {
    let (buf, end) = read_head(s, 16 * 1024).await.map_err(io::Error::other)?;
    let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut hs);
    req.parse(&buf[..end]).map_err(|_| invalid("unparsable request"))?;
    let up = match validate(&req) {
        Ok(u) => u,
        Err(_) => return Ok(Incoming::Http(req.path.unwrap_or("/").to_string())),
    };
    let acc = accept_key(up.key);
    let mut out = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ".to_vec();
    out.extend_from_slice(&acc);
    out.extend_from_slice(b"\r\n\r\n");
    s.write_all(&out).await?;
    Ok(Incoming::Upgrade(buf[end..].to_vec()))
}

/// A page that opens a WebSocket back to where it came from and echoes through it: the
/// demo's plain-HTTP and WebSocket paths through the balancer, in one browser tab.
const ECHO_PAGE: &str = "<!doctype html><meta charset=utf-8><title>Switchyard demo</title>\
<body style=\"font:16px system-ui;margin:2rem\"><h1>Echo through Switchyard</h1>\
<p>This page came through the balancer as plain HTTP; the messages below go through it as WebSocket.</p>\
<input id=m value=hello> <button id=b>send</button><pre id=o></pre><script>\
const o=document.getElementById('o');const ws=new WebSocket('ws://'+location.host+'/echo');\
ws.onopen=()=>{o.textContent+='connected\\n';ws.send('hello from the demo page')};ws.onmessage=e=>o.textContent+='echo: '+e.data+'\\n';\
ws.onclose=e=>o.textContent+='closed '+e.code+'\\n';\
document.getElementById('b').onclick=()=>ws.send(document.getElementById('m').value);</script>";

/// Serves one connection as an echo backend: data messages come back as sent, pings are
/// answered, a close is returned. A plain HTTP GET gets `200 ok` (for health checks), the
/// text of `load` for `/load`, or a small echo page for `/`.
pub async fn serve_echo<S: AsyncRead + AsyncWrite + Unpin>(s: S, load: Option<&str>) -> io::Result<()> {
    serve_echo_named(s, load, None).await
}

/// As [`serve_echo`], except that a text message `whoami` is answered with `name` when one
/// is given (the chaos run asks which backend process each of its connections reached).
pub async fn serve_echo_named<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, load: Option<&str>, name: Option<&str>) -> io::Result<()> {
    let mut pending = match server_handshake(&mut s).await? {
        Incoming::Upgrade(p) => p,
        Incoming::Http(path) => {
            let (body, kind) = match path.as_str() {
                "/load" => (load.unwrap_or("0"), "text/plain"),
                "/" => (ECHO_PAGE, "text/html; charset=utf-8"),
                _ => ("ok", "text/plain"),
            };
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            s.write_all(resp.as_bytes()).await?;
            return s.shutdown().await;
        }
    };
    loop {
        let f = read_frame(&mut s, &mut pending).await?;
        match f.opcode {
            Opcode::Ping => write_frame(&mut s, true, Opcode::Pong, &f.payload, false).await?,
            Opcode::Close => {
                write_frame(&mut s, true, Opcode::Close, &f.payload, false).await?;
                return s.shutdown().await;
            }
            Opcode::Pong => {}
            Opcode::Text if f.fin && f.payload == b"whoami" => {
                let answer = name.map_or(&f.payload[..], str::as_bytes);
                write_frame(&mut s, true, Opcode::Text, answer, false).await?
            }
            op => write_frame(&mut s, f.fin, op, &f.payload, false).await?,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn ask(name: Option<&'static str>, text: &[u8]) -> Frame {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(serve_echo_named(server, None, name));
        let mut pending = client_handshake(&mut client, "test", "/").await.expect("101");
        write_frame(&mut client, true, Opcode::Text, text, true).await.expect("write");
        read_frame(&mut client, &mut pending).await.expect("answer")
    }

    #[tokio::test]
    async fn a_named_echo_answers_whoami_with_its_name_and_echoes_the_rest() {
        assert_eq!(ask(Some("b1 pid 7"), b"whoami").await.payload, b"b1 pid 7");
        assert_eq!(ask(Some("b1 pid 7"), b"whoami?").await.payload, b"whoami?");
        let unnamed = ask(None, b"whoami").await;
        assert_eq!((unnamed.opcode, unnamed.payload), (Opcode::Text, b"whoami".to_vec()));
    }
}
