//! Request → pool: the first route whose conditions all hold.

use crate::config::Route;
use crate::handshake::header;

/// Picks the route (and so the pool) for a request; `None` = 404.
pub fn route<'r>(routes: &'r [Route], target: &str, host: &str, headers: &[httparse::Header<'_>]) -> Option<&'r Route> {
    let path = target.split('?').next().unwrap_or(target);
    let host = strip_port(host);
    routes.iter().find(|r| {
        let m = &r.matcher;
        m.path_prefix.as_deref().is_none_or(|p| path.starts_with(p))
            && m.host.as_deref().is_none_or(|h| h.eq_ignore_ascii_case(host))
            && m.header
                .as_ref()
                .is_none_or(|hm| header(headers, &hm.name).is_some_and(|v| v == hm.value.as_bytes()))
    })
}

/// `example.com:8080` → `example.com`; `[::1]:80` → `[::1]`.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_once(']').map(|(h, _)| &host[..h.len() + 1]).unwrap_or(host);
    }
    host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HeaderMatch, RouteMatch};

    #[test]
    fn first_match_wins() {
        let routes = vec![
            Route {
                matcher: RouteMatch {
                    path_prefix: Some("/chat".into()),
                    host: Some("chat.example.com".into()),
                    header: None,
                },
                pool: "chat".into(),
                http: Default::default(),
                limits: Default::default(),
            },
            Route {
                matcher: RouteMatch {
                    header: Some(HeaderMatch {
                        name: "X-Tenant".into(),
                        value: "a".into(),
                    }),
                    ..Default::default()
                },
                pool: "tenant".into(),
                http: Default::default(),
                limits: Default::default(),
            },
            Route {
                matcher: RouteMatch {
                    path_prefix: Some("/only".into()),
                    ..Default::default()
                },
                pool: "only".into(),
                http: Default::default(),
                limits: Default::default(),
            },
        ];
        let pool = |target, host, h: &[httparse::Header<'_>]| route(&routes, target, host, h).map(|r| r.pool.clone());
        assert_eq!(pool("/chat/1?x", "Chat.Example.com:443", &[]).as_deref(), Some("chat"));
        assert_eq!(pool("/chat", "other", &[]), None);
        let h = [httparse::Header {
            name: "x-tenant",
            value: b"a",
        }];
        assert_eq!(pool("/x", "h", &h).as_deref(), Some("tenant"));
        assert_eq!(pool("/only/x", "h", &[]).as_deref(), Some("only"));
        assert_eq!(strip_port("[::1]:80"), "[::1]");
    }
}
