//! TLS with rustls (ring provider): termination on listeners (certificates chosen by SNI,
//! ALPN `http/1.1`) and `wss://` to backends (system-independent webpki roots or a
//! configured CA; verification off only when asked, with a warning).

use std::collections::HashMap;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::config::{BackendTls, CertConfig, ListenerTls};
use crate::runtime::BackendTlsConnector;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let f = std::fs::File::open(path).map_err(|e| format!("cannot read certificate {}: {e}", path.display()))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut BufReader::new(f))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad PEM in {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate found in {}", path.display()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let f = std::fs::File::open(path).map_err(|e| format!("cannot read key {}: {e}", path.display()))?;
    rustls_pemfile::private_key(&mut BufReader::new(f))
        .map_err(|e| format!("bad PEM in {}: {e}", path.display()))?
        .ok_or_else(|| format!("no private key (PKCS#8, RSA or EC) found in {}", path.display()))
}

/// Loads one certificate chain and key, checking they match and the leaf is in date.
pub fn load_certified_key(c: &CertConfig) -> Result<Arc<CertifiedKey>, String> {
    let certs = read_certs(&c.cert)?;
    let key = read_key(&c.key)?;
    check_validity(&certs[0], &c.cert)?;
    let ck = CertifiedKey::from_der(certs, key, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => format!("key {} does not match certificate {}", c.key.display(), c.cert.display()),
        e => format!("cannot use key {}: {e}", c.key.display()),
    })?;
    Ok(Arc::new(ck))
}

fn check_validity(der: &CertificateDer<'_>, path: &Path) -> Result<(), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| format!("cannot parse certificate {}: {e}", path.display()))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let v = cert.validity();
    if now > v.not_after.timestamp() {
        return Err(format!("certificate {} expired on {}", path.display(), v.not_after));
    }
    if now < v.not_before.timestamp() {
        return Err(format!("certificate {} is not valid before {}", path.display(), v.not_before));
    }
    Ok(())
}

/// Picks a certificate by SNI; the first entry without names (or the first) is the default.
#[derive(Debug)]
struct SniResolver {
    by_name: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name().map(|n| n.to_ascii_lowercase());
        Some(
            name.and_then(|n| self.by_name.get(&n).cloned())
                .unwrap_or_else(|| self.default.clone()),
        )
    }
}

/// Server config for a TLS listener. With `http2`, ALPN offers `h2` first (a client that
/// speaks it gets it), then `http/1.1`.
pub fn server_config(t: &ListenerTls, http2: bool) -> Result<Arc<ServerConfig>, String> {
    let mut by_name = HashMap::new();
    let mut default = None;
    for c in &t.certs {
        let ck = load_certified_key(c)?;
        for n in &c.sni {
            by_name.insert(n.to_ascii_lowercase(), ck.clone());
        }
        if default.is_none() && c.sni.is_empty() {
            default = Some(ck);
        }
    }
    let default = match default {
        Some(d) => d,
        None => load_certified_key(t.certs.first().ok_or("no certificate configured")?)?,
    };
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { by_name, default }));
    cfg.alpn_protocols = match http2 {
        true => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        false => vec![b"http/1.1".to_vec()],
    };
    Ok(Arc::new(cfg))
}

/// Connector for `wss://` to a backend.
pub fn client_connector(t: &BackendTls, address: &str) -> Result<BackendTlsConnector, String> {
    let host = t.server_name.clone().unwrap_or_else(|| host_of(address).to_string());
    let name = ServerName::try_from(host.clone()).map_err(|_| format!("invalid TLS server name `{host}`"))?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let cfg = if t.insecure_skip_verify {
        tracing::warn!(
            backend = address,
            "TLS certificate verification is OFF for this backend (insecure_skip_verify)"
        );
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider())))
            .with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        match &t.ca {
            Some(ca) => {
                for c in read_certs(ca)? {
                    refuse_ca_named_for_backend(&c, &name, ca)?;
                    roots.add(c).map_err(|e| format!("bad CA certificate in {}: {e}", ca.display()))?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok((tokio_rustls::TlsConnector::from(Arc::new(cfg)), name))
}

/// A certificate in a backend's `ca:` file that names the backend itself and is a CA
/// (`basicConstraints CA:TRUE`, as `openssl req -x509` makes by default) is the backend's own
/// self-signed certificate: rustls refuses it when the backend presents it
/// (`CaUsedAsEndEntity`), so every connection would fail. Said at `check` time instead.
fn refuse_ca_named_for_backend(c: &CertificateDer<'static>, name: &ServerName<'static>, ca: &Path) -> Result<(), String> {
    use rustls::client::{verify_server_name, WebPkiServerVerifier};
    use rustls::server::ParsedCertificate;
    let names_backend = ParsedCertificate::try_from(c).is_ok_and(|p| verify_server_name(&p, name).is_ok());
    if !names_backend {
        return Ok(());
    }
    // Present it to a verifier trusting only itself, as the backend would.
    let mut only = RootCertStore::empty();
    if only.add(c.clone()).is_err() {
        return Ok(());
    }
    let Ok(verifier) = WebPkiServerVerifier::builder_with_provider(Arc::new(only), provider()).build() else {
        return Ok(());
    };
    match verifier.verify_server_cert(c, &[], name, &[], UnixTime::now()) {
        Err(e) if format!("{e:?}").contains("CaUsedAsEndEntity") => Err(format!(
            "the certificate in {} for {} is a CA certificate (basicConstraints CA:TRUE) and names the backend itself; \
             rustls refuses a CA certificate as the backend's own (CaUsedAsEndEntity), so every connection would fail. \
             Sign the backend's certificate with a separate CA and put that CA here, or make the self-signed one with \
             `-addext basicConstraints=critical,CA:FALSE` (configs/certs/README.md)",
            ca.display(),
            name.to_str()
        )),
        _ => Ok(()),
    }
}

/// `host:port` → `host` (IPv6 brackets removed).
pub fn host_of(address: &str) -> &str {
    let h = address.rsplit_once(':').map(|(h, _)| h).unwrap_or(address);
    h.trim_start_matches('[').trim_end_matches(']')
}

/// Accepts any certificate (explicit `insecure_skip_verify` only); signatures are still checked.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
