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
    printcolumn(name = "Credit", type_ = "integer", json_path = ".spec.creditCents", description = "cents per month")
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
