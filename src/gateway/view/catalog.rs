//! The REST views of the catalog: plans with their price, OS images, locations.

use kube::ResourceExt;
use serde::Serialize;
use utoipa::ToSchema;

use super::{OsRef, PlanDetail, os_of_spec};
use crate::api::{VpsImage, VpsLocation, VpsPlan};

/// A plan in the catalog: the plan a server shows, and its price.
#[derive(Serialize, ToSchema, Debug, Clone)]
pub struct PlanView {
    #[serde(flatten)]
    pub plan: PlanDetail,
    /// Price per month in cents.
    pub monthly_price_cents: i64,
}

/// A location in the catalog.
#[derive(Serialize, ToSchema, Debug, Clone)]
pub struct LocationView {
    /// The location code used by servers (`us-west`).
    pub code: String,
    pub name: String,
    /// How many more servers the location has public addresses for (each server keeps its
    /// own for its life); `null` where servers sit on the pod network, with no fixed address.
    pub addresses_available: Option<u64>,
}

pub fn plan_view(p: &VpsPlan) -> PlanView {
    PlanView { plan: PlanDetail::of(p), monthly_price_cents: p.spec.monthly_price_cents }
}

pub fn os_view(i: &VpsImage) -> OsRef {
    os_of_spec(&i.spec)
}

/// A location, with `addresses_left` ([`Caches::addresses_left`](crate::gateway::cache::Caches::addresses_left)).
pub fn location_view(l: &VpsLocation, addresses_left: Option<u64>) -> LocationView {
    LocationView { code: l.name_any(), name: l.spec.display_name.clone(), addresses_available: addresses_left }
}
