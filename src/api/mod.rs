//! The `vps.org/v1alpha1` API: the custom resources that the operator, the gateway and
//! `kubectl` users share. Pure types with no client code, so every layer can depend on them.

mod action;
mod catalog;
mod conditions;
pub mod contract;
mod network;
mod server;
pub mod ssh;
mod tenancy;

pub use action::{ActionState, ActionType, Expectation, VpsAction, VpsActionSpec, VpsActionStatus};
pub use catalog::{ImageSource, VpsImage, VpsImageSpec, VpsLocation, VpsLocationSpec, VpsPlan, VpsPlanSpec};
pub use conditions::{Condition, ConditionStatus};
pub use contract::*;
pub use network::{AddressHolder, AddressPool, LocationNetwork, VpsAddress, VpsAddressSpec};
pub use server::{
    Named, Phase, PowerState, RebootType, Resolved, ResolvedKey, RestoreRequest, RestoreState, RestoreStatus,
    VpsServer, VpsServerSpec, VpsServerStatus,
};
pub use tenancy::{VpsAccount, VpsAccountSpec, VpsAccountStatus, VpsSshKey, VpsSshKeySpec};

/// The API group of every object in this module.
pub const GROUP: &str = "vps.org";
/// The one served version.
pub const VERSION: &str = "v1alpha1";

/// A display name: 1–63 letters, digits and hyphens, not starting or ending with a hyphen.
pub const SERVER_NAME_PATTERN: &str = "^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$";
/// A fully qualified domain name (RFC 1123): at least two labels of at most 63 characters.
/// The total length (at most 253) is a separate `maxLength`.
pub const FQDN_PATTERN: &str =
    "^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$";
/// An RFC 1123 label, as used for location codes and Kubernetes object references.
pub const DNS_LABEL_PATTERN: &str = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$";

/// Every CustomResourceDefinition of this API, in a stable order.
pub fn crds() -> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> {
    use kube::CustomResourceExt;
    vec![
        VpsServer::crd(),
        VpsPlan::crd(),
        VpsImage::crd(),
        VpsLocation::crd(),
        VpsAccount::crd(),
        VpsSshKey::crd(),
        VpsAction::crd(),
        VpsAddress::crd(),
    ]
}

/// The CRDs as one YAML stream, exactly as checked in under `crds/`.
pub fn crds_yaml() -> String {
    crds().iter().map(|crd| format!("---\n{}", serde_yaml::to_string(crd).expect("a CRD serializes to YAML"))).collect()
}
