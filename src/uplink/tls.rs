//! TLS for the MQTT session: rustls with the ring provider, server verification always on.
//! Trust comes from the configured CA file, or else the system's root store; a client
//! certificate and key, when configured, authenticate the gateway (mutual TLS, e.g.
//! ThingsBoard's X.509 device credentials).

use std::path::Path;
use std::sync::Arc;

use rumqttc::TlsConfiguration;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

/// Why the TLS settings cannot be built; one variant per cause. Texts name the file, never
/// its contents (a key's bytes are never put in a message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    #[error("CA file {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("no trusted CA certificates (set platform.ca_file)")]
    NoRoots,
    #[error("TLS protocol versions: {0}")]
    Versions(String),
    #[error("client certificate {path}: {reason}")]
    ClientCert { path: String, reason: String },
    #[error("client key {0}: not a PEM private key (or unreadable)")]
    ClientKey(String),
    #[error("client certificate and key: {0}")]
    ClientAuth(String),
}

/// `client`: certificate chain and private key (PEM files) for mutual TLS.
pub fn config(
    ca_file: Option<&Path>,
    client: Option<(&Path, &Path)>,
) -> Result<TlsConfiguration, TlsError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let ca = |e: &dyn std::fmt::Display| TlsError::CaFile {
                path: path.display().to_string(),
                reason: e.to_string(),
            };
            let certs = CertificateDer::pem_file_iter(path).map_err(|e| ca(&e))?;
            for c in certs {
                let c = c.map_err(|e| ca(&e))?;
                roots.add(c).map_err(|e| ca(&e))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                let _ = roots.add(c);
            }
        }
    }
    if roots.is_empty() {
        return Err(TlsError::NoRoots);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Versions(e.to_string()))?
        .with_root_certificates(roots);
    let cfg = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let bad_cert = |reason: String| TlsError::ClientCert {
                path: cert.display().to_string(),
                reason,
            };
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| bad_cert(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad_cert(e.to_string()))?;
            if chain.is_empty() {
                return Err(bad_cert("no certificate in it".into()));
            }
            // The key file's contents are never put in an error message.
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|_| TlsError::ClientKey(key.display().to_string()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| TlsError::ClientAuth(e.to_string()))?
        }
    };
    Ok(TlsConfiguration::Rustls(Arc::new(cfg)))
}
