//! TLS for `https://` servers (the stream is then `wss://`): rustls with the ring provider, the
//! Mozilla roots (`webpki-roots`) plus any private CA given to the builder. Hostname verification
//! is always on; there is no plaintext fallback.

use std::path::PathBuf;
use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;

use crate::status::Error;

/// A CA certificate to trust besides the public roots: a PEM file, or PEM text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaCertificate {
    /// A PEM file (one or more certificates).
    File(PathBuf),
    /// PEM text (one or more certificates).
    Pem(Vec<u8>),
}

impl From<PathBuf> for CaCertificate {
    fn from(path: PathBuf) -> Self {
        CaCertificate::File(path)
    }
}

impl From<&std::path::Path> for CaCertificate {
    fn from(path: &std::path::Path) -> Self {
        CaCertificate::File(path.to_owned())
    }
}

impl From<Vec<u8>> for CaCertificate {
    fn from(pem: Vec<u8>) -> Self {
        CaCertificate::Pem(pem)
    }
}

impl From<&[u8]> for CaCertificate {
    fn from(pem: &[u8]) -> Self {
        CaCertificate::Pem(pem.to_vec())
    }
}

/// Text that holds a PEM block is PEM; anything else is a path.
impl From<&str> for CaCertificate {
    fn from(text: &str) -> Self {
        if text.contains("-----BEGIN") {
            CaCertificate::Pem(text.as_bytes().to_vec())
        } else {
            CaCertificate::File(PathBuf::from(text))
        }
    }
}

impl From<String> for CaCertificate {
    fn from(text: String) -> Self {
        CaCertificate::from(text.as_str())
    }
}

/// The client configuration: public roots plus `extra` CAs.
pub(crate) fn client_config(extra: &[CaCertificate]) -> Result<Arc<rustls::ClientConfig>, Error> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for source in extra {
        let (name, pem) = match source {
            CaCertificate::File(path) => (
                path.display().to_string(),
                std::fs::read(path).map_err(|error| {
                    Error::Config(format!(
                        "cannot read the CA certificate {}: {error}",
                        path.display()
                    ))
                })?,
            ),
            CaCertificate::Pem(pem) => ("the CA certificate given".to_owned(), pem.clone()),
        };
        let certificates = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| Error::Config(format!("{name} is not PEM: {error}")))?;
        if certificates.is_empty() {
            return Err(Error::Config(format!("{name} holds no CERTIFICATE")));
        }
        for certificate in certificates {
            roots.add(certificate).map_err(|error| {
                Error::Config(format!("{name} is not a usable CA certificate: {error}"))
            })?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|error| Error::Config(format!("TLS: {error}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A certificate problem in an error chain, explained with the fix; `None` if the error is not
/// about a certificate.
pub(crate) fn certificate_problem(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if let Some(rustls::Error::InvalidCertificate(problem)) =
            error.downcast_ref::<rustls::Error>()
        {
            return Some(explain(problem));
        }
        // An `io::Error` that wraps another error reports that error's source, not the error:
        // look inside it (tokio-rustls wraps rustls errors that way).
        if let Some(wrapped) = error
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            && let Some(problem) = certificate_problem(wrapped)
        {
            return Some(problem);
        }
        cause = error.source();
    }
    None
}

fn explain(problem: &rustls::CertificateError) -> String {
    use rustls::CertificateError as E;
    match problem {
        E::UnknownIssuer => {
            "the server's certificate is not signed by a trusted CA (UnknownIssuer): \
             give the builder its CA with .ca_certificate(...)"
                .to_owned()
        }
        E::NotValidForName | E::NotValidForNameContext { .. } => {
            "the server's certificate is not valid for the host name in the URL (NotValidForName): \
             connect with a name the certificate lists"
                .to_owned()
        }
        E::Expired | E::ExpiredContext { .. } => {
            "the server's certificate has expired (Expired): the server must renew it".to_owned()
        }
        E::NotValidYet | E::NotValidYetContext { .. } => {
            "the server's certificate is not valid yet (NotValidYet): check the clocks".to_owned()
        }
        E::Revoked => "the server's certificate is revoked (Revoked)".to_owned(),
        other => format!("the server's certificate was refused: {other:?}"),
    }
}
