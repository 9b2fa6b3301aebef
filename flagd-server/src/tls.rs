//! TLS on the listener (rustls): the certificate and key from PEM files, reloaded without a
//! restart when the files change (checked every `reload_interval`, and on demand, e.g. SIGHUP),
//! and optional client-certificate verification (mTLS).
//!
//! A reload swaps the certificate the resolver hands to *new* handshakes; connections already
//! established keep theirs. A new pair that does not load (unreadable, not PEM, a key that does
//! not match the certificate) is logged and the old one kept.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Where the server's TLS material is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    /// The certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by one of these CAs (PEM).
    pub client_ca: Option<PathBuf>,
    /// How often the files are checked for a change.
    pub reload_interval: Duration,
}

/// Why TLS material could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("TLS: cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file holds no usable PEM item of the expected kind.
    #[error("TLS: {path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// rustls refused the material (a key that does not match the certificate, say).
    #[error("TLS: {0}")]
    Rustls(String),
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::Pem {
            path: path.to_owned(),
            what: format!("not a PEM certificate file: {error}"),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            what: "no CERTIFICATE in it".to_owned(),
        });
    }
    Ok(chain)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|error| TlsError::Pem {
        path: path.to_owned(),
        what: format!("no PEM private key in it: {error}"),
    })
}

/// Loads and checks a certificate and key pair.
fn certified_key(options: &TlsOptions) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = read_certificates(&options.cert)?;
    let key = private_key(&options.key)?;
    let provider = rustls::crypto::ring::default_provider();
    let key = CertifiedKey::from_der(chain, key, &provider).map_err(|error| match error {
        rustls::Error::InconsistentKeys(_) => TlsError::Rustls(format!(
            "the key in {} does not belong to the certificate in {} (replace both together)",
            options.key.display(),
            options.cert.display()
        )),
        other => TlsError::Rustls(format!("{}: {other}", options.key.display())),
    })?;
    Ok(Arc::new(key))
}

/// Hands every handshake the current certificate; [`Certificates::reload`] swaps it.
#[derive(Debug)]
struct Certificates {
    current: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The listener's TLS: the acceptor and what reloads its certificate.
#[derive(Clone)]
pub struct Tls {
    acceptor: tokio_rustls::TlsAcceptor,
    certificates: Arc<Certificates>,
    options: TlsOptions,
    reload_now: Arc<Notify>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Loads the material; an error names the file and what is wrong with it.
    pub fn load(options: TlsOptions) -> Result<Tls, TlsError> {
        let certificates = Arc::new(Certificates {
            current: ArcSwap::new(certified_key(&options)?),
        });
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|error| TlsError::Rustls(error.to_string()))?;
        let builder = match &options.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                for certificate in read_certificates(path)? {
                    roots.add(certificate).map_err(|error| TlsError::Pem {
                        path: path.clone(),
                        what: format!("not a usable CA certificate: {error}"),
                    })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|error| TlsError::Rustls(error.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_cert_resolver(certificates.clone());
        // HTTP/1.1 only: the stream's WebSocket upgrade is an HTTP/1.1 mechanism.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            certificates,
            options,
            reload_now: Arc::new(Notify::new()),
        })
    }

    /// The acceptor for new connections.
    pub fn acceptor(&self) -> &tokio_rustls::TlsAcceptor {
        &self.acceptor
    }

    /// Asks the reload task to re-read the files now (SIGHUP).
    pub fn reload_now(&self) {
        self.reload_now.notify_one();
    }

    /// Re-reads the pair; on success new handshakes get it, on failure the old one stays.
    /// Returns whether the certificate changed.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let key = certified_key(&self.options)?;
        let changed = key.cert != self.certificates.current.load().cert;
        self.certificates.current.store(key);
        Ok(changed)
    }

    /// Watches the files until `stop`: every `reload_interval` (when their modification time or
    /// size changed) and whenever [`Tls::reload_now`] is called.
    pub async fn watch(self, stop: CancellationToken) {
        let mut seen = self.stamp();
        // At least a second: a zero period would make `interval` panic (and is no use).
        let period = self.options.reload_interval.max(Duration::from_secs(1));
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let forced = tokio::select! {
                () = stop.cancelled() => return,
                _ = interval.tick() => false,
                () = self.reload_now.notified() => true,
            };
            let stamp = self.stamp();
            if !forced && stamp == seen {
                continue;
            }
            seen = stamp;
            match self.reload() {
                Ok(true) => {
                    tracing::info!(cert = %self.options.cert.display(), "TLS certificate reloaded")
                }
                Ok(false) if forced => {
                    tracing::info!("TLS files re-read; the certificate is unchanged");
                }
                Ok(false) => tracing::debug!("TLS files checked; the certificate is unchanged"),
                Err(error) => {
                    tracing::error!(%error, "cannot reload the TLS certificate; keeping the current one");
                }
            }
        }
    }

    /// What identifies the files' current contents cheaply: modification time and size.
    fn stamp(&self) -> [Option<(SystemTime, u64)>; 2] {
        let stamp = |path: &Path| {
            std::fs::metadata(path)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        };
        [stamp(&self.options.cert), stamp(&self.options.key)]
    }
}
