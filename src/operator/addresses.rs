//! A server's addresses on its location's provider network: given out once, when it is
//! first built, as a `VpsAddress` named after the IPv4 address (the API server refuses a
//! second object of that name, so no two servers ever get one address, whichever replica
//! or reconcile asks), recorded in the server's status, and released at its teardown for
//! another server after a cool-down. Servers on the pod network have none.

use kube::ResourceExt;
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::reflector::ObjectRef;
use serde_json::json;

use super::{Context, Error, Result};
use crate::address_pool::Pools;
use crate::api::{
    AddressHolder, LOCATION_LABEL, Resolved, SERVER_UID_LABEL, VpsAddress, VpsAddressSpec, VpsServer, VpsServerStatus,
};

/// Where a server's addresses stand.
pub enum Addressing {
    /// On the pod network: the instance's address, whatever it is.
    Pod,
    /// Its own addresses, and the guest's network configuration for them.
    Held { claim: Box<VpsAddress>, attachment: String, network_data: String },
    /// None can be given (reason, message): the server is not built until one can.
    Fault(&'static str, String),
}

impl Addressing {
    pub fn fault(&self) -> Option<(&str, &str)> {
        match self {
            Addressing::Fault(reason, message) => Some((reason, message.as_str())),
            _ => None,
        }
    }

    pub fn claim(&self) -> Option<&VpsAddress> {
        match self {
            Addressing::Held { claim, .. } => Some(claim),
            _ => None,
        }
    }

    /// The VM's interface on the provider network, if it has one.
    pub fn attached(&self) -> Option<super::vm::Attached<'_>> {
        match self {
            Addressing::Held { claim, attachment, network_data } => {
                Some(super::vm::Attached { attachment, mac: &claim.spec.mac, network_data })
            }
            _ => None,
        }
    }
}

/// Tries of a free address that another replica took first, per reconcile.
const TRIES: usize = 16;

/// The name of the `VpsAddress` of `ipv4` in `location`.
pub fn claim_name(location: &str, ipv4: &str) -> String {
    format!("{location}.{ipv4}")
}

/// The server's addresses: those its status records (or a claim of its UID that a
/// reconcile made before its status write), else the first free ones of its location.
pub async fn ensure(
    server: &VpsServer,
    ctx: &Context,
    resolved: &Resolved,
    old: &VpsServerStatus,
) -> Result<Addressing> {
    let Some(network) = &resolved.location.spec.network else { return Ok(Addressing::Pod) };
    let location = resolved.location.name.as_str();
    let pools = match Pools::parse(location, network) {
        Ok(pools) => pools,
        Err(e) => return Ok(Addressing::Fault("AddressPoolInvalid", format!("Location {location}'s network: {e}"))),
    };
    let held = |claim: VpsAddress| Addressing::Held {
        network_data: pools.network_data(&claim.spec),
        attachment: network.attachment.clone(),
        claim: Box::new(claim),
    };
    let uid = server.uid().ok_or(Error::MissingField("metadata.uid"))?;
    let api: Api<VpsAddress> = Api::all(ctx.client.clone());
    let ours = |a: &VpsAddress| a.spec.server.uid == uid && a.spec.reusable_after.is_none();
    if let Some(name) = &old.address_claim {
        let claim = match ctx.addresses.get(&ObjectRef::new(name)) {
            Some(cached) if ours(&cached) => Some(cached.as_ref().clone()),
            // The cache may lag behind the claim just made.
            _ => api.get_opt(name).await?.filter(ours),
        };
        match claim {
            Some(claim) => return Ok(held(claim)),
            None => {
                tracing::warn!(server = %server.name_any(), claim = %name, "The server's address claim is gone: giving it new addresses")
            }
        }
    } else if let Some(claim) = api
        .list(&ListParams::default().labels(&format!("{SERVER_UID_LABEL}={uid}")))
        .await?
        .items
        .into_iter()
        .find(ours)
    {
        return Ok(held(claim));
    }
    let now = jiff::Timestamp::now();
    let mut lost_races = 0;
    for assignment in pools.assignments() {
        let name = claim_name(location, &assignment.ipv4.to_string());
        let cached = ctx.addresses.get(&ObjectRef::new(&name));
        if cached.as_ref().is_some_and(|a| !a.reusable_at(now)) {
            continue;
        }
        let claim = VpsAddress {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(
                    [(LOCATION_LABEL.to_string(), location.to_string()), (SERVER_UID_LABEL.to_string(), uid.clone())]
                        .into(),
                ),
                resource_version: cached.as_ref().and_then(|a| a.resource_version()),
                ..Default::default()
            },
            spec: VpsAddressSpec {
                location: location.to_string(),
                ipv4: assignment.ipv4.to_string(),
                ipv6: assignment.ipv6.map(|a| a.to_string()),
                mac: assignment.mac,
                server: AddressHolder {
                    namespace: server.namespace().unwrap_or_default(),
                    name: server.name_any(),
                    uid: uid.clone(),
                },
                reusable_after: None,
            },
        };
        // A released claim is taken over at the resourceVersion it was seen at.
        let written = match cached {
            None => api.create(&PostParams::default(), &claim).await,
            Some(_) => api.replace(&name, &PostParams::default(), &claim).await,
        };
        match written {
            Ok(claim) => {
                tracing::info!(server = %server.name_any(), ipv4 = %claim.spec.ipv4, ipv6 = ?claim.spec.ipv6, "Gave the server its addresses");
                return Ok(held(claim));
            }
            // Taken meanwhile (by another replica, or a reconcile the cache did not show yet).
            Err(kube::Error::Api(e)) if e.code == 409 && lost_races + 1 < TRIES => lost_races += 1,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Addressing::Fault(
        "AddressPoolExhausted",
        format!(
            "No address is left in location {location}'s pool {}: the server gets one once another server's is released",
            network.ipv4.cidr
        ),
    ))
}

/// At the server's teardown: its addresses may go to another server after the cool-down.
pub async fn release(server: &VpsServer, ctx: &Context) -> Result<()> {
    let Some(uid) = server.uid() else { return Ok(()) };
    let status = server.status.clone().unwrap_or_default();
    let api: Api<VpsAddress> = Api::all(ctx.client.clone());
    let claims = match (&status.address_claim, &status.resolved) {
        (Some(name), _) => api.get_opt(name).await?.into_iter().collect(),
        (None, Some(resolved)) if resolved.location.spec.network.is_none() => return Ok(()),
        // A claim may have been made before the first status write.
        (None, _) => api.list(&ListParams::default().labels(&format!("{SERVER_UID_LABEL}={uid}"))).await?.items,
    };
    let after =
        jiff::Timestamp::now() + jiff::SignedDuration::try_from(ctx.config.address_cooldown).unwrap_or_default();
    let patch = json!({"spec": {"reusableAfter": crate::timestamps::seconds(after)}});
    for claim in claims.into_iter().filter(|c| c.spec.reusable_after.is_none() && c.spec.server.uid == uid) {
        api.patch(&claim.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
        tracing::info!(server = %server.name_any(), ipv4 = %claim.spec.ipv4, "Released the server's addresses");
    }
    Ok(())
}

/// Releases, every `every`, the claims whose server is gone without releasing them (its
/// finalizer removed by hand, say) or is another object of the same name now: an address is
/// never held by nothing. A claim's server is looked up in the API, not only the cache (a
/// claim is made for a server the cache already shows, but it may lag at a restart).
pub async fn sweep(ctx: std::sync::Arc<Context>, every: std::time::Duration) {
    loop {
        tokio::time::sleep(every).await;
        if let Err(e) = sweep_once(&ctx).await {
            tracing::debug!("Address sweep: {e}");
        }
    }
}

async fn sweep_once(ctx: &Context) -> Result<()> {
    let api: Api<VpsAddress> = Api::all(ctx.client.clone());
    for claim in ctx.addresses.state().iter().filter(|c| c.spec.reusable_after.is_none()) {
        let holder = &claim.spec.server;
        let servers: Api<VpsServer> = Api::namespaced(ctx.client.clone(), &holder.namespace);
        let held =
            servers.get_opt(&holder.name).await?.is_some_and(|s| s.uid().as_deref() == Some(holder.uid.as_str()));
        if held {
            continue;
        }
        let after =
            jiff::Timestamp::now() + jiff::SignedDuration::try_from(ctx.config.address_cooldown).unwrap_or_default();
        // Guarded by the version seen: a claim taken over meanwhile is left alone.
        let patch = json!({
            "metadata": {"resourceVersion": claim.resource_version()},
            "spec": {"reusableAfter": crate::timestamps::seconds(after)},
        });
        match api.patch(&claim.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => tracing::warn!(
                ipv4 = %claim.spec.ipv4, namespace = %holder.namespace, server = %holder.name,
                "Released the addresses of a server that is gone without releasing them"
            ),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
