//! The OpenAPI 3 document: generated from the handlers' annotations, then completed with what
//! every operation shares (the error shapes of each status it can answer, the rate limit, the
//! 503 of a gateway that is starting or a cluster that is away), the contract's examples and
//! the links from a created object to the operations on it (so a client or a fuzzer can follow
//! an id). Built once; `/api/v1/openapi.json` serves the same bytes every time.

use std::sync::LazyLock;

use axum::body::Bytes;
use axum::http::header;
use axum::response::IntoResponse;
use serde_json::{Map, Value, json};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{
    account, actions, backups, catalog, console, console_output, create, lifecycle, power, server_metrics, servers,
    ssh_keys, view,
};

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "VPS.org API", description = "Manage VPS servers: create, configure, control and monitor them. \
        Every call needs `Authorization: Bearer <token>`; errors are `{\"detail\": \"...\"}` or, for invalid \
        fields, `{\"field\": [\"message\", ...]}` with every failing field listed at once."),
    paths(
        servers::list_servers,
        create::create_server,
        servers::get_server,
        servers::put_server,
        servers::patch_server,
        servers::delete_server,
        power::start_server,
        power::stop_server,
        power::reboot_server,
        servers::protect_server,
        lifecycle::resize_server,
        lifecycle::rebuild_server,
        backups::restore_server,
        console::request_console,
        console::connect,
        console_output::console_output,
        server_metrics::server_metrics,
        actions::get_action,
        actions::list_server_actions,
        backups::list_backups,
        backups::take_backup,
        backups::delete_backup,
        catalog::list_plans,
        catalog::list_os,
        catalog::list_locations,
        ssh_keys::list_keys,
        ssh_keys::create_key,
        ssh_keys::get_key,
        ssh_keys::delete_key,
        account::get_account,
    ),
    components(schemas(
        view::ServerListItem, view::ServerDetail, view::CreatedServer, view::ActionResponse, view::ActionServer, view::ApiStatus,
        view::PlanSummary, view::PlanDetail, view::OsRef, view::ResourceUsage, view::PlanView, view::LocationView,
        view::SshKeyView, view::ActionView, view::BackupView, backups::BackupTaken, create::CreateServer, servers::UpdateServer, servers::PatchServer, servers::SetProtection, power::Stop, power::Reboot, lifecycle::Resize, lifecycle::Rebuild, backups::Restore, view::Protection, ssh_keys::CreateSshKey, console::ConsoleRequest, console::ConsoleView, console_output::ConsoleOutput, server_metrics::MetricsView, server_metrics::MetricsRange, account::AccountView, account::ChargeView,
    )),
    modifiers(&BearerAuth),
    tags((name = "servers"), (name = "actions"), (name = "backups"), (name = "catalog"), (name = "ssh-keys"), (name = "account"))
)]
pub struct ApiDoc;

/// The served document, completed ([`complete`]).
pub fn document() -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serializes");
    complete(&mut doc);
    doc
}

static DOCUMENT: LazyLock<Bytes> =
    LazyLock::new(|| Bytes::from(serde_json::to_vec(&document()).expect("a JSON value serializes")));

/// `GET /api/v1/openapi.json`.
pub async fn serve() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT.clone())
}

/// The operations that act on a created object, by the path parameter its id fills.
const LINKS: [(&str, &str, &[&str]); 2] = [
    (
        "create_server",
        "server_id",
        &[
            "get_server",
            "put_server",
            "patch_server",
            "delete_server",
            "start_server",
            "stop_server",
            "reboot_server",
            "protect_server",
            "resize_server",
            "rebuild_server",
            "list_server_actions",
            "list_backups",
            "take_backup",
        ],
    ),
    ("create_key", "key_id", &["get_key", "delete_key"]),
];

/// Request bodies from the contract's samples, by operation.
fn request_example(operation: &str) -> Option<Value> {
    Some(match operation {
        "create_server" => json!({"name": "web-server-01", "plan_id": 1, "os_id": 5, "location": "us-west",
                                  "hostname": "web01.example.com", "backups_enabled": true}),
        "put_server" => json!({"name": "web-server-01", "hostname": "web01.example.com", "backups_enabled": true}),
        "patch_server" => json!({"name": "web-server-02"}),
        "protect_server" => json!({"delete": true}),
        "resize_server" => json!({"plan_id": 2}),
        "rebuild_server" => json!({"os_id": 3}),
        "create_key" => json!({"name": "laptop", "public_key": "ssh-ed25519 \
            AAAAC3NzaC1lZDI1NTE5AAAAICfEbCCBLd+8e/DUJQKQk/3Fmn6NKFyS1ApydWGPcN0m user@laptop"}),
        _ => return None,
    })
}

/// What an error status means when the annotation does not say, and its example.
fn error_response(status: &str) -> Option<(&'static str, Value)> {
    Some(match status {
        "400" => (
            "Invalid fields (every failing one listed) or a request that cannot be done now",
            json!({"plan_id": ["Invalid plan_id."]}),
        ),
        "401" => ("Missing or unknown token", json!({"detail": "Invalid token."})),
        "402" => ("The account's credit does not cover the plan", json!({"detail": "Insufficient credit."})),
        "404" => ("No such object in this account", json!({"detail": "Not found."})),
        "409" => (
            "The account is being deleted",
            json!({"detail": "The account is being deleted: nothing can be created in it."}),
        ),
        "413" => ("The body is over 64 KiB", json!({"detail": "Request body is too large."})),
        "429" => (
            "The token's rate limit; retry after `Retry-After` seconds",
            json!({"detail": "Request was throttled. Expected available in 1 second."}),
        ),
        "503" => (
            "The gateway is starting or the cluster is unavailable; retry after `Retry-After` seconds",
            json!({"detail": "The gateway is starting; try again shortly."}),
        ),
        _ => return None,
    })
}

/// Adds what every operation shares to the generated document.
fn complete(doc: &mut Value) {
    let schemas = &mut doc["components"]["schemas"];
    schemas["Error"] = json!({
        "type": "object", "required": ["detail"],
        "properties": {"detail": {"type": "string"}},
        "description": "A non-field error, in Django REST Framework's shape.",
    });
    schemas["FieldErrors"] = json!({
        "type": "object", "minProperties": 1,
        "additionalProperties": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "description": "Invalid fields: each failing field with its messages, all at once.",
    });
    let mut ids = std::collections::BTreeSet::new();
    let Some(paths) = doc["paths"].as_object_mut() else { return };
    for item in paths.values_mut() {
        let Some(item) = item.as_object_mut() else { continue };
        for (method, op) in item.iter_mut() {
            let operation = op["operationId"].as_str().unwrap_or_default().to_string();
            ids.insert(operation.clone());
            complete_operation(method, &operation, op);
        }
    }
    for (from, _, targets) in LINKS {
        debug_assert!(ids.contains(from) && targets.iter().all(|t| ids.contains(*t)), "links name real operations");
    }
}

fn complete_operation(method: &str, operation: &str, op: &mut Value) {
    let secured = op.get("security").is_some();
    let paginated =
        op.get("parameters").and_then(Value::as_array).is_some_and(|ps| ps.iter().any(|p| p["name"] == "page"));
    let responses = op["responses"].as_object_mut().expect("every operation has responses");
    let mut shared: Vec<&str> = Vec::new();
    if secured {
        shared.extend(["401", "429", "503"]);
    }
    if method != "get" {
        // Every write reads its body (even DELETE's and the actions', which are ignored) and may
        // meet an unavailable cluster.
        shared.extend(["413", "503"]);
    }
    if paginated {
        shared.push("400");
    }
    for status in shared {
        responses.entry(status).or_insert_with(|| json!({"description": error_response(status).map_or("", |e| e.0)}));
    }
    for (status, response) in responses.iter_mut() {
        let Some((_, example)) = error_response(status) else { continue };
        if response.get("content").is_some() {
            continue;
        }
        let schema = if status == "400" {
            json!({"anyOf": [{"$ref": "#/components/schemas/FieldErrors"}, {"$ref": "#/components/schemas/Error"}]})
        } else {
            json!({"$ref": "#/components/schemas/Error"})
        };
        response["content"] = json!({"application/json": {"schema": schema, "example": example}});
        let headers = match status.as_str() {
            "401" => Some(json!({"WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer"}})),
            "429" | "503" => {
                Some(json!({"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait"}}))
            }
            _ => None,
        };
        if let Some(h) = headers {
            response["headers"] = h;
        }
    }
    for (from, param, targets) in LINKS {
        if from != operation {
            continue;
        }
        let created = responses.get_mut("201").expect("a create answers 201");
        let links: Map<String, Value> = targets
            .iter()
            .map(|t| {
                let link = json!({"operationId": t, "parameters": {param: "$response.body#/id"}});
                (t.to_string(), link)
            })
            .collect();
        created["links"] = Value::Object(links);
    }
    // A backup taken can be deleted by its id (the server's from the request).
    if operation == "take_backup" {
        let link = json!({"operationId": "delete_backup",
                          "parameters": {"server_id": "$request.path.server_id", "backup_id": "$response.body#/backup/id"}});
        responses.get_mut("201").expect("a backup taken answers 201")["links"] = json!({"delete_backup": link});
    }
    // As Django REST Framework's partial update: no body changes nothing (and answers 200).
    if operation == "patch_server" {
        op["requestBody"]["required"] = json!(false);
    }
    if let Some(example) = request_example(operation) {
        op["requestBody"]["content"]["application/json"]["example"] = example;
    }
    // Page numbers and sizes start at 1 (the generated schema says 0).
    if let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) {
        for p in params {
            if p["name"] == "page" || p["name"] == "page_size" {
                p["schema"] = json!({"type": "integer", "minimum": 1});
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
        let mut out = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                out.push((method.to_uppercase(), path.clone(), op));
            }
        }
        out
    }

    #[test]
    fn every_error_status_has_its_shape_and_created_objects_link_to_their_operations() {
        let doc = document();
        for (method, path, op) in operations(&doc) {
            let responses = op["responses"].as_object().unwrap();
            // Only what a bearer token calls is rate-limited (the console's websocket is opened
            // with a console token).
            let shared: &[&str] = if op.get("security").is_some() { &["401", "429", "503"] } else { &["401", "503"] };
            for status in shared {
                assert!(responses.contains_key(*status), "{method} {path} lacks {status}");
            }
            if method != "GET" {
                assert!(responses.contains_key("413"), "{method} {path} lacks 413");
            }
            for (status, response) in responses {
                if status.starts_with('4') || status.starts_with('5') {
                    let content = &response["content"]["application/json"];
                    assert!(content["schema"].is_object(), "{method} {path} {status}: no schema");
                    assert!(content["example"].is_object(), "{method} {path} {status}: no example");
                }
            }
            let params = op["parameters"].as_array().map(Vec::as_slice).unwrap_or_default();
            if params.iter().any(|p| p["name"] == "page") {
                assert!(responses.contains_key("400"), "{method} {path}: a bad page is a 400");
            }
            for p in params.iter().filter(|p| p["name"] == "page" || p["name"] == "page_size") {
                assert_eq!(p["schema"]["minimum"], 1, "{method} {path}");
            }
        }
        let created = &doc["paths"]["/api/v1/servers/"]["post"]["responses"]["201"];
        let links = created["links"].as_object().unwrap();
        assert_eq!(links.len(), 13);
        assert_eq!(links["reboot_server"]["parameters"]["server_id"], "$response.body#/id");
        let ids: BTreeSet<&str> = operations(&doc).iter().filter_map(|(_, _, op)| op["operationId"].as_str()).collect();
        assert!(links.keys().all(|k| ids.contains(k.as_str())));
        assert!(doc["paths"]["/api/v1/ssh-keys/"]["post"]["responses"]["201"]["links"]["get_key"].is_object());
        let example =
            &doc["paths"]["/api/v1/servers/"]["post"]["requestBody"]["content"]["application/json"]["example"];
        assert_eq!(example["plan_id"], 1);
        let key = doc["paths"]["/api/v1/ssh-keys/"]["post"]["requestBody"]["content"]["application/json"]["example"]
            ["public_key"]
            .as_str()
            .unwrap();
        assert!(crate::api::ssh::parse(key).is_ok(), "the example key is one the gateway takes");
        assert!(doc["components"]["schemas"]["FieldErrors"].is_object());
    }

    /// `docs/API.md` names every operation the gateway serves, and nothing else.
    #[test]
    fn the_written_contract_lists_exactly_the_served_operations() {
        let text = include_str!("../../docs/API.md");
        let mut written = BTreeSet::new();
        for part in text.split('`').skip(1).step_by(2) {
            let Some((method, path)) = part.split_once(' ') else { continue };
            if ["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&method) && path.starts_with("/api/v1/") {
                written.insert((method.to_string(), path.to_string()));
            }
        }
        let doc = document();
        let served: BTreeSet<(String, String)> = operations(&doc).into_iter().map(|(m, p, _)| (m, p)).collect();
        let missing: Vec<_> = served.difference(&written).collect();
        assert!(missing.is_empty(), "docs/API.md does not describe {missing:?}");
        let pages = [("GET", "/api/v1/openapi.json"), ("GET", "/api/v1/docs/")];
        let extra: Vec<_> =
            written.difference(&served).filter(|(m, p)| !pages.contains(&(m.as_str(), p.as_str()))).collect();
        assert!(extra.is_empty(), "docs/API.md describes what is not served: {extra:?}");
    }
}
