//! Consoles, as Hetzner's `request_console`: `POST /api/v1/servers/{id}/console/` (optional
//! `{"type": "serial"|"vnc"}`) answers a websocket URL and a single-use token valid for about a
//! minute ([`console_tickets`]); the websocket at that URL is relayed, frame by frame, to
//! KubeVirt's own `console` or `vnc` subresource of the server's instance through virt-api
//! (subprotocol `plain.kubevirt.io`), which connects it to the host's virt-handler. The token
//! is the websocket's credential (a browser cannot set an `Authorization` header on one).

use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use kube::ResourceExt;
use serde::Serialize;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::tungstenite::protocol::Role;
use utoipa::ToSchema;

use super::auth::Tenant;
use super::console_tickets::{self, TTL, Ticket};
use super::error::{ApiError, RawBody};
use super::servers::find;
use super::validate::{Fields, Presence};
use super::view::api_status;
use super::{AppState, base_url, route_both, with_405};
use crate::api::Phase;

/// KubeVirt's subprotocol of raw streams (virt-api's console and VNC).
const PLAIN_PROTOCOL: &str = "plain.kubevirt.io";
/// How often the relay pings virt-api (an idle console stays open).
const PING_EVERY: Duration = Duration::from_secs(30);
/// The longest a console connection lasts.
pub const SESSION_LIMIT: Duration = Duration::from_secs(3600);

pub fn router() -> Router<AppState> {
    let r = route_both(Router::new(), "/api/v1/servers/{server_id}/console/", with_405(post(request_console), "POST"));
    route_both(r, "/api/v1/servers/{server_id}/console/connect/", with_405(get(connect), "GET, HEAD"))
}

/// A console's body: which console.
#[derive(serde::Deserialize, ToSchema)]
#[allow(dead_code)] // the schema of the OpenAPI document; the body is read by `Fields`
pub struct ConsoleRequest {
    /// `serial` (the default) or `vnc`.
    #[serde(rename = "type")]
    #[schema(example = "serial")]
    kind: Option<String>,
}

/// Where to connect, and with what.
#[derive(Serialize, ToSchema, Debug)]
pub struct ConsoleView {
    /// The websocket to open (`ws://` behind plain HTTP), with the token in its query.
    pub wss_url: String,
    /// The single-use token, also in `wss_url`.
    pub token: String,
    /// When the token stops opening a connection (RFC 3339); a connection it opened stays.
    pub expires_at: String,
    /// `serial` or `vnc`.
    #[serde(rename = "type")]
    pub kind: String,
}

#[utoipa::path(post, path = "/api/v1/servers/{server_id}/console/", tag = "servers",
    params(("server_id" = i64, Path, description = "The server's id")),
    request_body(content = Option<ConsoleRequest>, description = "Optional: `{\"type\": \"vnc\"}` for the graphical console"),
    responses(
        (status = 200, description = "A websocket URL and its single-use token, valid for 60 s", body = ConsoleView),
        (status = 400, description = "The server is not running, or a `type` that is neither `serial` nor `vnc`"),
        (status = 401, description = "Missing or unknown token"),
        (status = 404, description = "No such server in this account"),
    ),
    security(("bearer" = [])))]
pub async fn request_console(
    tenant: Tenant,
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(server_id): Path<String>,
    body: RawBody,
) -> Result<Json<ConsoleView>, ApiError> {
    let server = find(&state, &tenant, &server_id)?;
    let map = body.json_object()?;
    let mut f = Fields::new(&map);
    let kind = f.choice("type", Presence::Optional, &["serial", "vnc"]).unwrap_or("serial").to_string();
    f.errors.into_result()?;
    if api_status(&server) != Phase::Active {
        return Err(ApiError::BadRequest("Server is not running.".into()));
    }
    let id = server.id().ok_or(ApiError::NotFound)?;
    let expires_at = jiff::Timestamp::now() + jiff::SignedDuration::try_from(TTL).expect("a minute fits");
    let ticket = Ticket {
        account: tenant.account.clone(),
        namespace: tenant.namespace.clone(),
        server: server.name_any(),
        id,
        kind: kind.clone(),
        expires_at,
    };
    let token = console_tickets::issue(&state.client, &state.system_namespace, &ticket).await?;
    let base = base_url(&headers);
    let ws = base.strip_prefix("http").map(|rest| format!("ws{rest}")).unwrap_or(base);
    Ok(Json(ConsoleView {
        wss_url: format!("{ws}/api/v1/servers/{id}/console/connect/?token={token}"),
        token,
        expires_at: crate::timestamps::seconds(expires_at),
        kind,
    }))
}

#[utoipa::path(get, path = "/api/v1/servers/{server_id}/console/connect/", tag = "servers",
    params(("server_id" = i64, Path, description = "The server's id"),
        ("token" = String, Query, description = "The token `POST .../console/` answered")),
    responses(
        (status = 101, description = "The console's websocket: the guest's bytes in binary frames, both ways"),
        (status = 400, description = "Not a websocket request, or the server is not running"),
        (status = 401, description = "The token is unknown, used already, expired, or for another server"),
        (status = 503, description = "The cluster or virt-api is unavailable"),
    ))]
pub async fn connect(
    State(state): State<AppState>,
    Path(server_id): Path<String>,
    RawQuery(raw): RawQuery,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    // Checked before the token is spent.
    let upgrade = upgrade.map_err(|_| {
        ApiError::BadRequest("This is a websocket: connect with a websocket client (Upgrade: websocket).".into())
    })?;
    let query: Vec<(String, String)> = serde_urlencoded::from_str(raw.as_deref().unwrap_or("")).unwrap_or_default();
    let token = query.iter().find(|(k, _)| k == "token").map(|(_, v)| v.as_str()).unwrap_or("");
    let refused = ApiError::Unauthorized("The console token is unknown, used already or expired.");
    let Some(ticket) = console_tickets::redeem(&state.client, &state.system_namespace, token).await? else {
        return Err(refused);
    };
    if ticket.id.to_string() != server_id {
        return Err(refused);
    }
    let server = state.caches.server(&ticket.namespace, ticket.id).ok_or(ApiError::NotFound)?;
    if api_status(&server) != Phase::Active {
        return Err(ApiError::BadRequest("Server is not running.".into()));
    }
    let upstream = open_upstream(&state.client, &ticket).await?;
    tracing::info!(namespace = %ticket.namespace, server = %ticket.server, kind = %ticket.kind, "Console opened");
    Ok(upgrade.protocols(["binary"]).on_upgrade(move |socket| async move {
        let _ = tokio::time::timeout(SESSION_LIMIT, relay(socket, upstream)).await;
        tracing::info!(namespace = %ticket.namespace, server = %ticket.server, "Console closed");
    }))
}

type Upstream = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// The websocket of the instance's `console` or `vnc` subresource, through the API server
/// and virt-api.
async fn open_upstream(client: &kube::Client, ticket: &Ticket) -> Result<Upstream, ApiError> {
    use http::header;
    let subresource = if ticket.kind == "vnc" { "vnc" } else { "console" };
    let path = format!(
        "/apis/subresources.kubevirt.io/v1/namespaces/{}/virtualmachineinstances/{}/{subresource}",
        ticket.namespace, ticket.server
    );
    let key = tokio_tungstenite::tungstenite::handshake::client::generate_key();
    let request = http::Request::get(path)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_VERSION, "13")
        .header(header::SEC_WEBSOCKET_KEY, key.as_str())
        .header(header::SEC_WEBSOCKET_PROTOCOL, PLAIN_PROTOCOL)
        .body(kube::client::Body::from(Vec::new()))
        .map_err(anyhow::Error::from)?;
    let response = client.send(request).await?;
    if response.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        let status = response.status();
        let body = response.into_body().collect_bytes().await.unwrap_or_default();
        tracing::warn!(%status, body = %String::from_utf8_lossy(&body), "virt-api refused the console");
        return Err(match status.as_u16() {
            400 | 404 | 409 => ApiError::BadRequest("Server is not running.".into()),
            // The gateway may not open consoles: a deployment without its grant.
            401 | 403 => ApiError::Internal(anyhow::anyhow!("the API server refused the console ({status})")),
            _ => ApiError::ClusterUnavailable(format!("the console is unavailable ({status})")),
        });
    }
    let accepted = response.headers().get(header::SEC_WEBSOCKET_ACCEPT).and_then(|v| v.to_str().ok());
    if accepted != Some(tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()).as_str()) {
        return Err(ApiError::Internal(anyhow::anyhow!("virt-api's websocket answer has the wrong accept key")));
    }
    let upgraded = hyper::upgrade::on(response).await.map_err(anyhow::Error::from)?;
    Ok(WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await)
}

/// Moves frames both ways until either side closes; then closes the other.
async fn relay(client: WebSocket, upstream: Upstream) {
    let (mut client_tx, mut client_rx) = client.split();
    let (mut up_tx, mut up_rx) = upstream.split();
    let to_guest = async {
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        loop {
            let frame = tokio::select! {
                message = client_rx.next() => match message {
                    Some(Ok(Message::Binary(b))) => Frame::Binary(b),
                    Some(Ok(Message::Text(t))) => Frame::text(t.as_str()),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    _ => break,
                },
                _ = ping.tick() => Frame::Ping(Default::default()),
            };
            if up_tx.send(frame).await.is_err() {
                break;
            }
        }
        let _ = up_tx.close().await;
    };
    let to_client = async {
        while let Some(Ok(frame)) = up_rx.next().await {
            let message = match frame {
                Frame::Binary(b) => Message::Binary(b),
                Frame::Text(t) => Message::Text(t.as_str().into()),
                Frame::Close(_) => break,
                _ => continue,
            };
            if client_tx.send(message).await.is_err() {
                return;
            }
        }
        let end = CloseFrame { code: 1000, reason: "The console session ended".into() };
        let _ = client_tx.send(Message::Close(Some(end))).await;
    };
    tokio::select! {
        () = to_guest => {}
        () = to_client => {}
    }
}
