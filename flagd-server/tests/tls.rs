//! TLS on a real server on port 0: HTTPS for the API and OFREP, WSS for the stream, certificate
//! rotation that keeps established connections, a bad new pair that keeps the old one, mutual
//! TLS. Certificates are made here with rcgen.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use flagd_server::tls::TlsOptions;
use flagd_server::{Server, ServerOptions};
use futures_util::{SinkExt as _, StreamExt as _};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

const ADMIN: &str = "test-admin-token-0123456789";

/// A certificate authority that signs leaf certificates.
struct Authority {
    certificate: rcgen::Certificate,
    key: KeyPair,
}

impl Authority {
    fn new(name: &str) -> Authority {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        Authority {
            certificate: params.self_signed(&key).unwrap(),
            key,
        }
    }

    fn pem(&self) -> String {
        self.certificate.pem()
    }

    /// A leaf for `localhost` and 127.0.0.1: (certificate PEM, key PEM).
    fn leaf(&self, name: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        let certificate = params
            .signed_by(&key, &self.certificate, &self.key)
            .unwrap();
        (certificate.pem(), key.serialize_pem())
    }
}

struct TlsServer {
    address: SocketAddr,
    tls: flagd_server::tls::Tls,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn write_pair(dir: &Path, (certificate, key): &(String, String)) {
    std::fs::write(dir.join("server.crt"), certificate).unwrap();
    std::fs::write(dir.join("server.key"), key).unwrap();
}

async fn start(pair: &(String, String), client_ca: Option<&str>) -> TlsServer {
    start_with_guard_ca(pair, client_ca, None).await
}

async fn start_with_guard_ca(
    pair: &(String, String),
    client_ca: Option<&str>,
    guard_ca: Option<&str>,
) -> TlsServer {
    let dir = tempfile::tempdir().unwrap();
    write_pair(dir.path(), pair);
    let client_ca = client_ca.map(|pem| {
        let path = dir.path().join("clients.crt");
        std::fs::write(&path, pem).unwrap();
        path
    });
    let guard_ca = guard_ca.map(|pem| {
        let path = dir.path().join("guards.crt");
        std::fs::write(&path, pem).unwrap();
        path
    });
    let options = ServerOptions {
        admin_token: Some(ADMIN.to_owned()),
        shutdown_timeout: Duration::from_secs(2),
        guard_ca,
        tls: Some(TlsOptions {
            cert: dir.path().join("server.crt"),
            key: dir.path().join("server.key"),
            client_ca,
            // Long: the tests reload on demand, as SIGHUP does.
            reload_interval: Duration::from_secs(3600),
        }),
        ..ServerOptions::new(dir.path().join("data"))
    };
    let server = Server::open(options, flagd_server::state::system_clock())
        .await
        .unwrap();
    assert_eq!(server.scheme(), "https");
    let tls = server.tls().unwrap().clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.serve(listener, async move {
        let _ = stopped.await;
    }));
    TlsServer {
        address,
        tls,
        stop: Some(stop),
        _dir: dir,
    }
}

fn https(authority: &Authority, address: SocketAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(authority.pem().as_bytes()).unwrap())
        .resolve("localhost", address)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A TLS client (optionally presenting a client certificate) trusting `authority`.
fn client_config(
    authority: &Authority,
    identity: Option<&(String, String)>,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(authority.pem().as_bytes()).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((certificate, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(certificate.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    // Every connection a full handshake: a resumed session shows no certificate of its own.
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn connect(address: SocketAddr, config: Arc<rustls::ClientConfig>) -> std::io::Result<Tls> {
    let tcp = tokio::net::TcpStream::connect(address).await?;
    tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// The common name of the certificate the server presented on this connection.
fn presented(stream: &Tls) -> String {
    let (_, session) = stream.get_ref();
    let der = session.peer_certificates().unwrap()[0].clone();
    // Cheap and enough here: the leaf's CN is one of our markers, found in the DER bytes.
    for marker in ["first-leaf", "second-leaf"] {
        if der
            .as_ref()
            .windows(marker.len())
            .any(|w| w == marker.as_bytes())
        {
            return marker.to_owned();
        }
    }
    panic!("the server presented a certificate of neither test leaf")
}

/// One keep-alive HTTP/1.1 request on an open connection; returns the status line.
async fn get(stream: &mut Tls, path: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    // /healthz answers a small body with a Content-Length: read until the body is in.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let read = tokio::time::timeout_at(deadline, stream.read(&mut buffer))
            .await
            .expect("no answer within 10 s")
            .unwrap();
        assert!(
            read > 0,
            "connection closed: {}",
            String::from_utf8_lossy(&answer)
        );
        answer.extend_from_slice(&buffer[..read]);
        let text = String::from_utf8_lossy(&answer);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_owned)
                })
                .and_then(|n| n.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if body.len() >= length {
                return head.lines().next().unwrap_or_default().to_owned();
            }
        }
    }
}

#[tokio::test]
async fn https_serves_the_api_ofrep_and_the_stream() {
    let authority = Authority::new("test CA");
    let server = start(&authority.leaf("first-leaf"), None).await;
    let client = https(&authority, server.address);
    let base = format!("https://localhost:{}", server.address.port());
    let health = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let put = client
        .put(format!("{base}/api/v1/environments/default/flags/f"))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);
    let answer: Value = client
        .post(format!(
            "{base}/ofrep/v1/evaluate/flags/f?environment=default"
        ))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({"context": {"targetingKey": "u"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["value"], true, "{answer}");

    // The stream over WSS: the snapshot, then a patch for a new write.
    let tls = connect(server.address, client_config(&authority, None))
        .await
        .unwrap();
    let mut request = format!(
        "wss://localhost:{}/api/v1/stream?environment=default",
        server.address.port()
    )
    .into_client_request()
    .unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {ADMIN}").parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::client_async(request, tls).await.unwrap();
    let mut next = async || loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("no stream message within 10 s")
            .unwrap()
            .unwrap();
        if let Message::Text(text) = message {
            return serde_json::from_str::<flag_protocol::ServerMessage>(&text).unwrap();
        }
    };
    let snapshot = next().await;
    assert!(
        matches!(snapshot, flag_protocol::ServerMessage::Snapshot(ref s) if s.document.flags.contains_key("f")),
        "{snapshot:?}"
    );
    client
        .put(format!("{base}/api/v1/environments/default/flags/g"))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({"state": "ENABLED", "variants": {"on": true}, "defaultVariant": "on"}))
        .send()
        .await
        .unwrap();
    let patch = next().await;
    assert!(
        matches!(patch, flag_protocol::ServerMessage::Patch(ref p) if p.upserts.contains_key("g")),
        "{patch:?}"
    );
    let _ = socket.send(Message::Close(None)).await;
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_issuer_is_refused() {
    let authority = Authority::new("test CA");
    let server = start(&authority.leaf("first-leaf"), None).await;
    let stranger = Authority::new("another CA");
    let error = https(&stranger, server.address)
        .get(format!(
            "https://localhost:{}/healthz",
            server.address.port()
        ))
        .send()
        .await
        .unwrap_err();
    let chain = std::iter::successors(Some(&error as &dyn std::error::Error), |e| e.source())
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ");
    assert!(chain.contains("UnknownIssuer"), "{chain}");
    // Plain HTTP to the TLS port is not served either.
    let plain = reqwest::Client::new()
        .get(format!("http://{}/healthz", server.address))
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
}

#[tokio::test]
async fn rotation_keeps_open_connections_and_serves_the_new_certificate_to_new_ones() {
    let authority = Authority::new("test CA");
    let server = start(&authority.leaf("first-leaf"), None).await;
    let config = client_config(&authority, None);
    let mut open = connect(server.address, config.clone()).await.unwrap();
    assert_eq!(presented(&open), "first-leaf");
    assert!(get(&mut open, "/healthz").await.contains("200"));

    write_pair(server._dir.path(), &authority.leaf("second-leaf"));
    assert!(server.tls.reload().unwrap(), "the certificate changed");
    let fresh = connect(server.address, config.clone()).await.unwrap();
    assert_eq!(presented(&fresh), "second-leaf");
    // The connection opened before the rotation still works, with the certificate it had.
    assert!(get(&mut open, "/healthz").await.contains("200"));
    assert_eq!(presented(&open), "first-leaf");

    // A broken new pair is refused and the current one kept.
    std::fs::write(server._dir.path().join("server.crt"), "not a certificate").unwrap();
    let error = server.tls.reload().unwrap_err().to_string();
    assert!(error.contains("server.crt"), "{error}");
    let after = connect(server.address, config.clone()).await.unwrap();
    assert_eq!(presented(&after), "second-leaf");
    // A key that does not belong to the certificate is refused too.
    let (certificate, _) = authority.leaf("first-leaf");
    let (_, other_key) = authority.leaf("second-leaf");
    write_pair(server._dir.path(), &(certificate, other_key));
    assert!(server.tls.reload().is_err());
    let after = connect(server.address, config).await.unwrap();
    assert_eq!(presented(&after), "second-leaf");
}

#[tokio::test]
async fn the_watch_task_picks_up_changed_files() {
    let authority = Authority::new("test CA");
    let server = start(&authority.leaf("first-leaf"), None).await;
    write_pair(server._dir.path(), &authority.leaf("second-leaf"));
    // What SIGHUP does in the binary.
    server.tls.reload_now();
    let config = client_config(&authority, None);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stream = connect(server.address, config.clone()).await.unwrap();
        if presented(&stream) == "second-leaf" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate was not served within 10 s of reload_now"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn mutual_tls_requires_a_client_certificate_from_the_client_ca() {
    let authority = Authority::new("test CA");
    let clients = Authority::new("client CA");
    let server = start(&authority.leaf("first-leaf"), Some(&clients.pem())).await;
    // Without a certificate: TLS 1.3 reports the refusal on the first read.
    let refused = async {
        let mut stream = connect(server.address, client_config(&authority, None)).await?;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await?;
        let mut buffer = [0u8; 64];
        let read = stream.read(&mut buffer).await?;
        Ok::<usize, std::io::Error>(read)
    }
    .await;
    assert!(
        !matches!(refused, Ok(read) if read > 0),
        "a client without a certificate was answered"
    );
    // With one from another CA: refused too.
    let stranger = Authority::new("stranger CA").leaf("first-leaf");
    let wrong = async {
        let mut stream =
            connect(server.address, client_config(&authority, Some(&stranger))).await?;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await?;
        let mut buffer = [0u8; 64];
        stream.read(&mut buffer).await
    }
    .await;
    assert!(
        !matches!(wrong, Ok(read) if read > 0),
        "a stranger's certificate was answered"
    );
    // With one from the client CA: served.
    let identity = clients.leaf("first-leaf");
    let mut stream = connect(server.address, client_config(&authority, Some(&identity)))
        .await
        .unwrap();
    assert!(get(&mut stream, "/healthz").await.contains("200"));
}

#[tokio::test]
async fn unusable_files_are_refused_at_start_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("server.crt"), "nothing here").unwrap();
    std::fs::write(dir.path().join("server.key"), "nothing here").unwrap();
    let options = ServerOptions {
        tls: Some(TlsOptions {
            cert: dir.path().join("server.crt"),
            key: dir.path().join("server.key"),
            client_ca: None,
            reload_interval: Duration::from_secs(10),
        }),
        ..ServerOptions::new(dir.path().join("data"))
    };
    let error = Server::open(options, flagd_server::state::system_clock())
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("server.crt"), "{error}");
    assert!(
        !dir.path().join("data").exists(),
        "nothing is created before the TLS files are checked"
    );
    let missing = ServerOptions {
        tls: Some(TlsOptions {
            cert: dir.path().join("absent.crt"),
            key: dir.path().join("server.key"),
            client_ca: None,
            reload_interval: Duration::from_secs(10),
        }),
        ..ServerOptions::new(dir.path().join("data2"))
    };
    let error = Server::open(missing, flagd_server::state::system_clock())
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("absent.crt"), "{error}");
}

/// An HTTPS health endpoint answering 200 to every request, with a certificate from `pair`.
async fn https_health(pair: &(String, String)) -> String {
    let (certificate, key) = pair;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![CertificateDer::from_pem_slice(certificate.as_bytes()).unwrap()],
        PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buffer = [0u8; 4096];
                let _ = stream.read(&mut buffer).await;
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
                let _ = stream.shutdown().await;
            });
        }
    });
    format!("https://localhost:{port}/health")
}

/// Ramp guards may be `https://`: trusted through `--guard-ca` (a private CA), refused with the
/// certificate problem named without it.
#[tokio::test]
async fn https_guards_trust_the_guard_ca() {
    let authority = Authority::new("test CA");
    let health = https_health(&authority.leaf("first-leaf")).await;
    let ramp = |server: &TlsServer| {
        let client = https(&authority, server.address);
        let base = format!("https://localhost:{}", server.address.port());
        let health = health.clone();
        async move {
            let put = client
                .put(format!("{base}/api/v1/environments/default/flags/f"))
                .bearer_auth(ADMIN)
                .json(&serde_json::json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off"}))
                .send()
                .await
                .unwrap();
            assert!(put.status().is_success());
            let response = client
                .post(format!("{base}/api/v1/environments/default/flags/f/ramp"))
                .bearer_auth(ADMIN)
                .json(&serde_json::json!({"steps": [10, 50], "interval": "10m", "guard": {"url": health}}))
                .send()
                .await
                .unwrap();
            let status = response.status();
            (status, response.text().await.unwrap())
        }
    };
    let trusting =
        start_with_guard_ca(&authority.leaf("first-leaf"), None, Some(&authority.pem())).await;
    let (status, body) = ramp(&trusting).await;
    assert_eq!(status, 201, "{body}");
    let untrusting = start(&authority.leaf("first-leaf"), None).await;
    let (status, body) = ramp(&untrusting).await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("certificate"), "{body}");
}

/// A zero reload interval is treated as the minimum (1 s), never a panic of the watch task:
/// changed files are picked up by the polling alone.
#[tokio::test]
async fn a_zero_reload_interval_still_reloads() {
    let authority = Authority::new("test CA");
    let dir = tempfile::tempdir().unwrap();
    write_pair(dir.path(), &authority.leaf("first-leaf"));
    let options = ServerOptions {
        admin_token: Some(ADMIN.to_owned()),
        tls: Some(TlsOptions {
            cert: dir.path().join("server.crt"),
            key: dir.path().join("server.key"),
            client_ca: None,
            reload_interval: Duration::ZERO,
        }),
        ..ServerOptions::new(dir.path().join("data"))
    };
    let server = Server::open(options, flagd_server::state::system_clock())
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.serve(listener, async move {
        let _ = stopped.await;
    }));
    // A second later, so the modification time surely differs.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    write_pair(dir.path(), &authority.leaf("second-leaf"));
    let config = client_config(&authority, None);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stream = connect(address, config.clone()).await.unwrap();
        if presented(&stream) == "second-leaf" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "polling never picked up the new pair"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
