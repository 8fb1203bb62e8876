//! rustls configurations for the QUIC endpoint: mutual TLS against the cluster CA, or
//! `--insecure`.
//!
//! Mutual mode: the server *requires* a client certificate chaining to the cluster CA
//! ([`WebPkiClientVerifier`]), so a peer without one is refused during the handshake; the client
//! verifies the server against the same CA under the fixed name [`SERVER_NAME`], which every
//! issued certificate carries (see [`crate::cert`]). TLS 1.3 only (QUIC requires it), ring as the
//! crypto provider, ALPN [`ALPN`].
//!
//! Insecure mode: an ephemeral self-signed server certificate, no client certificates, and a
//! client that accepts any server certificate. Anyone who can reach the port is a peer and anyone
//! on the path can read and forge traffic; it exists for throwaway local runs only.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::cert::{self, CA_CERT_FILE, NODE_CERT_FILE, NODE_KEY_FILE};

/// The ALPN protocol of Starling's peer and client API, version 1.
pub const ALPN: &[u8] = b"starling/1";

/// The server name clients verify; equal to [`cert::CLUSTER_SAN`].
pub const SERVER_NAME: &str = cert::CLUSTER_SAN;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file of the certificates directory could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A PEM input does not hold what it should.
    #[error("{what}: {reason}")]
    Pem {
        /// Which input (a path, or "CA certificate" for in-memory material).
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the material (key not matching the certificate, bad CA...).
    #[error("TLS configuration: {0}")]
    Rustls(String),
    /// The ephemeral certificate of insecure mode could not be generated.
    #[error(transparent)]
    Cert(#[from] cert::CertError),
}

/// What a node needs for mutual TLS: the cluster CA, its own chain and key.
pub struct TlsMaterial {
    /// The cluster CA certificate, the only trust anchor.
    pub ca: CertificateDer<'static>,
    /// This node's certificate chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// This node's private key.
    pub key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for TlsMaterial {
    /// Never prints the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial").field("chain_len", &self.chain.len()).finish_non_exhaustive()
    }
}

impl Clone for TlsMaterial {
    fn clone(&self) -> Self {
        TlsMaterial { ca: self.ca.clone(), chain: self.chain.clone(), key: self.key.clone_key() }
    }
}

impl TlsMaterial {
    /// Reads `ca.pem`, `node.pem` and `node.key` from a certificates directory.
    pub fn load(dir: &Path) -> Result<Self, TlsError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| TlsError::Read { path, source })
        };
        let show = |name: &str| dir.join(name).display().to_string();
        Self::parse(
            (&read(CA_CERT_FILE)?, show(CA_CERT_FILE)),
            (&read(NODE_CERT_FILE)?, show(NODE_CERT_FILE)),
            (&read(NODE_KEY_FILE)?, show(NODE_KEY_FILE)),
        )
    }

    /// Builds the material from PEM text (for example from [`cert::Ca::issue`]).
    pub fn from_pem(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        Self::parse(
            (ca_pem, "CA certificate".into()),
            (cert_pem, "node certificate".into()),
            (key_pem, "node key".into()),
        )
    }

    fn parse(
        ca: (&str, String),
        cert: (&str, String),
        key: (&str, String),
    ) -> Result<Self, TlsError> {
        let pem_err = |what: &String, reason: String| TlsError::Pem { what: what.clone(), reason };
        let ca_der = CertificateDer::from_pem_slice(ca.0.as_bytes())
            .map_err(|e| pem_err(&ca.1, format!("no PEM certificate: {e}")))?;
        let chain = CertificateDer::pem_slice_iter(cert.0.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_err(&cert.1, format!("bad PEM certificate: {e}")))?;
        if chain.is_empty() {
            return Err(pem_err(&cert.1, "no PEM certificate".into()));
        }
        let key_der = PrivateKeyDer::from_pem_slice(key.0.as_bytes())
            .map_err(|e| pem_err(&key.1, format!("no PEM private key: {e}")))?;
        Ok(TlsMaterial { ca: ca_der, chain, key: key_der })
    }
}

/// The rustls halves of one endpoint.
#[derive(Debug, Clone)]
pub struct TlsConfigs {
    /// Accepts connections.
    pub server: Arc<rustls::ServerConfig>,
    /// Dials peers.
    pub client: Arc<rustls::ClientConfig>,
    /// True in `--insecure` mode; shown on the status page.
    pub insecure: bool,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn rustls_err(e: impl std::fmt::Display) -> TlsError {
    TlsError::Rustls(e.to_string())
}

/// Mutual-TLS configurations from the cluster material.
pub fn mutual(material: &TlsMaterial) -> Result<TlsConfigs, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.add(material.ca.clone()).map_err(|e| TlsError::Pem {
        what: "CA certificate".into(),
        reason: format!("not usable as a trust anchor: {e}"),
    })?;
    let roots = Arc::new(roots);

    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
        .build()
        .map_err(rustls_err)?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(rustls_err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(material.chain.clone(), material.key.clone_key())
        .map_err(rustls_err)?;
    server.alpn_protocols = vec![ALPN.to_vec()];

    let mut client = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(rustls_err)?
        .with_root_certificates(roots)
        .with_client_auth_cert(material.chain.clone(), material.key.clone_key())
        .map_err(rustls_err)?;
    client.alpn_protocols = vec![ALPN.to_vec()];

    Ok(TlsConfigs { server: Arc::new(server), client: Arc::new(client), insecure: false })
}

/// Insecure configurations: ephemeral self-signed server certificate, no client authentication,
/// and a client that trusts any server. Logs a warning every time it is called.
pub fn insecure() -> Result<TlsConfigs, TlsError> {
    tracing::warn!(
        "INSECURE MODE: peers are not authenticated and traffic can be read and forged; \
         use --certs for anything but a throwaway local run"
    );
    let ca = cert::Ca::generate()?;
    let issued = ca.issue("insecure", &[], cert::Role::Node, cert::Validity::days_from_now(1))?;
    let material = TlsMaterial::from_pem(&ca.cert_pem(), &issued.cert_pem, &issued.key_pem)?;

    let mut server = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(rustls_err)?
        .with_no_client_auth()
        .with_single_cert(material.chain, material.key)
        .map_err(rustls_err)?;
    server.alpn_protocols = vec![ALPN.to_vec()];

    let mut client = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(rustls_err)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider())))
        .with_no_client_auth();
    client.alpn_protocols = vec![ALPN.to_vec()];

    Ok(TlsConfigs { server: Arc::new(server), client: Arc::new(client), insecure: true })
}

/// Accepts any server certificate but still checks the handshake signatures, so the session is
/// at least bound to the key the server presented.
#[derive(Debug)]
struct AcceptAnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
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
