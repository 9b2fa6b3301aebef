//! The update stream (`GET /api/v1/stream`, a WebSocket of JSON text messages): what the server
//! sends ([`ServerMessage`]), what a client may send ([`ClientMessage`]), the flag-set
//! [`Document`] a client keeps, and the one way to change it ([`Document::apply`]).
//!
//! Every type is generic over how a flag definition is held, `F`: clients keep flags as raw JSON
//! (`serde_json::Value`, the default), so one flag they cannot read never stops the others; the
//! server keeps them typed and compiled. The wire form is the same.
//!
//! Rules every side follows (`docs/PROTOCOL.md` says them for people): unknown message types and
//! unknown fields are ignored, so the protocol grows by adding them; a patch applies to the
//! state at `version - 1` and nothing else.

use std::collections::{BTreeMap, BTreeSet};

use flag_core::Metadata;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The stream's path on the server.
pub const STREAM_PATH: &str = "/api/v1/stream";

/// The query parameter a reconnecting client names its last applied version with.
pub const SINCE_PARAMETER: &str = "since";

/// The query parameter a reconnecting client names the `digest` of its last applied version with
/// (with [`SINCE_PARAMETER`], its resume token). A server whose commit at that version has
/// another digest (another database, a restored backup) sends a snapshot instead of patches.
pub const DIGEST_PARAMETER: &str = "digest";

/// Shared rules (`$evaluators`) by name.
pub type Evaluators = BTreeMap<String, Value>;

/// A flagd flag-set document, as the stream carries it: `flags` is always the map form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Document<F = Value> {
    /// The JSON schema the document declares.
    #[serde(rename = "$schema", default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// Flag-set metadata (absent on the wire when empty).
    #[serde(default, skip_serializing_if = "Metadata::is_empty")]
    pub metadata: Metadata,
    /// Shared rules (absent on the wire when empty).
    #[serde(
        rename = "$evaluators",
        default,
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub evaluators: Evaluators,
    /// Flag definitions by key.
    #[serde(default = "BTreeMap::new")]
    pub flags: BTreeMap<String, F>,
}

impl<F> Default for Document<F> {
    fn default() -> Self {
        Document {
            schema: None,
            metadata: Metadata::new(),
            evaluators: Evaluators::new(),
            flags: BTreeMap::new(),
        }
    }
}

/// One change to a [`Document`]: what a committed write did, in the order it did it.
#[derive(Debug, Clone, PartialEq)]
pub enum Change<F = Value> {
    /// A flag created or replaced whole (never a partial change).
    Upsert {
        /// The flag key.
        key: String,
        /// The complete new definition.
        flag: F,
    },
    /// A flag removed.
    Delete {
        /// The flag key.
        key: String,
    },
    /// The flag set's shared settings replaced; `None` leaves one unchanged.
    Settings {
        /// New flag-set metadata.
        metadata: Option<Metadata>,
        /// New `$evaluators`.
        evaluators: Option<Evaluators>,
    },
}

impl<F> Change<F> {
    /// The flag key it touches; `None` for settings, which may touch every flag.
    pub fn key(&self) -> Option<&str> {
        match self {
            Change::Upsert { key, .. } | Change::Delete { key } => Some(key),
            Change::Settings { .. } => None,
        }
    }

    /// The same change with the flag converted (for example decoded from JSON).
    pub fn try_map<G, E>(self, convert: impl FnOnce(F) -> Result<G, E>) -> Result<Change<G>, E> {
        Ok(match self {
            Change::Upsert { key, flag } => Change::Upsert {
                key,
                flag: convert(flag)?,
            },
            Change::Delete { key } => Change::Delete { key },
            Change::Settings {
                metadata,
                evaluators,
            } => Change::Settings {
                metadata,
                evaluators,
            },
        })
    }
}

impl<F> Document<F> {
    /// Applies one change. Returns the flag's previous definition for an upsert or a delete
    /// (`None` when the flag did not exist, and for settings).
    ///
    /// This is the only place a change is applied: the server's hub, the SDK and `flagctl
    /// watch` all call it.
    pub fn apply(&mut self, change: Change<F>) -> Option<F> {
        match change {
            Change::Upsert { key, flag } => self.flags.insert(key, flag),
            Change::Delete { key } => self.flags.remove(&key),
            Change::Settings {
                metadata,
                evaluators,
            } => {
                if let Some(metadata) = metadata {
                    self.metadata = metadata;
                }
                if let Some(evaluators) = evaluators {
                    self.evaluators = evaluators;
                }
                None
            }
        }
    }

    /// The same document holding flags by reference (to serialise a typed one without a copy
    /// of every flag).
    pub fn by_ref<'a, G: ?Sized>(&'a self, view: impl Fn(&'a F) -> &'a G) -> Document<&'a G> {
        Document {
            schema: self.schema.clone(),
            metadata: self.metadata.clone(),
            evaluators: self.evaluators.clone(),
            flags: self
                .flags
                .iter()
                .map(|(k, f)| (k.clone(), view(f)))
                .collect(),
        }
    }
}

impl<F: PartialEq> Document<F> {
    /// Keys created, changed or removed from `self` to `new`; every key of either when the
    /// shared settings differ (they can change how any flag evaluates).
    pub fn changed_keys(&self, new: &Document<F>) -> Vec<String> {
        let mut keys = BTreeSet::new();
        if self.metadata != new.metadata || self.evaluators != new.evaluators {
            keys.extend(self.flags.keys().cloned());
            keys.extend(new.flags.keys().cloned());
        } else {
            keys.extend(
                new.flags
                    .iter()
                    .filter(|(k, f)| self.flags.get(*k) != Some(*f))
                    .map(|(k, _)| k.clone()),
            );
            keys.extend(
                self.flags
                    .keys()
                    .filter(|k| !new.flags.contains_key(*k))
                    .cloned(),
            );
        }
        keys.into_iter().collect()
    }
}

impl Document {
    /// Reads any flagd document, also one whose `flags` is flagd's array form (`[{"key": ...,
    /// ...}]`, as bootstrap files may be written). Flag definitions are kept as they are.
    pub fn from_value(mut value: Value) -> Result<Document, serde_json::Error> {
        if let Some(flags) = value.get_mut("flags").filter(|f| f.is_array())
            && let Value::Array(list) = flags.take()
        {
            let mut by_key = serde_json::Map::new();
            for (index, mut flag) in list.into_iter().enumerate() {
                let Some(Value::String(key)) = flag.as_object_mut().and_then(|f| f.remove("key"))
                else {
                    return Err(serde::de::Error::custom(format!(
                        "flags[{index}] has no string \"key\""
                    )));
                };
                by_key.insert(key, flag);
            }
            *flags = Value::Object(by_key);
        }
        serde_json::from_value(value)
    }
}

/// A message from the server. Every one carries `version`: the environment version the client
/// has after applying it (for `ping` and `goodbye`, the last version the server sent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage<F = Value> {
    /// The whole environment: replace your state with it.
    Snapshot(Snapshot<F>),
    /// One committed version's changes: apply them to the state at `version - 1`.
    Patch(Patch<F>),
    /// Liveness (every ping interval), and "you are up to date" right after a resume.
    Ping(Ping),
    /// The server is about to close the connection.
    Goodbye(Goodbye),
    /// A message type this build does not know: ignore it.
    #[serde(other)]
    Unknown,
}

impl<F> ServerMessage<F> {
    /// The version it carries (`None` for an unknown message).
    pub fn version(&self) -> Option<i64> {
        match self {
            ServerMessage::Snapshot(m) => Some(m.version),
            ServerMessage::Patch(m) => Some(m.version),
            ServerMessage::Ping(m) => Some(m.version),
            ServerMessage::Goodbye(m) => Some(m.version),
            ServerMessage::Unknown => None,
        }
    }
}

/// `snapshot`: the whole environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot<F = Value> {
    /// The environment, as the server names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// The environment version the document is at.
    pub version: i64,
    /// A short digest of the commit that produced `version` (opaque: resume with it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The flag set.
    pub document: Document<F>,
}

/// `patch`: one committed version. On the wire, `upserts` and `deletes` are always present;
/// `metadata` and `$evaluators` only when the version replaced them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Patch<F = Value> {
    /// The version the client is at after applying it.
    pub version: i64,
    /// A short digest of the commit that produced `version` (opaque: resume with it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Flags created or replaced, whole.
    #[serde(default = "BTreeMap::new")]
    pub upserts: BTreeMap<String, F>,
    /// Flags removed.
    #[serde(default)]
    pub deletes: Vec<String>,
    /// New flag-set metadata, if it changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
    /// New `$evaluators`, if they changed.
    #[serde(
        rename = "$evaluators",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub evaluators: Option<Evaluators>,
}

impl<F> Patch<F> {
    /// The patch for one version's changes. A later change to the same key wins, as it would
    /// when applied in order.
    pub fn from_changes(version: i64, changes: impl IntoIterator<Item = Change<F>>) -> Patch<F> {
        let mut patch = Patch {
            version,
            digest: None,
            upserts: BTreeMap::new(),
            deletes: Vec::new(),
            metadata: None,
            evaluators: None,
        };
        for change in changes {
            match change {
                Change::Upsert { key, flag } => {
                    patch.deletes.retain(|k| *k != key);
                    patch.upserts.insert(key, flag);
                }
                Change::Delete { key } => {
                    patch.upserts.remove(&key);
                    if !patch.deletes.contains(&key) {
                        patch.deletes.push(key);
                    }
                }
                Change::Settings {
                    metadata,
                    evaluators,
                } => {
                    patch.metadata = metadata.or(patch.metadata);
                    patch.evaluators = evaluators.or(patch.evaluators);
                }
            }
        }
        patch
    }

    /// Its changes, in the order to apply them: upserts, deletes, then settings.
    pub fn into_changes(self) -> Vec<Change<F>> {
        let mut changes: Vec<Change<F>> = self
            .upserts
            .into_iter()
            .map(|(key, flag)| Change::Upsert { key, flag })
            .collect();
        changes.extend(self.deletes.into_iter().map(|key| Change::Delete { key }));
        if self.metadata.is_some() || self.evaluators.is_some() {
            changes.push(Change::Settings {
                metadata: self.metadata,
                evaluators: self.evaluators,
            });
        }
        changes
    }

    /// Whether it replaces shared settings (which can change how any flag evaluates).
    pub fn changes_settings(&self) -> bool {
        self.metadata.is_some() || self.evaluators.is_some()
    }
}

/// `ping`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping {
    /// The last version the server sent on this connection.
    pub version: i64,
}

/// `goodbye`: why the server is closing the connection, and when to come back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Goodbye {
    /// The last version the server sent on this connection.
    pub version: i64,
    /// Why.
    pub reason: GoodbyeReason,
    /// Reconnect no sooner than this (milliseconds); 0 for final reasons.
    #[serde(default)]
    pub retry_after_ms: u64,
}

/// Why a stream ended on the server's initiative.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GoodbyeReason {
    /// The server is stopping: reconnect (with `since`) after `retryAfterMs`, with backoff.
    Shutdown,
    /// The token was revoked: stop, it will not work again.
    TokenRevoked,
    /// The environment was deleted: stop.
    EnvironmentDeleted,
    /// A reason this build does not know: reconnect as after a shutdown.
    #[serde(other)]
    Unknown,
}

impl GoodbyeReason {
    /// The reason as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            GoodbyeReason::Shutdown => "shutdown",
            GoodbyeReason::TokenRevoked => "token_revoked",
            GoodbyeReason::EnvironmentDeleted => "environment_deleted",
            GoodbyeReason::Unknown => "unknown",
        }
    }

    /// Whether the client must stop for good rather than reconnect.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            GoodbyeReason::TokenRevoked | GoodbyeReason::EnvironmentDeleted
        )
    }
}

/// A message from a client. Both are optional; they feed the server's client list and its
/// propagation metric.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// Who is connecting; sent once after connecting.
    Hello(Hello),
    /// A snapshot or patch was applied.
    Ack(Ack),
    /// Evaluations counted by the client since its last report.
    Usage(UsageReport),
    /// A message type this server does not know: ignored.
    #[serde(other)]
    Unknown,
}

/// `hello`. Every field is optional and informational: one of the wrong type is read as absent
/// rather than costing the others.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hello {
    /// The SDK's name (`flag-sdk-rust`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "string_or_absent"
    )]
    pub sdk: Option<String>,
    /// The SDK's version.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "string_or_absent"
    )]
    pub sdk_version: Option<String>,
    /// A name for this client instance.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "string_or_absent"
    )]
    pub client_id: Option<String>,
}

/// A string, or `None` for any other JSON value.
fn string_or_absent<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(deserializer)? {
        Value::String(text) => Some(text),
        _ => None,
    })
}

/// `ack`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The version the client has applied.
    pub version: i64,
}

/// `usage` (also the body of `POST /api/v1/usage`): evaluations a client counted since its last
/// report, per flag, variant and reason. Counts are deltas: the server adds them up.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UsageReport {
    /// One entry per flag, variant and reason evaluated.
    pub counts: Vec<UsageCount>,
}

/// One entry of a [`UsageReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageCount {
    /// The flag key.
    pub flag: String,
    /// The variant served; absent when none was (an error: the caller's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// The OpenFeature reason (`STATIC`, `TARGETING_MATCH`, `SPLIT`, `DISABLED`, `ERROR`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Evaluations.
    pub count: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_types_and_fields_are_ignored() {
        let message: ServerMessage =
            serde_json::from_value(json!({"type": "resume_token", "version": 3, "x": [1]}))
                .unwrap();
        assert_eq!(message, ServerMessage::Unknown);
        let ping: ServerMessage =
            serde_json::from_value(json!({"type": "ping", "version": 3, "extra": true})).unwrap();
        assert_eq!(ping, ServerMessage::Ping(Ping { version: 3 }));
        let goodbye: ServerMessage = serde_json::from_value(
            json!({"type": "goodbye", "version": 3, "reason": "moved_to_mars"}),
        )
        .unwrap();
        assert!(matches!(
            goodbye,
            ServerMessage::Goodbye(Goodbye {
                reason: GoodbyeReason::Unknown,
                retry_after_ms: 0,
                ..
            })
        ));
        let client: ClientMessage =
            serde_json::from_value(json!({"type": "subscribe", "keys": []})).unwrap();
        assert_eq!(client, ClientMessage::Unknown);
        // A hello field of the wrong type is absent; the others are kept.
        let hello: ClientMessage =
            serde_json::from_value(json!({"type": "hello", "sdk": "odd", "clientId": 5})).unwrap();
        assert_eq!(
            hello,
            ClientMessage::Hello(Hello {
                sdk: Some("odd".into()),
                sdk_version: None,
                client_id: None
            })
        );
    }

    #[test]
    fn known_types_with_a_wrong_shape_are_errors() {
        for bad in [
            json!({"type": "patch"}),
            json!({"type": "snapshot", "version": 1}),
            json!({"type": "ping", "version": "1"}),
            json!({"version": 1}),
        ] {
            assert!(
                serde_json::from_value::<ServerMessage>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_patch_round_trips_through_its_changes() {
        let patch: Patch = serde_json::from_value(json!({
            "version": 7, "upserts": {"a": {"v": 1}, "b": {"v": 2}}, "deletes": ["c"],
            "$evaluators": {"x": true}
        }))
        .unwrap();
        let changes = patch.clone().into_changes();
        assert_eq!(changes.len(), 4);
        assert_eq!(changes[2], Change::Delete { key: "c".into() });
        assert_eq!(Patch::from_changes(7, changes), patch);
    }

    #[test]
    fn later_changes_to_one_key_win() {
        let patch = Patch::from_changes(
            2,
            [
                Change::Upsert {
                    key: "a".into(),
                    flag: json!(1),
                },
                Change::Delete { key: "a".into() },
                Change::Upsert {
                    key: "b".into(),
                    flag: json!(1),
                },
                Change::Delete { key: "b".into() },
                Change::Upsert {
                    key: "b".into(),
                    flag: json!(2),
                },
            ],
        );
        assert_eq!(patch.deletes, ["a"]);
        assert_eq!(patch.upserts.get("b"), Some(&json!(2)));
        assert!(!patch.upserts.contains_key("a"));
    }

    #[test]
    fn apply_returns_what_was_there() {
        let mut document = Document::default();
        let upsert = |flag| Change::Upsert {
            key: "a".into(),
            flag,
        };
        assert_eq!(document.apply(upsert(json!(1))), None);
        assert_eq!(document.apply(upsert(json!(2))), Some(json!(1)));
        assert_eq!(
            document.apply(Change::Delete { key: "a".into() }),
            Some(json!(2))
        );
        assert_eq!(document.apply(Change::Delete { key: "a".into() }), None);
        document.apply(Change::Settings {
            metadata: None,
            evaluators: Some(Evaluators::from([("x".to_owned(), json!(true))])),
        });
        assert_eq!(document.evaluators.len(), 1);
        document.apply(Change::Settings {
            metadata: Some(Metadata::new()),
            evaluators: None,
        });
        assert_eq!(document.evaluators.len(), 1, "None leaves evaluators alone");
    }

    #[test]
    fn changed_keys_between_documents() {
        let old = Document::from_value(json!({"flags": {"a": 1, "b": 1, "c": 1}})).unwrap();
        let new = Document::from_value(json!({"flags": {"a": 1, "b": 2, "d": 1}})).unwrap();
        assert_eq!(old.changed_keys(&new), ["b", "c", "d"]);
        let with_settings =
            Document::from_value(json!({"flags": {"a": 1}, "$evaluators": {"x": true}})).unwrap();
        let plain = Document::from_value(json!({"flags": {"a": 1}})).unwrap();
        assert_eq!(plain.changed_keys(&with_settings), ["a"]);
        assert!(plain.changed_keys(&plain).is_empty());
    }

    #[test]
    fn array_form_documents_are_read_into_the_map_form() {
        let document = Document::from_value(
            json!({"flags": [{"key": "a", "state": "ENABLED"}, {"key": "b", "state": "DISABLED"}]}),
        )
        .unwrap();
        assert_eq!(document.flags["a"], json!({"state": "ENABLED"}));
        assert_eq!(document.flags.len(), 2);
        let error = Document::from_value(json!({"flags": [{"state": "ENABLED"}]})).unwrap_err();
        assert!(error.to_string().contains("flags[0]"), "{error}");
    }
}
