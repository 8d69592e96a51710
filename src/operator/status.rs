//! Building the server's status from an observation, keeping condition transition times
//! stable so that an unchanged world means an unchanged status (and no write).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::api::{Condition, ConditionStatus, Phase, VpsServerStatus};

use super::phase::Observation;

/// A condition's status, CamelCase reason and message.
pub type Verdict = (ConditionStatus, String, String);

/// The conditions for an observation: `Ready` (the server is running and reachable),
/// `ReferencesResolved` (plan, image, location and key exist) and, while backups are
/// enabled, `BackupsSucceeded` (the newest backup snapshot did not fail).
pub fn conditions(
    obs: &Observation,
    reference_ok: bool,
    backups: Option<&Verdict>,
    generation: Option<i64>,
    old: &[Condition],
    now: &str,
) -> Vec<Condition> {
    let ready = obs.phase == Phase::Active;
    let refs = if reference_ok {
        (ConditionStatus::True, "Resolved".to_string(), "Plan, image, location and SSH key exist".to_string())
    } else {
        (ConditionStatus::False, obs.reason.clone(), obs.message.clone())
    };
    let ready_c =
        (if ready { ConditionStatus::True } else { ConditionStatus::False }, obs.reason.clone(), obs.message.clone());
    [("Ready", Some(ready_c)), ("ReferencesResolved", Some(refs)), ("BackupsSucceeded", backups.cloned())]
        .into_iter()
        .filter_map(|(type_, verdict)| verdict.map(|v| (type_, v)))
        .map(|(type_, (status, reason, message))| {
            let previous = old.iter().find(|c| c.type_ == type_);
            let last_transition_time = match previous {
                Some(p) if p.status == status => p.last_transition_time.clone(),
                _ => now.to_string(),
            };
            Condition {
                type_: type_.into(),
                status,
                reason,
                message,
                last_transition_time,
                observed_generation: generation,
            }
        })
        .collect()
}

/// The last status the operator wrote to each server, until its cache of servers shows it.
///
/// A reconcile woken by a VM or instance event may see a cached server from before the
/// operator's own last status write. Compared with that, the status it computes differs, and
/// it would write the same status again (and publish the same Event again).
#[derive(Default)]
pub struct Written {
    servers: Mutex<HashMap<Box<str>, LastWrite>>,
}

/// A status write: the resourceVersion it produced, a digest and the phase it wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LastWrite {
    resource_version: u64,
    digest: u64,
    pub phase: Option<Phase>,
}

impl LastWrite {
    /// Whether `status` is what this write wrote.
    pub fn wrote(&self, status: &VpsServerStatus) -> bool {
        self.digest == digest(status)
    }
}

fn digest(status: &VpsServerStatus) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_vec(status).expect("a status serializes").hash(&mut h);
    h.finish()
}

impl Written {
    /// The operator's last write to server `key` when the cached server (at `cached_version`)
    /// does not show it yet; forgets the write once the cache has caught up.
    pub fn newer_than_cache(&self, key: &str, cached_version: Option<&str>) -> Option<LastWrite> {
        let mut servers = self.servers.lock().expect("lock");
        let last = *servers.get(key)?;
        match cached_version.and_then(|v| v.parse::<u64>().ok()) {
            Some(cached) if cached < last.resource_version => Some(last),
            _ => {
                servers.remove(key);
                None
            }
        }
    }

    /// Records a status write that produced `resource_version`.
    pub fn record(&self, key: &str, resource_version: Option<&str>, status: &VpsServerStatus) {
        let mut servers = self.servers.lock().expect("lock");
        match resource_version.and_then(|v| v.parse::<u64>().ok()) {
            Some(resource_version) => {
                let write = LastWrite { resource_version, digest: digest(status), phase: status.phase };
                servers.insert(key.into(), write);
            }
            // Not a number: nothing can be told about the cache; compare with it alone.
            None => {
                servers.remove(key);
            }
        }
    }

    /// Forgets a server that is gone.
    pub fn forget(&self, key: &str) {
        self.servers.lock().expect("lock").remove(key);
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
        let first = conditions(&obs(Phase::Starting), true, None, Some(1), &[], "t1");
        let again = conditions(&obs(Phase::Starting), true, None, Some(1), &first, "t2");
        assert_eq!(first, again, "nothing changed, nothing to write");
        let active = conditions(&obs(Phase::Active), true, None, Some(1), &again, "t3");
        let ready = active.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!((ready.status, ready.last_transition_time.as_str()), (ConditionStatus::True, "t3"));
        let refs = active.iter().find(|c| c.type_ == "ReferencesResolved").unwrap();
        assert_eq!(refs.last_transition_time, "t1");
    }

    #[test]
    fn a_write_is_remembered_until_the_cache_shows_it() {
        let written = Written::default();
        let starting = VpsServerStatus { phase: Some(Phase::Starting), ..Default::default() };
        let active = VpsServerStatus { phase: Some(Phase::Active), ..Default::default() };
        assert_eq!(written.newer_than_cache("ns/a", Some("10")), None, "nothing written yet");
        written.record("ns/a", Some("12"), &starting);
        let last = written.newer_than_cache("ns/a", Some("10")).expect("the cache lags");
        assert!(last.wrote(&starting) && !last.wrote(&active));
        assert_eq!(last.phase, Some(Phase::Starting));
        assert_eq!(written.newer_than_cache("ns/b", Some("10")), None, "per server");
        assert_eq!(written.newer_than_cache("ns/a", Some("12")), None, "the cache caught up");
        assert_eq!(written.newer_than_cache("ns/a", Some("10")), None, "and the write is forgotten");
        written.record("ns/a", Some("not-a-number"), &active);
        assert_eq!(written.newer_than_cache("ns/a", Some("1")), None);
    }
}
