//! From what KubeVirt reports to what the customer sees: a pure function from the server's
//! spec and its VirtualMachine and VirtualMachineInstance to the server's phase, reason and
//! addresses. No client, no clock: unit-tested with small builders.

use crate::api::{Phase, PowerState, VpsServerSpec};
use crate::kubevirt::{VirtualMachineInstanceView, VirtualMachineView};

/// What the operator concludes from one look at the world.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    pub phase: Phase,
    /// CamelCase reason for the phase (`Running`, `PlanNotFound`, `ErrorUnschedulable`, ...).
    pub reason: String,
    pub message: String,
    pub ipv4: Option<String>,
    pub ipv6: Option<String>,
}

impl Observation {
    fn new(phase: Phase, reason: &str, message: impl Into<String>) -> Self {
        Observation { phase, reason: reason.into(), message: message.into(), ipv4: None, ipv6: None }
    }
}

/// `printableStatus` values KubeVirt uses for a VM that cannot make progress.
pub const ERROR_STATUSES: [&str; 8] = [
    "ErrorUnschedulable",
    "ErrImagePull",
    "ImagePullBackOff",
    "ErrorPvcNotFound",
    "ErrorDataVolumeNotFound",
    "DataVolumeError",
    "CrashLoopBackOff",
    "Unknown",
];

/// Derives the phase. `reference_error` is a bad plan/image/location/key (reason, message);
/// `rebooting_from` is the UID of the instance a reboot replaced, while that reboot lasts.
/// Addresses are reported while the instance runs.
pub fn observe(
    spec: &VpsServerSpec,
    reference_error: Option<(&str, &str)>,
    vm: Option<&VirtualMachineView>,
    vmi: Option<&VirtualMachineInstanceView>,
    rebooting_from: Option<&str>,
) -> Observation {
    let mut obs = phase_only(spec, reference_error, vm, vmi, rebooting_from);
    if let Some(vmi) = vmi.filter(|v| v.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")) {
        (obs.ipv4, obs.ipv6) = addresses(vmi);
    }
    obs
}

/// [`observe`] without the addresses.
fn phase_only(
    spec: &VpsServerSpec,
    reference_error: Option<(&str, &str)>,
    vm: Option<&VirtualMachineView>,
    vmi: Option<&VirtualMachineInstanceView>,
    rebooting_from: Option<&str>,
) -> Observation {
    if let Some((reason, message)) = reference_error {
        return Observation::new(Phase::Error, reason, message);
    }
    let Some(vm) = vm else {
        return Observation::new(Phase::Provisioning, "CreatingVirtualMachine", "The virtual machine is being created");
    };
    let status = vm.status.clone().unwrap_or_default();
    // KubeVirt reports a missing DataSource or a refused clone as a Failure condition while
    // printableStatus may still say Stopped.
    if let Some(failure) = status.conditions.iter().find(|c| c.type_ == "Failure" && c.status == "True") {
        let reason = failure.reason.clone().unwrap_or_else(|| "Failure".into());
        return Observation::new(Phase::Error, &camel(&reason), failure.message.clone().unwrap_or_default());
    }
    let printable = status.printable_status.as_deref().unwrap_or("");
    if ERROR_STATUSES.contains(&printable) {
        let message = status.conditions.iter().find_map(|c| c.message.clone()).unwrap_or_default();
        return Observation::new(Phase::Error, printable, message);
    }
    if spec.suspended {
        return Observation::new(Phase::Suspended, "Suspended", "The server is suspended by an administrator");
    }
    let vmi_ready = vmi.is_some_and(instance_ready);
    if let Some(from) = rebooting_from {
        let replaced = vmi.is_some_and(|v| v.metadata.uid.as_deref() != Some(from));
        if !(replaced && vmi_ready) {
            return Observation::new(Phase::Rebooting, "Rebooting", "The server is restarting");
        }
    }
    let want_running = spec.power_state == PowerState::Running;
    match printable {
        "Provisioning" | "WaitingForVolumeBinding" => {
            Observation::new(Phase::Provisioning, printable, "The root disk is being prepared")
        }
        "Running" | "Migrating" | "Paused" if !want_running => {
            Observation::new(Phase::Stopping, "Stopping", "The server is shutting down")
        }
        "Running" | "Migrating" if status.ready && vmi_ready => {
            Observation::new(Phase::Active, "Running", "The server is running")
        }
        "Running" | "Migrating" | "Starting" | "Paused" => {
            Observation::new(Phase::Starting, "Starting", "The server is starting")
        }
        "Stopping" | "Terminating" => Observation::new(Phase::Stopping, "Stopping", "The server is shutting down"),
        "Stopped" | "Halted" | "" if want_running => {
            Observation::new(Phase::Starting, "Starting", "The server is starting")
        }
        "Stopped" | "Halted" | "" => Observation::new(Phase::Stopped, "Stopped", "The server is stopped"),
        other => Observation::new(Phase::Starting, &camel(other), format!("KubeVirt reports {other}")),
    }
}

/// Whether the instance runs and its launcher Pod is ready.
pub fn instance_ready(vmi: &VirtualMachineInstanceView) -> bool {
    let Some(status) = &vmi.status else { return false };
    status.phase.as_deref() == Some("Running")
        && status.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")
        && vmi.metadata.deletion_timestamp.is_none()
}

/// The first IPv4 and IPv6 address the instance reports on its interfaces.
pub fn addresses(vmi: &VirtualMachineInstanceView) -> (Option<String>, Option<String>) {
    let mut v4 = None;
    let mut v6 = None;
    for iface in vmi.status.iter().flat_map(|s| s.interfaces.iter()) {
        for ip in iface.ip_address.iter().chain(iface.ip_addresses.iter()) {
            match ip.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(_)) if v4.is_none() => v4 = Some(ip.clone()),
                Ok(std::net::IpAddr::V6(a)) if v6.is_none() && !a.is_unicast_link_local() => v6 = Some(ip.clone()),
                _ => {}
            }
        }
    }
    (v4, v6)
}

/// Makes a reason CamelCase as conditions require (`failed create` → `FailedCreate`).
fn camel(s: &str) -> String {
    s.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut c = w.chars();
            c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubevirt::{KvCondition, VirtualMachineInstanceStatus, VirtualMachineStatus, VmiInterface};
    use serde_json::json;

    fn mk_spec() -> VpsServerSpec {
        serde_json::from_value(json!({"name": "web", "plan": "p", "os": "o", "location": "l"})).unwrap()
    }

    fn mk_vm(printable: &str, ready: bool) -> VirtualMachineView {
        let mut vm = VirtualMachineView::new("web", Default::default());
        vm.status =
            Some(VirtualMachineStatus { printable_status: Some(printable.into()), ready, ..Default::default() });
        vm
    }

    fn mk_vmi(uid: &str, phase: &str, ready: bool) -> VirtualMachineInstanceView {
        let mut vmi = VirtualMachineInstanceView::new("web", Default::default());
        vmi.metadata.uid = Some(uid.into());
        vmi.status = Some(VirtualMachineInstanceStatus {
            phase: Some(phase.into()),
            interfaces: vec![VmiInterface {
                name: Some("default".into()),
                ip_address: Some("10.0.0.5".into()),
                ip_addresses: vec!["10.0.0.5".into(), "fe80::1".into(), "2001:db8::5".into()],
            }],
            conditions: vec![KvCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..Default::default()
            }],
            ..Default::default()
        });
        vmi
    }

    fn phase(spec: &VpsServerSpec, vm: Option<&VirtualMachineView>, vmi: Option<&VirtualMachineInstanceView>) -> Phase {
        observe(spec, None, vm, vmi, None).phase
    }

    #[test]
    fn first_boot_is_provisioning() {
        let spec = mk_spec();
        assert_eq!(phase(&spec, None, None), Phase::Provisioning);
        assert_eq!(phase(&spec, Some(&mk_vm("Provisioning", false)), None), Phase::Provisioning);
        assert_eq!(phase(&spec, Some(&mk_vm("WaitingForVolumeBinding", false)), None), Phase::Provisioning);
    }

    #[test]
    fn running_and_ready_is_active_with_addresses() {
        let spec = mk_spec();
        let vmi = mk_vmi("a", "Running", true);
        let obs = observe(&spec, None, Some(&mk_vm("Running", true)), Some(&vmi), None);
        assert_eq!(obs.phase, Phase::Active);
        assert_eq!(obs.ipv4.as_deref(), Some("10.0.0.5"));
        assert_eq!(obs.ipv6.as_deref(), Some("2001:db8::5"), "link-local addresses are skipped");
    }

    #[test]
    fn starting_states() {
        let spec = mk_spec();
        assert_eq!(phase(&spec, Some(&mk_vm("Starting", false)), None), Phase::Starting);
        let vmi = mk_vmi("a", "Running", false);
        assert_eq!(phase(&spec, Some(&mk_vm("Running", false)), Some(&vmi)), Phase::Starting);
        assert_eq!(phase(&spec, Some(&mk_vm("Stopped", false)), None), Phase::Starting, "wanted running");
    }

    #[test]
    fn stopping_and_stopped() {
        let mut spec = mk_spec();
        spec.power_state = PowerState::Stopped;
        assert_eq!(phase(&spec, Some(&mk_vm("Stopping", false)), None), Phase::Stopping);
        assert_eq!(phase(&spec, Some(&mk_vm("Terminating", false)), None), Phase::Stopping);
        let vmi = mk_vmi("a", "Running", true);
        assert_eq!(phase(&spec, Some(&mk_vm("Running", true)), Some(&vmi)), Phase::Stopping);
        assert_eq!(phase(&spec, Some(&mk_vm("Stopped", false)), None), Phase::Stopped);
    }

    #[test]
    fn kubevirt_errors_keep_their_reason() {
        let spec = mk_spec();
        for status in ERROR_STATUSES {
            let obs = observe(&spec, None, Some(&mk_vm(status, false)), None, None);
            assert_eq!((obs.phase, obs.reason.as_str()), (Phase::Error, status));
        }
    }

    #[test]
    fn failure_condition_wins_over_stopped() {
        let spec = mk_spec();
        let mut vm = mk_vm("Stopped", false);
        vm.status.as_mut().unwrap().conditions.push(KvCondition {
            type_: "Failure".into(),
            status: "True".into(),
            reason: Some("FailedCreate".into()),
            message: Some("DataSource missing".into()),
        });
        let obs = observe(&spec, None, Some(&vm), None, None);
        assert_eq!(
            (obs.phase, obs.reason.as_str(), obs.message.as_str()),
            (Phase::Error, "FailedCreate", "DataSource missing")
        );
    }

    #[test]
    fn bad_reference_is_an_error_without_vm() {
        let obs = observe(&mk_spec(), Some(("PlanNotFound", "no plan p")), None, None, None);
        assert_eq!((obs.phase, obs.reason.as_str()), (Phase::Error, "PlanNotFound"));
    }

    #[test]
    fn suspended_overrides_power() {
        let mut spec = mk_spec();
        spec.suspended = true;
        assert_eq!(phase(&spec, Some(&mk_vm("Stopped", false)), None), Phase::Suspended);
    }

    #[test]
    fn reboot_lasts_until_a_new_instance_is_ready() {
        let spec = mk_spec();
        let vm = mk_vm("Running", true);
        let old = mk_vmi("old", "Running", true);
        assert_eq!(observe(&spec, None, Some(&vm), Some(&old), Some("old")).phase, Phase::Rebooting);
        assert_eq!(observe(&spec, None, Some(&mk_vm("Starting", false)), None, Some("old")).phase, Phase::Rebooting);
        let new_not_ready = mk_vmi("new", "Scheduled", false);
        assert_eq!(observe(&spec, None, Some(&vm), Some(&new_not_ready), Some("old")).phase, Phase::Rebooting);
        let new = mk_vmi("new", "Running", true);
        assert_eq!(observe(&spec, None, Some(&vm), Some(&new), Some("old")).phase, Phase::Active);
    }

    #[test]
    fn reasons_are_camel_case() {
        assert_eq!(camel("failed create"), "FailedCreate");
        assert_eq!(camel("ErrorUnschedulable"), "ErrorUnschedulable");
    }
}
