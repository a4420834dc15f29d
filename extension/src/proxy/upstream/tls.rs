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

/// What went wrong in a TLS handshake, as far as the fix differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TlsProblem {
    /// The chain leads to no trusted CA (a private CA, or an incomplete chain).
    UnknownIssuer,
    /// The certificate does not name the host.
    WrongName,
    /// Expired or not yet valid.
    OutOfDate,
    /// Any other verdict on the certificate.
    Certificate,
    /// Not about the certificate: protocol, versions, a reset, the handshake's time.
    Handshake,
}

impl TlsProblem {
    /// The handshake's error from tokio-rustls (a `rustls::Error` inside an `io::Error`).
    pub(crate) fn of(err: &std::io::Error) -> TlsProblem {
        use rustls::CertificateError as C;
        let rustls_error = err
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        match rustls_error {
            Some(rustls::Error::InvalidCertificate(cert)) => match cert {
                C::UnknownIssuer => TlsProblem::UnknownIssuer,
                C::NotValidForName | C::NotValidForNameContext { .. } => TlsProblem::WrongName,
                C::Expired
                | C::ExpiredContext { .. }
                | C::NotValidYet
                | C::NotValidYetContext { .. } => TlsProblem::OutOfDate,
                _ => TlsProblem::Certificate,
            },
            _ => TlsProblem::Handshake,
        }
    }

    /// A verdict on the certificate: the next handshake gets the same one.
    pub(crate) fn is_certificate(self) -> bool {
        self != TlsProblem::Handshake
    }

    /// What to change, naming the variable where there is one.
    pub(crate) fn hint(self) -> Option<&'static str> {
        match self {
            TlsProblem::UnknownIssuer => {
                Some("set EGRESS_WARDEN_CA_BUNDLE to the CA that signed it")
            }
            TlsProblem::WrongName => {
                Some("the certificate does not name this host: check the host in the URL")
            }
            TlsProblem::OutOfDate => Some("the upstream's certificate is out of date"),
            TlsProblem::Certificate => Some(
                "check the upstream's certificate chain (EGRESS_WARDEN_CA_BUNDLE for a private CA)",
            ),
            TlsProblem::Handshake => None,
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::CertificateError;
    use std::io;

    fn handshake_error(err: rustls::Error) -> io::Error {
        // As tokio-rustls hands it over.
        io::Error::new(io::ErrorKind::InvalidData, err)
    }

    #[test]
    fn certificate_verdicts_are_told_from_other_handshake_failures() {
        let cert = |c| TlsProblem::of(&handshake_error(rustls::Error::InvalidCertificate(c)));
        assert_eq!(
            cert(CertificateError::UnknownIssuer),
            TlsProblem::UnknownIssuer
        );
        assert_eq!(
            cert(CertificateError::NotValidForName),
            TlsProblem::WrongName
        );
        assert_eq!(cert(CertificateError::Expired), TlsProblem::OutOfDate);
        assert_eq!(
            cert(CertificateError::BadSignature),
            TlsProblem::Certificate
        );
        let unknown = handshake_error(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer,
        ));
        assert_eq!(
            unknown.to_string(),
            "invalid peer certificate: UnknownIssuer"
        );
        for other in [
            handshake_error(rustls::Error::HandshakeNotComplete),
            io::Error::from(io::ErrorKind::ConnectionReset),
            io::Error::other("handshake timed out"),
        ] {
            assert_eq!(TlsProblem::of(&other), TlsProblem::Handshake, "{other}");
            assert!(!TlsProblem::of(&other).is_certificate());
        }
        assert!(TlsProblem::UnknownIssuer.is_certificate());
        assert!(TlsProblem::UnknownIssuer
            .hint()
            .is_some_and(|h| h.contains("EGRESS_WARDEN_CA_BUNDLE")));
    }
}
