//! Leader election on a `coordination.k8s.io` Lease, with controller-runtime's timings: the
//! lease lasts 15 s, the leader renews it every 2 s and gives leadership up when it could
//! not renew it for 10 s (the renew deadline), and a standby takes over an expired lease.
//! Only the leader reconciles; every replica keeps its caches warm, so a new leader starts
//! at once. On shutdown the leader releases the lease, so its successor need not wait.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;

/// Where the lease is and who this replica is.
#[derive(Clone, Debug)]
pub struct Election {
    pub namespace: String,
    pub lease: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl Election {
    /// controller-runtime's timings.
    pub fn new(namespace: &str, lease: &str, identity: &str) -> Election {
        Election {
            namespace: namespace.into(),
            lease: lease.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// What a look at the lease decides (pure).
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Ours: renew it.
    Renew,
    /// Free or expired: take it.
    Take,
    /// Someone else's, still valid.
    Wait,
}

/// Whether `identity` may hold `lease` at `now`.
pub fn decide(lease: &Lease, identity: &str, now: Timestamp, default_duration: Duration) -> Decision {
    let spec = lease.spec.clone().unwrap_or_default();
    match spec.holder_identity.as_deref() {
        Some(holder) if holder == identity => Decision::Renew,
        None | Some("") => Decision::Take,
        Some(_) => {
            let duration =
                spec.lease_duration_seconds.map_or(default_duration, |s| Duration::from_secs(s.max(0) as u64));
            let renewed = spec.renew_time.map(|t| t.0).unwrap_or(Timestamp::UNIX_EPOCH);
            let expires = renewed + jiff::SignedDuration::try_from(duration).unwrap_or_default();
            if expires < now { Decision::Take } else { Decision::Wait }
        }
    }
}

/// Keeps trying to hold the lease, forever; `leader` says whether this replica holds it.
/// When it could not renew for the renew deadline, it says so and keeps trying.
pub async fn campaign(client: Client, election: Election, leader: watch::Sender<bool>) {
    let api: Api<Lease> = Api::namespaced(client, &election.namespace);
    let mut last_renewed: Option<tokio::time::Instant> = None;
    loop {
        match try_hold(&api, &election).await {
            Ok(true) => {
                if !*leader.borrow() {
                    tracing::info!(identity = election.identity, lease = election.lease, "Became the leader");
                }
                last_renewed = Some(tokio::time::Instant::now());
                leader.send_replace(true);
            }
            Ok(false) => {
                if *leader.borrow() {
                    tracing::warn!(identity = election.identity, "Another replica holds the lease now");
                }
                last_renewed = None;
                leader.send_replace(false);
            }
            Err(e) => {
                tracing::warn!(identity = election.identity, "Could not renew the lease: {e}");
                if last_renewed.is_some_and(|t| t.elapsed() > election.renew_deadline) {
                    tracing::warn!(identity = election.identity, "Renew deadline passed: no longer the leader");
                    last_renewed = None;
                    leader.send_replace(false);
                }
            }
        }
        tokio::time::sleep(election.retry_period).await;
    }
}

/// One attempt: renews or takes the lease when this replica may hold it; whether it does.
async fn try_hold(api: &Api<Lease>, election: &Election) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let duration_secs = election.lease_duration.as_secs() as i32;
    let Some(mut lease) = api.get_opt(&election.lease).await? else {
        let lease = Lease {
            metadata: ObjectMeta { name: Some(election.lease.clone()), ..Default::default() },
            spec: Some(k8s_openapi::api::coordination::v1::LeaseSpec {
                holder_identity: Some(election.identity.clone()),
                lease_duration_seconds: Some(duration_secs),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let decision = decide(&lease, &election.identity, now, election.lease_duration);
    let spec = lease.spec.get_or_insert_default();
    match decision {
        Decision::Wait => return Ok(false),
        Decision::Renew => {}
        Decision::Take => {
            spec.holder_identity = Some(election.identity.clone());
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
    }
    spec.renew_time = Some(MicroTime(now));
    spec.lease_duration_seconds = Some(duration_secs);
    // `replace` sends the resourceVersion read: a rival's write in between makes it a 409.
    match api.replace(&election.lease, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Gives the lease up, if this replica holds it (on shutdown).
pub async fn release(client: Client, election: &Election) {
    let api: Api<Lease> = Api::namespaced(client, &election.namespace);
    let Ok(Some(mut lease)) = api.get_opt(&election.lease).await else { return };
    let spec = lease.spec.get_or_insert_default();
    if spec.holder_identity.as_deref() != Some(election.identity.as_str()) {
        return;
    }
    spec.holder_identity = None;
    spec.renew_time = Some(MicroTime(Timestamp::UNIX_EPOCH));
    match api.replace(&election.lease, &PostParams::default(), &lease).await {
        Ok(_) => tracing::info!(identity = election.identity, "Released the lease"),
        Err(e) => tracing::warn!(identity = election.identity, "Could not release the lease: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;

    fn lease(holder: Option<&str>, renewed_secs_ago: i64, now: Timestamp) -> Lease {
        Lease {
            metadata: Default::default(),
            spec: Some(LeaseSpec {
                holder_identity: holder.map(String::from),
                lease_duration_seconds: Some(15),
                renew_time: Some(MicroTime(now - jiff::SignedDuration::from_secs(renewed_secs_ago))),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_lease_is_taken_only_when_free_or_expired() {
        let now = Timestamp::now();
        let d = Duration::from_secs(15);
        assert_eq!(decide(&lease(Some("me"), 5, now), "me", now, d), Decision::Renew);
        assert_eq!(decide(&lease(Some("other"), 5, now), "me", now, d), Decision::Wait);
        assert_eq!(decide(&lease(Some("other"), 16, now), "me", now, d), Decision::Take, "expired");
        assert_eq!(decide(&lease(None, 1, now), "me", now, d), Decision::Take, "released");
        assert_eq!(decide(&lease(Some(""), 1, now), "me", now, d), Decision::Take);
    }
}
