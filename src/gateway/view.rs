//! The REST representation of servers and catalog objects: pure functions of the cached
//! objects, no client code. A server's plan and image are looked up through [`Catalog`].

mod actions;
mod backups;
mod catalog;
mod ssh_keys;

use std::sync::Arc;

use axum::body::Bytes;
use kube::ResourceExt;
use serde::{Serialize, Serializer};
use utoipa::ToSchema;

use crate::api::{Phase, PowerState, VpsImage, VpsImageSpec, VpsPlan, VpsPlanSpec, VpsServer};

pub use self::actions::{ActionView, action_view};
pub use self::backups::{BackupView, backup_id, backup_view};
pub use self::catalog::{LocationView, PlanView, location_view, os_view, plan_view};
pub use self::ssh_keys::{SshKeyView, ssh_key_id, ssh_key_view};

/// Annotation the gateway sets on every write it makes to a server.
pub const UPDATED_AT_ANNOTATION: &str = "vps.org/updated-at";

/// What rendering a server looks up: its plan and OS image by object name.
pub trait Catalog {
    fn plan(&self, name: &str) -> Option<Arc<VpsPlan>>;
    fn image(&self, name: &str) -> Option<Arc<VpsImage>>;
}

/// The status the API shows: the operator's phase, corrected by what was just asked for but
/// not yet acted on, so a GET right after start/stop/reboot shows the transition.
pub fn api_status(s: &VpsServer) -> Phase {
    let Some(phase) = s.status.as_ref().and_then(|st| st.phase) else { return Phase::Provisioning };
    if s.spec.suspended {
        return Phase::Suspended;
    }
    // A rebuild asked for and not yet taken up shows at once, as a reboot does.
    if let Some(requested) = s.spec.rebuild_requested_at.as_deref()
        && s.status.as_ref().and_then(|st| st.observed_rebuild_request.as_deref()) != Some(requested)
    {
        return Phase::Rebuilding;
    }
    if let Some(asked) = &s.spec.restore
        && s.status.as_ref().and_then(|st| st.restore.as_ref()).map(|r| &r.requested_at) != Some(&asked.requested_at)
    {
        return Phase::Restoring;
    }
    match (s.spec.power_state, phase) {
        (PowerState::Running, Phase::Stopped) => return Phase::Starting,
        (PowerState::Stopped, Phase::Active | Phase::Starting | Phase::Rebooting) => return Phase::Stopping,
        _ => {}
    }
    let observed = s.status.as_ref().and_then(|st| st.observed_reboot_request.as_deref());
    if phase == Phase::Active
        && let Some(requested) = s.spec.reboot_requested_at.as_deref()
        && Some(requested) != observed
    {
        return Phase::Rebooting;
    }
    phase
}

/// A server's REST `status`: its [`Phase`] in the API's lowercase form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApiStatus(pub Phase);

impl Serialize for ApiStatus {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.0.as_api_str())
    }
}

impl utoipa::PartialSchema for ApiStatus {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(Phase::ALL.map(Phase::as_api_str)))
            .description(Some("The server's status"))
            .into()
    }
}

impl ToSchema for ApiStatus {
    fn name() -> std::borrow::Cow<'static, str> {
        "ServerStatus".into()
    }
}

/// An RFC 3339 UTC timestamp with a `Z`, to the second.
pub fn rfc3339(ts: jiff::Timestamp) -> String {
    crate::timestamps::seconds(ts)
}

fn created_at<K: kube::Resource>(obj: &K) -> Option<String> {
    obj.meta().creation_timestamp.as_ref().map(|t| rfc3339(t.0))
}

fn updated_at(s: &VpsServer) -> Option<String> {
    s.annotations().get(UPDATED_AT_ANNOTATION).cloned().or_else(|| created_at(s))
}

/// A plan as shown in a server list item.
#[derive(Serialize, ToSchema, Debug, Clone, PartialEq)]
pub struct PlanSummary {
    pub id: i64,
    pub name: String,
    pub vcpus: i32,
    /// MiB.
    pub memory: i64,
    /// GiB.
    pub storage: i64,
}

/// A plan as shown in a server's detail.
#[derive(Serialize, ToSchema, Debug, Clone, PartialEq)]
pub struct PlanDetail {
    pub id: i64,
    pub name: String,
    pub vcpus: i32,
    /// MiB.
    pub memory: i64,
    /// GiB.
    pub storage: i64,
    /// GiB per month.
    pub bandwidth: i64,
}

impl PlanDetail {
    pub fn of(p: &VpsPlan) -> PlanDetail {
        PlanDetail::of_spec(&p.spec)
    }

    pub fn of_spec(spec: &VpsPlanSpec) -> PlanDetail {
        PlanDetail {
            id: spec.id,
            name: spec.display_name.clone(),
            vcpus: spec.vcpus,
            memory: spec.memory,
            storage: spec.storage,
            bandwidth: spec.bandwidth,
        }
    }
}

impl From<PlanDetail> for PlanSummary {
    fn from(p: PlanDetail) -> PlanSummary {
        PlanSummary { id: p.id, name: p.name, vcpus: p.vcpus, memory: p.memory, storage: p.storage }
    }
}

/// An OS image reference.
#[derive(Serialize, ToSchema, Debug, Clone)]
pub struct OsRef {
    pub id: i64,
    pub name: String,
}

/// Live resource usage; `null` until a metrics source is configured.
#[derive(Serialize, ToSchema, Debug, Clone)]
pub struct ResourceUsage {
    pub cpu_percent: f64,
    pub memory_used: i64,
    pub disk_used: i64,
    pub bandwidth_used: i64,
}

/// A server in a list.
#[derive(Serialize, ToSchema, Debug, Clone)]
pub struct ServerListItem {
    pub id: i64,
    pub name: String,
    pub hostname: Option<String>,
    pub status: ApiStatus,
    pub ip_address: Option<String>,
    pub location: String,
    pub plan: Option<PlanSummary>,
    pub os: Option<OsRef>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
}

/// One server in detail.
#[derive(Serialize, ToSchema, Debug, Clone)]
pub struct ServerDetail {
    pub id: i64,
    pub name: String,
    pub hostname: Option<String>,
    pub status: ApiStatus,
    pub ip_address: Option<String>,
    pub ipv6_address: Option<String>,
    pub location: String,
    pub plan: Option<PlanDetail>,
    pub os: Option<OsRef>,
    pub backups_enabled: bool,
    /// When the newest backup that is available was taken.
    pub last_backup_at: Option<String>,
    /// What the server is protected from.
    pub protection: Protection,
    /// Always `null` until a metrics source exists.
    pub resource_usage: Option<ResourceUsage>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
}

/// A server's protection against mistakes (and stolen tokens).
#[derive(Serialize, ToSchema, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protection {
    /// DELETE is refused while set.
    pub delete: bool,
}

/// The answer to a create: the detail and a message.
#[derive(Serialize, ToSchema, Debug, Clone)]
pub struct CreatedServer {
    #[serde(flatten)]
    pub server: ServerDetail,
    pub message: &'static str,
    /// The create's tracked action.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<ActionView>,
}

/// The server in an action's answer.
#[derive(Serialize, ToSchema, Debug, Clone)]
pub struct ActionServer {
    pub id: i64,
    pub name: String,
    pub status: ApiStatus,
}

/// The answer to start, stop and reboot.
#[derive(Serialize, ToSchema, Debug, Clone)]
pub struct ActionResponse {
    /// Always `success`.
    pub status: &'static str,
    pub message: &'static str,
    pub server: ActionServer,
    /// The call's tracked action.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<ActionView>,
}

/// A page of results, as Django REST Framework's page-number pagination.
#[derive(Serialize, ToSchema, Debug, Clone)]
pub struct Page<T> {
    pub count: usize,
    pub next: Option<String>,
    pub previous: Option<String>,
    pub results: Vec<T>,
}

fn os_of_spec(spec: &VpsImageSpec) -> OsRef {
    OsRef { id: spec.id, name: spec.display_name.clone() }
}

/// The detail of a server; `None` when it has no id yet.
pub fn server_detail(s: &VpsServer, catalog: &impl Catalog) -> Option<ServerDetail> {
    let status = s.status.as_ref();
    Some(ServerDetail {
        id: s.id()?,
        name: s.spec.name.clone(),
        hostname: s.spec.hostname.clone(),
        status: ApiStatus(api_status(s)),
        ip_address: status.and_then(|st| st.ip_address.clone()),
        ipv6_address: status.and_then(|st| st.ipv6_address.clone()),
        location: s.spec.location.clone(),
        // What the server was built from; the catalog's entry before the operator resolved it.
        plan: match status.and_then(|st| st.resolved.as_ref()) {
            Some(r) => Some(PlanDetail::of_spec(&r.plan.spec)),
            None => catalog.plan(&s.spec.plan).map(|p| PlanDetail::of(&p)),
        },
        os: match status.and_then(|st| st.resolved.as_ref()) {
            Some(r) => Some(os_of_spec(&r.image.spec)),
            None => catalog.image(&s.spec.os).map(|i| os_view(&i)),
        },
        backups_enabled: s.spec.backups_enabled,
        last_backup_at: status
            .and_then(|st| st.last_backup_time.as_deref())
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .map(rfc3339),
        protection: Protection { delete: s.spec.delete_protection },
        resource_usage: None,
        created_at: created_at(s),
        updated_at: updated_at(s),
    })
}

/// A server's JSON as the API shows it.
#[derive(Clone)]
pub struct Rendered {
    /// `GET /api/v1/servers/{id}/`.
    pub detail: Bytes,
    /// One item of a list.
    pub item: Bytes,
}

/// A server's detail and list item as JSON; `None` when it has no id yet.
pub fn render(s: &VpsServer, catalog: &impl Catalog) -> Option<Rendered> {
    let detail = server_detail(s, catalog)?;
    let json = serde_json::to_vec(&detail).ok()?;
    let item = serde_json::to_vec(&list_item(detail)).ok()?;
    Some(Rendered { detail: Bytes::from(json), item: Bytes::from(item) })
}

/// A page of items already rendered as JSON, written as [`Page`] serializes.
pub fn page_json(page: &Page<Bytes>) -> Vec<u8> {
    let size = page.results.iter().map(|r| r.len() + 1).sum::<usize>();
    let links = page.next.as_ref().map_or(0, String::len) + page.previous.as_ref().map_or(0, String::len);
    let mut out = Vec::with_capacity(size + links + 64);
    out.extend_from_slice(b"{\"count\":");
    out.extend_from_slice(page.count.to_string().as_bytes());
    for (key, link) in [(&b",\"next\":"[..], &page.next), (&b",\"previous\":"[..], &page.previous)] {
        out.extend_from_slice(key);
        serde_json::to_writer(&mut out, link).expect("a string serializes");
    }
    out.extend_from_slice(b",\"results\":[");
    for (i, item) in page.results.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(item);
    }
    out.extend_from_slice(b"]}");
    out
}

/// A server's detail cut down to a list item.
fn list_item(d: ServerDetail) -> ServerListItem {
    ServerListItem {
        id: d.id,
        name: d.name,
        hostname: d.hostname,
        status: d.status,
        ip_address: d.ip_address,
        location: d.location,
        plan: d.plan.map(PlanSummary::from),
        os: d.os,
        created_at: d.created_at,
        updated_at: d.updated_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{VpsServerSpec, VpsServerStatus};

    fn mk(power: PowerState, phase: Option<Phase>) -> VpsServer {
        let mut s = VpsServer::new(
            "srv-1",
            VpsServerSpec {
                name: "web".into(),
                plan: "standard".into(),
                os: "ubuntu".into(),
                location: "us-west".into(),
                hostname: None,
                ssh_key: None,
                backups_enabled: false,
                power_state: power,
                reboot_requested_at: None,
                reboot_type: None,
                force_stop_requested_at: None,
                rebuild_requested_at: None,
                backup_requested_at: None,
                restore: None,
                suspended: false,
                delete_protection: false,
            },
        );
        s.status = Some(VpsServerStatus { phase, ..Default::default() });
        s
    }

    #[test]
    fn status_is_derived_from_phase_and_pending_requests() {
        use Phase::*;
        assert_eq!(api_status(&mk(PowerState::Running, None)), Provisioning);
        let mut no_status = mk(PowerState::Running, None);
        no_status.status = None;
        assert_eq!(api_status(&no_status), Provisioning);
        assert_eq!(api_status(&mk(PowerState::Running, Some(Active))), Active);
        assert_eq!(api_status(&mk(PowerState::Running, Some(Stopped))), Starting);
        assert_eq!(api_status(&mk(PowerState::Stopped, Some(Active))), Stopping);
        assert_eq!(api_status(&mk(PowerState::Stopped, Some(Rebooting))), Stopping);
        assert_eq!(api_status(&mk(PowerState::Stopped, Some(Stopped))), Stopped);
        assert_eq!(api_status(&mk(PowerState::Running, Some(Error))), Error);
        let mut suspended = mk(PowerState::Running, Some(Active));
        suspended.spec.suspended = true;
        assert_eq!(api_status(&suspended), Suspended);
        let mut reboot = mk(PowerState::Running, Some(Active));
        reboot.spec.reboot_requested_at = Some("2025-01-01T00:00:00.1Z".into());
        assert_eq!(api_status(&reboot), Rebooting);
        reboot.status.as_mut().unwrap().observed_reboot_request = Some("2025-01-01T00:00:00.1Z".into());
        assert_eq!(api_status(&reboot), Active);
        let mut rebuild = mk(PowerState::Running, Some(Active));
        rebuild.spec.rebuild_requested_at = Some("2025-01-01T00:00:00.2Z".into());
        assert_eq!(api_status(&rebuild), Rebuilding, "asked for, not yet taken up");
        rebuild.status.as_mut().unwrap().observed_rebuild_request = Some("2025-01-01T00:00:00.2Z".into());
        assert_eq!(api_status(&rebuild), Active);
        assert_eq!(serde_json::to_value(ApiStatus(Stopping)).unwrap(), "stopping");
        assert_eq!(serde_json::to_value(ApiStatus(Rebuilding)).unwrap(), "rebuilding");
    }

    #[test]
    fn rendered_pages_are_pages() {
        let items = [serde_json::json!({"id": 1, "name": "a\"b"}), serde_json::json!({"id": 2})];
        for (next, previous) in [(None, None), (Some("http://h/?page=3&x=%22".to_string()), Some("http://h/".into()))] {
            let rendered = Page {
                count: 7,
                next: next.clone(),
                previous: previous.clone(),
                results: items.iter().map(|i| Bytes::from(serde_json::to_vec(i).unwrap())).collect(),
            };
            let plain = Page { count: 7, next, previous, results: items.to_vec() };
            let parsed: serde_json::Value = serde_json::from_slice(&page_json(&rendered)).unwrap();
            assert_eq!(parsed, serde_json::to_value(&plain).unwrap());
        }
        let empty = Page { count: 0, next: None, previous: None, results: Vec::<Bytes>::new() };
        assert_eq!(page_json(&empty), br#"{"count":0,"next":null,"previous":null,"results":[]}"#);
    }
}
