//! Tracked actions: every mutating call on a server records a `VpsAction` (after its write
//! succeeded), which the operator completes once the server has converged or errors with the
//! reason. `GET /api/v1/actions/{id}/` and `GET /api/v1/servers/{id}/actions/` (newest first)
//! read them from the cache.

use std::collections::BTreeMap;

use axum::extract::{OriginalUri, Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::routing::get;
use axum::{Json, Router};
use kube::api::{Api, PostParams};
use kube::{Resource, ResourceExt};

use super::auth::Tenant;
use super::cache::wait_for_write;
use super::error::ApiError;
use super::pagination;
use super::servers::find;
use super::view::{self, ActionView, Page};
use super::{AppState, FIELD_MANAGER, route_both, with_405};
use crate::api::{
    ACCOUNT_LABEL, ActionType, Expectation, SERVER_ID_LABEL, SERVER_LABEL, VpsAction, VpsActionSpec, VpsServer,
};
use crate::ids::IdKind;

pub fn router() -> Router<AppState> {
    let r = route_both(Router::new(), "/api/v1/actions/{action_id}/", with_405(get(get_action), "GET, HEAD"));
    route_both(r, "/api/v1/servers/{server_id}/actions/", with_405(get(list_server_actions), "GET, HEAD"))
}

/// Records an action on `server` (whose write succeeded). A failure to record is logged and
/// answers no action: the change itself was made and must not be reported as failed.
pub async fn record(
    state: &AppState,
    server: &VpsServer,
    type_: ActionType,
    expect: Expectation,
) -> Option<ActionView> {
    match try_record(state, server, type_, expect).await {
        Ok(action) => Some(view::action_view(&action)),
        Err(e) => {
            tracing::warn!(server = %server.name_any(), action = type_.as_str(), "Could not record the action: {e:#}");
            None
        }
    }
}

async fn try_record(
    state: &AppState,
    server: &VpsServer,
    type_: ActionType,
    expect: Expectation,
) -> anyhow::Result<VpsAction> {
    let ns = server.namespace().unwrap_or_default();
    let server_id = server.id().ok_or_else(|| anyhow::anyhow!("the server has no id"))?;
    let id = state.ids.allocate(IdKind::Action).await?;
    let started_at = jiff::Timestamp::now().to_string();
    let spec = VpsActionSpec { id, type_, server: server.name_any(), server_id, started_at, expect };
    let mut action = VpsAction::new(&format!("act-{id}"), spec);
    let account = server.labels().get(ACCOUNT_LABEL).cloned().unwrap_or_else(|| ns.clone());
    action.metadata.labels = Some(BTreeMap::from([
        (SERVER_LABEL.to_string(), server.name_any()),
        (SERVER_ID_LABEL.to_string(), server_id.to_string()),
        (ACCOUNT_LABEL.to_string(), account),
    ]));
    // Gone with its server, except a delete's, which tells of the server's end.
    if type_ != ActionType::Delete {
        action.metadata.owner_references = server.owner_ref(&()).map(|o| vec![o]);
    }
    let pp = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    let created = Api::<VpsAction>::namespaced(state.client.clone(), &ns).create(&pp, &action).await?;
    // Read your writes: a GET of the action right after the answer finds it.
    wait_for_write(&state.caches.actions, &created).await;
    Ok(created)
}

#[utoipa::path(get, path = "/api/v1/actions/{action_id}/", tag = "actions",
    params(("action_id" = i64, Path, description = "The action's id")),
    responses(
        (status = 200, description = "The action", body = ActionView),
        (status = 401, description = "Missing or unknown token"),
        (status = 404, description = "No such action in this account"),
    ),
    security(("bearer" = [])))]
pub async fn get_action(
    tenant: Tenant,
    State(state): State<AppState>,
    Path(action_id): Path<String>,
) -> Result<Json<ActionView>, ApiError> {
    let id = super::servers::parse_id(&action_id)?;
    let action = state
        .caches
        .actions
        .find(|a| a.spec.id == id && a.namespace().as_deref() == Some(tenant.namespace.as_str()))
        .ok_or(ApiError::NotFound)?;
    Ok(Json(view::action_view(&action)))
}

#[utoipa::path(get, path = "/api/v1/servers/{server_id}/actions/", tag = "actions",
    params(
        ("server_id" = i64, Path, description = "The server's id"),
        ("page" = Option<usize>, Query, description = "1-based page number"),
        ("page_size" = Option<usize>, Query, description = "Default 100, at most 1000"),
    ),
    responses(
        (status = 200, description = "The server's actions, newest first", body = Page<ActionView>),
        (status = 401, description = "Missing or unknown token"),
        (status = 404, description = "No such server in this account"),
    ),
    security(("bearer" = [])))]
pub async fn list_server_actions(
    tenant: Tenant,
    State(state): State<AppState>,
    headers: HeaderMap,
    OriginalUri(uri): OriginalUri,
    RawQuery(raw): RawQuery,
    Path(server_id): Path<String>,
) -> Result<Json<Page<ActionView>>, ApiError> {
    let server = find(&state, &tenant, &server_id)?;
    let name = server.name_any();
    let mut actions: Vec<ActionView> = state
        .caches
        .actions
        .state()
        .iter()
        .filter(|a| a.namespace().as_deref() == Some(tenant.namespace.as_str()) && a.spec.server == name)
        .map(|a| view::action_view(a))
        .collect();
    actions.sort_by_key(|a| std::cmp::Reverse(a.id));
    pagination::answer(actions, raw.as_deref(), &headers, uri.path())
}

#[cfg(test)]
mod tests {
    use crate::api::ActionType;
    use crate::gateway::testing::{self, OTHER_TOKEN, TOKEN, call, server};

    #[tokio::test]
    async fn actions_are_the_accounts_own_and_listed_newest_first() {
        let mut fixture = testing::fixture(
            vec![server("acme", 7, "web", Some("Active")), server("other", 8, "theirs", Some("Active"))],
            vec![],
        );
        fixture.actions = vec![
            testing::action("acme", 3, 7, ActionType::Create),
            testing::action("other", 4, 8, ActionType::Create),
            testing::action("acme", 5, 7, ActionType::Stop),
            testing::action("acme", 9, 7, ActionType::Start),
        ];
        let app = testing::app_of(fixture, &testing::settings()).await;
        let one = call(&app, "GET", "/api/v1/actions/5/", Some(TOKEN), None).await;
        assert_eq!(one.status, 200, "{one:?}");
        assert_eq!(
            one.body,
            serde_json::json!({"id": 5, "type": "stop", "status": "in-progress", "server_id": 7,
                               "started_at": "2026-12-01T10:00:05.5Z", "completed_at": null, "error": null})
        );
        assert_eq!(call(&app, "GET", "/api/v1/actions/4/", Some(TOKEN), None).await.status, 404, "another tenant's");
        assert_eq!(call(&app, "GET", "/api/v1/actions/4/", Some(OTHER_TOKEN), None).await.status, 200);
        assert_eq!(call(&app, "GET", "/api/v1/actions/x/", Some(TOKEN), None).await.status, 404);
        assert_eq!(call(&app, "GET", "/api/v1/actions/5/", None, None).await.status, 401);
        let list = call(&app, "GET", "/api/v1/servers/7/actions/", Some(TOKEN), None).await;
        let ids: Vec<i64> =
            list.body["results"].as_array().unwrap().iter().map(|a| a["id"].as_i64().unwrap()).collect();
        assert_eq!((list.body["count"].as_i64(), ids), (Some(3), vec![9, 5, 3]), "newest first");
        let page = call(&app, "GET", "/api/v1/servers/7/actions/?page_size=2", Some(TOKEN), None).await;
        assert!(page.body["next"].as_str().unwrap().ends_with("/api/v1/servers/7/actions/?page_size=2&page=2"));
        assert_eq!(call(&app, "GET", "/api/v1/servers/8/actions/", Some(TOKEN), None).await.status, 404);
        assert_eq!(call(&app, "GET", "/api/v1/servers/7/actions/?page=9", Some(TOKEN), None).await.status, 400);
        assert_eq!(call(&app, "POST", "/api/v1/actions/5/", Some(TOKEN), None).await.status, 405);
    }
}
