//! SIP over TLS (RFC 3261 26.2, RFC 5630) for the tokio layer: the certificates and keys named
//! in `[sip.tls]`, the rustls server and client settings made from them, and the handshakes.
//!
//! # Why a module of its own
//!
//! Once the handshake is done a TLS connection is a byte stream like a TCP one, and the
//! connection code in [`super`] (framing, limits, keep-alive, writer backlog) is generic over
//! the stream. What differs — files, trust, verification, handshake errors — lives here, so it
//! is read and checked in one place, and a bad file stops the start with the file and the
//! reason instead of failing the first call.
//!
//! Crypto is rustls with the `ring` provider (the one ureq already links). Peers we connect to
//! are verified against `[sip.tls] ca_file`, or the public web roots (`webpki-roots`) when it
//! is empty; `verify_server = false` turns verification off for labs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::media::SipTlsConfig;

/// Why the TLS side could not be set up (at start).
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("[sip.tls] {field} `{}`: {reason}", file.display())]
    File {
        field: &'static str,
        file: PathBuf,
        reason: String,
    },
    #[error("[sip.tls] {0}")]
    Settings(String),
}

/// The TLS settings in force: the listener's acceptor (when `[sip.tls] listen` is set) and the
/// connector for the connections the gateway opens.
#[derive(Clone)]
pub struct TlsSide {
    pub acceptor: Option<TlsAcceptor>,
    pub connector: TlsConnector,
}

impl TlsSide {
    /// Reads the files `config` names and builds both sides; `listener`: whether the TLS
    /// listener is on (it needs the certificate).
    pub fn load(config: &SipTlsConfig, listener: bool) -> Result<TlsSide, TlsSetupError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let own = own_certificate(config)?;
        let acceptor = match (&own, listener) {
            (Some((chain, key)), true) => Some(TlsAcceptor::from(Arc::new(server_config(
                config,
                &provider,
                chain.clone(),
                key.clone_key(),
            )?))),
            (None, true) => {
                return Err(TlsSetupError::Settings(
                    "the listener needs cert_file and key_file".into(),
                ))
            }
            (_, false) => None,
        };
        let connector = TlsConnector::from(Arc::new(client_config(config, &provider, own)?));
        Ok(TlsSide {
            acceptor,
            connector,
        })
    }
}

/// Our certificate chain and key, when both files are set.
fn own_certificate(
    config: &SipTlsConfig,
) -> Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>, TlsSetupError> {
    let set = |p: &Path| !p.as_os_str().is_empty();
    if !set(&config.cert_file) || !set(&config.key_file) {
        return Ok(None);
    }
    let chain = read_certs("cert_file", &config.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&config.key_file).map_err(|e| TlsSetupError::File {
        field: "key_file",
        file: config.key_file.clone(),
        reason: match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "no PEM private key in it (PKCS#8, PKCS#1 or SEC1)".into()
            }
            e => e.to_string(),
        },
    })?;
    Ok(Some((chain, key)))
}

/// Every certificate in a PEM file (at least one).
fn read_certs(
    field: &'static str,
    file: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let bad = |reason: String| TlsSetupError::File {
        field,
        file: file.to_path_buf(),
        reason,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(file)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// The CA certificates of a PEM file as trust anchors.
fn roots(field: &'static str, file: &Path) -> Result<RootCertStore, TlsSetupError> {
    let mut store = RootCertStore::empty();
    for cert in read_certs(field, file)? {
        store.add(cert).map_err(|e| TlsSetupError::File {
            field,
            file: file.to_path_buf(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(store)
}

fn server_config(
    config: &SipTlsConfig,
    provider: &Arc<CryptoProvider>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<ServerConfig, TlsSetupError> {
    let builder = ServerConfig::builder_with_provider(Arc::clone(provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Settings(e.to_string()))?;
    let builder = if config.client_ca_file.as_os_str().is_empty() {
        builder.with_no_client_auth()
    } else {
        let roots = roots("client_ca_file", &config.client_ca_file)?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::clone(provider),
        )
        .build()
        .map_err(|e| TlsSetupError::File {
            field: "client_ca_file",
            file: config.client_ca_file.clone(),
            reason: e.to_string(),
        })?;
        builder.with_client_cert_verifier(verifier)
    };
    builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsSetupError::File {
            field: "key_file",
            file: config.key_file.clone(),
            reason: format!(
                "does not go with cert_file `{}`: {e}",
                config.cert_file.display()
            ),
        })
}

fn client_config(
    config: &SipTlsConfig,
    provider: &Arc<CryptoProvider>,
    own: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<ClientConfig, TlsSetupError> {
    let builder = ClientConfig::builder_with_provider(Arc::clone(provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Settings(e.to_string()))?;
    let builder = if !config.verify_server {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(Arc::clone(provider))))
    } else if config.ca_file.as_os_str().is_empty() {
        builder.with_root_certificates(RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        })
    } else {
        builder.with_root_certificates(roots("ca_file", &config.ca_file)?)
    };
    match own {
        Some((chain, key)) => {
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| TlsSetupError::File {
                    field: "key_file",
                    file: config.key_file.clone(),
                    reason: format!(
                        "does not go with cert_file `{}`: {e}",
                        config.cert_file.display()
                    ),
                })
        }
        None => Ok(builder.with_no_client_auth()),
    }
}

/// The name a peer's certificate must carry: the host of its URI (an IP address or a DNS
/// name); None when it is neither.
pub fn server_name(host: &str) -> Option<ServerName<'static>> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).ok()
}

/// Completes the server side of a handshake within `limit`; a failure is logged with the peer
/// and the reason, and counted.
pub async fn accept(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    from: SocketAddr,
    limit: Duration,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    match tokio::time::timeout(limit, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            crate::observe::metrics::tls_handshake_failed("inbound");
            tracing::warn!(%from, error = %e, "TLS handshake failed; connection closed");
            None
        }
        Err(_) => {
            crate::observe::metrics::tls_handshake_failed("inbound");
            tracing::warn!(%from, secs = limit.as_secs(), "TLS handshake not completed in time; connection closed");
            None
        }
    }
}

/// Completes the client side of a handshake with `target` (its certificate must carry
/// `name`) within `limit`; a failure is counted and returned as the reason.
pub async fn connect(
    connector: &TlsConnector,
    stream: TcpStream,
    name: ServerName<'static>,
    limit: Duration,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let result = match tokio::time::timeout(limit, connector.connect(name, stream)).await {
        Ok(Ok(tls)) => return Ok(tls),
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no handshake within {} s", limit.as_secs()),
    };
    crate::observe::metrics::tls_handshake_failed("outbound");
    Err(result)
}

/// `verify_server = false`: every certificate is taken (signatures are still checked, so the
/// handshake itself is sound; who is at the other end is not).
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// A test CA and a certificate for 127.0.0.1 it signed: (ca.pem, cert.pem, key.pem).
    fn make_certs(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "voicebot unit-test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        (
            write(dir, "ca.pem", &ca.pem()),
            write(dir, "cert.pem", &cert.pem()),
            write(dir, "key.pem", &key.serialize_pem()),
        )
    }

    fn config(cert: &Path, key: &Path) -> SipTlsConfig {
        SipTlsConfig {
            listen: "127.0.0.1:0".into(),
            cert_file: cert.into(),
            key_file: key.into(),
            ..SipTlsConfig::default()
        }
    }

    #[test]
    fn good_files_load_both_sides() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = make_certs(dir.path());
        let mut c = config(&cert, &key);
        c.client_ca_file = ca.clone();
        c.ca_file = ca;
        let side = TlsSide::load(&c, true).expect("loads");
        assert!(side.acceptor.is_some());
        // The client side alone needs no certificate of ours.
        let side = TlsSide::load(&SipTlsConfig::default(), false).expect("loads");
        assert!(side.acceptor.is_none());
    }

    #[test]
    fn bad_files_name_the_file_and_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = make_certs(dir.path());
        let missing = dir.path().join("missing.pem");
        let err = TlsSide::load(&config(&missing, &key), true)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("cert_file") && err.contains("missing.pem"),
            "{err}"
        );
        let not_pem = write(dir.path(), "junk.pem", "hello");
        let err = TlsSide::load(&config(&cert, &not_pem), true)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("key_file") && err.contains("no PEM private key"),
            "{err}"
        );
        // A key of another certificate.
        let other = rcgen::KeyPair::generate().unwrap();
        let other = write(dir.path(), "other.pem", &other.serialize_pem());
        let err = TlsSide::load(&config(&cert, &other), true)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("does not go with cert_file"), "{err}");
        let mut c = config(&cert, &key);
        c.ca_file = not_pem;
        let err = TlsSide::load(&c, true).err().unwrap().to_string();
        assert!(
            err.contains("ca_file") && err.contains("no PEM certificate"),
            "{err}"
        );
        let _ = ca;
    }

    #[test]
    fn server_names_from_uri_hosts() {
        assert!(matches!(
            server_name("127.0.0.1"),
            Some(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            server_name("[::1]"),
            Some(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            server_name("pbx.example.com"),
            Some(ServerName::DnsName(_))
        ));
        assert!(server_name("bad name").is_none());
    }
}
