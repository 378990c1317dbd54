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

/// `client`: certificate chain and private key (PEM files) for mutual TLS.
pub fn config(
    ca_file: Option<&Path>,
    client: Option<(&Path, &Path)>,
) -> Result<TlsConfiguration, String> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("CA file {}: {e}", path.display()))?;
            for c in certs {
                let c = c.map_err(|e| format!("CA file {}: {e}", path.display()))?;
                roots
                    .add(c)
                    .map_err(|e| format!("CA file {}: {e}", path.display()))?;
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
        return Err("no trusted CA certificates (set platform.ca_file)".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let cfg = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| format!("client certificate {}: {e}", cert.display()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("client certificate {}: {e}", cert.display()))?;
            if chain.is_empty() {
                return Err(format!(
                    "client certificate {}: no certificate in it",
                    cert.display()
                ));
            }
            // The key file's contents are never put in an error message.
            let key = PrivateKeyDer::from_pem_file(key).map_err(|_| {
                format!(
                    "client key {}: not a PEM private key (or unreadable)",
                    key.display()
                )
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate and key: {e}"))?
        }
    };
    Ok(TlsConfiguration::Rustls(Arc::new(cfg)))
}
