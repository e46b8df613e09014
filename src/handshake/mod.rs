//! The client's upgrade request: read it within limits ([`read_head`]), validate it
//! against RFC 6455 §4.2.1 ([`validate`]), answer refusals ([`Refusal`]), and compute or
//! verify `Sec-WebSocket-Accept`.

mod accept;
mod head;

pub use accept::{accept_key, key_is_valid, new_key};
pub use head::{read_head, HeadError};

/// Most headers a request may carry (more is a 431: each is a slot, not an allocation).
pub const MAX_HEADERS: usize = 64;

/// Why the balancer answers a client with an HTTP error instead of a 101 — the whole
/// "What a client gets" table for handshakes, one variant per row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 400: not a GET, missing/malformed Host, Upgrade, Connection or key.
    BadRequest(&'static str),
    /// 426 with `Sec-WebSocket-Version: 13`.
    UnsupportedVersion,
    /// 403: `Origin` not in `allowed_origins`.
    ForbiddenOrigin,
    /// 404: no route matches.
    NoRoute,
    /// 408: the head was not complete within `handshake_timeout`.
    Timeout,
    /// 408: a plain request's body stopped arriving for `request_timeout` (the client's
    /// doing, never the backend's).
    BodyTimeout,
    /// 405: a method a reverse proxy does not forward (`CONNECT`).
    MethodNotAllowed,
    /// 431: the head is larger than `max_request_header_bytes` (or has too many headers).
    HeadTooLarge,
    /// 502: the backend answered something other than a valid 101 (or, for plain HTTP,
    /// no valid response).
    BadGateway(&'static str),
    /// 413: a plain request's body is over `max_request_body_bytes`.
    BodyTooLarge,
    /// 504: no response head from the backend within `request_timeout` (plain HTTP).
    GatewayTimeout,
    /// 503 with `Retry-After`: over the hard ceiling of pending connections.
    Overloaded {
        /// Seconds for `Retry-After`.
        retry_after_s: u64,
    },
}

impl Refusal {
    /// Status code and reason phrase.
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            Refusal::BadRequest(_) => (400, "Bad Request"),
            Refusal::ForbiddenOrigin => (403, "Forbidden"),
            Refusal::NoRoute => (404, "Not Found"),
            Refusal::Timeout | Refusal::BodyTimeout => (408, "Request Timeout"),
            Refusal::MethodNotAllowed => (405, "Method Not Allowed"),
            Refusal::UnsupportedVersion => (426, "Upgrade Required"),
            Refusal::HeadTooLarge => (431, "Request Header Fields Too Large"),
            Refusal::BodyTooLarge => (413, "Content Too Large"),
            Refusal::BadGateway(_) => (502, "Bad Gateway"),
            Refusal::Overloaded { .. } => (503, "Service Unavailable"),
            Refusal::GatewayTimeout => (504, "Gateway Timeout"),
        }
    }

    /// Label for `switchyard_handshake_failures_total{reason}`.
    pub fn metric_reason(&self) -> &'static str {
        match self {
            Refusal::BadRequest(_) => "bad_request",
            Refusal::UnsupportedVersion => "version",
            Refusal::ForbiddenOrigin => "origin",
            Refusal::NoRoute => "no_route",
            Refusal::Timeout => "timeout",
            Refusal::BodyTimeout => "body_timeout",
            Refusal::MethodNotAllowed => "method",
            Refusal::HeadTooLarge => "too_large",
            Refusal::BadGateway(_) => "bad_gateway",
            Refusal::Overloaded { .. } => "overloaded",
            Refusal::BodyTooLarge => "body_too_large",
            Refusal::GatewayTimeout => "gateway_timeout",
        }
    }

    /// The body text of the answer.
    pub fn body(&self) -> String {
        match self {
            Refusal::BadRequest(why) => format!("bad request: {why}\n"),
            Refusal::UnsupportedVersion => "unsupported Sec-WebSocket-Version; this server speaks 13\n".into(),
            Refusal::ForbiddenOrigin => "origin not allowed\n".into(),
            Refusal::NoRoute => "no route for this request\n".into(),
            Refusal::Timeout => "request head not received in time\n".into(),
            Refusal::BodyTimeout => "request body not received in time\n".into(),
            Refusal::MethodNotAllowed => "method not allowed through this proxy\n".into(),
            Refusal::HeadTooLarge => "request head too large\n".into(),
            Refusal::BadGateway(why) => format!("bad gateway: {why}\n"),
            Refusal::Overloaded { .. } => "overloaded, try again later\n".into(),
            Refusal::BodyTooLarge => "request body too large\n".into(),
            Refusal::GatewayTimeout => "the backend did not answer in time\n".into(),
        }
    }

    /// Headers the answer carries beside its body (RFC 6455 §4.4 for 426; `Retry-After`
    /// for 503), whichever way it is written.
    pub fn extra_header(&self) -> Option<(&'static str, String)> {
        match self {
            Refusal::UnsupportedVersion => Some(("Sec-WebSocket-Version", "13".to_string())),
            Refusal::Overloaded { retry_after_s } => Some(("Retry-After", retry_after_s.to_string())),
            Refusal::MethodNotAllowed => Some(("Allow", "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS".to_string())),
            _ => None,
        }
    }

    /// The whole HTTP response, `Connection: close`.
    pub fn response(&self) -> String {
        let (code, phrase) = self.status();
        let body = self.body();
        let extra = self.extra_header().map_or(String::new(), |(n, v)| format!("{n}: {v}\r\n"));
        format!(
            "HTTP/1.1 {code} {phrase}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
            body.len()
        )
    }
}

/// The parts of a valid upgrade request the proxy needs later.
#[derive(Debug, Clone, Copy)]
pub struct Upgrade<'a> {
    /// Request target (path and query).
    pub target: &'a str,
    /// `Host` value.
    pub host: &'a str,
    /// `Sec-WebSocket-Key` value.
    pub key: &'a str,
    /// `Origin`, if sent.
    pub origin: Option<&'a str>,
}

/// Finds a header by case-insensitive name.
pub fn header<'a>(headers: &[httparse::Header<'a>], name: &str) -> Option<&'a [u8]> {
    headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value)
}

/// Does a comma-separated header value contain `token` (case-insensitive)?
pub fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Does any `name` header line list `token`? Several lines of one header are one
/// comma-separated list (RFC 9110 §5.3): `Connection: keep-alive` and `Connection: Upgrade`
/// on two lines hold `upgrade`.
pub fn any_has_token(headers: &[httparse::Header<'_>], name: &str, token: &str) -> bool {
    headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case(name) && has_token(h.value, token))
}

/// Is this request a WebSocket handshake attempt: an `Upgrade` list naming `websocket`, or
/// a `Sec-WebSocket-Key` or `-Version`? Those take the WebSocket path, where a malformed one
/// gets the `400` naming its header; anything else is plain HTTP.
pub fn wants_websocket(headers: &[httparse::Header<'_>]) -> bool {
    any_has_token(headers, "upgrade", "websocket")
        || header(headers, "sec-websocket-key").is_some()
        || header(headers, "sec-websocket-version").is_some()
}

/// Headers a request may carry at most once, with the 400 body naming them.
const ONCE_ONLY: [(&str, &str); 3] = [
    ("host", "duplicated Host header"),
    ("sec-websocket-key", "duplicated Sec-WebSocket-Key header"),
    ("sec-websocket-version", "duplicated Sec-WebSocket-Version header"),
];

/// The 400 body of a request whose `Connection` names `Host`.
pub const HOST_IN_CONNECTION: &str = "Connection must not name Host";

/// Does `Connection` name `Host`? A proxy would remove the Host it routed on (RFC 9110
/// §7.6.1), and the backend would get a request without one.
pub fn host_is_hop_by_hop(headers: &[httparse::Header<'_>]) -> bool {
    any_has_token(headers, "connection", "host")
}

/// The request's `Host`, trimmed; `None` when absent, empty or not UTF-8.
pub fn host<'a>(headers: &[httparse::Header<'a>]) -> Option<&'a str> {
    header(headers, "host")
        .and_then(|v| std::str::from_utf8(v).ok())
        .map(str::trim)
        .filter(|h| !h.is_empty())
}

/// Checks a parsed request against RFC 6455 §4.2.1 and the contract's table.
pub fn validate<'a>(req: &httparse::Request<'a, '_>) -> Result<Upgrade<'a>, Refusal> {
    if req.method != Some("GET") {
        return Err(Refusal::BadRequest("method must be GET"));
    }
    // RFC 6455 §4.1: the opening handshake is an HTTP/1.1 request (HTTP/1.0 has no upgrade).
    if req.version != Some(1) {
        return Err(Refusal::BadRequest("WebSocket upgrades need HTTP/1.1"));
    }
    let target = req.path.unwrap_or("/");
    let headers: &[httparse::Header<'a>] = req.headers;
    // RFC 6455 §11.3.1 and §4.1 allow the key and the version once, RFC 9112 §3.2 the Host:
    // the balancer validates the first, so a second one must not reach the backend.
    for (name, why) in ONCE_ONLY {
        if headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name)).nth(1).is_some() {
            return Err(Refusal::BadRequest(why));
        }
    }
    // RFC 6455 §4.1: the opening handshake is a GET without a body. One declared anyway
    // would have the backend wait for bytes the relay treats as frames: refused here, so no
    // client can hold a backend's handshake open (and get it blamed for the timeout).
    if headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("transfer-encoding") || (h.name.eq_ignore_ascii_case("content-length") && h.value.trim_ascii() != b"0")
    }) {
        return Err(Refusal::BadRequest(
            "a WebSocket upgrade carries no body (Content-Length or Transfer-Encoding)",
        ));
    }
    let host = host(headers).ok_or(Refusal::BadRequest("missing Host header"))?;
    if host_is_hop_by_hop(headers) {
        return Err(Refusal::BadRequest(HOST_IN_CONNECTION));
    }
    if !any_has_token(headers, "upgrade", "websocket") {
        return Err(Refusal::BadRequest("missing or invalid Upgrade header (need: websocket)"));
    }
    if !any_has_token(headers, "connection", "upgrade") {
        return Err(Refusal::BadRequest("missing or invalid Connection header (need: Upgrade)"));
    }
    let key = header(headers, "sec-websocket-key")
        .and_then(|v| std::str::from_utf8(v).ok())
        .map(str::trim)
        .filter(|k| key_is_valid(k))
        .ok_or(Refusal::BadRequest(
            "missing or invalid Sec-WebSocket-Key header (must be base64 of 16 bytes)",
        ))?;
    if header(headers, "sec-websocket-version").map(<[u8]>::trim_ascii) != Some(b"13") {
        return Err(Refusal::UnsupportedVersion);
    }
    let origin = header(headers, "origin").and_then(|v| std::str::from_utf8(v).ok());
    Ok(Upgrade { target, host, key, origin })
}

/// Is `origin` allowed by the listener's list (`None` = any)? An absent `Origin` is refused
/// when a list is set: browsers always send it, so its absence is not a browser.
pub fn origin_allowed(allowed: Option<&[String]>, origin: Option<&str>) -> bool {
    match allowed {
        None => true,
        Some(list) => origin.is_some_and(|o| list.iter().any(|a| a.eq_ignore_ascii_case(o.trim()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(raw: &str) -> Result<String, Refusal> {
        let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut hs);
        req.parse(raw.as_bytes()).unwrap();
        validate(&req).map(|u| u.target.to_string())
    }

    const GOOD: &str = "GET /chat?x=1 HTTP/1.1\r\nHost: a\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

    #[test]
    fn accepts_a_good_request() {
        assert_eq!(check(GOOD).unwrap(), "/chat?x=1");
    }

    #[test]
    fn each_bad_header_is_named() {
        let cases = [
            (GOOD.replace("GET", "POST"), "GET"),
            (GOOD.replace("Host: a\r\n", ""), "Host"),
            (GOOD.replace("Upgrade: WebSocket\r\n", ""), "Upgrade"),
            (GOOD.replace("keep-alive, Upgrade", "keep-alive"), "Connection"),
            (GOOD.replace("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ="), "Sec-WebSocket-Key"),
            (
                GOOD.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""),
                "Sec-WebSocket-Key",
            ),
        ];
        for (raw, name) in cases {
            match check(&raw) {
                Err(r @ Refusal::BadRequest(_)) => assert!(r.response().contains(name), "{name}: {}", r.response()),
                other => panic!("{name}: {other:?}"),
            }
        }
        assert_eq!(check(&GOOD.replace("Version: 13", "Version: 8")), Err(Refusal::UnsupportedVersion));
        for (line, name) in [
            ("Host: b\r\n", "Host"),
            ("Sec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4PEA==\r\n", "Sec-WebSocket-Key"),
            ("sec-websocket-version: 13\r\n", "Sec-WebSocket-Version"),
        ] {
            let raw = GOOD.replace("\r\n\r\n", &format!("\r\n{line}\r\n"));
            match check(&raw) {
                Err(r @ Refusal::BadRequest(_)) => assert!(r.response().contains(&format!("duplicated {name}")), "{}", r.response()),
                other => panic!("{name}: {other:?}"),
            }
        }
        assert!(Refusal::UnsupportedVersion.response().contains("Sec-WebSocket-Version: 13\r\n"));
        match check(&GOOD.replace("HTTP/1.1", "HTTP/1.0")) {
            Err(r @ Refusal::BadRequest(_)) => assert!(r.body().contains("HTTP/1.1"), "{}", r.body()),
            other => panic!("HTTP/1.0: {other:?}"),
        }
        for body in [
            "Content-Length: 64\r\n",
            "Transfer-Encoding: chunked\r\n",
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        ] {
            match check(&GOOD.replace("\r\n\r\n", &format!("\r\n{body}\r\n"))) {
                Err(r @ Refusal::BadRequest(_)) => assert!(r.body().contains("carries no body"), "{}", r.body()),
                other => panic!("{body}: {other:?}"),
            }
        }
        assert!(check(&GOOD.replace("\r\n\r\n", "\r\nContent-Length: 0\r\n\r\n")).is_ok());
        match check(&GOOD.replace("keep-alive, Upgrade", "Upgrade, Host")) {
            Err(r @ Refusal::BadRequest(_)) => assert_eq!(r.body(), format!("bad request: {HOST_IN_CONNECTION}\n")),
            other => panic!("Connection: host: {other:?}"),
        }
    }

    #[test]
    fn header_lists_span_lines() {
        let two_lines = GOOD.replace(
            "Connection: keep-alive, Upgrade\r\n",
            "Connection: keep-alive\r\nConnection: Upgrade\r\n",
        );
        assert_eq!(check(&two_lines).unwrap(), "/chat?x=1");
        let split_upgrade = GOOD.replace("Upgrade: WebSocket\r\n", "Upgrade: h2c\r\nUpgrade: websocket\r\n");
        assert_eq!(check(&split_upgrade).unwrap(), "/chat?x=1");
    }

    #[test]
    fn origins() {
        let list = vec!["https://app.example.com".to_string()];
        assert!(origin_allowed(None, None));
        assert!(origin_allowed(Some(&list), Some("https://app.example.com")));
        assert!(!origin_allowed(Some(&list), Some("https://evil.example.com")));
        assert!(!origin_allowed(Some(&list), None));
    }
}
