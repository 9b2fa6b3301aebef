//! The wire model: serde types for a flagd flag-set document.
//!
//! These types are what travels over HTTP, sits in SQLite and lives in flag files. They are kept
//! apart from the compiled evaluation plan (`compile.rs`): a document is compiled once per update
//! and evaluated many times.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The `$schema` flagd documents conventionally carry.
pub const FLAGD_SCHEMA_URL: &str = "https://flagd.dev/schema/v0/flags.json";

/// Metadata attached to a flag set or a flag: string, number or boolean values.
pub type Metadata = BTreeMap<String, MetadataValue>;

/// A whole flag set (one environment), in the flagd flag-definition format.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FlagSet {
    /// The JSON schema the document declares; kept on round-trip.
    #[serde(rename = "$schema", default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// Flag-set metadata, inherited by every flag (a flag's own metadata overrides it key by key).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: Metadata,
    /// Shared targeting fragments, referenced from targeting with `{"$ref": "name"}`.
    #[serde(
        rename = "$evaluators",
        default,
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub evaluators: BTreeMap<String, Value>,
    /// The flags by key. flagd's array form (`[{"key": ..., ...}]`) is accepted on input.
    #[serde(default, deserialize_with = "deserialize_flags")]
    pub flags: BTreeMap<String, Flag>,
}

/// One flag definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
// Unknown fields are ignored, as flagd does; the loader reports them as warnings.
#[serde(rename_all = "camelCase")]
pub struct Flag {
    /// Whether the flag is evaluated at all.
    pub state: FlagState,
    /// Variant name to value. All values of one flag share one type.
    pub variants: BTreeMap<String, Value>,
    /// The variant served when targeting does not decide; `None` means "the caller's default".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_variant: Option<String>,
    /// JsonLogic targeting rule; absent or `{}` means no targeting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targeting: Option<Value>,
    /// Flag metadata, merged over the flag-set metadata.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: Metadata,
    /// A human description (an extension of ours; flagd ignores it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl Flag {
    /// The targeting rule, or `None` when absent or the empty object `{}`.
    pub fn effective_targeting(&self) -> Option<&Value> {
        match &self.targeting {
            None | Some(Value::Null) => None,
            Some(Value::Object(map)) if map.is_empty() => None,
            Some(rule) => Some(rule),
        }
    }
}

/// `ENABLED` or `DISABLED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FlagState {
    /// The flag is evaluated.
    Enabled,
    /// The flag is off: evaluation returns the caller's default with reason `DISABLED`.
    Disabled,
}

/// A metadata value: flagd allows only strings, numbers and booleans.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum MetadataValue {
    /// A boolean.
    Bool(bool),
    /// A number (integers are kept exact).
    Number(serde_json::Number),
    /// A string.
    String(String),
}

impl From<&MetadataValue> for Value {
    fn from(value: &MetadataValue) -> Self {
        match value {
            MetadataValue::Bool(b) => Value::Bool(*b),
            MetadataValue::Number(n) => Value::Number(n.clone()),
            MetadataValue::String(s) => Value::String(s.clone()),
        }
    }
}

impl<'de> Deserialize<'de> for MetadataValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Written by hand so a wrong type gets a message that says what is allowed, rather than
        // serde's "did not match any variant of untagged enum".
        match Value::deserialize(deserializer)? {
            Value::Bool(b) => Ok(MetadataValue::Bool(b)),
            Value::Number(n) => Ok(MetadataValue::Number(n)),
            Value::String(s) => Ok(MetadataValue::String(s)),
            other => Err(de::Error::custom(format_args!(
                "metadata values must be a string, number or boolean, found {}",
                json_type_name(&other)
            ))),
        }
    }
}

/// The JSON type of a value, as a word for error messages.
pub fn json_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The type of a flag, derived from its variant values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlagType {
    /// `true` / `false` variants.
    Boolean,
    /// String variants.
    String,
    /// Number variants (integers and floats).
    Number,
    /// JSON object variants.
    Object,
}

impl FlagType {
    /// The type of one variant value, or `None` for values no flag may hold (null, arrays).
    pub fn of(value: &Value) -> Option<FlagType> {
        match value {
            Value::Bool(_) => Some(FlagType::Boolean),
            Value::String(_) => Some(FlagType::String),
            Value::Number(_) => Some(FlagType::Number),
            Value::Object(_) => Some(FlagType::Object),
            Value::Null | Value::Array(_) => None,
        }
    }

    /// The lowercase name used in messages and by the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            FlagType::Boolean => "boolean",
            FlagType::String => "string",
            FlagType::Number => "number",
            FlagType::Object => "object",
        }
    }
}

impl fmt::Display for FlagType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Accepts `flags` as a map (flagd v0) or as an array of flags each carrying its `key`.
fn deserialize_flags<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, Flag>, D::Error> {
    struct FlagsVisitor;

    impl<'de> Visitor<'de> for FlagsVisitor {
        type Value = BTreeMap<String, Flag>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object of flags by key, or an array of flags with a `key` field")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut flags = BTreeMap::new();
            while let Some((key, flag)) = map.next_entry::<String, Flag>()? {
                flags.insert(key, flag);
            }
            Ok(flags)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            #[derive(Deserialize)]
            struct KeyedFlag {
                key: String,
                #[serde(flatten)]
                rest: serde_json::Map<String, Value>,
            }
            let mut flags = BTreeMap::new();
            while let Some(keyed) = seq.next_element::<KeyedFlag>()? {
                let flag: Flag =
                    serde_json::from_value(Value::Object(keyed.rest)).map_err(de::Error::custom)?;
                if flags.insert(keyed.key.clone(), flag).is_some() {
                    return Err(de::Error::custom(format_args!(
                        "flag key {:?} appears twice",
                        keyed.key
                    )));
                }
            }
            Ok(flags)
        }
    }

    deserializer.deserialize_any(FlagsVisitor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn array_form_and_map_form_agree() {
        let map: FlagSet = serde_json::from_value(json!({
            "flags": { "a": { "state": "ENABLED", "variants": { "on": true }, "defaultVariant": "on" } }
        }))
        .unwrap();
        let array: FlagSet = serde_json::from_value(json!({
            "flags": [ { "key": "a", "state": "ENABLED", "variants": { "on": true }, "defaultVariant": "on" } ]
        }))
        .unwrap();
        assert_eq!(map, array);
    }

    #[test]
    fn schema_round_trips() {
        let text = r#"{"$schema":"https://flagd.dev/schema/v0/flags.json","flags":{}}"#;
        let set: FlagSet = serde_json::from_str(text).unwrap();
        assert_eq!(serde_json::to_string(&set).unwrap(), text);
    }

    #[test]
    fn metadata_rejects_objects_with_a_clear_message() {
        let err = serde_json::from_value::<Flag>(json!({
            "state": "ENABLED", "variants": { "on": true }, "metadata": { "owner": { "team": "x" } }
        }))
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("metadata values must be a string, number or boolean")
        );
    }
}
