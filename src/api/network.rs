//! Reachable servers: a location's provider network with its address pools, and the
//! cluster-scoped claims (`VpsAddress`) that give each server its addresses for its life.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A `namespace/name` reference to a Multus NetworkAttachmentDefinition.
pub const ATTACHMENT_PATTERN: &str = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?/[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$";

/// The network a location's servers are attached to. Without one (`spec.network` unset) a
/// server sits on the pod network behind KubeVirt's masquerade NAT, with whatever address
/// its instance gets (it changes when the instance is made anew).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LocationNetwork {
    /// The Multus NetworkAttachmentDefinition (`namespace/name`) the server's one interface
    /// is bridged to: a bridge on the nodes that reaches the provider's network.
    #[schemars(length(min = 3, max = 317), regex(pattern = ATTACHMENT_PATTERN))]
    pub attachment: String,
    /// The IPv4 pool; each server gets one address of it.
    pub ipv4: AddressPool,
    /// The IPv6 pool; each server gets the address at the same offset as its IPv4 one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<AddressPool>,
}

/// A subnet addresses are given out from.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AddressPool {
    /// The subnet, e.g. `203.0.113.0/24` or `2001:db8:1::/64` (IPv4 /16 to /30).
    #[schemars(length(min = 4, max = 43))]
    pub cidr: String,
    /// The subnet's router, never given out.
    #[schemars(length(min = 2, max = 39))]
    pub gateway: String,
    /// Name servers written into the guests' network configuration.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 3))]
    pub dns: Vec<String>,
    /// Addresses never given out: single addresses or `first-last` ranges.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub excluded: Vec<String>,
}

/// One server's addresses in a location's pools. Its name is `<location>.<IPv4 address>`,
/// so the API server's uniqueness of names is what keeps two servers (whichever operator
/// replica or reconcile made them) from ever sharing an address. Kept after the server's
/// teardown until `reusableAfter` (the cool-down).
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "vps.org",
    version = "v1alpha1",
    kind = "VpsAddress",
    doc = "A server's addresses in its location's pools, named <location>.<IPv4 address>: one object per address, so no two servers ever share one. Kept after the server's teardown until spec.reusableAfter.",
    shortname = "vpsaddr",
    category = "hosting",
    printcolumn(name = "Location", type_ = "string", json_path = ".spec.location"),
    printcolumn(name = "IPv4", type_ = "string", json_path = ".spec.ipv4"),
    printcolumn(name = "IPv6", type_ = "string", json_path = ".spec.ipv6"),
    printcolumn(name = "Namespace", type_ = "string", json_path = ".spec.server.namespace"),
    printcolumn(name = "Server", type_ = "string", json_path = ".spec.server.name"),
    printcolumn(name = "Released", type_ = "string", json_path = ".spec.reusableAfter"),
    printcolumn(name = "MAC", type_ = "string", json_path = ".spec.mac", priority = 1)
)]
#[serde(rename_all = "camelCase")]
pub struct VpsAddressSpec {
    /// The location code whose pools the addresses are from.
    #[schemars(length(min = 1, max = 63), regex(pattern = super::DNS_LABEL_PATTERN))]
    pub location: String,
    /// The IPv4 address.
    pub ipv4: String,
    /// The IPv6 address, when the location has an IPv6 pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<String>,
    /// The fixed MAC address of the server's interface.
    pub mac: String,
    /// The server holding the addresses.
    pub server: AddressHolder,
    /// Set at the server's teardown: after this time (RFC 3339) the addresses may be given
    /// to another server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reusable_after: Option<String>,
}

/// The server an address is (or was last) given to.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AddressHolder {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl VpsAddress {
    /// Whether the addresses are free for another server at `now`.
    pub fn reusable_at(&self, now: jiff::Timestamp) -> bool {
        self.spec.reusable_after.as_deref().and_then(|t| t.parse::<jiff::Timestamp>().ok()).is_some_and(|t| t <= now)
    }
}
