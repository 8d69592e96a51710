//! The OpenAPI 3 document, generated from the handlers' annotations.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{catalog, servers, ssh_keys, view};

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
    info(title = "VPS.org API", description = "Manage VPS servers: create, configure, control and monitor them."),
    paths(
        servers::list_servers,
        servers::create_server,
        servers::get_server,
        servers::put_server,
        servers::patch_server,
        servers::delete_server,
        servers::start_server,
        servers::stop_server,
        servers::reboot_server,
        servers::protect_server,
        catalog::list_plans,
        catalog::list_os,
        catalog::list_locations,
        ssh_keys::list_keys,
        ssh_keys::create_key,
        ssh_keys::get_key,
        ssh_keys::delete_key,
    ),
    components(schemas(
        view::ServerListItem, view::ServerDetail, view::CreatedServer, view::ActionResponse, view::ActionServer, view::ApiStatus,
        view::PlanSummary, view::PlanDetail, view::OsRef, view::ResourceUsage, view::PlanView, view::LocationView,
        view::SshKeyView, servers::CreateServer, servers::UpdateServer, servers::PatchServer, servers::SetProtection, view::Protection, ssh_keys::CreateSshKey,
    )),
    modifiers(&BearerAuth),
    tags((name = "servers"), (name = "catalog"), (name = "ssh-keys"))
)]
pub struct ApiDoc;

/// `GET /api/v1/openapi.json`.
pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
