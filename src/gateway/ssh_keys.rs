//! The account's SSH keys: list, create, get, delete. Each is a `VpsSshKey` in the account's
//! namespace, its integer id allocated like a server's.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{OriginalUri, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams, Preconditions};

use super::auth::Tenant;
use super::cache::{wait_for_delete, wait_for_write};
use super::error::{ApiError, FieldErrors, RawBody};
use super::pagination::{self, Query};
use super::validate::{Fields, Presence};
use super::view::{self, Page, SshKeyView};
use super::{AppState, FIELD_MANAGER, base_url, route_both, with_405};
use crate::api::{ACCOUNT_LABEL, SSH_KEY_ID_LABEL, VpsSshKey, VpsSshKeySpec, ssh};
use crate::ids::IdKind;

pub fn router() -> Router<AppState> {
    let r =
        route_both(Router::new(), "/api/v1/ssh-keys/", with_405(get(list_keys).post(create_key), "GET, POST, HEAD"));
    route_both(r, "/api/v1/ssh-keys/{key_id}/", with_405(get(get_key).delete(delete_key), "GET, DELETE, HEAD"))
}

fn keys_of(state: &AppState, tenant: &Tenant) -> Vec<Arc<VpsSshKey>> {
    state.caches.ssh_keys.state_filter(|k| {
        k.namespace().as_deref() == Some(tenant.namespace.as_str())
            && k.metadata.deletion_timestamp.is_none()
            && view::ssh_key_id(k).is_some()
    })
}

fn find(state: &AppState, tenant: &Tenant, key_id: &str) -> Result<Arc<VpsSshKey>, ApiError> {
    // Digits only, as the documented integer path parameter (no sign, no spaces).
    if key_id.is_empty() || !key_id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::NotFound);
    }
    let id = key_id.parse::<i64>().map_err(|_| ApiError::NotFound)?;
    keys_of(state, tenant).into_iter().find(|k| view::ssh_key_id(k) == Some(id)).ok_or(ApiError::NotFound)
}

#[utoipa::path(get, path = "/api/v1/ssh-keys/", tag = "ssh-keys",
    params(("page" = Option<usize>, Query), ("page_size" = Option<usize>, Query)),
    responses((status = 200, description = "The account's SSH keys", body = Page<SshKeyView>),
        (status = 401, description = "Missing or unknown token")),
    security(("bearer" = [])))]
pub async fn list_keys(
    tenant: Tenant,
    State(state): State<AppState>,
    headers: HeaderMap,
    OriginalUri(uri): OriginalUri,
    RawQuery(raw): RawQuery,
) -> Result<Json<Page<SshKeyView>>, ApiError> {
    let query = Query::parse(raw.as_deref())?;
    let mut errors = FieldErrors::default();
    let params = pagination::params(&query, &mut errors);
    errors.into_result()?;
    let mut keys: Vec<SshKeyView> = keys_of(&state, &tenant).iter().filter_map(|k| view::ssh_key_view(k)).collect();
    keys.sort_by_key(|k| k.id);
    let url = format!("{}{}", base_url(&headers), uri.path());
    Ok(Json(pagination::paginate(keys, &query, params, &url)?))
}

/// The create body.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct CreateSshKey {
    /// 1–128 characters.
    name: String,
    /// An OpenSSH public key line (`ssh-ed25519 AAAA... comment`).
    public_key: String,
}

#[utoipa::path(post, path = "/api/v1/ssh-keys/", tag = "ssh-keys",
    request_body = CreateSshKey,
    responses((status = 201, description = "Created", body = SshKeyView),
        (status = 400, description = "Invalid fields, or the account has as many keys as it may"),
        (status = 401, description = "Missing or unknown token"),
        (status = 409, description = "The account is being deleted")),
    security(("bearer" = [])))]
pub async fn create_key(
    tenant: Tenant,
    State(state): State<AppState>,
    headers: HeaderMap,
    body: RawBody,
) -> Result<Response, ApiError> {
    let map = body.json_object()?;
    let mut f = Fields::new(&map);
    let name = f.string("name", Presence::Required, 128);
    // Stored as parsed and put together again: one line of type, key and comment.
    let public_key =
        f.string("public_key", Presence::Required, ssh::MAX_KEY_LENGTH).and_then(|k| match ssh::parse(&k) {
            Ok(key) => Some(key.line()),
            Err(e) => {
                f.errors.add(
                    "public_key",
                    format!("Enter a valid OpenSSH public key, like \"ssh-ed25519 AAAA... user@host\": this one {e}."),
                );
                None
            }
        });
    f.errors.into_result()?;
    let cap = state.settings.max_ssh_keys;
    if keys_of(&state, &tenant).len() >= cap {
        return Err(ApiError::BadRequest(format!("An account can have at most {cap} SSH keys: delete one first.")));
    }
    let (Some(name), Some(public_key)) = (name, public_key) else {
        return Err(ApiError::Internal(anyhow::anyhow!("validation passed with a field missing")));
    };
    let id = state.ids.allocate(IdKind::SshKey).await.map_err(anyhow::Error::from)?;
    let mut key = VpsSshKey::new(&format!("key-{id}"), VpsSshKeySpec { name, public_key });
    key.metadata.labels = Some(BTreeMap::from([
        (SSH_KEY_ID_LABEL.to_string(), id.to_string()),
        (ACCOUNT_LABEL.to_string(), tenant.account.clone()),
    ]));
    let api: Api<VpsSshKey> = Api::namespaced(state.client.clone(), &tenant.namespace);
    let pp = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    let created = api.create(&pp, &key).await?;
    wait_for_write(&state.caches.ssh_keys, &created).await;
    let view = view::ssh_key_view(&created).ok_or_else(|| ApiError::Internal(anyhow::anyhow!("key without id")))?;
    let mut res = (StatusCode::CREATED, Json(view)).into_response();
    if let Ok(loc) = HeaderValue::from_str(&format!("{}/api/v1/ssh-keys/{id}/", base_url(&headers))) {
        res.headers_mut().insert(header::LOCATION, loc);
    }
    Ok(res)
}

#[utoipa::path(get, path = "/api/v1/ssh-keys/{key_id}/", tag = "ssh-keys",
    params(("key_id" = i64, Path)),
    responses((status = 200, description = "The key", body = SshKeyView),
        (status = 401, description = "Missing or unknown token"),
        (status = 404, description = "No such key in this account")),
    security(("bearer" = [])))]
pub async fn get_key(
    tenant: Tenant,
    State(state): State<AppState>,
    Path(key_id): Path<String>,
) -> Result<Json<SshKeyView>, ApiError> {
    let key = find(&state, &tenant, &key_id)?;
    view::ssh_key_view(&key).map(Json).ok_or(ApiError::NotFound)
}

#[utoipa::path(delete, path = "/api/v1/ssh-keys/{key_id}/", tag = "ssh-keys",
    params(("key_id" = i64, Path)),
    responses((status = 204, description = "Deleted"),
        (status = 401, description = "Missing or unknown token"),
        (status = 404, description = "No such key in this account")),
    security(("bearer" = [])))]
pub async fn delete_key(
    tenant: Tenant,
    State(state): State<AppState>,
    Path(key_id): Path<String>,
    _body: RawBody,
) -> Result<StatusCode, ApiError> {
    let key = find(&state, &tenant, &key_id)?;
    let api: Api<VpsSshKey> = Api::namespaced(state.client.clone(), &tenant.namespace);
    let dp = DeleteParams {
        preconditions: Some(Preconditions { uid: key.uid(), resource_version: None }),
        ..Default::default()
    };
    api.delete(&key.name_any(), &dp).await?;
    wait_for_delete(&state.caches.ssh_keys, &key).await;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use crate::gateway::testing::{self, OTHER_TOKEN, TOKEN, call, keys, ssh_key};
    use serde_json::json;

    #[tokio::test]
    async fn keys_are_listed_per_account_and_validated() {
        let app = testing::app(vec![], vec![ssh_key("acme", 4), ssh_key("acme", 2), ssh_key("other", 3)]).await;
        let list = call(&app, "GET", "/api/v1/ssh-keys/", Some(TOKEN), None).await;
        assert_eq!(list.status, 200);
        let ids: Vec<i64> =
            list.body["results"].as_array().unwrap().iter().map(|k| k["id"].as_i64().unwrap()).collect();
        assert_eq!((list.body["count"].as_i64(), ids), (Some(2), vec![2, 4]));
        let one = call(&app, "GET", "/api/v1/ssh-keys/4/", Some(TOKEN), None).await;
        assert_eq!(keys(&one.body), ["created_at", "id", "name", "public_key"]);
        for (method, path) in
            [("GET", "/api/v1/ssh-keys/3/"), ("DELETE", "/api/v1/ssh-keys/3/"), ("GET", "/api/v1/ssh-keys/x/")]
        {
            let a = call(&app, method, path, Some(TOKEN), None).await;
            assert_eq!((a.status, &a.body), (404, &json!({"detail": "Not found."})), "{method} {path}");
        }
        assert_eq!(call(&app, "GET", "/api/v1/ssh-keys/3/", Some(OTHER_TOKEN), None).await.status, 200);
        let a = call(&app, "POST", "/api/v1/ssh-keys/", Some(TOKEN), Some(json!({"public_key": "not a key"}))).await;
        assert_eq!((a.status, keys(&a.body)), (400, vec!["name".to_string(), "public_key".to_string()]));
        let a = call(&app, "PUT", "/api/v1/ssh-keys/4/", Some(TOKEN), None).await;
        assert_eq!((a.status, a.header("allow")), (405, Some("GET, DELETE, HEAD")));
    }

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIO0p7bwPPI7HV1DEfAnGyc9CrZz5j2PJ1H1GGFFiD6Vt";

    #[tokio::test]
    async fn keys_are_parsed_and_capped() {
        let two = crate::gateway::GatewayArgs { max_ssh_keys: 2, ..testing::settings() };
        let app = testing::app_of(testing::fixture(vec![], vec![ssh_key("acme", 1), ssh_key("acme", 2)]), &two).await;
        for bad in [
            format!("{KEY} me\rruncmd: [reboot]"),
            format!("{KEY} me\u{2028}x"),
            format!("{KEY} é"),
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA".to_string(),
            format!("ssh-rsa {}", &KEY["ssh-ed25519 ".len()..]),
        ] {
            let a = call(&app, "POST", "/api/v1/ssh-keys/", Some(TOKEN), Some(json!({"name": "k", "public_key": bad})))
                .await;
            assert_eq!((a.status, keys(&a.body)), (400, vec!["public_key".to_string()]), "{bad:?}: {a:?}");
        }
        let a = call(&app, "POST", "/api/v1/ssh-keys/", Some(TOKEN), Some(json!({"name": "k\nx", "public_key": KEY})))
            .await;
        assert_eq!((a.status, keys(&a.body)), (400, vec!["name".to_string()]));
        let a =
            call(&app, "POST", "/api/v1/ssh-keys/", Some(TOKEN), Some(json!({"name": "k", "public_key": KEY}))).await;
        assert_eq!(a.status, 400, "{a:?}");
        assert!(a.body["detail"].as_str().unwrap().contains("at most 2"), "{a:?}");
    }
}
