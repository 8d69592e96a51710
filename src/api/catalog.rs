//! The cluster-scoped catalog a hosting team publishes: plans, OS images and locations.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A size of server that can be ordered. Its integer `id` is the `plan_id` of the REST API.
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "vps.org",
    version = "v1alpha1",
    kind = "VpsPlan",
    doc = "A size of server a customer can order: vCPUs, memory (MiB), root disk (GiB), monthly traffic (GiB) and price. Cluster-scoped; its spec.id is the REST API's plan_id.",
    shortname = "vplan",
    category = "hosting",
    printcolumn(name = "ID", type_ = "integer", json_path = ".spec.id"),
    printcolumn(name = "Name", type_ = "string", json_path = ".spec.displayName"),
    printcolumn(name = "vCPUs", type_ = "integer", json_path = ".spec.vcpus"),
    printcolumn(name = "Memory", type_ = "integer", json_path = ".spec.memory", description = "MiB"),
    printcolumn(name = "Storage", type_ = "integer", json_path = ".spec.storage", description = "GiB"),
    printcolumn(
        name = "Price",
        type_ = "integer",
        json_path = ".spec.monthlyPriceCents",
        description = "cents per month"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct VpsPlanSpec {
    /// The plan's integer id in the REST API.
    #[schemars(range(min = 1))]
    pub id: i64,
    /// The plan's display name, e.g. `Standard VPS`.
    #[schemars(length(min = 1, max = 128))]
    pub display_name: String,
    /// Virtual CPU cores.
    #[schemars(range(min = 1, max = 1024))]
    pub vcpus: i32,
    /// Memory in MiB.
    #[schemars(range(min = 64))]
    pub memory: i64,
    /// Root disk size in GiB.
    #[schemars(range(min = 1))]
    pub storage: i64,
    /// Monthly traffic allowance in GiB.
    #[schemars(range(min = 0))]
    pub bandwidth: i64,
    /// Monthly price in the smallest currency unit (cents), charged against an account's credit.
    #[schemars(range(min = 0))]
    pub monthly_price_cents: i64,
    /// Whether a stopped server of this plan keeps costing (it keeps its disk and
    /// addresses), as at DigitalOcean and Hetzner; `false`: only the hours it runs are charged.
    #[serde(default = "charged_while_stopped", skip_serializing_if = "is_true")]
    pub charged_while_stopped: bool,
}

fn charged_while_stopped() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// An operating system image a server's root disk is cloned from. Its integer `id` is the
/// `os_id` of the REST API.
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "vps.org",
    version = "v1alpha1",
    kind = "VpsImage",
    doc = "An operating system a server's root disk is cloned from: a CDI DataSource holding a golden image. Cluster-scoped; its spec.id is the REST API's os_id.",
    shortname = "vpsimg",
    category = "hosting",
    printcolumn(name = "ID", type_ = "integer", json_path = ".spec.id"),
    printcolumn(name = "Name", type_ = "string", json_path = ".spec.displayName")
)]
#[serde(rename_all = "camelCase")]
pub struct VpsImageSpec {
    /// The image's integer id in the REST API.
    #[schemars(range(min = 1))]
    pub id: i64,
    /// The image's display name, e.g. `Ubuntu 22.04 LTS`.
    #[schemars(length(min = 1, max = 128))]
    pub display_name: String,
    /// Where the root disk is cloned from.
    pub source: ImageSource,
}

/// A CDI `DataSource` holding the golden image, usually in a shared image namespace.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImageSource {
    /// Namespace of the DataSource.
    #[schemars(length(min = 1, max = 63), regex(pattern = super::DNS_LABEL_PATTERN))]
    pub data_source_namespace: String,
    /// Name of the DataSource.
    #[schemars(length(min = 1, max = 253))]
    pub data_source_name: String,
}

/// A place servers run in. The object's name is the location code of the REST API
/// (e.g. `us-west`).
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "vps.org",
    version = "v1alpha1",
    kind = "VpsLocation",
    doc = "A place servers run in: the nodes (a node selector), the storage class of its servers and their network (the pod network, or a provider network with address pools). Cluster-scoped; its name is the REST API's location code.",
    shortname = "vpsloc",
    category = "hosting",
    printcolumn(name = "Name", type_ = "string", json_path = ".spec.displayName"),
    printcolumn(name = "StorageClass", type_ = "string", json_path = ".spec.storageClass"),
    printcolumn(name = "Network", type_ = "string", json_path = ".spec.network.attachment"),
    printcolumn(name = "IPv4 Pool", type_ = "string", json_path = ".spec.network.ipv4.cidr")
)]
#[serde(rename_all = "camelCase")]
pub struct VpsLocationSpec {
    /// The location's display name, e.g. `US West (Oregon)`.
    #[schemars(length(min = 1, max = 128))]
    pub display_name: String,
    /// Labels a node must carry to run this location's servers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// StorageClass of the servers' root disks; the cluster default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
    /// The provider network the servers are bridged to, with the pools their addresses come
    /// from; the pod network (masquerade NAT) when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<super::LocationNetwork>,
}
