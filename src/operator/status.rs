//! Building the server's status from an observation, keeping condition transition times
//! stable so that an unchanged world means an unchanged status (and no write), and the
//! Events a change of status tells of. Pure: no client, no clock.

use std::collections::HashMap;
use std::sync::Mutex;

use kube::runtime::events::EventType;

use crate::api::{Condition, ConditionStatus, Phase, VpsServerStatus};

use super::backups::{Report, Verdict};
use super::phase::Observation;

/// Where a server's reboot stands: the last request acted on, and the instance it replaced
/// (while the reboot lasts).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reboot {
    pub observed_request: Option<String>,
    pub from_instance: Option<String>,
}

/// What the next status is computed from.
pub struct Inputs<'a> {
    pub id: i64,
    /// The newest status: what the server shows, or the operator's own newer write.
    pub old: &'a VpsServerStatus,
    pub obs: &'a Observation,
    /// The VirtualMachine's name, once the operator keeps one (its references resolved).
    pub vm_name: Option<&'a str>,
    /// What the server is built from (kept when `None`).
    pub resolved: Option<&'a crate::api::Resolved>,
    /// Its own addresses on a provider network (those recorded are kept when `None`).
    pub address: Option<&'a crate::api::VpsAddress>,
    /// The UIDs of the VM and its root disk the server has.
    pub vm_uid: Option<&'a str>,
    pub root_volume_uid: Option<&'a str>,
    /// A plan, image, location or key that does not resolve now (reason, message): the
    /// server's phase says so when it was never built, only `ReferencesResolved` otherwise.
    pub reference_problem: Option<&'a (String, String)>,
    pub reboot: &'a Reboot,
    /// The `spec.forceStopRequestedAt` acted on.
    pub force_stop_request: Option<&'a str>,
    pub rebuild: &'a super::rebuild::Rebuild,
    /// The last restore asked for and where it stands.
    pub restore: Option<&'a crate::api::RestoreStatus>,
    /// The backup schedule's report (`None`: backups are off, or not looked at).
    pub backup: Option<&'a Report>,
    pub generation: Option<i64>,
    pub now: &'a str,
}

/// The status to write (nothing, when it equals `inputs.old`).
pub fn next(inputs: &Inputs<'_>) -> VpsServerStatus {
    let Inputs {
        id,
        old,
        obs,
        vm_name,
        resolved,
        address,
        vm_uid,
        root_volume_uid,
        reference_problem,
        reboot,
        force_stop_request,
        rebuild,
        restore,
        backup,
        generation,
        now,
    } = *inputs;
    let mut status = VpsServerStatus { id: Some(id), ..old.clone() };
    if let Some(name) = vm_name {
        status.vm_name = Some(name.to_string());
    }
    if let Some(resolved) = resolved {
        status.resolved = Some(resolved.clone());
    }
    status.vm_uid = vm_uid.map(String::from);
    status.root_volume_uid = root_volume_uid.map(String::from);
    status.observed_reboot_request = reboot.observed_request.clone();
    status.reboot_from_instance = reboot.from_instance.clone().filter(|_| obs.phase == Phase::Rebooting);
    status.observed_rebuild_request = rebuild.observed_request.clone();
    status.observed_force_stop_request = force_stop_request.map(String::from);
    status.rebuild_from_volume = rebuild.from_volume.clone().filter(|_| obs.phase == Phase::Rebuilding);
    status.restore = restore.cloned();
    status.phase = Some(obs.phase);
    match address {
        Some(claim) => {
            status.address_claim = claim.metadata.name.clone();
            status.mac_address = Some(claim.spec.mac.clone());
            status.ip_address = Some(claim.spec.ipv4.clone());
            status.ipv6_address = claim.spec.ipv6.clone();
        }
        // A server with addresses of its own keeps them whatever its instance says.
        None if old.address_claim.is_some() => {}
        None => (status.ip_address, status.ipv6_address) = (obs.ipv4.clone(), obs.ipv6.clone()),
    }
    status.observed_generation = generation;
    if let Some(report) = backup {
        if let Some(t) = report.last_backup.clone() {
            status.last_backup_time = Some(t);
        }
        status.observed_backup_request = report.observed_request.clone();
        status.backup_request_state = report.request_state.clone();
    }
    status.conditions =
        conditions(obs, reference_problem, backup.and_then(|r| r.verdict.as_ref()), generation, &old.conditions, now);
    status
}

/// Whether `new` is worth a status write over `old`. What a step of provisioning or starting
/// only adds (the root disk's uid once CDI made it; the addresses while the server is still
/// starting) waits for the next write, which the step after it brings: each is a write less
/// per server, and nothing is lost (the next reconcile finds them again).
pub fn worth_writing(old: &VpsServerStatus, new: &VpsServerStatus) -> bool {
    if old == new {
        return false;
    }
    let mut waiting = new.clone();
    if old.root_volume_uid.is_none() {
        waiting.root_volume_uid = None;
    }
    let starting = matches!(new.phase, Some(Phase::Provisioning | Phase::Starting));
    if starting && old.ip_address.is_none() && old.ipv6_address.is_none() {
        (waiting.ip_address, waiting.ipv6_address) = (None, None);
    }
    waiting != *old
}

/// An Event to publish about a server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub type_: EventType,
    pub reason: String,
    pub message: String,
}

/// What a status change from `old` to `new` tells: a phase transition (a first status only
/// when it is an error: the `VirtualMachineCreated` Event tells of the rest; nor the step from
/// provisioning to starting, which `Active` follows), and a backup that just failed. Errors
/// are Warnings.
pub fn notices(old: &VpsServerStatus, new: &VpsServerStatus, obs: &Observation) -> Vec<Notice> {
    let mut out = Vec::new();
    let first = old.phase.is_none() && obs.phase != Phase::Error;
    let step = old.phase == Some(Phase::Provisioning) && new.phase == Some(Phase::Starting);
    if old.phase != new.phase && !first && !step {
        let (type_, reason) = match obs.phase {
            Phase::Error => (EventType::Warning, obs.reason.clone()),
            p => (EventType::Normal, format!("{p:?}")),
        };
        out.push(Notice { type_, reason, message: obs.message.clone() });
    }
    let failed = |status: &VpsServerStatus| {
        status.conditions.iter().any(|c| c.type_ == "BackupsSucceeded" && c.status == ConditionStatus::False)
    };
    if failed(new) && !failed(old) {
        out.push(Notice {
            type_: EventType::Warning,
            reason: "BackupFailed".into(),
            message: "The newest backup snapshot failed".into(),
        });
    }
    out
}

/// The conditions for an observation: `Ready` (the server is running and reachable),
/// `ReferencesResolved` (plan, image, location and key resolve) and, while backups are
/// enabled, `BackupsSucceeded` (the newest backup snapshot did not fail).
pub fn conditions(
    obs: &Observation,
    reference_problem: Option<&(String, String)>,
    backups: Option<&Verdict>,
    generation: Option<i64>,
    old: &[Condition],
    now: &str,
) -> Vec<Condition> {
    let ready = obs.phase == Phase::Active;
    let refs = match reference_problem {
        None => {
            (ConditionStatus::True, "Resolved".to_string(), "Plan, image, location and SSH key resolve".to_string())
        }
        Some((reason, message)) => (ConditionStatus::False, reason.clone(), message.clone()),
    };
    let ready_c =
        (if ready { ConditionStatus::True } else { ConditionStatus::False }, obs.reason.clone(), obs.message.clone());
    [("Ready", Some(ready_c)), ("ReferencesResolved", Some(refs)), ("BackupsSucceeded", backups.cloned())]
        .into_iter()
        .filter_map(|(type_, verdict)| verdict.map(|v| (type_, v)))
        .map(|(type_, (status, reason, message))| {
            Condition::observed(type_, status, reason, message, old, now, generation)
        })
        .collect()
}

/// The last status the operator wrote to each server, until its cache of servers shows it.
///
/// A reconcile woken by a VM or instance event may see a cached server from before the
/// operator's own last status write. Built on that, its status would differ from what was
/// written (a condition's transition time, a phase event again), and it would write again.
/// It builds on the written status instead, while the cache lags.
#[derive(Default)]
pub struct Written {
    servers: Mutex<HashMap<Box<str>, (u64, VpsServerStatus)>>,
}

fn version(resource_version: Option<&str>) -> Option<u64> {
    resource_version.and_then(|v| v.parse().ok())
}

impl Written {
    /// The operator's last write to server `key`, when the cached server (at
    /// `cached_version`) does not show it yet.
    pub fn newer_than_cache(&self, key: &str, cached_version: Option<&str>) -> Option<VpsServerStatus> {
        let servers = self.servers.lock().expect("lock");
        let (written, status) = servers.get(key)?;
        (version(cached_version)? < *written).then(|| status.clone())
    }

    /// Records a status write that produced `resource_version` (not a number: nothing can be
    /// told about the cache, which is then trusted).
    pub fn record(&self, key: &str, resource_version: Option<&str>, status: &VpsServerStatus) {
        if let Some(written) = version(resource_version) {
            self.servers.lock().expect("lock").insert(key.into(), (written, status.clone()));
        }
    }

    /// The cache now holds server `key` at `resource_version`: a write it shows is forgotten.
    pub fn cached(&self, key: &str, resource_version: Option<&str>) {
        let mut servers = self.servers.lock().expect("lock");
        if let Some((written, _)) = servers.get(key)
            && version(resource_version).is_some_and(|v| v >= *written)
        {
            servers.remove(key);
        }
    }

    /// Forgets a server that is gone.
    pub fn forget(&self, key: &str) {
        self.servers.lock().expect("lock").remove(key);
    }

    pub fn len(&self) -> usize {
        self.servers.lock().expect("lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(phase: Phase) -> Observation {
        Observation { phase, reason: "Running".into(), message: "m".into(), ipv4: None, ipv6: None }
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let first = conditions(&obs(Phase::Starting), None, None, Some(1), &[], "t1");
        let again = conditions(&obs(Phase::Starting), None, None, Some(1), &first, "t2");
        assert_eq!(first, again, "nothing changed, nothing to write");
        let active = conditions(&obs(Phase::Active), None, None, Some(1), &again, "t3");
        let ready = active.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!((ready.status, ready.last_transition_time.as_str()), (ConditionStatus::True, "t3"));
        let refs = active.iter().find(|c| c.type_ == "ReferencesResolved").unwrap();
        assert_eq!(refs.last_transition_time, "t1");
    }

    static NO_REBUILD: super::super::rebuild::Rebuild =
        super::super::rebuild::Rebuild { observed_request: None, from_volume: None, disk_replaced: false };

    fn inputs<'a>(old: &'a VpsServerStatus, obs: &'a Observation, reboot: &'a Reboot) -> Inputs<'a> {
        Inputs {
            id: 7,
            old,
            obs,
            vm_name: Some("srv-7"),
            resolved: None,
            address: None,
            vm_uid: Some("vm-uid"),
            root_volume_uid: None,
            reference_problem: None,
            reboot,
            force_stop_request: None,
            rebuild: &NO_REBUILD,
            restore: None,
            backup: None,
            generation: Some(3),
            now: "t1",
        }
    }

    #[test]
    fn the_next_status_follows_the_observation() {
        let old = VpsServerStatus::default();
        let mut starting = obs(Phase::Starting);
        starting.ipv4 = Some("192.0.2.7".into());
        let reboot = Reboot { observed_request: Some("r1".into()), from_instance: Some("uid-1".into()) };
        let new = next(&inputs(&old, &starting, &reboot));
        assert_eq!((new.id, new.phase, new.vm_name.as_deref()), (Some(7), Some(Phase::Starting), Some("srv-7")));
        assert_eq!((new.ip_address.as_deref(), new.observed_generation), (Some("192.0.2.7"), Some(3)));
        assert_eq!(new.observed_reboot_request.as_deref(), Some("r1"));
        assert_eq!(new.reboot_from_instance, None, "a reboot's instance is kept only while rebooting");
        let rebooting = obs(Phase::Rebooting);
        assert_eq!(next(&inputs(&old, &rebooting, &reboot)).reboot_from_instance.as_deref(), Some("uid-1"));
        assert_eq!(next(&inputs(&new, &starting, &reboot)), new, "the same world, the same status");
    }

    #[test]
    fn what_a_step_only_adds_waits_for_the_next_write() {
        let provisioning =
            VpsServerStatus { phase: Some(Phase::Provisioning), vm_uid: Some("vm".into()), ..Default::default() };
        let disk = VpsServerStatus { root_volume_uid: Some("dv".into()), ..provisioning.clone() };
        assert!(!worth_writing(&provisioning, &disk), "the disk's uid alone");
        let starting = VpsServerStatus { phase: Some(Phase::Starting), ..disk.clone() };
        assert!(worth_writing(&provisioning, &starting), "a new phase, with the uid");
        let addressed = VpsServerStatus { ip_address: Some("198.18.0.7".into()), ..starting.clone() };
        assert!(!worth_writing(&starting, &addressed), "addresses while starting");
        let active = VpsServerStatus { phase: Some(Phase::Active), ..addressed.clone() };
        assert!(worth_writing(&starting, &active));
        let moved = VpsServerStatus { ip_address: Some("198.18.0.8".into()), ..active.clone() };
        assert!(worth_writing(&active, &moved), "a changed address is written at once");
        let gone = VpsServerStatus { ip_address: None, ..addressed.clone() };
        assert!(worth_writing(&addressed, &gone), "so is a lost one");
        assert!(!worth_writing(&active, &active.clone()));
    }

    #[test]
    fn notices_tell_of_transitions_and_failed_backups() {
        let none = VpsServerStatus::default();
        let active = VpsServerStatus { phase: Some(Phase::Active), ..Default::default() };
        let stopped = VpsServerStatus { phase: Some(Phase::Stopped), ..Default::default() };
        assert!(notices(&none, &active, &obs(Phase::Active)).is_empty(), "a first status is no transition");
        let n = notices(&active, &stopped, &obs(Phase::Stopped));
        assert_eq!((n.len(), n[0].type_, n[0].reason.as_str()), (1, EventType::Normal, "Stopped"));
        let mut error = obs(Phase::Error);
        error.reason = "ErrorUnschedulable".into();
        let failed = VpsServerStatus { phase: Some(Phase::Error), ..Default::default() };
        let n = notices(&none, &failed, &error);
        assert_eq!((n[0].type_, n[0].reason.as_str()), (EventType::Warning, "ErrorUnschedulable"));
        let backup_failed = VpsServerStatus {
            conditions: conditions(
                &obs(Phase::Active),
                None,
                Some(&(ConditionStatus::False, "BackupFailed".into(), "m".into())),
                None,
                &[],
                "t",
            ),
            ..active.clone()
        };
        let n = notices(&active, &backup_failed, &obs(Phase::Active));
        assert_eq!((n.len(), n[0].reason.as_str()), (1, "BackupFailed"));
        assert!(notices(&backup_failed, &backup_failed, &obs(Phase::Active)).is_empty(), "told once");
    }

    #[test]
    fn a_write_is_remembered_until_the_cache_shows_it() {
        let written = Written::default();
        let starting = VpsServerStatus { phase: Some(Phase::Starting), ..Default::default() };
        assert_eq!(written.newer_than_cache("ns/a", Some("10")), None, "nothing written yet");
        written.record("ns/a", Some("12"), &starting);
        assert_eq!(written.newer_than_cache("ns/a", Some("10")), Some(starting.clone()), "the cache lags");
        assert_eq!(written.newer_than_cache("ns/b", Some("10")), None, "per server");
        assert_eq!(written.newer_than_cache("ns/a", Some("12")), None, "a cache at the write");
        written.cached("ns/a", Some("11"));
        assert_eq!(written.len(), 1, "an older version does not clear it");
        written.cached("ns/a", Some("13"));
        assert!(written.is_empty(), "forgotten once the cache shows it");
        written.record("ns/a", Some("not-a-number"), &starting);
        assert!(written.is_empty());
    }
}
