//! A server's boot log, as OpenStack's console output: `GET /api/v1/servers/{id}/console-output/`
//! answers the last `lines` lines its serial console printed. KubeVirt keeps them: the operator
//! sets `logSerialConsole` on every VM, so the launcher Pod of its instance has a
//! `guest-console-log` container whose log is the serial port's output; the gateway reads that
//! log through the API server (`pods/log`, which asks the node's kubelet). A server has one
//! while its instance's launcher runs, booting included, and none while it is stopped.

use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::routing::get;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams, LogParams};
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::Tenant;
use super::error::{ApiError, FieldErrors};
use super::pagination::Query;
use super::servers::find;
use super::{AppState, route_both, with_405};
use crate::api::SERVER_LABEL;

/// KubeVirt's container that logs a guest's serial console.
pub const CONSOLE_LOG_CONTAINER: &str = "guest-console-log";
/// Lines answered without `lines`.
pub const DEFAULT_LINES: usize = 100;
/// The most lines a request may ask for.
pub const MAX_LINES: usize = 1000;
/// The most bytes read of a log (a guest can print long lines).
const MAX_BYTES: i64 = 256 * 1024;
/// How long the node's kubelet has to answer.
const LOG_TIMEOUT: Duration = Duration::from_secs(10);

pub fn router() -> Router<AppState> {
    route_both(Router::new(), "/api/v1/servers/{server_id}/console-output/", with_405(get(console_output), "GET, HEAD"))
}

/// The last lines of a server's serial console.
#[derive(Serialize, ToSchema, Debug)]
pub struct ConsoleOutput {
    /// The lines, each ending in `\n` (carriage returns removed), oldest first.
    #[schema(example = "Debian GNU/Linux 12 web-1 ttyS0\n\nweb-1 login: ")]
    pub output: String,
    /// How many lines `output` holds.
    pub lines: usize,
}

#[utoipa::path(get, path = "/api/v1/servers/{server_id}/console-output/", tag = "servers",
    params(("server_id" = i64, Path, description = "The server's id"),
        ("lines" = Option<i64>, Query, description = "How many of the last lines (1 to 1000, default 100)")),
    responses(
        (status = 200, description = "The last lines of the server's serial console", body = ConsoleOutput),
        (status = 400, description = "The server is not running (its console output is kept while it runs), or `lines` is not 1 to 1000"),
        (status = 401, description = "Missing or unknown token"),
        (status = 404, description = "No such server in this account"),
        (status = 503, description = "The cluster, or the server's host, is unavailable"),
    ),
    security(("bearer" = [])))]
pub async fn console_output(
    tenant: Tenant,
    State(state): State<AppState>,
    Path(server_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<ConsoleOutput>, ApiError> {
    let server = find(&state, &tenant, &server_id)?;
    let query = Query::parse(raw.as_deref())?;
    let mut errors = FieldErrors::default();
    let lines = match query.last("lines") {
        None => DEFAULT_LINES,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_LINES).contains(&n) => n,
            _ => {
                errors.add("lines", format!("Ensure this value is an integer from 1 to {MAX_LINES}."));
                0
            }
        },
    };
    errors.into_result()?;
    let namespace = server.namespace().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(state.client.clone(), &namespace);
    let not_running =
        || ApiError::BadRequest("Server is not running: its console output is kept while it runs.".into());
    let Some(pod) = launcher(&pods, &server.name_any()).await? else { return Err(not_running()) };
    let params = LogParams {
        container: Some(CONSOLE_LOG_CONTAINER.into()),
        tail_lines: Some(lines as i64),
        limit_bytes: Some(MAX_BYTES),
        ..Default::default()
    };
    let log = match tokio::time::timeout(LOG_TIMEOUT, pods.logs(&pod, &params)).await {
        Err(_) => return Err(ApiError::ClusterUnavailable("the server's host did not answer in time".into())),
        Ok(Ok(log)) => log,
        // The container is not started yet, or not there (a VM made before console logs).
        Ok(Err(kube::Error::Api(s))) if s.code == 400 || s.code == 404 => {
            tracing::info!(%namespace, pod, message = s.message, "No console log");
            return Err(not_running());
        }
        Ok(Err(e)) => return Err(e.into()),
    };
    let output = clean(&log);
    Ok(Json(ConsoleOutput { lines: output.lines().count(), output }))
}

/// The launcher Pod of the server's instance: the newest one not being deleted.
async fn launcher(pods: &Api<Pod>, server: &str) -> Result<Option<String>, ApiError> {
    let selector = format!("kubevirt.io=virt-launcher,{SERVER_LABEL}={server}");
    let list = pods.list_metadata(&ListParams::default().labels(&selector)).await?;
    let newest = list
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .max_by(|a, b| a.metadata.creation_timestamp.cmp(&b.metadata.creation_timestamp));
    Ok(newest.map(|p| p.name_any()))
}

/// A serial log as lines: carriage returns dropped.
fn clean(log: &str) -> String {
    log.replace('\r', "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carriage_returns_go_and_lines_stay() {
        let out = clean("a\r\nb\r\n\r\nhost login: ");
        assert_eq!(out, "a\nb\n\nhost login: ");
        assert_eq!(out.lines().count(), 4);
    }
}
