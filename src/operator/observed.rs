//! What the operator keeps of a server's VirtualMachine and VirtualMachineInstance: the few
//! fields [`super::phase::observe`] and the reconcile read, derived once when the watch
//! delivers the object. About 100 bytes per object instead of the parsed object.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::kubevirt::{ERROR_STATUSES, PRINTABLE_STATUSES, VirtualMachineInstanceView, VirtualMachineView};

use super::vm::SPEC_HASH_ANNOTATION;

/// What KubeVirt reports about a server's VirtualMachine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VmState {
    /// The VM's UID: another UID than the one the server recorded is another VM.
    pub uid: Option<Box<str>>,
    /// It is being deleted.
    pub deleting: bool,
    /// `status.printableStatus` (`Running`, `Stopped`, `ErrorUnschedulable`, ...), without an
    /// allocation when it is one of [`PRINTABLE_STATUSES`].
    pub printable_status: Cow<'static, str>,
    /// `status.ready`.
    pub ready: bool,
    /// A `Failure` condition whose status is `True`.
    pub failure: Option<Box<Failure>>,
    /// In an error status ([`ERROR_STATUSES`]), the first condition message.
    pub error_message: Option<Box<str>>,
    /// The SHA-256 the operator recorded in the VM's spec hash annotation.
    pub spec_hash: Option<[u8; 32]>,
}

/// A `Failure` condition's reason and message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Failure {
    pub reason: Option<String>,
    pub message: Option<String>,
}

/// What KubeVirt reports about a server's VirtualMachineInstance.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VmiState {
    /// Tells a rebooted instance from the one it replaced.
    pub uid: Option<Box<str>>,
    /// `status.phase` is `Running`.
    pub running: bool,
    /// Running, its `Ready` condition `True`, and not being deleted.
    pub ready: bool,
    /// The first IPv4 and the first non-link-local IPv6 address on its interfaces.
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
}

fn known(value: &str) -> Cow<'static, str> {
    match PRINTABLE_STATUSES.iter().find(|s| **s == value) {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(value.to_string()),
    }
}

/// Decodes a spec hash annotation (64 hex digits).
pub fn decode_hash(hex_digits: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_digits, &mut out).ok().map(|()| out)
}

impl VmState {
    pub fn of(vm: &VirtualMachineView) -> VmState {
        let spec_hash = vm.metadata.annotations.as_ref().and_then(|a| a.get(SPEC_HASH_ANNOTATION));
        let mut state = VmState {
            uid: vm.metadata.uid.as_deref().map(Into::into),
            deleting: vm.metadata.deletion_timestamp.is_some(),
            spec_hash: spec_hash.and_then(|h| decode_hash(h)),
            ..VmState::default()
        };
        let Some(status) = &vm.status else { return state };
        let printable = status.printable_status.as_deref().unwrap_or("");
        state.printable_status = known(printable);
        state.ready = status.ready;
        state.failure = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Failure" && c.status == "True")
            .map(|c| Box::new(Failure { reason: c.reason.clone(), message: c.message.clone() }));
        if ERROR_STATUSES.contains(&printable) {
            state.error_message = status.conditions.iter().find_map(|c| c.message.as_deref()).map(Into::into);
        }
        state
    }
}

impl VmiState {
    pub fn of(vmi: &VirtualMachineInstanceView) -> VmiState {
        let status = vmi.status.as_ref();
        let running = status.and_then(|s| s.phase.as_deref()) == Some("Running");
        let ready_condition =
            status.is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let mut state = VmiState {
            uid: vmi.metadata.uid.as_deref().map(Into::into),
            running,
            ready: running && ready_condition && vmi.metadata.deletion_timestamp.is_none(),
            ipv4: None,
            ipv6: None,
        };
        for iface in status.iter().flat_map(|s| s.interfaces.iter()) {
            for ip in iface.ip_address.iter().chain(iface.ip_addresses.iter()) {
                match ip.parse::<IpAddr>() {
                    Ok(IpAddr::V4(a)) if state.ipv4.is_none() => state.ipv4 = Some(a),
                    Ok(IpAddr::V6(a)) if state.ipv6.is_none() && !a.is_unicast_link_local() => state.ipv6 = Some(a),
                    _ => {}
                }
            }
        }
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_vm_keeps_its_status_failure_and_hash() {
        let hash = "ab".repeat(32);
        let vm: VirtualMachineView = serde_json::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": "web", "annotations": {SPEC_HASH_ANNOTATION: hash, "x": "y"}},
            "spec": {"template": {"spec": {"domain": {}}}, "runStrategy": "Always"},
            "status": {"printableStatus": "ErrorUnschedulable", "ready": false, "conditions": [
                {"type": "Ready", "status": "False"},
                {"type": "PodScheduled", "status": "False", "message": "0/3 nodes are available"},
                {"type": "Failure", "status": "False", "reason": "Old", "message": "resolved"}]},
        }))
        .unwrap();
        let state = VmState::of(&vm);
        assert_eq!(state.printable_status, "ErrorUnschedulable");
        assert!(matches!(state.printable_status, Cow::Borrowed(_)), "known statuses take no allocation");
        assert_eq!(state.error_message.as_deref(), Some("0/3 nodes are available"));
        assert_eq!(state.failure, None, "a Failure condition that is not True is no failure");
        assert_eq!(state.spec_hash, Some([0xab; 32]));

        let mut running = vm.clone();
        let status = running.status.as_mut().unwrap();
        status.printable_status = Some("Running".into());
        status.conditions[2].status = "True".into();
        let state = VmState::of(&running);
        assert_eq!(state.error_message, None, "no message is kept outside error states");
        assert_eq!(state.failure.as_deref().and_then(|f| f.reason.as_deref()), Some("Old"));
    }

    #[test]
    fn an_instance_keeps_uid_readiness_and_addresses() {
        let vmi = |phase: &str, deleting: bool| -> VirtualMachineInstanceView {
            let mut v: VirtualMachineInstanceView = serde_json::from_value(json!({
                "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
                "metadata": {"name": "web", "uid": "u1"},
                "spec": {"domain": {"devices": {}}},
                "status": {"phase": phase, "interfaces": [{"name": "default", "ipAddress": "192.0.2.5",
                    "ipAddresses": ["192.0.2.5", "fe80::1", "2001:db8::5"]}],
                    "conditions": [{"type": "Ready", "status": "True"}, {"type": "LiveMigratable", "status": "False"}]},
            }))
            .unwrap();
            if deleting {
                v.metadata.deletion_timestamp =
                    Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()));
            }
            v
        };
        let state = VmiState::of(&vmi("Running", false));
        assert_eq!(state.uid.as_deref(), Some("u1"));
        assert!(state.running && state.ready);
        assert_eq!(state.ipv4, Some(Ipv4Addr::new(192, 0, 2, 5)));
        assert_eq!(state.ipv6, Some("2001:db8::5".parse().unwrap()), "link-local addresses are skipped");
        assert!(!VmiState::of(&vmi("Running", true)).ready, "an instance being deleted is not ready");
        let scheduled = VmiState::of(&vmi("Scheduled", false));
        assert!(!scheduled.running && !scheduled.ready);
    }
}
