//! TLS for `https://` servers (the stream is then `wss://`): rustls with the ring provider, the
//! Mozilla roots (`webpki-roots`) plus any private CA given to the builder. Hostname verification
//! is always on; there is no plaintext fallback.

use std::path::PathBuf;
use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;

use crate::status::Error;

/// PEM material for TLS (a CA certificate to trust, a client certificate or its key): a file,
/// or the PEM text itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pem {
    /// A PEM file.
    File(PathBuf),
    /// PEM text.
    Pem(Vec<u8>),
}

impl Pem {
    /// The bytes, and a name for messages.
    fn read(&self, what: &str) -> Result<(String, Vec<u8>), Error> {
        match self {
            Pem::File(path) => Ok((
                path.display().to_string(),
                std::fs::read(path).map_err(|error| {
                    Error::Config(format!(
                        "cannot read the {what} {}: {error}",
                        path.display()
                    ))
                })?,
            )),
            Pem::Pem(pem) => Ok((format!("the {what} given"), pem.clone())),
        }
    }
}

impl From<PathBuf> for Pem {
    fn from(path: PathBuf) -> Self {
        Pem::File(path)
    }
}

impl From<&std::path::Path> for Pem {
    fn from(path: &std::path::Path) -> Self {
        Pem::File(path.to_owned())
    }
}

impl From<Vec<u8>> for Pem {
    fn from(pem: Vec<u8>) -> Self {
        Pem::Pem(pem)
    }
}

impl From<&[u8]> for Pem {
    fn from(pem: &[u8]) -> Self {
        Pem::Pem(pem.to_vec())
    }
}

/// Text that holds a PEM block is PEM; anything else is a path.
impl From<&str> for Pem {
    fn from(text: &str) -> Self {
        if text.contains("-----BEGIN") {
            Pem::Pem(text.as_bytes().to_vec())
        } else {
            Pem::File(PathBuf::from(text))
        }
    }
}

impl From<String> for Pem {
    fn from(text: String) -> Self {
        Pem::from(text.as_str())
    }
}

/// The client configuration: public roots plus `extra` CAs, and a client certificate (mutual
/// TLS) when `identity` is given.
pub(crate) fn client_config(
    extra: &[Pem],
    identity: Option<&(Pem, Pem)>,
) -> Result<Arc<rustls::ClientConfig>, Error> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for source in extra {
        let (name, pem) = source.read("CA certificate")?;
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
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|error| Error::Config(format!("TLS: {error}")))?
    .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((certificate, key)) => {
            let (certificate_name, certificate_pem) = certificate.read("client certificate")?;
            let chain = CertificateDer::pem_slice_iter(&certificate_pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|error| {
                    Error::Config(format!("{certificate_name} is not PEM: {error}"))
                })?;
            if chain.is_empty() {
                return Err(Error::Config(format!(
                    "{certificate_name} holds no CERTIFICATE"
                )));
            }
            let (key_name, key_pem) = key.read("client key")?;
            let key =
                rustls_pki_types::PrivateKeyDer::from_pem_slice(&key_pem).map_err(|error| {
                    Error::Config(format!("{key_name} holds no PEM private key: {error}"))
                })?;
            builder.with_client_auth_cert(chain, key).map_err(|error| {
                Error::Config(format!("the client certificate and key: {error}"))
            })?
        }
    };
    Ok(Arc::new(config))
}

/// A certificate problem in an error chain, explained with the fix; `None` if the error is not
/// about a certificate.
pub(crate) fn certificate_problem(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cause = Some(error);
    while let Some(error) = cause {
        match error.downcast_ref::<rustls::Error>() {
            Some(rustls::Error::InvalidCertificate(problem)) => return Some(explain(problem)),
            Some(rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired)) => {
                return Some(
                    "the server requires a client certificate (mutual TLS, CertificateRequired): \
                     give the builder one with .client_certificate(cert, key)"
                        .to_owned(),
                );
            }
            _ => {}
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
