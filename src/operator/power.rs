//! A server's reboots and forced stops, as a reconcile handles them: each request honoured
//! once, through KubeVirt's subresources (virt-api).

use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Preconditions};
use kube::runtime::events::EventType;
use serde_json::json;

use super::observed::VmiState;
use super::reconcile::{ignore_not_found, publish};
use super::status::Reboot;
use super::vm;
use super::{Context, Result};
use crate::api::{RebootType, VpsServer, VpsServerStatus};
use crate::kubevirt::VirtualMachineInstanceView;

/// Honours a new `rebootRequestedAt` once, on the running instance: KubeVirt's `softreboot`
/// (`reset` for `rebootType: Hard`) through virt-api, which asks the host's virt-handler; the
/// instance, its pod and addresses stay. When virt-api answers with an error (it cannot reach
/// the host, say), the instance is deleted instead (KubeVirt starts a new one under
/// `runStrategy: Always`) with a Warning, and the instance it replaced is remembered. Returns
/// where the reboot stands, starting from what `old` recorded.
pub(super) async fn handle_reboot(
    server: &VpsServer,
    ctx: &Context,
    vmi: Option<&VmiState>,
    old: &VpsServerStatus,
) -> Result<Reboot> {
    let mut reboot = Reboot {
        observed_request: old.observed_reboot_request.clone(),
        from_instance: old.reboot_from_instance.clone(),
    };
    let Some(stamp) = &server.spec.reboot_requested_at else { return Ok(reboot) };
    if reboot.observed_request.as_ref() == Some(stamp) {
        return Ok(reboot);
    }
    let running = vmi.filter(|v| v.running);
    let Some(vmi) = running.filter(|_| vm::run_strategy(server) == "Always") else {
        reboot.observed_request = Some(stamp.clone());
        return Ok(reboot); // nothing runs: nothing to reboot
    };
    // The instance has the server's name.
    let (ns, name) = (server.namespace().unwrap_or_default(), server.name_any());
    let hard = server.spec.reboot_type == Some(RebootType::Hard);
    let verb = if hard { "reset" } else { "softreboot" };
    let path = format!("/apis/subresources.kubevirt.io/v1/namespaces/{ns}/virtualmachineinstances/{name}/{verb}");
    let request = http::Request::put(path)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(b"{}".to_vec())
        .expect("a path of DNS labels and a constant header make a valid request");
    let why = match ctx.client.request_text(request).await {
        Ok(_) => {
            reboot.observed_request = Some(stamp.clone());
            let (reason, note) = match hard {
                true => ("Reset", "Reset the virtual machine (KubeVirt's reset); the instance stays"),
                false => ("Rebooted", "Asked the guest to reboot (KubeVirt's softreboot); the instance stays"),
            };
            publish(ctx, server, EventType::Normal, reason, note).await;
            return Ok(reboot);
        }
        // An answer: this way will not work now. Anything else (the API server unreachable)
        // is tried again.
        Err(kube::Error::Api(e)) => e.message,
        Err(e) => return Err(e.into()),
    };
    reboot.observed_request = Some(stamp.clone());
    let uid = vmi.uid.as_deref().map(String::from);
    let api: Api<VirtualMachineInstanceView> = Api::namespaced(ctx.client.clone(), &ns);
    let dp = DeleteParams {
        preconditions: Some(Preconditions { uid: uid.clone(), resource_version: None }),
        ..Default::default()
    };
    ignore_not_found(api.delete(&name, &dp).await)?;
    reboot.from_instance = uid;
    let note = format!("KubeVirt's {verb} failed ({why}): restarting the virtual machine instance instead");
    publish(ctx, server, EventType::Warning, "RebootFallback", &note).await;
    Ok(reboot)
}

/// A new `spec.forceStopRequestedAt` on a server that should be stopped: KubeVirt's `stop`
/// subresource (virt-api) with a grace period of 0, which shortens the running instance's
/// grace period so virt-handler stops it at once. Returns the request now acted on.
pub(super) async fn handle_force_stop(
    server: &VpsServer,
    ctx: &Context,
    instance_runs: bool,
    old: &VpsServerStatus,
) -> Result<Option<String>> {
    let observed = old.observed_force_stop_request.clone();
    let Some(stamp) = &server.spec.force_stop_requested_at else { return Ok(observed) };
    if observed.as_ref() == Some(stamp) || server.spec.power_state != crate::api::PowerState::Stopped {
        return Ok(observed);
    }
    if instance_runs {
        let (ns, name) = (server.namespace().unwrap_or_default(), server.name_any());
        let path = format!("/apis/subresources.kubevirt.io/v1/namespaces/{ns}/virtualmachines/{name}/stop");
        let request = http::Request::put(path)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(json!({"gracePeriod": 0}).to_string().into_bytes())
            .expect("a path of DNS labels and a constant header make a valid request");
        // 409: nothing runs any more (or it is stopping with no longer grace to cut).
        ignore_not_found(ctx.client.request_text(request).await)?;
        publish(
            ctx,
            server,
            EventType::Normal,
            "ForcedStop",
            "Stopping the virtual machine without waiting for its guest",
        )
        .await;
    }
    Ok(Some(stamp.clone()))
}
