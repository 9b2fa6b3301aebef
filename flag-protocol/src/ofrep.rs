//! The bodies of OFREP, the OpenFeature Remote Evaluation Protocol
//! (<https://github.com/open-feature/protocol>, `service/openapi.yaml`): the request
//! (`evaluationRequest`), one evaluation (`evaluationSuccess` / `evaluationFailure`) and the bulk
//! answer (`bulkEvaluationSuccess`). The server answers with them, and `flagctl eval` prints an
//! [`OfrepEvaluation`] for an evaluation on the server and for one of a local file alike.

use flag_core::{ErrorCode, Metadata, Resolution};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// An evaluation request: `{"context": {"targetingKey": ..., ...}}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OfrepRequest {
    /// The evaluation context; absent or null is an empty one.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub context: Map<String, Value>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Map<String, Value>, D::Error> {
    Ok(Option::<Map<String, Value>>::deserialize(deserializer)?.unwrap_or_default())
}

impl OfrepRequest {
    /// Reads a request body. An empty body, no `context` or a null one is an empty context; the
    /// error says what is wrong in words an OFREP client's developer understands (it becomes
    /// the `errorDetails` of an `INVALID_CONTEXT` answer).
    pub fn from_slice(body: &[u8]) -> Result<OfrepRequest, String> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(OfrepRequest::default());
        }
        let value: Value = serde_json::from_slice(body)
            .map_err(|error| format!("request body is not valid JSON: {error}"))?;
        let Value::Object(mut request) = value else {
            return Err("request body must be a JSON object: {\"context\": {...}}".to_owned());
        };
        match request.remove("context") {
            None | Some(Value::Null) => Ok(OfrepRequest::default()),
            Some(Value::Object(context)) => Ok(OfrepRequest { context }),
            Some(other) => Err(format!(
                "context must be an object, found {}",
                flag_core::json_type_name(&other)
            )),
        }
    }
}

/// `GET /ofrep/v1/configuration`: what the server supports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OfrepConfiguration {
    /// The server's name.
    pub name: String,
    /// What it supports.
    pub capabilities: OfrepCapabilities,
}

/// `capabilities` of [`OfrepConfiguration`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OfrepCapabilities {
    /// How providers learn of changes: `{"polling": {"enabled", "minPollingIntervalMs"}}`.
    pub cache_invalidation: Value,
    /// `{"supportedTypes": [...]}`.
    pub flag_evaluation: Value,
}

/// The bulk answer: every flag's evaluation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OfrepBulkEvaluation {
    /// One evaluation per flag, by key order.
    pub flags: Vec<OfrepEvaluation>,
}

/// A failure of the whole request (a malformed body): `{"key"?, "errorCode", "errorDetails"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OfrepFailure {
    /// `INVALID_CONTEXT`, `PARSE_ERROR`...
    pub error_code: String,
    /// What went wrong, for people.
    pub error_details: String,
    /// The flag key, for a single-flag request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl OfrepFailure {
    /// The answer to a body that is not an evaluation request.
    pub fn invalid_context(key: Option<&str>, details: impl Into<String>) -> OfrepFailure {
        OfrepFailure {
            key: key.map(str::to_owned),
            error_code: ErrorCode::InvalidContext.as_str().to_owned(),
            error_details: details.into(),
        }
    }
}

/// An OFREP evaluation result: a success (`value`, `variant`, `reason`, `metadata`) or a failure
/// (`errorCode`, `errorDetails`).
///
/// The fields are declared in alphabetical order of their JSON names, so the serialised bytes
/// are those the server wrote before this type existed (through a sorted JSON map): the bulk
/// endpoint's `ETag` is a digest of those bytes, and keeping them keeps clients' cached tags
/// valid across an upgrade.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OfrepEvaluation {
    /// `FLAG_NOT_FOUND`, `PARSE_ERROR`, `TYPE_MISMATCH`, `GENERAL`...; absent on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// What went wrong, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_details: Option<String>,
    /// The flag key.
    pub key: String,
    /// Flag-set metadata merged with the flag's own (the flag's winning); on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
    /// Why (`STATIC`, `TARGETING_MATCH`, `DEFAULT`, `DISABLED`); absent on failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The variant's value; absent for DISABLED and code-default results (the caller's default
    /// applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    /// The variant's name; absent when `value` is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl OfrepEvaluation {
    /// Renders a resolution of `key`.
    pub fn from_resolution(key: &str, resolution: &Resolution<'_>) -> OfrepEvaluation {
        let mut evaluation = OfrepEvaluation {
            key: key.to_owned(),
            value: None,
            variant: None,
            reason: None,
            error_code: None,
            error_details: None,
            metadata: None,
        };
        if let Some(error) = &resolution.error {
            evaluation.error_code = Some(error.code.as_str().to_owned());
            evaluation.error_details = Some(error.message.to_string());
            return evaluation;
        }
        evaluation.reason = Some(resolution.reason.as_str().to_owned());
        evaluation.metadata = Some(resolution.metadata.clone());
        // DISABLED and code-default results carry no value and no variant.
        if let (Some(value), Some(variant)) = (resolution.value, resolution.variant) {
            evaluation.value = Some(value.clone());
            evaluation.variant = Some(variant.to_owned());
        }
        evaluation
    }

    /// How this answer differs from an expected one, or `None` when it matches: `value`,
    /// `variant`, `reason` and `errorCode` must be equal (absent in one, absent in the other);
    /// `metadata` and `errorDetails` are compared only when `expected` has them. For conformance
    /// checks, where `expected` comes from a table.
    pub fn difference(&self, expected: &OfrepEvaluation) -> Option<String> {
        let show = |v: &Option<Value>| v.as_ref().map_or("absent".to_owned(), Value::to_string);
        let show_str = |v: &Option<String>| v.clone().unwrap_or_else(|| "absent".to_owned());
        if self.value != expected.value {
            return Some(format!(
                "value: expected {}, got {}",
                show(&expected.value),
                show(&self.value)
            ));
        }
        for (name, got, want) in [
            ("variant", &self.variant, &expected.variant),
            ("reason", &self.reason, &expected.reason),
            ("errorCode", &self.error_code, &expected.error_code),
        ] {
            if got != want {
                return Some(format!(
                    "{name}: expected {}, got {}",
                    show_str(want),
                    show_str(got)
                ));
            }
        }
        if expected.error_details.is_some() && self.error_details != expected.error_details {
            return Some(format!(
                "errorDetails: expected {}, got {}",
                show_str(&expected.error_details),
                show_str(&self.error_details)
            ));
        }
        if expected.metadata.is_some() && self.metadata != expected.metadata {
            return Some(format!(
                "metadata: expected {:?}, got {:?}",
                expected.metadata, self.metadata
            ));
        }
        None
    }

    /// Whether this is a failure.
    pub fn is_error(&self) -> bool {
        self.error_code.is_some()
    }

    /// The HTTP status OFREP gives it: 404 for `FLAG_NOT_FOUND`, 400 for other failures, 200.
    pub fn http_status(&self) -> u16 {
        match self.error_code.as_deref() {
            None => 200,
            Some(code) if code == ErrorCode::FlagNotFound.as_str() => 404,
            Some(_) => 400,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(request: &OfrepRequest) -> Option<&str> {
        request.context.get("targetingKey").and_then(Value::as_str)
    }

    #[test]
    fn requests() {
        assert!(key(&OfrepRequest::from_slice(b"").unwrap()).is_none());
        assert!(key(&OfrepRequest::from_slice(b"  \n").unwrap()).is_none());
        assert_eq!(
            key(&OfrepRequest::from_slice(br#"{"context":{"targetingKey":"u"}}"#).unwrap()),
            Some("u")
        );
        assert!(key(&OfrepRequest::from_slice(br#"{}"#).unwrap()).is_none());
        assert!(key(&OfrepRequest::from_slice(br#"{"context": null}"#).unwrap()).is_none());
        assert!(
            OfrepRequest::from_slice(br#"{"context": 5}"#)
                .unwrap_err()
                .contains("context must be an object")
        );
        assert!(
            OfrepRequest::from_slice(br#"[1]"#)
                .unwrap_err()
                .contains("JSON object")
        );
        assert!(
            OfrepRequest::from_slice(b"{")
                .unwrap_err()
                .contains("not valid JSON")
        );
        // serde agrees with from_slice on null.
        let null: OfrepRequest = serde_json::from_str(r#"{"context": null}"#).unwrap();
        assert!(null.context.is_empty());
    }
}
