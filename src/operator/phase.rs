//! From what KubeVirt reports to what the customer sees: a pure function from the server's
//! spec and what is kept of its VirtualMachine and VirtualMachineInstance ([`super::observed`])
//! to the server's phase, reason and addresses. No client, no clock: unit-tested with small builders.

use super::observed::{VmState, VmiState};
use crate::api::{Phase, PowerState, VpsServerSpec};
use crate::kubevirt::ERROR_STATUSES;

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
    pub(super) fn new(phase: Phase, reason: &str, message: impl Into<String>) -> Self {
        Observation { phase, reason: reason.into(), message: message.into(), ipv4: None, ipv6: None }
    }
}

/// Derives the phase. `fault` is what keeps the server from being built at all (reason,
/// message): a plan, image, location or key that never resolved, a lost VM;
/// `rebooting_from` is the UID of the instance a reboot replaced, while that reboot lasts;
/// `rebuild` says, while a rebuild lasts, whether the root disk is replaced yet;
/// `previous` is the phase the server's status shows. Addresses are reported while the
/// instance runs, except while the server is suspended.
pub fn observe(
    spec: &VpsServerSpec,
    fault: Option<(&str, &str)>,
    vm: Option<&VmState>,
    vmi: Option<&VmiState>,
    rebooting_from: Option<&str>,
    rebuild: Option<bool>,
    previous: Option<Phase>,
) -> Observation {
    let mut obs = phase_only(spec, fault, vm, vmi, rebooting_from, previous);
    // A rebuild lasts until the server is where it should be on its new disk; a fault or a
    // suspension shows through, but not the disk being missing while it is replaced.
    let replacing = ["ErrorDataVolumeNotFound", "ErrorPvcNotFound"].contains(&obs.reason.as_str());
    let settled = matches!(obs.phase, Phase::Active | Phase::Stopped | Phase::Suspended)
        || (obs.phase == Phase::Error && !replacing);
    if rebuild.is_some_and(|replaced| !replaced || !settled) {
        obs = Observation::new(Phase::Rebuilding, "Rebuilding", "The server's disk is being rebuilt from its image");
    }
    if let Some(vmi) = vmi.filter(|v| v.running && obs.phase != Phase::Suspended) {
        (obs.ipv4, obs.ipv6) = (vmi.ipv4.map(|a| a.to_string()), vmi.ipv6.map(|a| a.to_string()));
    }
    obs
}

/// [`observe`] without the addresses.
fn phase_only(
    spec: &VpsServerSpec,
    fault: Option<(&str, &str)>,
    vm: Option<&VmState>,
    vmi: Option<&VmiState>,
    rebooting_from: Option<&str>,
    previous: Option<Phase>,
) -> Observation {
    if let Some((reason, message)) = fault {
        return Observation::new(Phase::Error, reason, message);
    }
    let Some(vm) = vm else {
        return provisioning();
    };
    // KubeVirt reports a missing DataSource or a refused clone as a Failure condition while
    // printableStatus may still say Stopped.
    if let Some(failure) = &vm.failure {
        let reason = failure.reason.as_deref().unwrap_or("Failure");
        return Observation::new(Phase::Error, &camel(reason), failure.message.clone().unwrap_or_default());
    }
    let printable = &*vm.printable_status;
    if ERROR_STATUSES.contains(&printable) {
        return Observation::new(Phase::Error, printable, vm.error_message.as_deref().unwrap_or_default());
    }
    if spec.suspended {
        return Observation::new(Phase::Suspended, "Suspended", "The server is suspended by an administrator");
    }
    let vmi_ready = vmi.is_some_and(|v| v.ready);
    let want_running = spec.power_state == PowerState::Running;
    // A reboot lasts until a new instance is ready, and only while the server should run: a
    // stop asked for during a reboot ends it.
    if let Some(from) = rebooting_from.filter(|_| want_running) {
        let replaced = vmi.is_some_and(|v| v.uid.as_deref() != Some(from));
        if !(replaced && vmi_ready) {
            return Observation::new(Phase::Rebooting, "Rebooting", "The server is restarting");
        }
    }
    match printable {
        // With WaitForFirstConsumer storage the root disk's volume is bound once the
        // importer runs: a normal step of provisioning, not a fault.
        "Provisioning" | "WaitingForVolumeBinding" => provisioning(),
        "Running" | "Migrating" | "Paused" if !want_running => {
            Observation::new(Phase::Stopping, "Stopping", "The server is shutting down")
        }
        "Running" | "Migrating" if vm.ready && vmi_ready => {
            Observation::new(Phase::Active, "Running", "The server is running")
        }
        "Running" | "Migrating" | "Starting" | "Paused" => {
            Observation::new(Phase::Starting, "Starting", "The server is starting")
        }
        "Stopping" | "Terminating" => Observation::new(Phase::Stopping, "Stopping", "The server is shutting down"),
        // A VM that virt-controller has not reported on yet (it always sets a status).
        "" => provisioning(),
        // A new VM's first status says Stopped until virt-controller has looked at its disk:
        // still provisioning, not starting yet.
        "Stopped" if want_running && matches!(previous, None | Some(Phase::Provisioning)) => provisioning(),
        "Stopped" | "Halted" if want_running => Observation::new(Phase::Starting, "Starting", "The server is starting"),
        // The VM may say so before the watch delivers its instance's end: not stopped while
        // an instance still runs (and shows its address).
        "Stopped" | "Halted" if vmi.is_some_and(|v| v.running) => {
            Observation::new(Phase::Stopping, "Stopping", "The server is shutting down")
        }
        "Stopped" | "Halted" => Observation::new(Phase::Stopped, "Stopped", "The server is stopped"),
        other => Observation::new(Phase::Starting, &camel(other), format!("KubeVirt reports {other}")),
    }
}

/// From the server's creation until its root disk is ready: one reason and message, so that
/// the steps in between (the VM made, then seen by KubeVirt, its disk importing) cost no
/// status writes.
fn provisioning() -> Observation {
    Observation::new(Phase::Provisioning, "Provisioning", "The virtual machine and its root disk are being prepared")
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
    use crate::kubevirt::{
        KvCondition, VirtualMachineInstanceStatus, VirtualMachineInstanceView, VirtualMachineStatus,
        VirtualMachineView, VmiInterface,
    };
    use serde_json::json;

    fn mk_spec() -> VpsServerSpec {
        serde_json::from_value(json!({"name": "web", "plan": "p", "os": "o", "location": "l"})).unwrap()
    }

    /// The cached state of a VM (built as KubeVirt reports it).
    fn mk_vm(printable: &str, ready: bool) -> VmState {
        VmState::of(&mk_vm_view(printable, ready, vec![]))
    }

    fn mk_vm_view(printable: &str, ready: bool, conditions: Vec<KvCondition>) -> VirtualMachineView {
        let mut vm = VirtualMachineView::new("web", Default::default());
        vm.status = Some(VirtualMachineStatus {
            printable_status: Some(printable.into()),
            ready,
            conditions,
            ..Default::default()
        });
        vm
    }

    /// The cached state of an instance (built as KubeVirt reports it).
    fn mk_vmi(uid: &str, phase: &str, ready: bool) -> VmiState {
        let mut vmi = VirtualMachineInstanceView::new("web", Default::default());
        vmi.metadata.uid = Some(uid.into());
        vmi.status = Some(VirtualMachineInstanceStatus {
            phase: Some(phase.into()),
            interfaces: vec![VmiInterface {
                name: Some("default".into()),
                ip_address: Some("192.0.2.5".into()),
                ip_addresses: vec!["192.0.2.5".into(), "fe80::1".into(), "2001:db8::5".into()],
            }],
            conditions: vec![KvCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..Default::default()
            }],
            ..Default::default()
        });
        VmiState::of(&vmi)
    }

    fn phase(spec: &VpsServerSpec, vm: Option<&VmState>, vmi: Option<&VmiState>) -> Phase {
        observe(spec, None, vm, vmi, None, None, None).phase
    }

    #[test]
    fn first_boot_is_provisioning() {
        let spec = mk_spec();
        assert_eq!(phase(&spec, None, None), Phase::Provisioning);
        assert_eq!(
            observe(&spec, None, Some(&mk_vm("Stopped", false)), None, None, None, Some(Phase::Provisioning)).phase,
            Phase::Provisioning,
            "a new VM's first status"
        );
        assert_eq!(
            observe(&spec, None, Some(&mk_vm("Stopped", false)), None, None, None, Some(Phase::Stopped)).phase,
            Phase::Starting,
            "a stopped server started"
        );
        let created = VmState::of(&VirtualMachineView::new("web", Default::default()));
        assert_eq!(phase(&spec, Some(&created), None), Phase::Provisioning, "no status from KubeVirt yet");
        assert_eq!(phase(&spec, Some(&mk_vm("Provisioning", false)), None), Phase::Provisioning);
        assert_eq!(phase(&spec, Some(&mk_vm("WaitingForVolumeBinding", false)), None), Phase::Provisioning);
    }

    #[test]
    fn a_rebuild_lasts_until_the_server_is_where_it_should_be_on_its_new_disk() {
        let spec = mk_spec();
        let (running, vmi) = (mk_vm("Running", true), mk_vmi("a", "Running", true));
        let with = |vm: &VmState, vmi: Option<&VmiState>, rebuild| {
            observe(&spec, None, Some(vm), vmi, None, rebuild, None).phase
        };
        assert_eq!(with(&running, Some(&vmi), Some(false)), Phase::Rebuilding, "the old disk still there");
        assert_eq!(with(&mk_vm("Stopped", false), None, Some(false)), Phase::Rebuilding);
        assert_eq!(with(&mk_vm("Provisioning", false), None, Some(true)), Phase::Rebuilding, "the new disk importing");
        assert_eq!(with(&mk_vm("Starting", false), None, Some(true)), Phase::Rebuilding);
        assert_eq!(with(&running, Some(&vmi), Some(true)), Phase::Active, "active on the new disk: done");
        assert_eq!(with(&mk_vm("DataVolumeError", false), None, Some(true)), Phase::Error, "faults show");
        assert_eq!(
            with(&mk_vm("ErrorDataVolumeNotFound", false), None, Some(true)),
            Phase::Rebuilding,
            "being replaced"
        );
        let mut stopped = mk_spec();
        stopped.power_state = PowerState::Stopped;
        let obs = observe(&stopped, None, Some(&mk_vm("Stopped", false)), None, None, Some(true), None);
        assert_eq!(obs.phase, Phase::Stopped, "a stopped server rebuilt stays stopped");
        assert_eq!(with(&running, Some(&vmi), None), Phase::Active);
    }

    #[test]
    fn running_and_ready_is_active_with_addresses() {
        let spec = mk_spec();
        let vmi = mk_vmi("a", "Running", true);
        let obs = observe(&spec, None, Some(&mk_vm("Running", true)), Some(&vmi), None, None, None);
        assert_eq!(obs.phase, Phase::Active);
        assert_eq!(obs.ipv4.as_deref(), Some("192.0.2.5"));
        assert_eq!(obs.ipv6.as_deref(), Some("2001:db8::5"), "link-local addresses are skipped");
    }

    #[test]
    fn starting_states() {
        let spec = mk_spec();
        assert_eq!(phase(&spec, Some(&mk_vm("Starting", false)), None), Phase::Starting);
        let vmi = mk_vmi("a", "Running", false);
        assert_eq!(phase(&spec, Some(&mk_vm("Running", false)), Some(&vmi)), Phase::Starting);
        let stopped = mk_vm("Stopped", false);
        let started = observe(&spec, None, Some(&stopped), None, None, None, Some(Phase::Stopped));
        assert_eq!(started.phase, Phase::Starting, "wanted running");
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
        let stale = observe(&spec, None, Some(&mk_vm("Stopped", false)), Some(&vmi), None, None, None);
        assert_eq!(stale.phase, Phase::Stopping, "stopped only once its instance is seen to end");
        let ended = observe(
            &spec,
            None,
            Some(&mk_vm("Stopped", false)),
            Some(&mk_vmi("a", "Succeeded", false)),
            None,
            None,
            None,
        );
        assert_eq!((ended.phase, ended.ipv4), (Phase::Stopped, None), "a stopped server has no address");
    }

    #[test]
    fn kubevirt_errors_keep_their_reason() {
        let spec = mk_spec();
        for status in ERROR_STATUSES {
            let obs = observe(&spec, None, Some(&mk_vm(status, false)), None, None, None, None);
            assert_eq!((obs.phase, obs.reason.as_str()), (Phase::Error, status));
        }
    }

    #[test]
    fn failure_condition_wins_over_stopped() {
        let spec = mk_spec();
        let failure = KvCondition {
            type_: "Failure".into(),
            status: "True".into(),
            reason: Some("FailedCreate".into()),
            message: Some("DataSource missing".into()),
        };
        let vm = VmState::of(&mk_vm_view("Stopped", false, vec![failure]));
        let obs = observe(&spec, None, Some(&vm), None, None, None, None);
        assert_eq!(
            (obs.phase, obs.reason.as_str(), obs.message.as_str()),
            (Phase::Error, "FailedCreate", "DataSource missing")
        );
    }

    #[test]
    fn kubevirt_error_messages_come_from_its_conditions() {
        let unschedulable = KvCondition {
            type_: "PodScheduled".into(),
            status: "False".into(),
            reason: Some("Unschedulable".into()),
            message: Some("0/3 nodes are available".into()),
        };
        let ready = KvCondition { type_: "Ready".into(), status: "False".into(), ..Default::default() };
        let vm = VmState::of(&mk_vm_view("ErrorUnschedulable", false, vec![ready, unschedulable]));
        let obs = observe(&mk_spec(), None, Some(&vm), None, None, None, None);
        assert_eq!(
            (obs.phase, obs.reason.as_str(), obs.message.as_str()),
            (Phase::Error, "ErrorUnschedulable", "0/3 nodes are available")
        );
    }

    #[test]
    fn bad_reference_is_an_error_without_vm() {
        let obs = observe(&mk_spec(), Some(("PlanNotFound", "no plan p")), None, None, None, None, None);
        assert_eq!((obs.phase, obs.reason.as_str()), (Phase::Error, "PlanNotFound"));
    }

    #[test]
    fn suspended_overrides_power() {
        let mut spec = mk_spec();
        spec.suspended = true;
        assert_eq!(phase(&spec, Some(&mk_vm("Stopped", false)), None), Phase::Suspended);
        let halting =
            observe(&spec, None, Some(&mk_vm("Running", true)), Some(&mk_vmi("a", "Running", true)), None, None, None);
        assert_eq!((halting.phase, halting.ipv4), (Phase::Suspended, None), "a suspended server shows no address");
    }

    #[test]
    fn reboot_lasts_until_a_new_instance_is_ready() {
        let spec = mk_spec();
        let vm = mk_vm("Running", true);
        let old = mk_vmi("old", "Running", true);
        assert_eq!(observe(&spec, None, Some(&vm), Some(&old), Some("old"), None, None).phase, Phase::Rebooting);
        assert_eq!(
            observe(&spec, None, Some(&mk_vm("Starting", false)), None, Some("old"), None, None).phase,
            Phase::Rebooting
        );
        let new_not_ready = mk_vmi("new", "Scheduled", false);
        assert_eq!(
            observe(&spec, None, Some(&vm), Some(&new_not_ready), Some("old"), None, None).phase,
            Phase::Rebooting
        );
        let new = mk_vmi("new", "Running", true);
        assert_eq!(observe(&spec, None, Some(&vm), Some(&new), Some("old"), None, None).phase, Phase::Active);
    }

    #[test]
    fn a_stop_during_a_reboot_ends_the_reboot() {
        let mut spec = mk_spec();
        spec.power_state = PowerState::Stopped;
        let halted = mk_vm("Stopped", false);
        assert_eq!(
            observe(&spec, None, Some(&halted), None, Some("old"), None, Some(Phase::Rebooting)).phase,
            Phase::Stopped
        );
        let stopping = mk_vm("Stopping", false);
        assert_eq!(observe(&spec, None, Some(&stopping), None, Some("old"), None, None).phase, Phase::Stopping);
    }

    #[test]
    fn reasons_are_camel_case() {
        assert_eq!(camel("failed create"), "FailedCreate");
        assert_eq!(camel("ErrorUnschedulable"), "ErrorUnschedulable");
    }
}
