//! QUIC endpoints (quinn, rustls with the ring provider) with mutual TLS 1.3 only:
//! both sides present a certificate issued by the federation CA, and nothing else is
//! accepted. `keylog` opts into writing TLS secrets to `$SSLKEYLOGFILE`, so an auditor
//! can decrypt a capture of their own site's traffic.

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use rustls::server::WebPkiClientVerifier;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;

/// Application protocol negotiated by every Tessera connection.
pub const ALPN: &[u8] = b"tessera/1";

#[derive(Debug, Error)]
pub enum QuicError {
    #[error("{path}: {message}")]
    Credentials { path: PathBuf, message: String },
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connecting to {addr}: {message}")]
    Connect { addr: SocketAddr, message: String },
}

/// A participant's TLS identity and the federation CA it trusts.
#[derive(Debug)]
pub struct Credentials {
    pub ca: CertificateDer<'static>,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Credentials {
    /// Loads `ca.pem`, `NAME.pem` and `NAME.key` from a folder written by `tessera pki`.
    pub fn load(dir: &Path, name: &str) -> Result<Self, QuicError> {
        let cert = |path: PathBuf| {
            CertificateDer::from_pem_file(&path).map_err(|e| QuicError::Credentials {
                path,
                message: e.to_string(),
            })
        };
        let key_path = dir.join(format!("{name}.key"));
        let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| QuicError::Credentials {
            path: key_path.clone(),
            message: e.to_string(),
        })?;
        Ok(Self {
            ca: cert(dir.join("ca.pem"))?,
            chain: vec![cert(dir.join(format!("{name}.pem")))?],
            key,
        })
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: &CertificateDer<'static>) -> Result<Arc<rustls::RootCertStore>, QuicError> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(ca.clone())
        .map_err(|e| QuicError::Tls(e.to_string()))?;
    Ok(Arc::new(roots))
}

/// Keep-alives every 2 s and a 15 s idle timeout: a vanished peer is noticed quickly
/// (phase deadlines, not the transport, decide dropouts; this only frees resources).
/// With `auditable`, every QUIC packet leaves as its own UDP datagram (no segmentation
/// offload), so that a packet capture taken on the sending host shows packets a
/// dissector can decrypt one by one (`tessera audit wire`), not the kernel's batches.
fn transport(auditable: bool) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(std::time::Duration::from_secs(2)));
    t.max_idle_timeout(Some(quinn::VarInt::from_u32(15_000).into()));
    if auditable {
        t.enable_segmentation_offload(false);
    }
    Arc::new(t)
}

fn tls(e: impl std::fmt::Display) -> QuicError {
    QuicError::Tls(e.to_string())
}

/// A server endpoint that only accepts clients with a certificate from the CA.
pub fn server(
    addr: SocketAddr,
    creds: &Credentials,
    keylog: bool,
) -> Result<quinn::Endpoint, QuicError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(&creds.ca)?, provider())
        .build()
        .map_err(tls)?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(creds.chain.clone(), creds.key.clone_key())
        .map_err(tls)?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    if keylog {
        cfg.key_log = Arc::new(rustls::KeyLogFile::new());
    }
    let quic = QuicServerConfig::try_from(cfg).map_err(tls)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport(keylog));
    quinn::Endpoint::server(config, addr).map_err(|source| QuicError::Bind { addr, source })
}

/// A client endpoint presenting `creds` and trusting only the CA.
pub fn client(creds: &Credentials, keylog: bool) -> Result<quinn::Endpoint, QuicError> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .with_root_certificates(roots(&creds.ca)?)
        .with_client_auth_cert(creds.chain.clone(), creds.key.clone_key())
        .map_err(tls)?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    if keylog {
        cfg.key_log = Arc::new(rustls::KeyLogFile::new());
    }
    let quic = QuicClientConfig::try_from(cfg).map_err(tls)?;
    let addr: SocketAddr = ([0, 0, 0, 0], 0).into();
    let mut endpoint =
        quinn::Endpoint::client(addr).map_err(|source| QuicError::Bind { addr, source })?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport(keylog));
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

/// Connects to the coordinator, whose certificate must name `server_name`.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    server_name: &str,
) -> Result<quinn::Connection, QuicError> {
    let fail = |e: &dyn std::fmt::Display| QuicError::Connect {
        addr,
        message: e.to_string(),
    };
    endpoint
        .connect(addr, server_name)
        .map_err(|e| fail(&e))?
        .await
        .map_err(|e| fail(&e))
}

/// The common name of the peer's (CA-verified) certificate.
pub fn peer_name(conn: &quinn::Connection) -> Option<String> {
    let identity = conn.peer_identity()?;
    let chain = identity.downcast_ref::<Vec<CertificateDer<'static>>>()?;
    crate::pki::common_name(chain.first()?)
}
