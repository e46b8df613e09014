//! TLS on both sides: wss:// termination (certificates generated here with rcgen), SNI
//! selection, `X-Forwarded-Proto: https`, wss:// to a backend verified against a test CA,
//! refusal of an untrusted backend, and `check` errors for bad certificate files.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

/// A test CA that issues leaf certificates into a directory.
struct Pki {
    dir: PathBuf,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

impl Pki {
    fn new(dir: &Path, name: &str) -> Pki {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        let ca_key = KeyPair::generate().unwrap();
        let ca = p.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), ca.pem()).unwrap();
        Pki {
            dir: dir.to_path_buf(),
            ca,
            ca_key,
        }
    }

    fn ca_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pem"))
    }

    /// Issues a leaf for `names`; returns (cert path, key path).
    fn leaf(&self, stem: &str, names: &[&str], expired: bool) -> (PathBuf, PathBuf) {
        let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, names[0]);
        if expired {
            p.not_before = rcgen::date_time_ymd(2019, 1, 1);
            p.not_after = rcgen::date_time_ymd(2020, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let (c, k) = (self.dir.join(format!("{stem}.crt")), self.dir.join(format!("{stem}.key")));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    fn connector(&self) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
    }
}

/// Connects over TLS with `sni`, upgrades, returns the websocket and the peer leaf's names.
async fn wss(
    addr: std::net::SocketAddr,
    pki: &Pki,
    sni: &str,
) -> (
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>,
    String,
) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = pki
        .connector()
        .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
        .await
        .expect("TLS handshake");
    let der = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
    let subject = parsed.subject().to_string();
    let (ws, _) = tokio_tungstenite::client_async(format!("wss://{sni}/"), tls)
        .await
        .expect("upgrade over TLS");
    (ws, subject)
}

/// A config with one TLS listener on port 0 (its `tls` on line 4, `listener` lines after
/// it), routing to pool `p` (`pool` lines before its one backend at `backend`), then `tail`.
fn tls_yaml(cert: &Path, key: &Path, backend: &str, listener: &str, pool: &str, tail: &str) -> String {
    format!(
        "listeners:\n  - name: l\n    bind: \"127.0.0.1:0\"\n    tls: {{ cert: \"{}\", key: \"{}\" }}\n{listener}    routes:\n      - pool: p\npools:\n  p:\n{pool}    backends:\n      - address: \"{backend}\"\n{tail}",
        cert.display(),
        key.display()
    )
}

#[tokio::test]
async fn wss_is_terminated_with_sni_selection_and_forwarded_proto_https() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path(), "ca");
        let (ca_crt, ca_key) = pki.leaf("a", &["a.test"], false);
        let (cb_crt, cb_key) = pki.leaf("b", &["b.test"], false);
        let b = backend("b").await;
        let yaml = format!(
            "listeners:\n  - name: l\n    bind: \"127.0.0.1:0\"\n    tls:\n      certs:\n        - {{ cert: \"{}\", key: \"{}\" }}\n        - {{ cert: \"{}\", key: \"{}\", sni: [b.test] }}\n    routes:\n      - pool: p\npools:\n  p:\n    backends:\n      - address: \"{}\"\n",
            ca_crt.display(), ca_key.display(), cb_crt.display(), cb_key.display(), b.addr
        );
        let p = Proxy::start(&yaml);
        let (mut ws, subject) = wss(p.addr, &pki, "a.test").await;
        assert!(subject.contains("a.test"), "{subject}");
        ws.send(Message::text("over tls")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap().into_text().unwrap().as_str(), "over tls");
        let (_ws, subject) = wss(p.addr, &pki, "b.test").await;
        assert!(subject.contains("b.test"), "SNI picks the b.test certificate: {subject}");
        let h = b.last_headers.lock().unwrap().clone();
        assert!(h.iter().any(|(k, v)| k == "x-forwarded-proto" && v == "https"), "{h:?}");
        // a client that never finishes the TLS handshake does not hurt others
        let _idle = TcpStream::connect(p.addr).await.unwrap();
        let (mut ws, _) = wss(p.addr, &pki, "a.test").await;
        ws.send(Message::text("again")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap().into_text().unwrap().as_str(), "again");
    })
    .await
}

#[tokio::test]
async fn a_proxy_protocol_header_comes_before_tls() {
    use tokio::io::AsyncWriteExt;
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path(), "ca");
        let (crt, key) = pki.leaf("a", &["a.test"], false);
        let b = backend("b").await;
        let yaml = tls_yaml(
            &crt,
            &key,
            &b.addr.to_string(),
            "    proxy_protocol: true\n",
            "",
            "limits:\n  trusted_proxies: [\"127.0.0.1/32\"]\n",
        );
        let p = Proxy::start(&yaml);
        let mut tcp = TcpStream::connect(p.addr).await.unwrap();
        let header = switchyard::proxy_protocol::V2Header::proxy("198.51.100.7:40000".parse().unwrap(), p.addr);
        tcp.write_all(header.as_bytes()).await.unwrap();
        let tls = pki
            .connector()
            .connect(ServerName::try_from("a.test".to_string()).unwrap(), tcp)
            .await
            .expect("TLS right after the header");
        let (mut ws, _) = tokio_tungstenite::client_async("wss://a.test/", tls).await.unwrap();
        ws.send(Message::text("behind a header")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap().into_text().unwrap().as_str(), "behind a header");
        let h = b.last_headers.lock().unwrap().clone();
        assert!(h.iter().any(|(k, v)| k == "x-forwarded-for" && v == "198.51.100.7"), "{h:?}");
        assert!(h.iter().any(|(k, v)| k == "x-forwarded-proto" && v == "https"), "{h:?}");
    })
    .await
}

/// A wss:// echo backend with this certificate.
async fn tls_backend(cert: &Path, key: &Path) -> std::net::SocketAddr {
    tls_server(cert, key, |tls| async move {
        let Ok(mut ws) = tokio_tungstenite::accept_async(tls).await else {
            return;
        };
        while let Some(Ok(m)) = ws.next().await {
            if m.is_text() && ws.send(m).await.is_err() {
                break;
            }
        }
    })
    .await
}

/// A TLS server on 127.0.0.1:0 with this certificate, `serve` run on each connection.
async fn tls_server<F, Fut>(cert: &Path, key: &Path, serve: F) -> std::net::SocketAddr
where
    F: Fn(tokio_rustls::server::TlsStream<TcpStream>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let acceptor = server_tls(cert, key);
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let (acceptor, serve) = (acceptor.clone(), serve.clone());
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(s).await {
                    serve(tls).await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn wss_to_a_backend_verified_by_a_test_ca_and_an_untrusted_one_refused() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path(), "ca");
        let rogue = Pki::new(dir.path(), "rogue");
        let (c, k) = pki.leaf("backend", &["backend.test"], false);
        let (rc, rk) = rogue.leaf("rogue-backend", &["backend.test"], false);
        let good = tls_backend(&c, &k).await;
        let bad = tls_backend(&rc, &rk).await;
        let plain = backend("plain").await;
        let yaml = format!(
            "listeners:\n  - name: l\n    bind: \"127.0.0.1:0\"\n    routes:\n      - match: {{ path_prefix: /good }}\n        pool: good\n      - match: {{ path_prefix: /bad }}\n        pool: bad\n      - pool: plain\npools:\n  good:\n    backends:\n      - address: \"{good}\"\n        tls: {{ ca: \"{ca}\", server_name: backend.test }}\n  bad:\n    backends:\n      - address: \"{bad}\"\n        tls: {{ ca: \"{ca}\", server_name: backend.test }}\n  plain:\n    backends:\n      - address: \"{}\"\n",
            plain.addr,
            ca = pki.ca_path("ca").display()
        );
        let p = Proxy::start(&yaml);
        let mut ws = connect(&p.url("/good")).await;
        assert_eq!(ask(&mut ws, "through wss").await, "through wss");
        let mut ws = connect(&p.url("/bad")).await;
        assert_eq!(expect_close(&mut ws).await.0, 1013, "an untrusted backend is never used");
        still_serves(&p.url("/plain")).await;
    })
    .await
}

#[test]
fn check_reports_missing_mismatched_and_expired_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "ca");
    let (good_c, good_k) = pki.leaf("good", &["x.test"], false);
    let (_other_c, other_k) = pki.leaf("other", &["y.test"], false);
    let (old_c, old_k) = pki.leaf("old", &["z.test"], true);
    let cases = [
        (dir.path().join("missing.crt"), good_k.clone(), "cannot read"),
        (good_c.clone(), other_k, "does not match"),
        (old_c, old_k, "expired"),
    ];
    for (cert, key, expect) in cases {
        let f = dir.path().join("c.yaml");
        std::fs::write(&f, tls_yaml(&cert, &key, "127.0.0.1:9", "", "", "")).unwrap();
        let out = std::process::Command::new(BIN).arg("check").arg(&f).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{expect}: {text}");
        assert!(text.contains(expect), "{expect}: {text}");
        assert!(text.contains(":4:"), "positioned at the tls line: {text}");
    }
    let f = dir.path().join("ok.yaml");
    std::fs::write(&f, tls_yaml(&good_c, &good_k, "127.0.0.1:9", "", "", "")).unwrap();
    let out = std::process::Command::new(BIN).arg("check").arg(&f).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}

#[tokio::test]
async fn certificates_are_read_again_on_reload() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path(), "ca");
        let (crt, key) = pki.leaf("live", &["old.test"], false);
        let b = backend("b").await;
        let yaml = tls_yaml(&crt, &key, &b.addr.to_string(), "", "", "");
        let (p, path) = Proxy::start_file(dir.path(), &yaml);
        let (_ws, subject) = wss(p.addr, &pki, "old.test").await;
        assert!(subject.contains("old.test"), "{subject}");
        // Renew the certificate in place (same file names), pin the bound port, reload.
        pki.leaf("live", &["new.test"], false);
        std::fs::write(&path, yaml.replace("127.0.0.1:0", &p.addr.to_string())).unwrap();
        switchyard::reload(&p.server.shared).expect("reload ok");
        let (mut ws, subject) = wss(p.addr, &pki, "new.test").await;
        assert!(subject.contains("new.test"), "the renewed certificate is served: {subject}");
        ws.send(Message::text("renewed")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap().into_text().unwrap().as_str(), "renewed");
    })
    .await
}

#[tokio::test]
async fn plain_https_requests_are_forwarded_with_a_secure_sticky_cookie() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path(), "ca");
        let (crt, key) = pki.leaf("a", &["a.test"], false);
        let b = common::http::http_backend("b1").await;
        let yaml = tls_yaml(
            &crt,
            &key,
            &b.addr.to_string(),
            "",
            "    sticky: { cookie: SYID, secret: tls-secret }\n",
            "",
        );
        let p = Proxy::start(&yaml);
        let tcp = TcpStream::connect(p.addr).await.unwrap();
        let mut tls = pki
            .connector()
            .connect(ServerName::try_from("a.test".to_string()).unwrap(), tcp)
            .await
            .expect("TLS handshake");
        tls.write_all(b"GET /headers HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut resp = String::new();
        let _ = tokio::time::timeout(T, tls.read_to_string(&mut resp)).await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        assert!(resp.contains("x-forwarded-proto: https\n"), "{resp}");
        let cookie = resp
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
            .expect("a cookie");
        assert!(cookie.contains("SYID=") && cookie.contains("; Secure"), "{cookie}");
    })
    .await
}

/// Issue 17, fault 9: past the hard ceiling a TLS listener closes the connection without
/// a word (it used to write a clear-text `503` a TLS client cannot read).
#[tokio::test]
async fn past_the_hard_ceiling_a_tls_listener_closes_without_clear_text() {
    bounded(async {
        use tokio::io::AsyncReadExt;
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path(), "ca");
        let (crt, key) = pki.leaf("a", &["a.test"], false);
        let b = backend("b").await;
        let yaml = tls_yaml(&crt, &key, &b.addr.to_string(), "", "", "limits:\n  max_connections: 1\n");
        let p = Proxy::start(&yaml);
        let (mut held, _) = wss(p.addr, &pki, "a.test").await;
        held.send(Message::text("x")).await.unwrap();
        assert_eq!(held.next().await.unwrap().unwrap().into_text().unwrap().as_str(), "x");
        // Silent TCP connections stay pending in their TLS handshake.
        let mut silent = Vec::new();
        let mut answer = None;
        for _ in 0..4 {
            let mut s = TcpStream::connect(p.addr).await.unwrap();
            let mut buf = vec![0u8; 512];
            if let Ok(r) = tokio::time::timeout(std::time::Duration::from_millis(300), s.read(&mut buf)).await {
                answer = Some(r.map(|n| buf[..n].to_vec()).unwrap_or_default());
                break;
            }
            silent.push(s);
        }
        assert_eq!(silent.len(), 1, "the second silent connection hits the ceiling");
        assert_eq!(answer, Some(Vec::new()), "closed without any clear-text answer");
    })
    .await
}

#[test]
fn check_refuses_a_self_signed_ca_certificate_of_the_backend_itself_as_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "ca");
    // What `openssl req -x509` makes by default: self-signed, CA:TRUE, naming the backend.
    let mut p = CertificateParams::new(vec!["backend.test".to_string()]).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let self_signed = p.self_signed(&KeyPair::generate().unwrap()).unwrap();
    let own = dir.path().join("own.pem");
    std::fs::write(&own, self_signed.pem()).unwrap();
    let check = |ca: &Path| {
        let f = dir.path().join("c.yaml");
        std::fs::write(
            &f,
            format!(
                "listeners:\n  - name: l\n    bind: \"127.0.0.1:0\"\n    routes:\n      - pool: p\npools:\n  p:\n    backends:\n      - address: \"127.0.0.1:9\"\n        tls: {{ ca: \"{}\", server_name: backend.test }}\n",
                ca.display()
            ),
        )
        .unwrap();
        let out = std::process::Command::new(BIN).arg("check").arg(&f).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).to_string())
    };
    let (code, text) = check(&own);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("CaUsedAsEndEntity") && text.contains("backend.test"), "{text}");
    // A real CA (naming no backend) is fine.
    let (code, text) = check(&pki.ca_path("ca"));
    assert_eq!((code, text.trim()), (Some(0), "ok"));
}

/// A plain HTTP/1.1 backend over TLS (hyper) answering `200 tls` to every request.
async fn tls_http_backend(cert: &Path, key: &Path) -> std::net::SocketAddr {
    tls_server(cert, key, |tls| async move {
        let svc = hyper::service::service_fn(|_req| async {
            Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from("tls"))))
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
            .await;
    })
    .await
}

/// Issue 25, finding 3: idle backend connections were shared by address alone, so a pool
/// that verifies its backend's certificate reused a connection a lax pool had opened to the
/// same address without verifying. A kept connection is now one opened the same way.
#[tokio::test]
async fn a_strict_pool_never_reuses_a_lax_pools_unverified_connection() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path(), "ca");
        let rogue = Pki::new(dir.path(), "rogue");
        let (rc, rk) = rogue.leaf("rogue-backend", &["backend.test"], false);
        let addr = tls_http_backend(&rc, &rk).await;
        let yaml = format!(
            "listeners:\n  - name: l\n    bind: \"127.0.0.1:0\"\n    routes:\n      - match: {{ path_prefix: /strict }}\n        pool: strict\n      - pool: lax\npools:\n  strict:\n    backends:\n      - address: \"{addr}\"\n        tls: {{ ca: \"{ca}\", server_name: backend.test }}\n  lax:\n    backends:\n      - address: \"{addr}\"\n        tls: {{ insecure_skip_verify: true }}\n",
            ca = pki.ca_path("ca").display()
        );
        let p = Proxy::start(&yaml);
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        let mut buf = Vec::new();
        for _ in 0..3 {
            // The lax pool opens (and keeps) a connection to the rogue backend ...
            let r = common::http::roundtrip(&mut s, &mut buf, &common::http::get("/lax", "")).await.unwrap();
            assert_eq!((r.status, r.body.as_str()), (200, "tls"));
            // ... which the strict pool must not use: its own connection fails verification.
            let r = common::http::roundtrip(&mut s, &mut buf, &common::http::get("/strict", "")).await.unwrap();
            assert_eq!(r.status, 503, "the strict pool reached an unverified backend: {}", r.body);
        }
        assert_eq!(p.server.shared.http_clients.idle(), 1, "the lax pool's connection is kept for the lax pool");
    })
    .await
}

/// A TLS acceptor serving the certificate and key in these files.
fn server_tls(cert: &Path, key: &Path) -> tokio_rustls::TlsAcceptor {
    let certs: Vec<_> = rustls_pemfile::certs(&mut std::io::BufReader::new(std::fs::File::open(cert).unwrap()))
        .map(|c| c.unwrap())
        .collect();
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(std::fs::File::open(key).unwrap()))
        .unwrap()
        .unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}
