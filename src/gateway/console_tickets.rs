//! Console tickets: a single-use token, valid for [`TTL`], bound to an account and one of
//! its servers. Kept as a ConfigMap in the system namespace named after a SHA-256 of the
//! token (the token itself is never stored), so any gateway replica can redeem it; redeeming
//! deletes it under its UID, so a token opens one connection at most, whichever replica two
//! attempts reach.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams, Preconditions};
use kube::{Client, ResourceExt};
use sha2::{Digest, Sha256};

use crate::api::ACCOUNT_LABEL;

/// Label on console tickets.
pub const TICKET_LABEL: &str = "vps.org/console-ticket";
/// How long a ticket may wait for its connection.
pub const TTL: Duration = Duration::from_secs(60);

/// What a ticket opens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ticket {
    pub account: String,
    /// The account's namespace, and the server's object name and id there.
    pub namespace: String,
    pub server: String,
    pub id: i64,
    /// `serial` or `vnc`.
    pub kind: String,
    pub expires_at: jiff::Timestamp,
}

/// The ConfigMap name of `token`'s ticket.
fn name_of(token: &str) -> String {
    format!("vps-console-{}", &hex::encode(Sha256::digest(token.as_bytes()))[..40])
}

/// Issues a ticket; returns its token. Expired tickets nobody redeemed are deleted first.
pub async fn issue(client: &Client, system_namespace: &str, ticket: &Ticket) -> Result<String, kube::Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), system_namespace);
    prune(&api).await;
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes[..]);
    let token = hex::encode(bytes);
    let data = BTreeMap::from([
        ("namespace".to_string(), ticket.namespace.clone()),
        ("server".to_string(), ticket.server.clone()),
        ("id".to_string(), ticket.id.to_string()),
        ("type".to_string(), ticket.kind.clone()),
        ("expires-at".to_string(), crate::timestamps::seconds(ticket.expires_at)),
    ]);
    let map = ConfigMap {
        metadata: ObjectMeta {
            name: Some(name_of(&token)),
            labels: Some(BTreeMap::from([
                (TICKET_LABEL.to_string(), "true".to_string()),
                (ACCOUNT_LABEL.to_string(), ticket.account.clone()),
            ])),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    };
    api.create(&PostParams::default(), &map).await?;
    Ok(token)
}

/// The ticket of `token`, used up by this call; `None` when there is none (never issued,
/// redeemed already, or expired).
pub async fn redeem(client: &Client, system_namespace: &str, token: &str) -> Result<Option<Ticket>, kube::Error> {
    if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(None);
    }
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), system_namespace);
    let Some(map) = api.get_opt(&name_of(token)).await? else { return Ok(None) };
    let ticket = parse(&map);
    let once = DeleteParams {
        preconditions: Some(Preconditions { uid: map.uid(), resource_version: map.resource_version() }),
        ..Default::default()
    };
    match api.delete(&map.name_any(), &once).await {
        Ok(_) => {}
        // Redeemed by another request meanwhile.
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => return Ok(None),
        Err(e) => return Err(e),
    }
    Ok(ticket.filter(|t| t.expires_at > jiff::Timestamp::now()))
}

fn parse(map: &ConfigMap) -> Option<Ticket> {
    let data = map.data.as_ref()?;
    let field = |k: &str| data.get(k).cloned();
    Some(Ticket {
        account: map.labels().get(ACCOUNT_LABEL)?.clone(),
        namespace: field("namespace")?,
        server: field("server")?,
        id: field("id")?.parse().ok()?,
        kind: field("type")?,
        expires_at: field("expires-at")?.parse().ok()?,
    })
}

/// Deletes the tickets that expired unredeemed (failures are left for the next issue).
async fn prune(api: &Api<ConfigMap>) {
    let Ok(list) = api.list(&ListParams::default().labels(&format!("{TICKET_LABEL}=true"))).await else { return };
    let now = jiff::Timestamp::now();
    for map in list.items.iter().filter(|m| parse(m).is_none_or(|t| t.expires_at <= now)) {
        let _ = api.delete(&map.name_any(), &DeleteParams::default()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_reads_back_from_its_config_map_and_its_name_hides_the_token() {
        let token = "ab".repeat(32);
        let name = name_of(&token);
        assert!(name.starts_with("vps-console-") && !name.contains(&token[..16]), "{name}");
        let map = ConfigMap {
            metadata: ObjectMeta {
                name: Some(name),
                labels: Some(BTreeMap::from([(ACCOUNT_LABEL.to_string(), "acme".to_string())])),
                ..Default::default()
            },
            data: Some(BTreeMap::from([
                ("namespace".to_string(), "acme".to_string()),
                ("server".to_string(), "srv-7".to_string()),
                ("id".to_string(), "7".to_string()),
                ("type".to_string(), "vnc".to_string()),
                ("expires-at".to_string(), "2026-12-01T10:00:00Z".to_string()),
            ])),
            ..Default::default()
        };
        let ticket = parse(&map).unwrap();
        assert_eq!((ticket.id, ticket.kind.as_str(), ticket.account.as_str()), (7, "vnc", "acme"));
    }
}
