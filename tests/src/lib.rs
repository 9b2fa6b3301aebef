//! End-to-end helpers: run the real binaries as child processes.
//!
//! Binaries are built first, in the test executable's profile, and run from where cargo says it
//! put them, so `cargo test -p tests` works on its own as well as under `cargo test --workspace`,
//! and never runs a stale binary. Servers listen on port 0; a client that must outlive a server
//! restart talks to a [`FrontDoor`], so no test ever picks a port or frees one it needs again.

use std::io::{BufRead, BufReader};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The path of a workspace binary, built first (once per binary per test run) so that a test
/// never runs a stale one.
///
/// Cargo names the file it built (`--message-format=json`), so the path is not a guess about the
/// target directory. A failed build fails the test that asked for it, with cargo's output.
///
/// `FLAGD_SERVER_BINARY=/path/to/flagd-server` runs that build of the server instead (to compare
/// two builds in benches, one after the other on the same machine).
pub fn binary(package: &str, name: &str) -> PathBuf {
    if name == "flagd-server"
        && let Some(path) = std::env::var_os("FLAGD_SERVER_BINARY")
    {
        return PathBuf::from(path);
    }
    static BUILT: Mutex<Vec<(String, PathBuf)>> = Mutex::new(Vec::new());
    // Held during the build: tests that need the same binary wait for it instead of racing.
    let mut built = BUILT.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((_, path)) = built.iter().find(|(built, _)| built == name) {
        return path.clone();
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut command = Command::new(&cargo);
    command.args([
        "build",
        "--quiet",
        "--message-format=json-render-diagnostics",
        "-p",
        package,
        "--bin",
        name,
    ]);
    // The variables cargo sets for this test executable are not the build's: a build script
    // that watches one (ring's, for instance) would rerun and rebuild half the tree every time.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let ours = [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
            "CARGO_PRIMARY_",
        ]
        .iter()
        .any(|prefix| name.starts_with(prefix))
            || ["CARGO_TARGET_TMPDIR", "CARGO_RUSTC_CURRENT_DIR", "OUT_DIR"].contains(&&*name);
        if ours {
            command.env_remove(&*name);
        }
    }
    // Benches run from target/release: build the binary they expect, in the same profile.
    let release = std::env::current_exe().is_ok_and(|exe| {
        exe.parent()
            .and_then(Path::parent)
            .and_then(Path::file_name)
            .is_some_and(|profile| profile == "release")
    });
    if release {
        command.arg("--release");
    }
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|error| panic!("cannot run {cargo} to build {name}: {error}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    // Diagnostics are rendered on stderr; stdout carries one JSON message per line.
    assert!(
        output.status.success(),
        "building {name} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let executable = stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| {
            message["reason"] == "compiler-artifact" && message["target"]["name"] == name
        })
        .find_map(|message| message["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| panic!("cargo built {name} but named no executable for it:\n{stdout}"));
    built.push((name.to_owned(), executable.clone()));
    executable
}

/// The HTTP client of the end-to-end tests (30 s timeout: a hung server fails the test).
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap_or_else(|error| panic!("cannot build an HTTP client: {error}"))
}

/// `GET url` with a bearer credential, as JSON (panics, failing the test, on a network error or
/// a body that is not JSON; the status is not checked: assert on the body).
pub async fn get_json(url: &str, credential: &str) -> serde_json::Value {
    http()
        .get(url)
        .bearer_auth(credential)
        .send()
        .await
        .unwrap_or_else(|error| panic!("GET {url}: {error}"))
        .json()
        .await
        .unwrap_or_else(|error| panic!("GET {url}: not JSON: {error}"))
}

/// Creates an sdk token named `name` for the `default` environment with the admin token
/// `admin`; returns its secret and its id.
pub async fn sdk_token(base: &str, admin: &str, name: &str) -> (String, String) {
    let created: serde_json::Value = http()
        .post(format!("{base}/api/v1/tokens"))
        .bearer_auth(admin)
        .json(&serde_json::json!({"name": name, "role": "sdk", "environment": "default"}))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .unwrap_or_else(|error| panic!("cannot create an sdk token: {error}"))
        .json()
        .await
        .unwrap_or_else(|error| panic!("the token answer is not JSON: {error}"));
    let field = |name: &str| {
        created[name]
            .as_str()
            .unwrap_or_else(|| panic!("the token answer has no {name}: {created}"))
            .to_owned()
    };
    (field("token"), field("id"))
}

/// Runs `flagctl` against `server` with `token` (through its variables), from `dir` (so files in
/// it can be named plainly) and with a config directory of its own there. Returns the exit code,
/// stdout and stderr.
pub fn flagctl(
    server: &ServerProcess,
    token: &str,
    dir: &Path,
    args: &[&str],
) -> (i32, String, String) {
    flagctl_env(server, Some(token), dir, &[], args)
}

/// [`flagctl`] with extra variables, and no token at all when `token` is `None`. The variables
/// that choose flagctl's credential, environment and trust are cleared first, so the developer's
/// own settings never leak into a test.
pub fn flagctl_env(
    server: &ServerProcess,
    token: Option<&str>,
    dir: &Path,
    env: &[(&str, &str)],
    args: &[&str],
) -> (i32, String, String) {
    let mut command = Command::new(binary("flag-cli", "flagctl"));
    command
        .args(args)
        .current_dir(dir)
        .env("FLAGCTL_SERVER", &server.base_url)
        .env("XDG_CONFIG_HOME", dir.join("config"));
    for name in [
        "FLAGCTL_TOKEN",
        "FLAGCTL_ENV",
        "FLAGCTL_CA_CERT",
        "FLAGCTL_OIDC_AUDIENCE",
        "FLAGCTL_OIDC_TOKEN_FILE",
        "ACTIONS_ID_TOKEN_REQUEST_URL",
        "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
    ] {
        command.env_remove(name);
    }
    if let Some(token) = token {
        command.env("FLAGCTL_TOKEN", token);
    }
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|error| panic!("cannot run flagctl: {error}"));
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Whether `program --version` runs. When it does not, prints one `skipped: TEST: …` line saying
/// how to install it, or fails when `require` (`FLAGD_REQUIRE_GIT`, …) is set to 1, as `.ci/run`
/// does.
pub fn program_available(program: &str, require: &str, test: &str) -> bool {
    program_available_from(program, program, require, test)
}

/// [`program_available`] for a program the Debian package `package` installs.
pub fn program_available_from(program: &str, package: &str, require: &str, test: &str) -> bool {
    let found = Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var(require).as_deref() != Ok("1"),
            "{program} is required ({require}=1) but not found"
        );
        println!(
            "skipped: {test}: the {program} program is not installed (apt-get install {package})"
        );
    }
    found
}

/// A `flagd-server` child process.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base_url: String,
    /// The data directory it was started with.
    pub data_dir: PathBuf,
}

impl ServerProcess {
    /// Starts the server on port 0 with this data directory and bootstrap admin token, and waits
    /// for its `listening on` line.
    pub fn start(data_dir: &Path, admin_token: &str) -> ServerProcess {
        ServerProcess::start_with(data_dir, admin_token, &[])
    }

    /// [`start`](Self::start) with extra command-line arguments.
    pub fn start_with(data_dir: &Path, admin_token: &str, extra: &[&str]) -> ServerProcess {
        let mut child = Command::new(binary("flagd-server", "flagd-server"))
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env("FLAGD_ADMIN_TOKEN", admin_token)
            .env("FLAGD_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start flagd-server: {error}"));
        let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
        let (sender, receiver) = std::sync::mpsc::channel();
        // Reads stdout to the end, so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("listening on ") {
                    let _ = sender.send(url.to_owned());
                }
            }
        });
        let base_url = match receiver.recv_timeout(Duration::from_secs(30)) {
            Ok(base_url) => base_url,
            // Stdout closed without the line: the server exited (its stderr says why).
            Err(RecvTimeoutError::Disconnected) => {
                let status = child.wait();
                panic!("flagd-server exited before printing its address: {status:?}")
            }
            Err(RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("flagd-server did not print its address within 30 s")
            }
        };
        ServerProcess {
            child,
            base_url,
            data_dir: data_dir.to_owned(),
        }
    }

    /// Its `/metrics` text (panics, failing the test, on a network error).
    pub async fn metrics(&self) -> String {
        let url = format!("{}/metrics", self.base_url);
        http()
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|error| panic!("GET {url}: {error}"))
            .text()
            .await
            .unwrap_or_else(|error| panic!("GET {url}: {error}"))
    }

    /// `127.0.0.1:PORT`.
    pub fn address(&self) -> &str {
        self.base_url
            .trim_start_matches("http://")
            .trim_start_matches("https://")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process with SIGKILL, as a crash or power cut would, and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Asks the process to stop with SIGTERM and waits up to `limit`; returns whether it exited
    /// successfully in time.
    #[cfg(unix)]
    pub fn terminate(&mut self, limit: Duration) -> bool {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An address the test holds for its whole life that forwards each connection to the server
/// behind it at the time, if any.
///
/// A client that must outlive a server restart is given this address: the server can stop and
/// start again on port 0, and no port is ever freed and bound again, which another process
/// could take in between. With no server behind it, a connection is accepted and closed at once,
/// so a client finds the server unreachable. Connections already forwarded stay with their server
/// and close when it goes away.
#[derive(Debug)]
pub struct FrontDoor {
    address: SocketAddr,
    server: Arc<Mutex<Option<SocketAddr>>>,
    closed: Arc<AtomicBool>,
}

impl FrontDoor {
    /// Opens a front door on port 0, with no server behind it yet.
    pub fn open() -> FrontDoor {
        let listener = TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|error| panic!("cannot open a front door: {error}"));
        let address = listener
            .local_addr()
            .unwrap_or_else(|error| panic!("a front door without an address: {error}"));
        let server: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let closed: Arc<AtomicBool> = Arc::default();
        let (behind, stop) = (server.clone(), closed.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stop.load(Ordering::Acquire) {
                    break;
                }
                let server = *behind.lock().unwrap_or_else(PoisonError::into_inner);
                // No server (or it died): dropping the connection closes it.
                if let (Ok(client), Some(server)) = (client, server)
                    && let Ok(server) = TcpStream::connect(server)
                {
                    forward(client, server);
                }
            }
        });
        FrontDoor {
            address,
            server,
            closed,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Sends new connections to `server`, or, with `None`, closes them at once.
    pub fn forward_to(&self, server: Option<&ServerProcess>) {
        let address = server.map(|server| {
            server
                .address()
                .parse()
                .unwrap_or_else(|error| panic!("{}: {error}", server.address()))
        });
        *self.server.lock().unwrap_or_else(PoisonError::into_inner) = address;
    }
}

impl Drop for FrontDoor {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Release);
        // Wakes the accepting thread so it sees `closed` and lets go of the port.
        let _ = TcpStream::connect(self.address);
    }
}

/// Copies bytes both ways until either side closes, then closes both, as a dropped connection.
fn forward(client: TcpStream, server: TcpStream) {
    let (Ok(client_too), Ok(server_too)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    for (mut from, mut to) in [(client, server), (server_too, client_too)] {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
        });
    }
}

/// A TCP proxy to a fixed address whose connections can be frozen: bytes stop flowing both ways
/// while the sockets stay open, as with a peer that hangs or a network that silently drops
/// packets (what TCP alone takes long to notice). New connections made while frozen are frozen
/// too.
#[derive(Debug)]
pub struct FreezableProxy {
    address: SocketAddr,
    frozen: Arc<AtomicBool>,
    closed: Arc<AtomicBool>,
}

impl FreezableProxy {
    /// Forwards connections made to a port of its own to `target`.
    pub fn open(target: SocketAddr) -> FreezableProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|error| panic!("cannot open a proxy: {error}"));
        let address = listener
            .local_addr()
            .unwrap_or_else(|error| panic!("a proxy without an address: {error}"));
        let frozen: Arc<AtomicBool> = Arc::default();
        let closed: Arc<AtomicBool> = Arc::default();
        let (freeze, stop) = (frozen.clone(), closed.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stop.load(Ordering::Acquire) {
                    break;
                }
                if let (Ok(client), Ok(server)) = (client, TcpStream::connect(target)) {
                    pump_both(client, server, &freeze);
                }
            }
        });
        FreezableProxy {
            address,
            frozen,
            closed,
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Stops (`true`) or resumes (`false`) every byte through the proxy.
    pub fn freeze(&self, frozen: bool) {
        self.frozen.store(frozen, Ordering::Release);
    }
}

impl Drop for FreezableProxy {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Release);
        self.frozen.store(false, Ordering::Release);
        let _ = TcpStream::connect(self.address);
    }
}

fn pump_both(client: TcpStream, server: TcpStream, frozen: &Arc<AtomicBool>) {
    let (Ok(client_too), Ok(server_too)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    for (mut from, mut to) in [(client, server), (server_too, client_too)] {
        let frozen = frozen.clone();
        std::thread::spawn(move || {
            use std::io::{Read as _, Write as _};
            let mut buffer = vec![0u8; 64 * 1024];
            loop {
                let read = match from.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(read) => read,
                };
                // Held, not dropped: the bytes go through once thawed.
                while frozen.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                if to.write_all(&buffer[..read]).is_err() {
                    break;
                }
            }
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
        });
    }
}

/// The flagd conformance table (`flag-core/tests/data/conformance/`): the document, and its rows.
pub fn conformance() -> (PathBuf, serde_json::Value, serde_json::Value) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../flag-core/tests/data/conformance");
    let read = |name: &str| -> serde_json::Value {
        let text = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
    };
    (
        dir.join("flags.json"),
        read("flags.json"),
        read("cases.json"),
    )
}

/// A conformance row's `expect` as an OFREP evaluation of its flag.
pub fn conformance_expected(row: &serde_json::Value) -> flag_protocol::OfrepEvaluation {
    let mut expected = row["expect"].as_object().cloned().unwrap_or_default();
    expected.insert("key".to_owned(), row["flag"].clone());
    serde_json::from_value(serde_json::Value::Object(expected))
        .unwrap_or_else(|error| panic!("conformance row {row} does not decode: {error}"))
}
