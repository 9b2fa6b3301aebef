//! The evaluation context: who is asking (the targeting key) and what we know about them.

use std::collections::HashMap;

use serde_json::{Map, Value};

/// The hasher for maps read on the evaluation hot path. foldhash is among the fastest hashers for
/// short string keys and, unlike FxHash, is seeded per process, so keys that arrive over the
/// network (OFREP contexts) cannot be chosen to collide.
pub(crate) type FastHasher = foldhash::fast::RandomState;

/// The attribute name that carries the targeting key in a flat JSON context (flagd, OFREP).
pub const TARGETING_KEY: &str = "targetingKey";

/// The evaluation context: a targeting key and named attributes.
///
/// Build it once per user or request and reuse it across evaluations: evaluation reads it in
/// place and never re-serialises it.
///
/// ```
/// use flag_core::EvaluationContext;
/// let ctx = EvaluationContext::new("user-42").with("email", "ada@example.com").with("age", 36);
/// assert_eq!(ctx.targeting_key(), Some("user-42"));
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EvaluationContext {
    /// Kept as a JSON value so `{"var": "targetingKey"}` can return it by reference. A context
    /// from JSON may carry a non-string targeting key; `fractional` then treats it as missing.
    targeting_key: Option<Value>,
    attributes: HashMap<Box<str>, Value, FastHasher>,
}

impl EvaluationContext {
    /// A context for one targeting key (usually a user, session or device id).
    pub fn new(targeting_key: impl Into<String>) -> Self {
        EvaluationContext {
            targeting_key: Some(Value::String(targeting_key.into())),
            attributes: HashMap::default(),
        }
    }

    /// A context without a targeting key (percentage rollouts then serve their fallback).
    pub fn anonymous() -> Self {
        EvaluationContext::default()
    }

    /// Adds or replaces an attribute. Setting `targetingKey` sets the targeting key.
    #[must_use]
    pub fn with(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.set(name, value);
        self
    }

    /// Adds or replaces an attribute in place. Setting `targetingKey` sets the targeting key.
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<Value>) {
        let name = name.into();
        let value = value.into();
        if name == TARGETING_KEY {
            self.targeting_key = Some(value);
        } else {
            self.attributes.insert(name.into_boxed_str(), value);
        }
    }

    /// Builds a context from a flat JSON object, as flagd and OFREP send it: `targetingKey`
    /// is the targeting key, every other member is an attribute.
    pub fn from_json(object: Map<String, Value>) -> Self {
        let mut ctx = EvaluationContext::default();
        ctx.attributes.reserve(object.len());
        for (name, value) in object {
            ctx.set(name, value);
        }
        ctx
    }

    /// The targeting key, when it is a string.
    pub fn targeting_key(&self) -> Option<&str> {
        self.targeting_key.as_ref().and_then(Value::as_str)
    }

    /// The targeting key as the JSON value it was given as.
    pub(crate) fn targeting_key_value(&self) -> Option<&Value> {
        self.targeting_key.as_ref()
    }

    /// One attribute.
    pub fn get(&self, name: &str) -> Option<&Value> {
        if name == TARGETING_KEY {
            return self.targeting_key.as_ref();
        }
        self.attributes.get(name)
    }

    /// One attribute other than the targeting key (the evaluator's direct lookup).
    pub(crate) fn attribute(&self, name: &str) -> Option<&Value> {
        self.attributes.get(name)
    }

    /// The context as one flat JSON object (allocates; for display and the rare `{"var": ""}`).
    pub fn to_json(&self) -> Map<String, Value> {
        let mut object: Map<String, Value> = self
            .attributes
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        if let Some(key) = &self.targeting_key {
            object.insert(TARGETING_KEY.to_owned(), key.clone());
        }
        object
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn from_json_splits_out_the_targeting_key() {
        let Value::Object(object) = json!({"targetingKey": "u1", "email": "a@b.c"}) else {
            unreachable!()
        };
        let ctx = EvaluationContext::from_json(object);
        assert_eq!(ctx.targeting_key(), Some("u1"));
        assert_eq!(ctx.get("email"), Some(&json!("a@b.c")));
        assert_eq!(ctx.get("targetingKey"), Some(&json!("u1")));
        assert_eq!(ctx.to_json().len(), 2);
    }

    #[test]
    fn non_string_targeting_key_is_kept_but_not_a_string() {
        let ctx = EvaluationContext::anonymous().with("targetingKey", 5);
        assert_eq!(ctx.targeting_key(), None);
        assert_eq!(ctx.get("targetingKey"), Some(&json!(5)));
    }
}
