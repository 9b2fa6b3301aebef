//! The wire format, pinned: every message type against a golden JSON file in `tests/golden/`
//! (written and read), and every JSON example in `docs/PROTOCOL.md` and the error examples in
//! `docs/API.md` parsed by these types. A change that breaks old clients or the documents
//! fails here.
//!
//! To re-create the golden files after a deliberate, documented change:
//! `FLAG_PROTOCOL_BLESS=1 cargo test -p flag-protocol --test wire`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use flag_core::{Metadata, MetadataValue, Problem, ProblemCode, Severity};
use flag_protocol::stream::{Evaluators, UsageCount, UsageReport};
use flag_protocol::{
    Ack, ClientMessage, Document, ErrorBody, ErrorCode, ErrorDetail, Goodbye, GoodbyeReason, Hello,
    OfrepBulkEvaluation, OfrepEvaluation, OfrepFailure, OfrepRequest, Patch, Ping, ServerMessage,
    Snapshot,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Serialises `value`, compares it with `tests/golden/<name>.json`, and reads the file back
/// into an equal value.
fn check<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(name: &str, value: &T) {
    let path = root().join("tests/golden").join(format!("{name}.json"));
    let written = serde_json::to_value(value).unwrap();
    if std::env::var_os("FLAG_PROTOCOL_BLESS").is_some() {
        let text = serde_json::to_string_pretty(&written).unwrap() + "\n";
        std::fs::write(&path, text).unwrap();
    }
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    let golden: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(written, golden, "{name}: the wire form changed");
    let read: T = serde_json::from_value(golden).unwrap();
    assert_eq!(
        &read, value,
        "{name}: the golden file reads back differently"
    );
}

fn flag(default: &str) -> Value {
    json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": default})
}

fn metadata() -> Metadata {
    Metadata::from([(
        "flagSetId".to_owned(),
        MetadataValue::String("checkout".to_owned()),
    )])
}

#[test]
fn stream_messages() {
    let document = Document {
        schema: Some(flag_core::FLAGD_SCHEMA_URL.to_owned()),
        metadata: metadata(),
        evaluators: Evaluators::from([(
            "internal".to_owned(),
            json!({"ends_with": [{"var": "email"}, "@example.com"]}),
        )]),
        flags: BTreeMap::from([("new-checkout".to_owned(), flag("off"))]),
    };
    check(
        "snapshot",
        &ServerMessage::Snapshot(Snapshot {
            environment: Some("default".to_owned()),
            version: 42,
            digest: Some("9f2c41d07a1b3e55".to_owned()),
            document,
        }),
    );
    check(
        "snapshot_empty",
        &ServerMessage::<Value>::Snapshot(Snapshot {
            environment: Some("default".to_owned()),
            version: 0,
            digest: None,
            document: Document::default(),
        }),
    );
    check(
        "patch",
        &ServerMessage::Patch(Patch {
            version: 43,
            digest: Some("0c8e7f1a29d4b6e3".to_owned()),
            upserts: BTreeMap::from([("new-checkout".to_owned(), flag("on"))]),
            deletes: vec!["old-flag".to_owned()],
            metadata: None,
            evaluators: None,
        }),
    );
    check(
        "patch_settings",
        &ServerMessage::<Value>::Patch(Patch {
            version: 44,
            digest: None,
            upserts: BTreeMap::new(),
            deletes: Vec::new(),
            metadata: Some(metadata()),
            evaluators: Some(Evaluators::new()),
        }),
    );
    check("ping", &ServerMessage::<Value>::Ping(Ping { version: 44 }));
    for (name, reason, retry_after_ms) in [
        ("goodbye_shutdown", GoodbyeReason::Shutdown, 1_000),
        ("goodbye_token_revoked", GoodbyeReason::TokenRevoked, 0),
        (
            "goodbye_environment_deleted",
            GoodbyeReason::EnvironmentDeleted,
            0,
        ),
    ] {
        check(
            name,
            &ServerMessage::<Value>::Goodbye(Goodbye {
                version: 44,
                reason,
                retry_after_ms,
            }),
        );
    }
    check(
        "hello",
        &ClientMessage::Hello(Hello {
            sdk: Some("flag-sdk-rust".to_owned()),
            sdk_version: Some("0.1.0".to_owned()),
            client_id: Some("checkout-7f9c".to_owned()),
        }),
    );
    check("ack", &ClientMessage::Ack(Ack { version: 43 }));
    check(
        "usage",
        &ClientMessage::Usage(UsageReport {
            counts: vec![
                UsageCount {
                    flag: "new-checkout".to_owned(),
                    variant: Some("on".to_owned()),
                    reason: Some("SPLIT".to_owned()),
                    count: 1200,
                },
                UsageCount {
                    flag: "missing".to_owned(),
                    variant: None,
                    reason: Some("ERROR".to_owned()),
                    count: 3,
                },
            ],
        }),
    );
}

#[test]
fn error_bodies() {
    check(
        "error_not_found",
        &ErrorBody::new(
            ErrorCode::NotFound,
            "flag \"x\" does not exist in environment \"default\"",
        ),
    );
    check(
        "error_invalid_flag",
        &ErrorBody {
            error: ErrorDetail {
                code: ErrorCode::InvalidFlag,
                message: "1 problem".to_owned(),
                path: Some("flags.f.defaultVariant".to_owned()),
                problems: vec![Problem {
                    path: "flags.f.defaultVariant".to_owned(),
                    code: ProblemCode::UnknownDefaultVariant,
                    severity: Severity::Error,
                    message: "\"of\" is not a variant (expected one of: off, on)".to_owned(),
                }],
            },
        },
    );
}

#[test]
fn ofrep_bodies() {
    check(
        "ofrep_request",
        &OfrepRequest {
            context: json!({"targetingKey": "user-1", "email": "ada@example.com"})
                .as_object()
                .cloned()
                .unwrap(),
        },
    );
    let success = OfrepEvaluation {
        key: "new-checkout".to_owned(),
        value: Some(json!(true)),
        variant: Some("on".to_owned()),
        reason: Some("TARGETING_MATCH".to_owned()),
        error_code: None,
        error_details: None,
        metadata: Some(metadata()),
    };
    let failure = OfrepEvaluation {
        key: "nope".to_owned(),
        value: None,
        variant: None,
        reason: None,
        error_code: Some("FLAG_NOT_FOUND".to_owned()),
        error_details: Some("flag \"nope\" not found".to_owned()),
        metadata: None,
    };
    // The exact bytes, not just the JSON: the bulk ETag is a digest of them (keys in sorted
    // order, as the server wrote them before these types existed).
    assert_eq!(
        serde_json::to_string(&success).unwrap(),
        r#"{"key":"new-checkout","metadata":{"flagSetId":"checkout"},"reason":"TARGETING_MATCH","value":true,"variant":"on"}"#
    );
    assert_eq!(
        serde_json::to_string(&failure).unwrap(),
        r#"{"errorCode":"FLAG_NOT_FOUND","errorDetails":"flag \"nope\" not found","key":"nope"}"#
    );
    check("ofrep_success", &success);
    check("ofrep_flag_not_found", &failure);
    check(
        "ofrep_bulk",
        &OfrepBulkEvaluation {
            flags: vec![success],
        },
    );
    check(
        "ofrep_invalid_context",
        &OfrepFailure::invalid_context(None, "context must be an object, found a string"),
    );
}

/// The JSON code blocks of a Markdown file that `wanted` picks, each split into its JSON values.
fn json_examples(document: &str, wanted: impl Fn(&str) -> bool) -> Vec<Value> {
    let text = std::fs::read_to_string(root().join("../docs").join(document)).unwrap();
    let mut examples = Vec::new();
    let mut block: Option<String> = None;
    for line in text.lines() {
        match (&mut block, line.trim_start()) {
            (None, "```json") => block = Some(String::new()),
            (Some(current), "```") if !wanted(current) => block = None,
            (Some(current), "```") => {
                for value in serde_json::Deserializer::from_str(current).into_iter::<Value>() {
                    let value = value.unwrap_or_else(|error| {
                        panic!("docs/{document}: an example is not JSON: {error}\n{current}")
                    });
                    examples.push(value);
                }
                block = None;
            }
            (Some(current), line) => {
                current.push_str(line);
                current.push('\n');
            }
            (None, _) => {}
        }
    }
    examples
}

#[test]
fn every_protocol_example_parses() {
    let examples = json_examples("PROTOCOL.md", |_| true);
    let mut kinds = Vec::new();
    for example in examples {
        let kind = example["type"].as_str().unwrap_or_default().to_owned();
        if kind == "hello" || kind == "ack" || kind == "usage" {
            let message: ClientMessage = serde_json::from_value(example.clone())
                .unwrap_or_else(|error| panic!("{example}: {error}"));
            assert_ne!(message, ClientMessage::Unknown, "{example}");
        } else {
            let message: ServerMessage = serde_json::from_value(example.clone())
                .unwrap_or_else(|error| panic!("{example}: {error}"));
            assert_ne!(message, ServerMessage::Unknown, "{example}");
            if let ServerMessage::Snapshot(snapshot) = &message {
                // The document in the example is one flag-core loads.
                let document = serde_json::to_value(&snapshot.document).unwrap();
                flag_core::CompiledFlagSet::load(&document).unwrap();
            }
        }
        kinds.push(kind);
    }
    kinds.sort();
    kinds.dedup();
    assert_eq!(
        kinds,
        [
            "ack", "goodbye", "hello", "patch", "ping", "snapshot", "usage"
        ],
        "every message type has an example"
    );
}

#[test]
fn every_error_example_in_the_api_document_parses() {
    // The other examples there elide parts with `…`; the error bodies are whole.
    let errors = json_examples("API.md", |block| block.starts_with("{\"error\""));
    assert!(!errors.is_empty());
    for example in errors {
        let body: ErrorBody = serde_json::from_value(example.clone())
            .unwrap_or_else(|error| panic!("{example}: {error}"));
        assert_ne!(body.error.code, ErrorCode::Unknown, "{example}");
    }
}

#[test]
fn identities() {
    use flag_protocol::auth::{Credential, Identity};
    check(
        "identity_token",
        &Identity {
            actor: "staging-ci".to_owned(),
            role: "admin".to_owned(),
            environments: Some(vec!["staging".to_owned()]),
            credential: Credential::Token {
                id: "tok_5f1c0a9e3b2d4c6a".to_owned(),
                name: "staging-ci".to_owned(),
            },
        },
    );
    check(
        "identity_oidc",
        &Identity {
            actor: "oidc:token.actions.githubusercontent.com:repo:acme/web:ref:refs/heads/main"
                .to_owned(),
            role: "admin".to_owned(),
            environments: Some(vec!["production".to_owned()]),
            credential: Credential::Oidc {
                issuer: "https://token.actions.githubusercontent.com".to_owned(),
                subject: "repo:acme/web:ref:refs/heads/main".to_owned(),
                expires_at: 1_764_470_000,
                rule: "web deploys from main".to_owned(),
            },
        },
    );
    // Every identity example in docs/AUTH.md is one these types read.
    let examples = json_examples("AUTH.md", |block| block.starts_with("{\"actor\""));
    assert!(
        examples.len() >= 2,
        "docs/AUTH.md shows both credential kinds"
    );
    for example in examples {
        let identity: Identity = serde_json::from_value(example.clone())
            .unwrap_or_else(|error| panic!("{example}: {error}"));
        assert_eq!(serde_json::to_value(&identity).unwrap(), example);
    }
}
