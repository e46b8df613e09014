//! Tests of the config decoder: the contract example, error positions, hints, collected errors.

use std::path::PathBuf;
use std::time::Duration;

use super::*;

/// The example of the contract (spec/contract.md, "Config file").
const CONTRACT_EXAMPLE: &str = r#"
listeners:
  - name: public                 # unique
    bind: "127.0.0.1:8080"
    tls:                         # optional: terminate TLS (wss://)
      cert: certs/server.pem
      key: certs/server.key
    routes:                      # first match wins; a route with no `match` catches all
      - match: { path_prefix: /chat, host: chat.example.com, header: { name: X-Tenant, value: a } }
        pool: chat
      - pool: default
    allowed_origins: ["https://app.example.com"]   # optional; absent = any Origin

admin:
  bind: "127.0.0.1:9090"         # /metrics, /healthz, /api/..., dashboard at /

pools:
  chat:
    algorithm: hash
    hash:
      key: cookie:user_id
      bounded_load: 1.25
    backends:
      - address: "127.0.0.1:9101"
  default:
    algorithm: least_connections
    backends:
      - address: "127.0.0.1:9001"   # host:port; ws:// implied, `tls: true` for wss to the backend
        weight: 1                   # default 1
        max_connections: 10000      # optional per-backend cap
      - address: "127.0.0.1:9002"
    health_check:                # optional; absent = passive checks only
      kind: websocket            # tcp | http | websocket
      path: /health              # for http and websocket
      interval: 2s
      timeout: 1s
      rise: 2                    # consecutive successes to mark up
      fall: 3                    # consecutive failures to mark down
    slow_start: 30s              # optional: ramp a recovered/new backend's share

limits:
  max_connections: 100000                # whole process
  max_connections_per_second: 5000       # new-connection rate (token bucket)
  handshake_timeout: 10s                 # client must send the full request head by then
  max_request_header_bytes: 16KiB
  max_message_bytes: 16MiB               # 0 = unlimited; over it: close 1009
  idle_timeout: 10m                      # no data frames either way: close 1001
  ping_interval: 30s                     # proxy pings the client; no pong in `ping_timeout`: close
  ping_timeout: 10s
  drain_timeout: 30s                     # on shutdown or backend drain

shedding:
  close_code: 1013                       # sent after completing the handshake
  retry_hint: 5s                         # jittered hint carried in the close reason
"#;

const MINIMAL: &str = "listeners:\n  - name: a\n    bind: 127.0.0.1:8080\n    routes:\n      - pool: p\npools:\n  p:\n    backends:\n      - address: 127.0.0.1:9001\n";

fn errors(text: &str) -> Vec<ConfigError> {
    match parse(text, Path::new("/etc/sy")) {
        Ok(c) => panic!("expected errors, got {c:?}"),
        Err(e) => e,
    }
}

/// Asserts one error at `line:col` whose message contains `msg`.
fn has(errs: &[ConfigError], line: usize, col: usize, msg: &str) -> ConfigError {
    errs.iter()
        .find(|e| e.line == line && e.col == col && e.message.contains(msg))
        .cloned()
        .unwrap_or_else(|| panic!("no error at {line}:{col} containing {msg:?} in {errs:#?}"))
}

/// MINIMAL with `extra` appended to the pool `p` (indented 4).
fn pool_with(extra: &str) -> String {
    format!("{MINIMAL}{extra}")
}

#[test]
fn contract_example_parses() {
    let c = parse(CONTRACT_EXAMPLE, Path::new("/etc/sy")).unwrap_or_else(|e| panic!("{e:#?}"));
    let l = &c.listeners[0];
    assert_eq!(l.name, "public");
    assert_eq!(l.bind, "127.0.0.1:8080".parse().unwrap());
    let tls = l.tls.as_ref().unwrap();
    assert_eq!(tls.certs[0].cert, PathBuf::from("/etc/sy/certs/server.pem"));
    assert_eq!(tls.certs[0].key, PathBuf::from("/etc/sy/certs/server.key"));
    assert!(tls.certs[0].sni.is_empty());
    assert_eq!(l.routes.len(), 2);
    assert_eq!(l.routes[0].matcher.path_prefix.as_deref(), Some("/chat"));
    assert_eq!(l.routes[0].matcher.host.as_deref(), Some("chat.example.com"));
    assert_eq!(
        l.routes[0].matcher.header,
        Some(HeaderMatch {
            name: "X-Tenant".into(),
            value: "a".into()
        })
    );
    assert_eq!(l.routes[0].pool, "chat");
    assert_eq!(
        l.routes[1],
        Route {
            matcher: RouteMatch::default(),
            pool: "default".into(),
            http: HttpMode::Proxy,
            limits: Default::default(),
        }
    );
    assert_eq!(l.allowed_origins, Some(vec!["https://app.example.com".to_string()]));
    assert_eq!(
        c.admin,
        Some(AdminConfig {
            bind: "127.0.0.1:9090".parse().unwrap(),
            hosts: Vec::new(),
            token: None,
            public_metrics: false,
            insecure: false,
        })
    );

    let chat = &c.pools["chat"];
    assert_eq!(chat.algorithm, Algorithm::Hash);
    assert_eq!(
        chat.hash,
        Some(HashConfig {
            key: HashKey::Cookie("user_id".into()),
            bounded_load: Some(1.25)
        })
    );
    let d = &c.pools["default"];
    assert_eq!(d.algorithm, Algorithm::LeastConnections);
    assert_eq!(d.hash, None);
    assert_eq!(d.backends[0].address, "127.0.0.1:9001");
    assert_eq!(d.backends[0].max_connections, Some(10_000));
    assert_eq!(d.backends[1].weight, 1);
    assert_eq!(d.backends[1].max_connections, None);
    let hc = d.health_check.as_ref().unwrap();
    assert_eq!((hc.kind, hc.path.as_str()), (CheckKind::WebSocket, "/health"));
    assert_eq!(
        (hc.interval, hc.timeout, hc.rise, hc.fall),
        (Duration::from_secs(2), Duration::from_secs(1), 2, 3)
    );
    assert_eq!(d.slow_start, Some(Duration::from_secs(30)));
    assert_eq!(d.connect_timeout, defaults::CONNECT_TIMEOUT);
    assert_eq!(d.max_attempts, defaults::MAX_ATTEMPTS);
    assert_eq!(d.rebalance, RebalanceConfig::default());

    // Every limit written in the example is the default.
    assert_eq!(c.limits, Limits::default());
    assert_eq!(c.shedding, Shedding::default());
    assert_eq!(c.process, ProcessConfig::default());
}

#[test]
fn minimal_gets_defaults() {
    let c = parse(MINIMAL, Path::new("")).unwrap_or_else(|e| panic!("{e:#?}"));
    assert_eq!(c.admin, None);
    let p = &c.pools["p"];
    assert_eq!(p.algorithm, Algorithm::LeastConnections);
    assert_eq!(p.health_check, None);
    assert_eq!(p.bandwidth_window, defaults::BANDWIDTH_WINDOW);
    assert_eq!(c.listeners[0].allowed_origins, None);
}

#[test]
fn empty_and_non_mapping_files() {
    for text in ["", "# nothing\n", "~\n", "- a\n- b\n", "just text\n"] {
        let e = errors(text);
        assert_eq!((e.len(), e[0].line, e[0].col), (1, 1, 1), "{text:?}: {e:?}");
    }
}

#[test]
fn empty_section_is_reported_at_its_key() {
    let e = errors(&format!("admin:\n{MINIMAL}"));
    has(&e, 1, 1, "`admin` is missing required key `bind`");
    // Empty optional sections mean "all defaults".
    assert!(parse(&format!("{MINIMAL}limits:\nshedding:\n"), Path::new("")).is_ok());
}

#[test]
fn unknown_keys_with_hints() {
    let e = errors(&pool_with("    algoritm: round_robin\n"));
    let err = has(&e, 10, 5, "unknown key `algoritm`");
    assert_eq!(err.hint.as_deref(), Some("did you mean `algorithm`?"));
    let e = errors(&format!("{MINIMAL}limit:\n  max_connections: 1\n"));
    assert_eq!(
        has(&e, 10, 1, "unknown key `limit`").hint.as_deref(),
        Some("did you mean `limits`?")
    );
}

#[test]
fn enum_values_with_hints() {
    let e = errors(&pool_with("    algorithm: round-robin\n"));
    assert_eq!(
        has(&e, 10, 16, "unknown algorithm `round-robin`").hint.as_deref(),
        Some("did you mean `round_robin`?")
    );
    let e = errors(&pool_with("    health_check:\n      kind: websockets\n"));
    assert_eq!(
        has(&e, 11, 13, "health check kind").hint.as_deref(),
        Some("did you mean `websocket`?")
    );
}

#[test]
fn undefined_pool_in_route() {
    let text = MINIMAL.replace("- pool: p", "- pool: q");
    let e = errors(&text);
    let err = has(&e, 5, 15, "pool `q`, which is not defined");
    assert_eq!(err.hint.as_deref(), Some("did you mean `p`?"));
}

#[test]
fn wrong_types_and_ranges() {
    let e = errors(&pool_with(
        "    max_attempts: {a: 1}\n    connect_timeout: 30\n    bandwidth_window: 0s\n",
    ));
    has(&e, 10, 19, "must be an integer, found a mapping");
    has(&e, 11, 22, "`30` needs a unit, e.g. `30s`");
    has(&e, 12, 23, "must be greater than 0");
    let e = errors(&MINIMAL.replace("127.0.0.1:9001", "127.0.0.1:9001\n        weight: 0\n        max_connections: -5"));
    has(&e, 10, 17, "weight must be at least 1");
    has(&e, 11, 26, "must be at least 1, found -5");
}

#[test]
fn bad_addresses() {
    let e = errors(
        &MINIMAL
            .replace("bind: 127.0.0.1:8080", "bind: localhost:80")
            .replace("127.0.0.1:9001", "10.0.0.1"),
    );
    has(&e, 3, 11, "not an IP:port address");
    has(&e, 9, 18, "needs a port");
}

#[test]
fn duplicates() {
    let text = format!("{MINIMAL}      - address: 127.0.0.1:9001\nadmin:\n  bind: 127.0.0.1:8080\n");
    let e = errors(&text.replace(
        "listeners:\n",
        "listeners:\n  - {name: a, bind: \"[::1]:0\", routes: [{pool: p}]}\n",
    ));
    has(&e, 3, 11, "listener name `a` is already used on line 2");
    has(&e, 11, 18, "backend `127.0.0.1:9001` is already listed on line 10");
    has(&e, 13, 9, "address 127.0.0.1:8080 is already bound on line 4");
}

#[test]
fn health_check_rules() {
    let e = errors(&pool_with(
        "    health_check:\n      kind: http\n      path: health\n      interval: 1s\n      timeout: 2s\n      rise: 0\n",
    ));
    has(&e, 12, 13, "must start with `/`");
    has(&e, 14, 16, "must not exceed the interval");
    has(&e, 15, 13, "must be at least 1");
    let e = errors(&pool_with("    health_check:\n      path: /x\n"));
    has(&e, 11, 7, "missing required key `kind`");
}

#[test]
fn hash_rules() {
    let e = errors(&pool_with("    hash:\n      key: \"cookie:\"\n"));
    has(&e, 10, 5, "`hash` only applies to algorithm `hash`");
    has(&e, 11, 12, "needs a name after `cookie:`");
    let e = errors(&pool_with("    algorithm: hash\n    hash: {key: headr:X, bounded_load: 1.0}\n"));
    assert_eq!(
        has(&e, 11, 17, "unknown hash key source").hint.as_deref(),
        Some("did you mean `header`?")
    );
    has(&e, 11, 40, "greater than 1.0");
    let c = parse(&pool_with("    algorithm: hash\n"), Path::new("")).unwrap();
    assert_eq!(
        c.pools["p"].hash,
        Some(HashConfig {
            key: HashKey::ClientIp,
            bounded_load: None
        })
    );
    let c = parse(&pool_with("    algorithm: custom_load\n"), Path::new("")).unwrap();
    assert_eq!(c.pools["p"].custom_load, Some(CustomLoadConfig::default()));
}

#[test]
fn limits_and_shedding() {
    let text = format!(
            "{MINIMAL}limits:\n  idle_timeout: off\n  ping_interval: 0s\n  max_request_header_bytes: 100\n  max_message_bytes: 0\nshedding:\n  close_code: 1005\n  evict_idle: yes\nprocess:\n  workers: -1\n"
        );
    let e = errors(&text);
    has(&e, 13, 29, "between 1KiB and 1MiB");
    has(&e, 16, 15, "reserved");
    has(&e, 17, 15, "must be `true` or `false`");
    has(&e, 19, 12, "must not be negative");
    assert_eq!(e.len(), 4, "{e:#?}");
    let ok = parse(
        &text
            .replace("100\n", "8KiB\n")
            .replace("1005", "4000")
            .replace("yes", "true")
            .replace("-1", "2"),
        Path::new(""),
    )
    .unwrap_or_else(|e| panic!("{e:#?}"));
    assert_eq!((ok.limits.idle_timeout, ok.limits.ping_interval), (None, None));
    assert_eq!((ok.limits.max_request_header_bytes, ok.limits.max_message_bytes), (8192, 0));
    assert_eq!(
        (ok.shedding.close_code, ok.shedding.evict_idle, ok.process.workers),
        (4000, true, 2)
    );
}

#[test]
fn listener_tls_forms_and_routes() {
    let text = MINIMAL.replace(
            "    routes:",
            "    tls:\n      certs:\n        - {cert: /abs/a.pem, key: a.key, sni: [a.example]}\n        - {cert: b.pem, key: b.key}\n    routes:",
        );
    let c = parse(&text, Path::new("base")).unwrap_or_else(|e| panic!("{e:#?}"));
    let certs = &c.listeners[0].tls.as_ref().unwrap().certs;
    assert_eq!(
        (certs[0].cert.clone(), certs[0].key.clone()),
        (PathBuf::from("/abs/a.pem"), PathBuf::from("base/a.key"))
    );
    assert_eq!(certs[0].sni, vec!["a.example".to_string()]);
    let e = errors(&MINIMAL.replace(
        "      - pool: p",
        "      - pool: p\n      - match: {path_prefix: chat}\n        pool: p",
    ));
    has(&e, 6, 9, "unreachable");
    has(&e, 6, 30, "must start with `/`");
}

#[test]
fn all_errors_are_reported_in_order() {
    let text = "listeners:\n  - name: a\n    bnd: 1.2.3.4:5\n    routes: []\npools:\n  p:\n    algorithm: fastest\n    backends: []\nshedding: {close_code: 999}\n";
    let e = errors(text);
    let positions: Vec<_> = e.iter().map(|e| (e.line, e.col)).collect();
    let mut sorted = positions.clone();
    sorted.sort();
    assert_eq!(positions, sorted);
    has(&e, 2, 5, "missing required key `bind`");
    has(&e, 3, 5, "unknown key `bnd`");
    has(&e, 4, 13, "at least one route");
    has(&e, 7, 16, "unknown algorithm `fastest`");
    has(&e, 8, 15, "at least one backend");
    has(&e, 9, 24, "between 1000 and 4999");
    assert_eq!(e.len(), 6, "{e:#?}");
}

#[test]
fn plain_http_and_stickiness_settings() {
    let yaml = "listeners:\n  - name: l\n    bind: \"127.0.0.1:0\"\n    routes:\n      - match: { path_prefix: /ws }\n        pool: p\n        http: reject\n      - pool: p\npools:\n  p:\n    algorithm: hash\n    hash: { key: \"path_segment:3\" }\n    sticky: { cookie: SYID, secret: s }\n    backends:\n      - address: \"127.0.0.1:9001\"\nlimits:\n  request_timeout: 5s\n  max_request_body_bytes: 1MiB\n  keepalive_timeout: 30s\n";
    let c = parse(yaml, &PathBuf::from(".")).unwrap();
    assert_eq!(c.listeners[0].routes[0].http, HttpMode::Reject);
    assert_eq!(c.listeners[0].routes[1].http, HttpMode::Proxy);
    let p = &c.pools["p"];
    assert_eq!(p.hash.as_ref().unwrap().key, HashKey::PathSegment(3));
    assert_eq!(
        p.sticky,
        Some(StickyConfig {
            cookie: "SYID".into(),
            secret: "s".into()
        })
    );
    assert_eq!(c.limits.request_timeout, Duration::from_secs(5));
    assert_eq!(c.limits.max_request_body_bytes, 1024 * 1024);
    assert_eq!(c.limits.keepalive_timeout, Duration::from_secs(30));
    let bad = yaml
        .replace("http: reject", "http: rejekt")
        .replace("path_segment:3", "path_segment:0")
        .replace("cookie: SYID", "cookie: \"a b\"");
    let errs = parse(&bad, &PathBuf::from(".")).unwrap_err();
    let text: Vec<String> = errs.iter().map(|e| e.render("f")).collect();
    assert_eq!(errs.len(), 3, "{text:?}");
    assert!(text[0].contains("did you mean `reject`"), "{text:?}");
}

#[test]
fn admin_off_loopback_needs_a_token() {
    let base = "listeners:\n  - name: l\n    bind: \"127.0.0.1:0\"\n    routes:\n      - pool: p\npools:\n  p:\n    backends:\n      - address: \"127.0.0.1:9001\"\nadmin:\n";
    let parse_admin = |admin: &str| parse(&format!("{base}{admin}"), &PathBuf::from("."));
    let errs = parse_admin("  bind: \"0.0.0.0:9090\"\n").unwrap_err();
    assert!(errs[0].message.contains("not a loopback address"), "{errs:?}");
    assert!(parse_admin("  bind: \"0.0.0.0:9090\"\n  insecure: true\n").is_ok());
    let c = parse_admin("  bind: \"0.0.0.0:9090\"\n  token: \"0123456789abcdef\"\n  public_metrics: true\n").unwrap();
    let a = c.admin.unwrap();
    assert_eq!((a.token.as_deref(), a.public_metrics), (Some("0123456789abcdef"), true));
    let errs = parse_admin("  bind: \"127.0.0.1:9090\"\n  token: short\n").unwrap_err();
    assert!(errs[0].message.contains("at least 16"), "{errs:?}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("t"), "  fedcba9876543210\n").unwrap();
    let c = parse(&format!("{base}  bind: \"127.0.0.1:9090\"\n  token_file: t\n"), dir.path()).unwrap();
    assert_eq!(
        c.admin.unwrap().token.as_deref(),
        Some("fedcba9876543210"),
        "read and trimmed, relative to the config"
    );
}

#[test]
fn dead_peer_settings() {
    let d = parse(MINIMAL, Path::new("")).unwrap();
    assert_eq!(
        (d.limits.tcp_keepalive, d.limits.backend_ping_interval),
        (Some(Duration::from_secs(60)), None)
    );
    let c = parse(
        &format!("{MINIMAL}limits:\n  tcp_keepalive: 20s\n  backend_ping_interval: 15s\n"),
        Path::new(""),
    )
    .unwrap();
    assert_eq!(
        (c.limits.tcp_keepalive, c.limits.backend_ping_interval),
        (Some(Duration::from_secs(20)), Some(Duration::from_secs(15)))
    );
    let off = parse(&format!("{MINIMAL}limits:\n  tcp_keepalive: off\n"), Path::new("")).unwrap();
    assert_eq!(off.limits.tcp_keepalive, None);
    let e = errors(&format!("{MINIMAL}limits:\n  tcp_keepalive: 500ms\n"));
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(e[0].message.contains("at least 1s"), "{e:#?}");
}

#[test]
fn discovery_entries_and_resolver() {
    let text = format!(
        "{MINIMAL}      - address: chat.example.com:9000\n        discover: dns\n        refresh: 2s\n        weight: 3\n        max_connections: 50\n      - srv: _ws._tcp.chat.example.com\n        tls: true\n      - address: plain.example.com:80\nresolver:\n  servers: [\"10.96.0.10:53\", \"fd00::10\", \"[fd00::11]:5353\"]\n  timeout: 500ms\n"
    );
    let c = parse(&text, Path::new("/etc/sy")).unwrap_or_else(|e| panic!("{e:#?}"));
    let b = &c.pools["p"].backends;
    assert_eq!(b[0].discover, None);
    assert_eq!(
        b[1].discover,
        Some(Discover::Hosts {
            name: "chat.example.com".into(),
            port: 9000,
            refresh: Duration::from_secs(2),
        })
    );
    assert_eq!((b[1].weight, b[1].max_connections), (3, Some(50)));
    assert_eq!(
        b[2].discover,
        Some(Discover::Srv {
            name: "_ws._tcp.chat.example.com".into(),
            refresh: defaults::DISCOVERY_REFRESH,
        })
    );
    assert_eq!(b[2].address, "_ws._tcp.chat.example.com");
    assert_eq!(b[2].discover.as_ref().unwrap().tls_name(), "chat.example.com");
    assert_eq!(b[3].discover, None, "a host name without `discover` is one backend, as before");
    let servers: Vec<SocketAddr> = ["10.96.0.10:53", "[fd00::10]:53", "[fd00::11]:5353"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(c.resolver.servers, Some(servers));
    assert_eq!(c.resolver.timeout, Duration::from_millis(500));
    // Absent: the system's resolv.conf, 2 s.
    assert_eq!(parse(MINIMAL, Path::new("/etc/sy")).unwrap().resolver, ResolverConfig::default());
}

#[test]
fn discovery_rules() {
    let e = errors(&format!(
        "{MINIMAL}      - address: 10.0.0.1:80\n        discover: dns\n      - address: a.example:80\n        discover: dsn\n      - address: b.example:80\n        refresh: 1s\n      - srv: _ws._tcp.c.example\n        address: c.example:80\n      - srv: _ws._tcp.d.example\n        weight: 2\n        discover: dns\n      - srv: \"bad name!\"\n      - address: e.example:80\n        discover: dns\n        refresh: 10ms\n      - weight: 1\n      - srv: _ws._tcp.d.example\nresolver:\n  servers: [dns.example]\n  timeout: 0s\n"
    ));
    has(&e, 11, 19, "`discover: dns` needs a host name; `10.0.0.1` is an IP address already");
    has(&e, 13, 19, "unknown discovery `dsn`");
    has(&e, 15, 18, "refresh only applies with `discover: dns` or `srv`");
    has(
        &e,
        16,
        14,
        "set `address` (with `discover: dns` for every A/AAAA record) or `srv`, not both",
    );
    has(&e, 19, 17, "weight does not apply to an `srv` entry");
    has(&e, 20, 19, "discover does not apply to an `srv` entry");
    has(&e, 21, 14, "is not a valid DNS name");
    has(&e, 24, 18, "refresh must be at least 100ms");
    has(&e, 25, 9, "is missing required key `address` (or `srv`)");
    has(&e, 26, 14, "backend `_ws._tcp.d.example` is already listed on line 18");
    has(&e, 28, 13, "name server `dns.example` is not an IP address");
    has(&e, 29, 12, "`resolver.timeout` must be greater than 0");
}

#[test]
fn client_address_settings() {
    let yaml = "listeners:\n  - name: l\n    bind: \"127.0.0.1:0\"\n    proxy_protocol: true\n    routes:\n      - pool: p\npools:\n  p:\n    backends:\n      - address: \"127.0.0.1:9001\"\n        proxy_protocol: v2\n      - address: \"127.0.0.1:9002\"\nlimits:\n  max_connections_per_client: 2\n  max_connections_per_client_per_second: 5\n  trusted_proxies: [\"10.0.0.0/8\", \"127.0.0.1\", \"2001:db8::/32\"]\n";
    let c = parse(yaml, &PathBuf::from(".")).unwrap_or_else(|e| panic!("{e:#?}"));
    assert!(c.listeners[0].proxy_protocol);
    let b = &c.pools["p"].backends;
    assert_eq!((b[0].proxy_protocol, b[1].proxy_protocol), (Some(ProxyProtocolVersion::V2), None));
    assert_eq!(
        (c.limits.max_connections_per_client, c.limits.max_connections_per_client_per_second),
        (2, 5)
    );
    let nets: Vec<String> = c.limits.trusted_proxies.iter().map(ToString::to_string).collect();
    assert_eq!(nets, ["10.0.0.0/8", "127.0.0.1/32", "2001:db8::/32"]);
    // Defaults: off, nothing trusted.
    let d = parse(MINIMAL, Path::new("")).unwrap();
    assert!(!d.listeners[0].proxy_protocol && d.limits.trusted_proxies.is_empty());
    assert_eq!(
        d.limits.max_connections_per_client + d.limits.max_connections_per_client_per_second,
        0
    );

    let bad = yaml
        .replace("proxy_protocol: v2", "proxy_protocol: v3")
        .replace("proxy_protocol: true", "proxy_protocol: yes")
        .replace("client: 2", "client: -2")
        .replace("\"10.0.0.0/8\"", "\"10.0.0.1/8\"")
        .replace("\"2001:db8::/32\"", "\"2001:db8::/129\"");
    let e = errors(&bad);
    has(&e, 4, 21, "must be `true` or `false`");
    has(&e, 11, 25, "unknown pools.p.backends[0].proxy_protocol version `v3`");
    has(&e, 14, 31, "must not be negative");
    has(&e, 16, 21, "host bits set; the network is `10.0.0.0/8`");
    has(&e, 16, 48, "from 0 to 128");
    assert_eq!(e.len(), 5, "{e:#?}");

    // PROXY headers are only believed from trusted peers: a listener that wants them needs some.
    let e = errors(&yaml.replace("  trusted_proxies: [\"10.0.0.0/8\", \"127.0.0.1\", \"2001:db8::/32\"]\n", ""));
    has(&e, 4, 21, "needs `limits.trusted_proxies`");
    assert_eq!(e.len(), 1, "{e:#?}");
}

#[test]
fn http2_listener_settings() {
    let yaml = "listeners:\n  - name: l\n    bind: \"127.0.0.1:0\"\n    http2: false\n    max_concurrent_streams: 250\n    routes:\n      - pool: p\npools:\n  p:\n    backends:\n      - address: \"127.0.0.1:9001\"\n";
    let c = parse(yaml, &PathBuf::from(".")).unwrap_or_else(|e| panic!("{e:#?}"));
    assert_eq!((c.listeners[0].http2, c.listeners[0].max_concurrent_streams), (false, 250));
    // Defaults: offered, 100 streams.
    let d = parse(MINIMAL, Path::new("")).unwrap();
    assert_eq!((d.listeners[0].http2, d.listeners[0].max_concurrent_streams), (true, 100));
    let bad = yaml.replace("http2: false", "http2: maybe").replace("streams: 250", "streams: 0");
    let e = errors(&bad);
    has(&e, 4, 12, "must be `true` or `false`");
    has(&e, 5, 29, "listeners[0].max_concurrent_streams");
}

#[test]
fn message_limits_and_their_route_overrides() {
    let text = MINIMAL.replace(
        "      - pool: p\n",
        "      - pool: p\n        limits: { client_messages_per_second: 20, client_limit_action: close }\n",
    ) + "limits:\n  client_messages_per_second: 100\n  client_message_burst: 300\n  client_bytes_per_second: 1MiB\n  backend_messages_per_second: 50\n  max_messages_per_second_per_client: 400\n  client_limit_grace: 3s\n";
    let c = parse(&text, Path::new("")).unwrap_or_else(|e| panic!("{e:#?}"));
    let m = c.limits.messages;
    assert_eq!(
        (
            m.client_messages_per_second,
            m.client_message_burst,
            m.client_bytes_per_second,
            m.client_bytes_burst
        ),
        (100, 300, 1 << 20, 0)
    );
    assert_eq!((m.backend_messages_per_second, m.max_messages_per_second_per_client), (50, 400));
    assert_eq!(
        (m.client_limit_action, m.client_limit_grace),
        (LimitAction::Throttle, Duration::from_secs(3))
    );
    // the route's own: its keys over the global ones, the rest as under `limits:`
    let r = m.with(&c.listeners[0].routes[0].limits);
    assert_eq!((r.client_messages_per_second, r.client_message_burst), (20, 300));
    assert_eq!(
        (r.client_limit_action, r.client_limit_grace),
        (LimitAction::Close, Duration::from_secs(3))
    );
    assert!(r.any() && !MessageLimits::default().any());
    // errors where they are
    let bad = MINIMAL.replace(
        "      - pool: p\n",
        "      - pool: p\n        limits: { max_messages_per_second_per_client: 5 }\n",
    )
        + "limits:\n  client_messages_per_second: -1\n  client_limit_action: drop\n  client_bytes_burst: 2TiB\n  client_limit_grace: 0s\n";
    let e = errors(&bad);
    has(&e, 6, 19, "unknown key `max_messages_per_second_per_client`");
    has(&e, 12, 31, "`limits.client_messages_per_second` must not be negative");
    has(&e, 13, 24, "`limits.client_limit_action`");
    has(&e, 14, 23, "`limits.client_bytes_burst` must be at most 1TiB");
    has(&e, 15, 23, "client_limit_grace");
    assert_eq!(e.len(), 5, "{e:#?}");
}
