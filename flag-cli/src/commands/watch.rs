//! `flagctl watch`: one line per change of the environment, live, until interrupted.
//!
//! It reconnects on its own when the connection is lost or the server restarts (`shutdown`),
//! resuming with the resume token (version and commit digest), so no change is missed or printed
//! twice. With several servers (`--server a,b,c`: replicas on one database) it fails over to the
//! next one at once; it backs off (up to 5 s) only once every server has failed in a row. It
//! stops on Ctrl-C, on a final goodbye (token revoked, environment deleted), and when a server
//! refuses it (token, certificate).

use std::time::Duration;

use flag_protocol::{Ack, Change, ClientMessage, Document, Hello, ServerMessage};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use crate::Context;
use crate::client::Api;
use crate::error::{CliError, Kind, Result, exit};
use crate::output::{self, Format, outln};

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The longest wait between reconnection rounds.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// What the watcher has seen: the document, and where to resume.
#[derive(Default)]
struct Watched {
    document: Document,
    version: Option<i64>,
    digest: Option<String>,
}

pub async fn run(context: &Context) -> Result<u8> {
    let apis = context.apis().await?;
    let mut watched = Watched::default();
    let mut current = 0;
    // Connections lost (or not made) in a row; reset by every message that arrives.
    let mut failures: u32 = 0;
    let mut announced = false;
    loop {
        let api = &apis[current % apis.len()];
        let outcome = match connect(context, api, &watched).await {
            Ok(socket) => {
                if !announced {
                    eprintln!("watching {} (Ctrl-C to stop)", context.environment);
                    announced = true;
                }
                follow(context, socket, &mut watched, &mut failures).await
            }
            Err(error) => Err(error),
        };
        let lost = match outcome {
            Ok(code) => return Ok(code),
            // Refused (token, certificate, environment): retrying will not help.
            Err(error) if error.kind != Kind::Network => return Err(error),
            Err(error) => error,
        };
        failures = failures.saturating_add(1);
        current += 1;
        let others = u32::try_from(apis.len() - 1).unwrap_or(u32::MAX);
        let delay = if failures <= others {
            Duration::ZERO
        } else {
            Duration::from_millis(250)
                .saturating_mul(2u32.saturating_pow((failures - others - 1).min(8)))
                .min(MAX_BACKOFF)
        };
        let next = &apis[current % apis.len()].server;
        eprintln!(
            "{}; reconnecting to {next}{}",
            lost.message,
            if delay.is_zero() {
                String::new()
            } else {
                format!(" in {delay:?}")
            }
        );
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = tokio::signal::ctrl_c() => return Ok(exit::OK),
        }
    }
}

async fn connect(context: &Context, api: &Api, watched: &Watched) -> Result<Socket> {
    let server = api
        .server
        .replacen("http://", "ws://", 1)
        .replacen("https://", "wss://", 1);
    let version = watched.version.map(|v| v.to_string());
    let mut query = vec![("environment", context.environment.as_str())];
    if let Some(version) = &version {
        query.push((flag_protocol::stream::SINCE_PARAMETER, version));
        if let Some(digest) = &watched.digest {
            query.push((flag_protocol::stream::DIGEST_PARAMETER, digest));
        }
    }
    let url = super::with_query(
        &format!("{server}{}", flag_protocol::stream::STREAM_PATH),
        &query,
    );
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|error| CliError::config(format!("invalid server URL: {error}")))?;
    let authorization = format!("Bearer {}", api.token())
        .parse()
        .map_err(|_| CliError::config("the token contains characters an HTTP header cannot"))?;
    request.headers_mut().insert("authorization", authorization);
    let connector = tokio_tungstenite::Connector::Rustls(api.tls_config()?);
    let (socket, _) =
        tokio_tungstenite::connect_async_tls_with_config(request, None, false, Some(connector))
            .await
            .map_err(|error| match error {
                // A 5xx (a proxy in front of a replica that is down) is worth retrying; a
                // refusal of the token or the environment is not.
                tokio_tungstenite::tungstenite::Error::Http(response)
                    if response.status().is_server_error() =>
                {
                    CliError::new(
                        Kind::Network,
                        format!("the server answered {}", response.status()),
                    )
                }
                tokio_tungstenite::tungstenite::Error::Http(response) => {
                    // The server's reason, when its error body came with the refusal.
                    let reason = response
                        .body()
                        .as_deref()
                        .and_then(|body| serde_json::from_slice::<flag_protocol::ErrorBody>(body).ok())
                        .map(|body| format!(": {}", body.error.message))
                        .unwrap_or_default();
                    CliError::new(
                        Kind::Server,
                        format!("the server refused the stream: {}{reason}", response.status()),
                    )
                    .hint("watch needs a token (an admin token, or an sdk token of the environment); `flagctl auth whoami` shows what yours covers")
                }
                other => {
                    crate::client::certificate_error(&api.server, &other).unwrap_or_else(|| {
                        CliError::new(
                            Kind::Network,
                            format!("cannot reach the flag server at {}: {other}", api.server),
                        )
                    })
                }
            })?;
    Ok(socket)
}

/// Prints what one connection brings, until it ends: `Ok(exit code)` to stop, `Err` when the
/// connection was lost (and another server may be tried).
async fn follow(
    context: &Context,
    mut socket: Socket,
    watched: &mut Watched,
    failures: &mut u32,
) -> Result<u8> {
    // Say who we are, so `flagctl status` (the server's client list) names the watcher.
    let hello = ClientMessage::Hello(Hello {
        sdk: Some("flagctl".to_owned()),
        sdk_version: Some(env!("CARGO_PKG_VERSION").to_owned()),
        client_id: None,
    });
    send(&mut socket, &hello).await?;
    loop {
        let message = tokio::select! {
            message = socket.next() => message,
            _ = tokio::signal::ctrl_c() => return Ok(exit::OK),
        };
        let text = match message {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(_))) | None => {
                return Err(CliError::new(Kind::Network, "the server closed the stream"));
            }
            Some(Ok(_)) => continue,
            Some(Err(error)) => {
                return Err(CliError::new(
                    Kind::Network,
                    format!("the stream broke: {error}"),
                ));
            }
        };
        let message = match serde_json::from_str::<ServerMessage>(&text) {
            Ok(message) => message,
            Err(error) => {
                eprintln!("ignoring a stream message that does not parse: {error}");
                continue;
            }
        };
        let mut applied = false;
        match message {
            ServerMessage::Snapshot(snapshot) => {
                *failures = 0;
                applied = true;
                watched.document = snapshot.document;
                watched.version = Some(snapshot.version);
                watched.digest = snapshot.digest;
                let version = snapshot.version;
                let count = watched.document.flags.len();
                if context.output == Format::Json {
                    outln!(
                        "{}",
                        serde_json::json!({"time": now(), "version": version, "type": "snapshot", "flags": count})
                    )?;
                } else {
                    outln!(
                        "{}  v{version}  snapshot: {count} flag(s)",
                        output::time(now())
                    )?;
                }
            }
            ServerMessage::Patch(patch) => {
                *failures = 0;
                applied = true;
                let version = patch.version;
                watched.version = Some(version);
                watched.digest = patch.digest.clone();
                let document = &mut watched.document;
                for change in patch.into_changes() {
                    if let Change::Settings { .. } = change {
                        let settings = |d: &Document| serde_json::json!({"metadata": d.metadata, "$evaluators": d.evaluators});
                        let before = settings(document);
                        document.apply(change);
                        let changes = output::diff(&before, &settings(document));
                        print_settings(context, version, &changes)?;
                        continue;
                    }
                    let (key, after) = match &change {
                        Change::Upsert { key, flag } => (key.clone(), Some(flag.clone())),
                        Change::Delete { key } => (key.clone(), None),
                        Change::Settings { .. } => continue,
                    };
                    let before = document.apply(change);
                    let (action, changes) = match (&before, &after) {
                        (_, None) => ("deleted", Vec::new()),
                        (None, Some(after)) => ("created", output::diff(&Value::Null, after)),
                        (Some(before), Some(after)) => ("updated", output::diff(before, after)),
                    };
                    print_change(context, version, &key, action, &changes)?;
                }
            }
            ServerMessage::Goodbye(goodbye) if goodbye.reason.is_final() => {
                eprintln!("the server said goodbye: {}", goodbye.reason.as_str());
                return Ok(exit::OK);
            }
            ServerMessage::Goodbye(goodbye) => {
                // Shutting down (a restart, a deploy): another replica may carry on.
                return Err(CliError::new(
                    Kind::Network,
                    format!("the server said goodbye: {}", goodbye.reason.as_str()),
                ));
            }
            ServerMessage::Ping(_) => *failures = 0,
            ServerMessage::Unknown => {}
        }
        // Acknowledge what was applied: the server's client list shows the watcher current.
        if let Some(version) = watched.version.filter(|_| applied) {
            send(&mut socket, &ClientMessage::Ack(Ack { version })).await?;
        }
    }
}

/// Sends a client message (a lost connection is an error like a lost read).
async fn send(socket: &mut Socket, message: &ClientMessage) -> Result<()> {
    let text = serde_json::to_string(message).unwrap_or_default();
    socket
        .send(Message::text(text))
        .await
        .map_err(|error| CliError::new(Kind::Network, format!("the stream broke: {error}")))
}

/// The flag set's shared settings (metadata, `$evaluators`) were replaced.
fn print_settings(context: &Context, version: i64, changes: &[String]) -> Result<()> {
    let fields = serde_json::json!({"type": "settings"});
    print_line(
        context,
        version,
        fields,
        "flag-set settings replaced",
        changes,
    )
}

fn print_change(
    context: &Context,
    version: i64,
    key: &str,
    action: &str,
    changes: &[String],
) -> Result<()> {
    let fields = serde_json::json!({"key": key, "action": action});
    print_line(
        context,
        version,
        fields,
        &format!("{key} {action}"),
        changes,
    )
}

/// One line: `{"time", "version", ...fields, "changes"}` with `-o json`, else
/// `TIME  vVERSION  SUBJECT: change; change`.
fn print_line(
    context: &Context,
    version: i64,
    fields: Value,
    subject: &str,
    changes: &[String],
) -> Result<()> {
    if context.output == Format::Json {
        let mut line = serde_json::json!({"time": now(), "version": version, "changes": changes});
        if let (Some(line), Value::Object(fields)) = (line.as_object_mut(), fields) {
            line.extend(fields);
        }
        outln!("{line}")
    } else {
        let summary = if changes.is_empty() {
            String::new()
        } else {
            format!(": {}", changes.join("; "))
        };
        outln!("{}  v{version}  {subject}{summary}", output::time(now()))
    }
}
