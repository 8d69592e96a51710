//! Building the server's status from an observation, keeping condition transition times
//! stable so that an unchanged world means an unchanged status (and no write).

use crate::api::{Condition, ConditionStatus, Phase};

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
}
