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
