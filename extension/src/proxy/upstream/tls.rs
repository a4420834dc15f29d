//! TLS origination for route mode (and `https://` absolute-form requests): rustls with the
//! system roots plus `EGRESS_WARDEN_CA_BUNDLE`, offering HTTP/2 and HTTP/1.1 by ALPN.
//! Built on first use: reading the system store costs milliseconds that INIT should not pay
//! when no route is configured.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use tokio_rustls::TlsConnector;

pub(crate) struct TlsSetup {
    ca_bundle: Option<PathBuf>,
    built: OnceLock<Result<TlsConnector, String>>,
}

impl TlsSetup {
    pub(crate) fn new(ca_bundle: Option<PathBuf>) -> TlsSetup {
        TlsSetup {
            ca_bundle,
            built: OnceLock::new(),
        }
    }

    pub(crate) fn connector(&self) -> Result<TlsConnector, String> {
        self.built
            .get_or_init(|| {
                let built = client_config(self.ca_bundle.as_deref())
                    .map(|c| TlsConnector::from(Arc::new(c)));
                if let Err(err) = &built {
                    tracing::error!("TLS origination is unavailable: {err}");
                }
                built
            })
            .clone()
    }
}

pub(crate) fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_owned())
        .map_err(|e| format!("{host:?} is not a valid TLS server name: {e}"))
}

fn client_config(ca_bundle: Option<&Path>) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for err in &native.errors {
        tracing::warn!("reading the system CA store: {err}");
    }
    let (_, ignored) = roots.add_parsable_certificates(native.certs);
    if ignored > 0 {
        tracing::debug!("{ignored} system CA certificates could not be parsed");
    }
    if let Some(path) = ca_bundle {
        let pem = std::fs::read(path)
            .map_err(|e| format!("EGRESS_WARDEN_CA_BUNDLE={}: {e}", path.display()))?;
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert =
                cert.map_err(|e| format!("EGRESS_WARDEN_CA_BUNDLE={}: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("EGRESS_WARDEN_CA_BUNDLE={}: {e}", path.display()))?;
            added += 1;
        }
        if added == 0 {
            return Err(format!(
                "EGRESS_WARDEN_CA_BUNDLE={} holds no certificate",
                path.display()
            ));
        }
    }
    if roots.is_empty() {
        return Err(
            "no trusted CA certificates (system store empty, no EGRESS_WARDEN_CA_BUNDLE)".into(),
        );
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
