//! An account's teardown: every `VpsAccount` carries a finalizer; when one is deleted, its
//! servers are deleted (each tears down its VM, disks and snapshots behind its own
//! finalizer), and the account goes once none is left. Its tokens are owned by it and go
//! with it (the garbage collector); the gateway refuses them from the moment the account is
//! being deleted. Meanwhile its credit ledger is looked over now and then, and an account
//! with funds is charged every hour ([`super::charging`]).

use std::time::Duration;

use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;

use super::queue::Next;
use super::{Context, Result};
use crate::api::{VpsAccount, VpsServer};

/// The finalizer that keeps an account until its servers are gone.
pub const ACCOUNT_FINALIZER: &str = "vps.org/account-teardown";
/// A commitment of a server that does not exist is forgotten after this long.
const STALE_AFTER: Duration = Duration::from_secs(120);
/// How often an account's ledger is looked over.
const SWEEP_EVERY: Duration = Duration::from_secs(300);

/// Brings one account in line: its finalizer in place, or its teardown under way.
pub async fn reconcile(name: &str, ctx: &Context) -> Result<Next> {
    let Some(account) = ctx.accounts.get(&ObjectRef::new(name)) else { return Ok(Next::OnChange) };
    let api: Api<VpsAccount> = Api::all(ctx.client.clone());
    let ours = account.finalizers().iter().any(|f| f == ACCOUNT_FINALIZER);
    let set_finalizers = |finalizers: Vec<String>| super::set_finalizers(&api, account.as_ref(), finalizers);
    match (account.metadata.deletion_timestamp.is_some(), ours) {
        (false, false) => {
            let mut finalizers = account.finalizers().to_vec();
            finalizers.push(ACCOUNT_FINALIZER.into());
            set_finalizers(finalizers).await?;
            Ok(Next::OnChange)
        }
        (false, true) => {
            // Commitments of servers that never came to be (a gateway that died between its
            // reservation and the create) are forgotten after a grace period.
            let namespace = &account.spec.namespace;
            let exists = |server: &str| ctx.servers.with(&super::cache::key(namespace, server), |_| ()).is_some();
            let forgotten = ctx.ledger.forget_stale(name, exists, STALE_AFTER).await?;
            if forgotten > 0 {
                tracing::info!(account = name, forgotten, "Forgot credit commitments of servers that do not exist");
            }
            match account.spec.funds_cents {
                Some(funds) => Ok(Next::After(super::charging::step(&account, funds, ctx).await?.min(SWEEP_EVERY))),
                None => {
                    // No longer charged here: what charging said goes.
                    if account.status.is_some() {
                        let patch = serde_json::json!({"status": null});
                        api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
                    }
                    Ok(Next::After(SWEEP_EVERY))
                }
            }
        }
        (true, true) => {
            let namespace = &account.spec.namespace;
            let prefix = format!("{namespace}/");
            let left: Vec<Box<str>> = ctx.servers.keys().into_iter().filter(|k| k.starts_with(&prefix)).collect();
            if !left.is_empty() {
                let servers: Api<VpsServer> = Api::namespaced(ctx.client.clone(), namespace);
                for key in &left {
                    let server = &key[prefix.len()..];
                    match servers.delete(server, &DeleteParams::background()).await {
                        Ok(_) | Err(kube::Error::Api(_)) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                tracing::info!(account = name, servers = left.len(), "Account deleted: tearing down its servers");
                return Ok(Next::After(Duration::from_secs(1)));
            }
            let rest = account.finalizers().iter().filter(|f| *f != ACCOUNT_FINALIZER).cloned().collect();
            match set_finalizers(rest).await {
                Ok(_) | Err(kube::Error::Api(_)) => {}
                Err(e) => return Err(e.into()),
            }
            tracing::info!(account = name, "Account deleted: its servers are gone");
            Ok(Next::OnChange)
        }
        _ => Ok(Next::OnChange),
    }
}
