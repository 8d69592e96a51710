//! Status conditions in the shape of Kubernetes API conventions, with a schema that makes the
//! list a map keyed by `type` (so server-side apply merges entries instead of replacing them).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One observation of an aspect of an object's state.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// CamelCase type of the condition, e.g. `Ready`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: ConditionStatus,
    /// CamelCase reason for the last transition.
    pub reason: String,
    /// Human-readable detail.
    #[serde(default)]
    pub message: String,
    /// When the status last changed (RFC 3339).
    pub last_transition_time: String,
    /// The `metadata.generation` this condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl Condition {
    /// The condition `type_` as it is now, keeping the transition time of its `previous`
    /// form (among `old`) unless its status flips.
    pub fn observed(
        type_: &str,
        status: ConditionStatus,
        reason: String,
        message: String,
        old: &[Condition],
        now: &str,
        observed_generation: Option<i64>,
    ) -> Condition {
        let last_transition_time = match old.iter().find(|c| c.type_ == type_) {
            Some(p) if p.status == status => p.last_transition_time.clone(),
            _ => now.to_string(),
        };
        Condition { type_: type_.into(), status, reason, message, last_transition_time, observed_generation }
    }
}

/// The status of a condition.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

/// Schema for `conditions`: a list-map keyed by `type`.
pub(crate) fn conditions_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = <Vec<Condition>>::json_schema(generator);
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert("x-kubernetes-list-map-keys".into(), serde_json::json!(["type"]));
    schema
}
