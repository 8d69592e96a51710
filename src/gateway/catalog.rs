//! The catalog: plans, OS images and locations, read-only, from the cache.

use axum::extract::{OriginalUri, RawQuery, State};
use axum::http::HeaderMap;
use axum::routing::get;
use axum::{Json, Router};

use super::auth::Tenant;
use super::error::ApiError;
use super::pagination;
use super::view::{self, LocationView, OsRef, Page, PlanView};
use super::{AppState, route_both, with_405};

pub fn router() -> Router<AppState> {
    let r = route_both(Router::new(), "/api/v1/plans/", with_405(get(list_plans), "GET, HEAD"));
    let r = route_both(r, "/api/v1/os/", with_405(get(list_os), "GET, HEAD"));
    route_both(r, "/api/v1/locations/", with_405(get(list_locations), "GET, HEAD"))
}

fn page<T>(items: Vec<T>, raw: Option<String>, headers: &HeaderMap, path: &str) -> Result<Json<Page<T>>, ApiError> {
    pagination::answer(items, raw.as_deref(), headers, path)
}

#[utoipa::path(get, path = "/api/v1/plans/", tag = "catalog",
    params(("page" = Option<usize>, Query), ("page_size" = Option<usize>, Query)),
    responses((status = 200, description = "Plans, by id", body = Page<PlanView>),
        (status = 401, description = "Missing or unknown token")),
    security(("bearer" = [])))]
pub async fn list_plans(
    _tenant: Tenant,
    State(state): State<AppState>,
    headers: HeaderMap,
    OriginalUri(uri): OriginalUri,
    RawQuery(raw): RawQuery,
) -> Result<Json<Page<PlanView>>, ApiError> {
    let mut plans: Vec<PlanView> = state.caches.plans.state().iter().map(|p| view::plan_view(p)).collect();
    plans.sort_by_key(|p| p.plan.id);
    page(plans, raw, &headers, uri.path())
}

#[utoipa::path(get, path = "/api/v1/os/", tag = "catalog",
    params(("page" = Option<usize>, Query), ("page_size" = Option<usize>, Query)),
    responses((status = 200, description = "OS images, by id", body = Page<OsRef>),
        (status = 401, description = "Missing or unknown token")),
    security(("bearer" = [])))]
pub async fn list_os(
    _tenant: Tenant,
    State(state): State<AppState>,
    headers: HeaderMap,
    OriginalUri(uri): OriginalUri,
    RawQuery(raw): RawQuery,
) -> Result<Json<Page<OsRef>>, ApiError> {
    let mut images: Vec<OsRef> = state.caches.images.state().iter().map(|i| view::os_view(i)).collect();
    images.sort_by_key(|i| i.id);
    page(images, raw, &headers, uri.path())
}

#[utoipa::path(get, path = "/api/v1/locations/", tag = "catalog",
    params(("page" = Option<usize>, Query), ("page_size" = Option<usize>, Query)),
    responses((status = 200, description = "Locations, by code", body = Page<LocationView>),
        (status = 401, description = "Missing or unknown token")),
    security(("bearer" = [])))]
pub async fn list_locations(
    _tenant: Tenant,
    State(state): State<AppState>,
    headers: HeaderMap,
    OriginalUri(uri): OriginalUri,
    RawQuery(raw): RawQuery,
) -> Result<Json<Page<LocationView>>, ApiError> {
    let mut locations: Vec<LocationView> =
        state.caches.locations.state().iter().map(|l| view::location_view(l, state.caches.addresses_left(l))).collect();
    locations.sort_by(|a, b| a.code.cmp(&b.code));
    page(locations, raw, &headers, uri.path())
}

#[cfg(test)]
mod tests {
    use crate::gateway::testing::{self, TOKEN, call};
    use serde_json::json;

    #[tokio::test]
    async fn the_catalog_is_listed_in_order_and_paginated() {
        let app = testing::app(vec![], vec![]).await;
        let plans = call(&app, "GET", "/api/v1/plans/", Some(TOKEN), None).await;
        assert_eq!((plans.status, &plans.body["count"]), (200, &json!(2)));
        assert_eq!(
            plans.body["results"][0],
            json!({"id": 1, "name": "Standard VPS", "vcpus": 2, "memory": 4096, "storage": 80, "bandwidth": 2048,
                   "monthly_price_cents": 1000})
        );
        assert_eq!(plans.body["results"][1]["name"], "Performance VPS");
        let os = call(&app, "GET", "/api/v1/os/", Some(TOKEN), None).await;
        assert_eq!(os.body["results"], json!([{"id": 3, "name": "Debian 12"}, {"id": 5, "name": "Ubuntu 22.04 LTS"}]));
        let locations = call(&app, "GET", "/api/v1/locations/", Some(TOKEN), None).await;
        assert_eq!(
            locations.body["results"],
            json!([{"code": "us-east", "name": "US East", "addresses_available": null},
                   {"code": "us-west", "name": "US West", "addresses_available": null}])
        );
        let paged = call(&app, "GET", "/api/v1/plans/?page_size=1", Some(TOKEN), None).await;
        assert_eq!(paged.body["next"], "http://gw.example.com/api/v1/plans/?page_size=1&page=2");
        assert_eq!(call(&app, "POST", "/api/v1/plans/", Some(TOKEN), None).await.status, 405);
        assert_eq!(call(&app, "GET", "/api/v1/os/?page=3", Some(TOKEN), None).await.status, 400);
    }
}
