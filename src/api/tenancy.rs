//! Tenancy: accounts (each owning one namespace) and their SSH keys.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A customer account. Its servers and SSH keys live in `spec.namespace`; API tokens that
/// act for it are Secrets holding only a SHA-256 of the token.
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "vps.org",
    version = "v1alpha1",
    kind = "VpsAccount",
    doc = "A customer account: the namespace holding its servers and SSH keys, and its monthly credit. API tokens acting for it are Secrets in the system namespace holding a SHA-256 of the token.",
    shortname = "vpsacct",
    category = "hosting",
    printcolumn(name = "Namespace", type_ = "string", json_path = ".spec.namespace"),
    printcolumn(name = "Credit", type_ = "integer", json_path = ".spec.creditCents", description = "cents per month"),
    printcolumn(name = "Funds", type_ = "integer", json_path = ".spec.fundsCents", description = "cents paid in"),
    printcolumn(name = "Balance", type_ = "integer", json_path = ".status.balanceCents", description = "cents left"),
    printcolumn(name = "Suspended", type_ = "boolean", json_path = ".status.suspended"),
    status = "VpsAccountStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct VpsAccountSpec {
    /// The namespace that holds the account's servers and keys. Cannot be changed.
    #[schemars(length(min = 1, max = 63), regex(pattern = super::DNS_LABEL_PATTERN))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "namespace is immutable"}]))]
    pub namespace: String,
    /// Monthly credit in cents: the plans of the account's servers may cost at most this much.
    #[schemars(range(min = 0))]
    pub credit_cents: i64,
    /// Prepaid funds in cents: everything the hosting team has paid in for the account. A
    /// top-up raises it. Its servers are charged by the hour against it (`status`); at a
    /// balance of zero they are suspended until a top-up. Unset: the account is not charged
    /// here (it is invoiced some other way).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub funds_cents: Option<i64>,
}

/// What the operator's charging found (only for an account with `fundsCents`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VpsAccountStatus {
    /// `fundsCents` less everything charged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balance_cents: Option<i64>,
    /// Everything charged so far (the ledger `vps-billing-<account>` in the system namespace).
    #[serde(default)]
    pub charged_cents: i64,
    /// The monthly prices of the servers charged for the current hour, added up; an hour
    /// costs a 730th of it.
    #[serde(default)]
    pub monthly_burn_cents: i64,
    /// The start of the last hour charged (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub charged_through: Option<String>,
    /// The balance is used up: the servers are halted and creates are refused until a top-up.
    #[serde(default)]
    pub suspended: bool,
    /// `LowBalance` (less than a day of burn left) and `Suspended`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "super::conditions::conditions_schema")]
    pub conditions: Vec<super::Condition>,
}

impl VpsAccount {
    /// Whether the operator has suspended the account (its balance is used up).
    pub fn suspended(&self) -> bool {
        self.status.as_ref().is_some_and(|s| s.suspended)
    }
}

/// A public SSH key of an account, installed into servers that name it. The integer id of
/// the REST API is the `vps.org/ssh-key-id` label.
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "vps.org",
    version = "v1alpha1",
    kind = "VpsSshKey",
    doc = "A public SSH key of an account, installed by cloud-init into the servers that name it.",
    namespaced,
    shortname = "vpskey",
    category = "hosting",
    printcolumn(name = "Name", type_ = "string", json_path = ".spec.name"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct VpsSshKeySpec {
    /// The key's display name.
    #[schemars(length(min = 1, max = 128))]
    pub name: String,
    /// The public key in OpenSSH format (`ssh-ed25519 AAAA... comment`); the comment is
    /// printable ASCII. The operator also checks that the key decodes (`api::ssh`).
    #[schemars(
        length(min = 16, max = 16384),
        regex(
            pattern = r"^(ssh-(rsa|ed25519|dss)|ecdsa-sha2-nistp(256|384|521)|sk-(ssh-ed25519|ecdsa-sha2-nistp256)@openssh\.com) [A-Za-z0-9+/]+={0,2}( [ -~]*)?$"
        )
    )]
    pub public_key: String,
}
