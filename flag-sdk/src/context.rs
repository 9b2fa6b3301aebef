//! `EvaluationContext`: who is asking. Built once, reused, cheap to clone.

use std::sync::Arc;

use serde_json::Value;

/// The evaluation context: a targeting key and attributes.
///
/// Cloning is a reference-count increment, so one context can be shared across tasks and kept
/// for the life of a request or a user session.
///
/// ```
/// use flag_sdk::EvaluationContext;
/// let ctx = EvaluationContext::new("user-42").with("email", "ada@example.com").with("beta", true);
/// assert_eq!(ctx.targeting_key(), Some("user-42"));
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EvaluationContext(Arc<flag_core::EvaluationContext>);

impl EvaluationContext {
    /// A context for one targeting key (a user, session or device id).
    pub fn new(targeting_key: impl Into<String>) -> Self {
        EvaluationContext(Arc::new(flag_core::EvaluationContext::new(targeting_key)))
    }

    /// A context without a targeting key (percentage rollouts serve their fallback).
    pub fn anonymous() -> Self {
        EvaluationContext::default()
    }

    /// Adds or replaces an attribute (`targetingKey` sets the targeting key).
    #[must_use]
    pub fn with(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        Arc::make_mut(&mut self.0).set(name, value);
        self
    }

    /// The targeting key, when it is a string.
    pub fn targeting_key(&self) -> Option<&str> {
        self.0.targeting_key()
    }

    /// One attribute.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name)
    }

    /// The flag-core context, for evaluation.
    pub(crate) fn inner(&self) -> &flag_core::EvaluationContext {
        &self.0
    }
}

impl From<flag_core::EvaluationContext> for EvaluationContext {
    fn from(context: flag_core::EvaluationContext) -> Self {
        EvaluationContext(Arc::new(context))
    }
}
