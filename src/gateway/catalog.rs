//! The catalog: plans, OS images and locations, read-only, from the cache.

use axum::extract::{OriginalUri, RawQuery, State};
use axum::http::HeaderMap;
use axum::routing::get;
use axum::{Json, Router};

use super::auth::Tenant;
use super::error::{ApiError, FieldErrors};
use super::pagination::{self, Query};
use super::view::{self, LocationView, OsRef, Page, PlanView};
use super::{AppState, base_url, route_both, with_405};

pub fn router() -> Router<AppState> {
    let r = route_both(Router::new(), "/api/v1/plans/", with_405(get(list_plans), "GET, HEAD"));
    let r = route_both(r, "/api/v1/os/", with_405(get(list_os), "GET, HEAD"));
    route_both(r, "/api/v1/locations/", with_405(get(list_locations), "GET, HEAD"))
}

fn page<T>(items: Vec<T>, raw: Option<String>, headers: &HeaderMap, path: &str) -> Result<Json<Page<T>>, ApiError> {
    let query = Query::parse(raw.as_deref())?;
    let mut errors = FieldErrors::default();
    let params = pagination::params(&query, &mut errors);
    errors.into_result()?;
    let url = format!("{}{}", base_url(headers), path);
    Ok(Json(pagination::paginate(items, &query, params, &url)?))
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
    plans.sort_by_key(|p| p.id);
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
        state.caches.locations.state().iter().map(|l| view::location_view(l)).collect();
    locations.sort_by(|a, b| a.code.cmp(&b.code));
    page(locations, raw, &headers, uri.path())
}
