//! An OpenFeature provider (the `open-feature` crate) on top of [`FlagClient`]: the standard
//! OpenFeature API, evaluated locally by this SDK.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use flag_sdk::openfeature::FlagProvider;
//! let client = flag_sdk::FlagClient::builder().server("http://127.0.0.1:8016").token("flg_sdk_…").build()?;
//! let mut api = open_feature::OpenFeature::singleton_mut().await;
//! api.set_provider(FlagProvider::new(client)).await;
//! let flags = api.create_client();
//! let on = flags.get_bool_value("new-checkout", None, None).await.unwrap_or(false);
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use flag_core::{ErrorCode, MetadataValue, Reason};
use open_feature::provider::{
    FeatureProvider, ProviderMetadata, ProviderStatus, ResolutionDetails,
};
use open_feature::{
    EvaluationContext as OfContext, EvaluationContextFieldValue, EvaluationError,
    EvaluationErrorCode, EvaluationReason, EvaluationResult, FlagMetadata, FlagMetadataValue,
    StructValue, Value as OfValue,
};
use serde_json::Value;

use crate::{EvaluationContext, EvaluationDetails, FlagClient, Status};

/// How long `initialize` waits for the first flags.
const INITIALIZE_TIMEOUT: Duration = Duration::from_secs(5);

/// The provider.
#[derive(Debug, Clone)]
pub struct FlagProvider {
    client: FlagClient,
    metadata: ProviderMetadata,
}

impl FlagProvider {
    /// Wraps a client.
    pub fn new(client: FlagClient) -> Self {
        FlagProvider {
            client,
            metadata: ProviderMetadata::new("flagd-rs"),
        }
    }

    /// The wrapped client (for listeners and `close`).
    pub fn client(&self) -> &FlagClient {
        &self.client
    }
}

/// OpenFeature's context as ours: the targeting key and the scalar fields (structured fields
/// have no JSON form in `open-feature` 0.3 and are skipped).
fn context(of: &OfContext) -> EvaluationContext {
    let mut context = match &of.targeting_key {
        Some(key) => EvaluationContext::new(key.clone()),
        None => EvaluationContext::anonymous(),
    };
    for (name, value) in &of.custom_fields {
        let value = match value {
            EvaluationContextFieldValue::Bool(b) => Value::Bool(*b),
            EvaluationContextFieldValue::Int(i) => Value::from(*i),
            EvaluationContextFieldValue::Float(f) => Value::from(*f),
            EvaluationContextFieldValue::String(s) => Value::String(s.clone()),
            EvaluationContextFieldValue::DateTime(time) => Value::from(time.unix_timestamp()),
            EvaluationContextFieldValue::Struct(_) => continue,
        };
        context = context.with(name.clone(), value);
    }
    context
}

fn reason(reason: Reason) -> EvaluationReason {
    match reason {
        Reason::Static => EvaluationReason::Static,
        Reason::Default => EvaluationReason::Default,
        Reason::TargetingMatch => EvaluationReason::TargetingMatch,
        Reason::Disabled => EvaluationReason::Disabled,
        Reason::Error => EvaluationReason::Error,
    }
}

fn error_code(code: ErrorCode) -> EvaluationErrorCode {
    match code {
        ErrorCode::FlagNotFound => EvaluationErrorCode::FlagNotFound,
        ErrorCode::ParseError => EvaluationErrorCode::ParseError,
        ErrorCode::TypeMismatch => EvaluationErrorCode::TypeMismatch,
        ErrorCode::TargetingKeyMissing => EvaluationErrorCode::TargetingKeyMissing,
        ErrorCode::InvalidContext => EvaluationErrorCode::InvalidContext,
        ErrorCode::ProviderNotReady => EvaluationErrorCode::ProviderNotReady,
        other => EvaluationErrorCode::General(other.to_string()),
    }
}

fn metadata(values: &flag_core::Metadata) -> Option<FlagMetadata> {
    if values.is_empty() {
        return None;
    }
    let values: HashMap<String, FlagMetadataValue> = values
        .iter()
        .map(|(key, value)| {
            let value = match value {
                MetadataValue::Bool(b) => FlagMetadataValue::Bool(*b),
                MetadataValue::String(s) => FlagMetadataValue::String(s.clone()),
                MetadataValue::Number(n) => match n.as_i64() {
                    Some(i) => FlagMetadataValue::Int(i),
                    None => FlagMetadataValue::Float(n.as_f64().unwrap_or(f64::NAN)),
                },
            };
            (key.clone(), value)
        })
        .collect();
    Some(FlagMetadata { values })
}

/// Our details as OpenFeature's: an error result becomes `Err` (the OpenFeature client then
/// returns the caller's default and reports the code); a success keeps value, variant, reason
/// and metadata.
fn convert<T, U>(
    details: EvaluationDetails<T>,
    map: impl FnOnce(T) -> Option<U>,
) -> EvaluationResult<ResolutionDetails<U>> {
    if let Some(code) = details.error_code {
        return Err(EvaluationError {
            code: error_code(code),
            message: details.error_message,
        });
    }
    let flag_metadata = metadata(&details.flag_metadata);
    let value = map(details.value).ok_or_else(|| EvaluationError {
        code: EvaluationErrorCode::TypeMismatch,
        message: Some("the flag's value cannot be represented in OpenFeature's type".to_owned()),
    })?;
    Ok(ResolutionDetails {
        value,
        variant: details.variant,
        reason: Some(reason(details.reason)),
        flag_metadata,
    })
}

fn of_value(value: Value) -> OfValue {
    match value {
        Value::Null => OfValue::String(String::new()),
        Value::Bool(b) => OfValue::Bool(b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => OfValue::Int(i),
            None => OfValue::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => OfValue::String(s),
        Value::Array(items) => OfValue::Array(items.into_iter().map(of_value).collect()),
        Value::Object(fields) => OfValue::Struct(StructValue {
            fields: fields.into_iter().map(|(k, v)| (k, of_value(v))).collect(),
        }),
    }
}

#[async_trait]
impl FeatureProvider for FlagProvider {
    async fn initialize(&mut self, _context: &OfContext) {
        if let Err(error) = self.client.wait_ready(INITIALIZE_TIMEOUT).await {
            tracing::warn!(%error, "OpenFeature provider initialised without flags");
        }
    }

    fn status(&self) -> ProviderStatus {
        match self.client.status() {
            Status::NotReady => ProviderStatus::NotReady,
            Status::Ready => ProviderStatus::Ready,
            Status::Stale => ProviderStatus::STALE,
            // open-feature 0.3 has no FATAL status: ERROR is the closest it can say.
            Status::Error | Status::Fatal => ProviderStatus::Error,
        }
    }

    fn metadata(&self) -> &ProviderMetadata {
        &self.metadata
    }

    async fn resolve_bool_value(
        &self,
        flag_key: &str,
        evaluation_context: &OfContext,
    ) -> EvaluationResult<ResolutionDetails<bool>> {
        convert(
            self.client
                .bool_details(flag_key, &context(evaluation_context), false),
            Some,
        )
    }

    async fn resolve_int_value(
        &self,
        flag_key: &str,
        evaluation_context: &OfContext,
    ) -> EvaluationResult<ResolutionDetails<i64>> {
        convert(
            self.client
                .int_details(flag_key, &context(evaluation_context), 0),
            Some,
        )
    }

    async fn resolve_float_value(
        &self,
        flag_key: &str,
        evaluation_context: &OfContext,
    ) -> EvaluationResult<ResolutionDetails<f64>> {
        convert(
            self.client
                .float_details(flag_key, &context(evaluation_context), 0.0),
            Some,
        )
    }

    async fn resolve_string_value(
        &self,
        flag_key: &str,
        evaluation_context: &OfContext,
    ) -> EvaluationResult<ResolutionDetails<String>> {
        convert(
            self.client
                .string_details(flag_key, &context(evaluation_context), ""),
            Some,
        )
    }

    async fn resolve_struct_value(
        &self,
        flag_key: &str,
        evaluation_context: &OfContext,
    ) -> EvaluationResult<ResolutionDetails<StructValue>> {
        let details = self.client.json_details(
            flag_key,
            &context(evaluation_context),
            Value::Object(Default::default()),
        );
        convert(details, |value| match of_value(value) {
            OfValue::Struct(fields) => Some(fields),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn provider() -> FlagProvider {
        let client = FlagClient::builder()
            .bootstrap_document(json!({"metadata": {"team": "web"}, "flags": {
                "on": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"},
                "limit": {"state": "ENABLED", "variants": {"low": 5, "high": 50}, "defaultVariant": "low",
                    "targeting": {"if": [{"==": [{"var": "plan"}, "pro"]}, "high", "low"]}},
                "config": {"state": "ENABLED", "variants": {"v1": {"retries": 3}}, "defaultVariant": "v1"}
            }}))
            .build()
            .unwrap();
        FlagProvider::new(client)
    }

    #[tokio::test]
    async fn resolves_through_the_open_feature_types() {
        let provider = provider();
        assert_eq!(provider.status(), ProviderStatus::Ready);
        let anyone = OfContext::default().with_targeting_key("u1");
        let on = provider.resolve_bool_value("on", &anyone).await.unwrap();
        assert_eq!(
            (on.value, on.variant.as_deref(), on.reason),
            (true, Some("on"), Some(EvaluationReason::Static))
        );
        assert_eq!(
            on.flag_metadata.unwrap().values.get("team"),
            Some(&FlagMetadataValue::String("web".into()))
        );
        let pro = anyone.clone().with_custom_field("plan", "pro");
        let limit = provider.resolve_int_value("limit", &pro).await.unwrap();
        assert_eq!(
            (limit.value, limit.reason),
            (50, Some(EvaluationReason::TargetingMatch))
        );
        let config = provider
            .resolve_struct_value("config", &anyone)
            .await
            .unwrap();
        assert_eq!(config.value.fields.get("retries"), Some(&OfValue::Int(3)));
        let missing = provider
            .resolve_bool_value("nope", &anyone)
            .await
            .unwrap_err();
        assert_eq!(missing.code, EvaluationErrorCode::FlagNotFound);
        let mismatch = provider
            .resolve_string_value("on", &anyone)
            .await
            .unwrap_err();
        assert_eq!(mismatch.code, EvaluationErrorCode::TypeMismatch);
    }

    #[tokio::test]
    async fn works_behind_the_open_feature_api() {
        let mut api = open_feature::OpenFeature::singleton_mut().await;
        api.set_provider(provider()).await;
        let client = api.create_client();
        let context = OfContext::default()
            .with_targeting_key("u1")
            .with_custom_field("plan", "pro");
        assert_eq!(
            client
                .get_int_value("limit", Some(&context), None)
                .await
                .unwrap(),
            50
        );
        assert!(
            client
                .get_bool_value("nope", Some(&context), None)
                .await
                .is_err()
        );
    }
}
