//! Backups a customer can use: `GET /api/v1/servers/{id}/backups/` lists the server's
//! snapshots (scheduled and on-demand, newest first), `POST` takes one now (a new
//! `spec.backupRequestedAt`; the operator makes the snapshot, a tracked action follows it),
//! `DELETE .../backups/{backup_id}/` deletes one; `POST .../restore/` with `{"backup_id": N}`
//! restores the server from one (a new `spec.restore`; the operator halts the VM and has
//! KubeVirt's VirtualMachineRestore bring the disks back). Read from a cache of the servers'
//! VirtualMachineSnapshots.

use axum::extract::{OriginalUri, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;

use super::actions;
use super::auth::Tenant;
use super::cache::{wait_for_delete, wait_for_write};
use super::error::{ApiError, FieldErrors, RawBody};
use super::pagination;
use super::power::action_response;
use super::servers::{find, now_stamp, parse_id, patch_server_object};
use super::validate::{Fields, Presence};
use super::view::{self, ActionResponse, BackupView, Page, UPDATED_AT_ANNOTATION, api_status};
use super::{AppState, FIELD_MANAGER, base_url, route_both, with_405};
use crate::api::{ActionType, Expectation, Phase, PowerState, SERVER_LABEL, VpsServer};
use crate::ids::IdKind;
use crate::kubevirt::{ON_DEMAND_BACKUP_DEADLINE_SECS, VirtualMachineSnapshot, backup_snapshot};

pub fn router() -> Router<AppState> {
    let r = route_both(
        Router::new(),
        "/api/v1/servers/{server_id}/backups/",
        with_405(get(list_backups).post(take_backup), "GET, POST, HEAD"),
    );
    let r =
        route_both(r, "/api/v1/servers/{server_id}/backups/{backup_id}/", with_405(delete(delete_backup), "DELETE"));
    route_both(r, "/api/v1/servers/{server_id}/restore/", with_405(post(restore_server), "POST"))
}

/// The backups of `server` with an id, newest first; one being deleted is gone already.
fn backups_of(state: &AppState, server: &VpsServer) -> Vec<std::sync::Arc<VirtualMachineSnapshot>> {
    let (ns, name) = (server.namespace(), server.name_any());
    let mut backups: Vec<_> = state
        .caches
        .snapshots
        .state()
        .into_iter()
        .filter(|s| {
            s.namespace() == ns
                && s.labels().get(SERVER_LABEL) == Some(&name)
                && view::backup_id(s).is_some()
                && s.metadata.deletion_timestamp.is_none()
        })
        .collect();
    backups.sort_by_key(|s| std::cmp::Reverse(view::backup_id(s)));
    backups
}

#[utoipa::path(get, path = "/api/v1/servers/{server_id}/backups/", tag = "backups",
    params(
        ("server_id" = i64, Path, description = "The server's id"),
        ("page" = Option<usize>, Query, description = "1-based page number"),
        ("page_size" = Option<usize>, Query, description = "Default 100, at most 1000"),
    ),
    responses(
        (status = 200, description = "The server's backups, newest first", body = Page<BackupView>),
        (status = 401, description = "Missing or unknown token"),
        (status = 404, description = "No such server in this account"),
    ),
    security(("bearer" = [])))]
pub async fn list_backups(
    tenant: Tenant,
    State(state): State<AppState>,
    headers: HeaderMap,
    OriginalUri(uri): OriginalUri,
    RawQuery(raw): RawQuery,
    Path(server_id): Path<String>,
) -> Result<Json<Page<BackupView>>, ApiError> {
    let server = find(&state, &tenant, &server_id)?;
    let backups: Vec<BackupView> = backups_of(&state, &server).iter().filter_map(|s| view::backup_view(s)).collect();
    pagination::answer(backups, raw.as_deref(), &headers, uri.path())
}

/// The answer to `POST .../backups/`: an action's, and the new backup.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct BackupTaken {
    #[serde(flatten)]
    pub answer: ActionResponse,
    pub backup: BackupView,
}

#[utoipa::path(post, path = "/api/v1/servers/{server_id}/backups/", tag = "backups",
    params(("server_id" = i64, Path, description = "The server's id")),
    responses(
        (status = 201, description = "A backup is being taken (kept until deleted; the schedule's retention does not count it)", body = BackupTaken,
            headers(("Location" = String, description = "URL of the new backup"))),
        (status = 400, description = "Not active or stopped"),
        (status = 401, description = "Missing or unknown token"),
        (status = 404, description = "No such server in this account"),
    ),
    security(("bearer" = [])))]
pub async fn take_backup(
    tenant: Tenant,
    State(state): State<AppState>,
    Path(server_id): Path<String>,
    headers: HeaderMap,
    _body: RawBody,
) -> Result<Response, ApiError> {
    let server = find(&state, &tenant, &server_id)?;
    let status = api_status(&server);
    if !matches!(status, Phase::Active | Phase::Stopped) {
        return Err(ApiError::BadRequest(format!("Server cannot be backed up while it is {}.", status.as_api_str())));
    }
    // The snapshot first, so that the answer has its id (and a DELETE right after finds it);
    // then the request, which the operator finds answered and follows.
    let stamp = jiff::Timestamp::now().to_string();
    let id = state.ids.allocate(IdKind::Backup).await.map_err(anyhow::Error::from)?;
    let name = server.name_any();
    let snapshot = backup_snapshot(&tenant.namespace, &name, id, Some(&stamp), ON_DEMAND_BACKUP_DEADLINE_SECS);
    let api: Api<VirtualMachineSnapshot> = Api::namespaced(state.client.clone(), &tenant.namespace);
    let made =
        api.patch(&format!("{name}-backup-{id}"), &PatchParams::apply(FIELD_MANAGER), &Patch::Apply(&snapshot)).await?;
    wait_for_write(&state.caches.snapshots, &made).await;
    let patch = json!({"metadata": {"annotations": {UPDATED_AT_ANNOTATION: now_stamp()}},
                       "spec": {"backupRequestedAt": stamp}});
    let updated = patch_server_object(&state, &server, &patch).await?;
    let expect = Expectation { backup_request: Some(stamp), ..Default::default() };
    let tracked = actions::record(&state, &updated, ActionType::Backup, expect).await;
    let Json(answer) = action_response(&updated, "Backup is being taken", tracked)?;
    let backup =
        view::backup_view(&made).ok_or_else(|| ApiError::Internal(anyhow::anyhow!("backup {id} has no view")))?;
    let mut res = (StatusCode::CREATED, Json(BackupTaken { answer, backup })).into_response();
    let server_id = updated.id().unwrap_or_default();
    if let Ok(location) =
        HeaderValue::from_str(&format!("{}/api/v1/servers/{server_id}/backups/{id}/", base_url(&headers)))
    {
        res.headers_mut().insert(header::LOCATION, location);
    }
    Ok(res)
}

#[utoipa::path(delete, path = "/api/v1/servers/{server_id}/backups/{backup_id}/", tag = "backups",
    params(
        ("server_id" = i64, Path, description = "The server's id"),
        ("backup_id" = i64, Path, description = "The backup's id"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing or unknown token"),
        (status = 404, description = "No such server in this account, or no such backup of it"),
    ),
    security(("bearer" = [])))]
pub async fn delete_backup(
    tenant: Tenant,
    State(state): State<AppState>,
    Path((server_id, backup_id)): Path<(String, String)>,
    _body: RawBody,
) -> Result<StatusCode, ApiError> {
    let server = find(&state, &tenant, &server_id)?;
    let id = parse_id(&backup_id)?;
    let backup =
        backups_of(&state, &server).into_iter().find(|s| view::backup_id(s) == Some(id)).ok_or(ApiError::NotFound)?;
    let api: Api<VirtualMachineSnapshot> = Api::namespaced(state.client.clone(), &tenant.namespace);
    let dp = DeleteParams {
        preconditions: Some(kube::api::Preconditions { uid: backup.uid(), resource_version: None }),
        ..DeleteParams::background()
    };
    api.delete(&backup.name_any(), &dp).await?;
    wait_for_delete(&state.caches.snapshots, &backup).await;
    Ok(StatusCode::NO_CONTENT)
}

/// The restore body.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct Restore {
    /// One of the server's backups, `available`.
    backup_id: i64,
}

#[utoipa::path(post, path = "/api/v1/servers/{server_id}/restore/", tag = "backups",
    params(("server_id" = i64, Path, description = "The server's id")),
    request_body = Restore,
    responses(
        (status = 200, description = "Restoring: the server is stopped, its disks brought back to the backup by a KubeVirt VirtualMachineRestore, and it runs again if it was running", body = ActionResponse),
        (status = 400, description = "Not active, stopped or in error; or the backup is not available yet"),
        (status = 401, description = "Missing or unknown token"),
        (status = 404, description = "No such server in this account, or no such backup of it"),
    ),
    security(("bearer" = [])))]
pub async fn restore_server(
    tenant: Tenant,
    State(state): State<AppState>,
    Path(server_id): Path<String>,
    body: RawBody,
) -> Result<Json<ActionResponse>, ApiError> {
    let server = find(&state, &tenant, &server_id)?;
    let map = body.json_object()?;
    let mut f = Fields::new(&map);
    let backup_id = f.integer("backup_id", Presence::Required);
    f.errors.into_result()?;
    let backup_id =
        backup_id.ok_or_else(|| ApiError::Internal(anyhow::anyhow!("validation passed without backup_id")))?;
    let status = api_status(&server);
    if !matches!(status, Phase::Active | Phase::Stopped | Phase::Error) {
        return Err(ApiError::BadRequest(format!("Server cannot be restored while it is {}.", status.as_api_str())));
    }
    // Another server's backup (another tenant's too) is no backup of this one.
    let backup = backups_of(&state, &server)
        .into_iter()
        .find(|s| view::backup_id(s) == Some(backup_id))
        .and_then(|s| view::backup_view(&s))
        .ok_or(ApiError::NotFound)?;
    if backup.status != "available" {
        let mut errors = FieldErrors::default();
        errors.add("backup_id", format!("Backup {backup_id} is {}, not available.", backup.status));
        return Err(ApiError::Fields(errors));
    }
    let stamp = jiff::Timestamp::now().to_string();
    let patch = json!({"metadata": {"annotations": {UPDATED_AT_ANNOTATION: now_stamp()}},
                       "spec": {"restore": {"backupId": backup_id, "requestedAt": stamp}}});
    let updated = patch_server_object(&state, &server, &patch).await?;
    let settles = if updated.spec.power_state == PowerState::Stopped { Phase::Stopped } else { Phase::Active };
    let expect = Expectation { phase: Some(settles), restore_request: Some(stamp), ..Default::default() };
    let tracked = actions::record(&state, &updated, ActionType::Restore, expect).await;
    action_response(&updated, "Server is being restored", tracked)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use crate::api::{BACKUP_ID_LABEL, BACKUP_KIND_LABEL, SERVER_LABEL};
    use crate::gateway::testing::{self, OTHER_TOKEN, TOKEN, call, server};
    use crate::kubevirt::{VirtualMachineSnapshot, VirtualMachineSnapshotSpec, VirtualMachineSnapshotStatus};

    fn snapshot(ns: &str, server: &str, id: Option<i64>, kind: &str, ready: bool) -> VirtualMachineSnapshot {
        let mut s = VirtualMachineSnapshot::new(
            &format!("{server}-backup-{}", id.unwrap_or(0)),
            VirtualMachineSnapshotSpec { source: serde_json::json!({}), failure_deadline: None },
        );
        s.metadata.namespace = Some(ns.into());
        let mut labels = BTreeMap::from([(SERVER_LABEL.to_string(), server.to_string())]);
        labels.insert(BACKUP_KIND_LABEL.into(), kind.into());
        if let Some(id) = id {
            labels.insert(BACKUP_ID_LABEL.into(), id.to_string());
        }
        s.metadata.labels = Some(labels);
        s.status = Some(VirtualMachineSnapshotStatus { ready_to_use: Some(ready), ..Default::default() });
        s
    }

    #[tokio::test]
    async fn a_servers_backups_are_its_own_newest_first() {
        let mut fixture = testing::fixture(
            vec![
                server("acme", 7, "web", Some("Active")),
                server("acme", 9, "new", Some("Provisioning")),
                server("other", 8, "theirs", Some("Active")),
            ],
            vec![],
        );
        fixture.snapshots = vec![
            {
                // 80 GiB and a byte: a size rounds up to whole GiB.
                let mut sized = snapshot("acme", "srv-7", Some(11), "scheduled", true);
                let bytes = ((80u64 << 30) + 1).to_string();
                sized.metadata.annotations = Some([(crate::api::BACKUP_SIZE_ANNOTATION.to_string(), bytes)].into());
                sized
            },
            snapshot("acme", "srv-7", Some(12), "on-demand", false),
            snapshot("acme", "srv-7", None, "scheduled", true),
            snapshot("other", "srv-8", Some(13), "scheduled", true),
            {
                let mut going = snapshot("acme", "srv-7", Some(14), "on-demand", true);
                going.metadata.deletion_timestamp =
                    Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()));
                going
            },
        ];
        let app = testing::app_of(fixture, &testing::settings()).await;
        let list = call(&app, "GET", "/api/v1/servers/7/backups/", Some(TOKEN), None).await;
        assert_eq!(list.status, 200, "{list:?}");
        let got: Vec<(i64, &str, &str)> = list.body["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| (b["id"].as_i64().unwrap(), b["type"].as_str().unwrap(), b["status"].as_str().unwrap()))
            .collect();
        assert_eq!(got, [(12, "on-demand", "in-progress"), (11, "scheduled", "available")], "with ids, newest first");
        let sizes: Vec<&serde_json::Value> =
            list.body["results"].as_array().unwrap().iter().map(|b| &b["size"]).collect();
        assert_eq!(sizes, [&serde_json::Value::Null, &serde_json::json!(81)], "where known, rounded up");
        assert_eq!(call(&app, "GET", "/api/v1/servers/8/backups/", Some(TOKEN), None).await.status, 404);
        assert_eq!(call(&app, "GET", "/api/v1/servers/8/backups/", Some(OTHER_TOKEN), None).await.status, 200);
        for path in [
            "/api/v1/servers/7/backups/13/",
            "/api/v1/servers/7/backups/14/",
            "/api/v1/servers/7/backups/99/",
            "/api/v1/servers/8/backups/13/",
        ] {
            assert_eq!(call(&app, "DELETE", path, Some(TOKEN), None).await.status, 404, "{path}");
        }
        let early = call(&app, "POST", "/api/v1/servers/9/backups/", Some(TOKEN), None).await;
        assert_eq!(early.status, 400, "{early:?}");
        assert!(early.body["detail"].as_str().unwrap().contains("while it is provisioning"));
        assert_eq!(call(&app, "PUT", "/api/v1/servers/7/backups/", Some(TOKEN), None).await.status, 405);

        // Restores are refused before anything is written (the fixture has no cluster).
        let restore = |server: i64, body: serde_json::Value| {
            let app = &app;
            async move { call(app, "POST", &format!("/api/v1/servers/{server}/restore/"), Some(TOKEN), Some(body)).await }
        };
        let none = restore(7, serde_json::json!({})).await;
        assert_eq!((none.status, &none.body), (400, &serde_json::json!({"backup_id": ["This field is required."]})));
        let text = restore(7, serde_json::json!({"backup_id": "11"})).await;
        assert_eq!(text.status, 400, "{text:?}");
        for (server, backup, why) in
            [(7, 13, "another server's"), (7, 14, "being deleted"), (7, 99, "none"), (8, 13, "another tenant's")]
        {
            let r = restore(server, serde_json::json!({"backup_id": backup})).await;
            assert_eq!(r.status, 404, "{why}: {r:?}");
        }
        let unready = restore(7, serde_json::json!({"backup_id": 12})).await;
        assert_eq!(unready.status, 400, "{unready:?}");
        assert!(unready.body["backup_id"][0].as_str().unwrap().contains("in-progress, not available"), "{unready:?}");
        let early = restore(9, serde_json::json!({"backup_id": 11})).await;
        assert!(
            early.status == 400 && early.body["detail"].as_str().unwrap().contains("restored while it is provisioning")
        );
        assert_eq!(call(&app, "GET", "/api/v1/servers/7/restore/", Some(TOKEN), None).await.status, 405);
    }
}
