//! `flagctl watch`: one line per change of the environment, live, until interrupted.

use flag_protocol::{Change, Document, ServerMessage};
use futures_util::StreamExt as _;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use crate::Context;
use crate::error::{CliError, Kind, Result, exit};
use crate::output::{self, Format, outln};

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

pub async fn run(context: &Context) -> Result<u8> {
    let api = context.api()?;
    let server = api
        .server
        .replacen("http://", "ws://", 1)
        .replacen("https://", "wss://", 1);
    let url = super::with_query(
        &format!("{server}{}", flag_protocol::stream::STREAM_PATH),
        &[("environment", &context.environment)],
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
    let (mut socket, _) =
        tokio_tungstenite::connect_async_tls_with_config(request, None, false, Some(connector))
            .await
            .map_err(|error| match error {
                tokio_tungstenite::tungstenite::Error::Http(response) => CliError::new(
                    Kind::Server,
                    format!("the server refused the stream: {}", response.status()),
                )
                .hint("watch needs an admin token"),
                other => {
                    crate::client::certificate_error(&api.server, &other).unwrap_or_else(|| {
                        CliError::new(
                            Kind::Network,
                            format!("cannot reach the flag server at {}: {other}", api.server),
                        )
                    })
                }
            })?;
    eprintln!("watching {} (Ctrl-C to stop)", context.environment);
    let mut document = Document::default();
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
        match message {
            ServerMessage::Snapshot(snapshot) => {
                document = snapshot.document;
                let version = snapshot.version;
                let count = document.flags.len();
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
                let version = patch.version;
                for change in patch.into_changes() {
                    if let Change::Settings { .. } = change {
                        let settings = |d: &Document| serde_json::json!({"metadata": d.metadata, "$evaluators": d.evaluators});
                        let before = settings(&document);
                        document.apply(change);
                        let changes = output::diff(&before, &settings(&document));
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
            ServerMessage::Goodbye(goodbye) => {
                eprintln!("the server said goodbye: {}", goodbye.reason.as_str());
                return Ok(exit::OK);
            }
            ServerMessage::Ping(_) | ServerMessage::Unknown => {}
        }
    }
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
