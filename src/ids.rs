//! Integer ids for servers and SSH keys: allocated once, unique in the cluster, never reused.
//!
//! The counters live in one ConfigMap (`vps-ids` in the system namespace). Allocation is a
//! compare-and-swap on its `resourceVersion`: read `next`, write `next + 1` with the version
//! read, retry on 409 Conflict. Any number of gateways and operators can allocate at once.
//! A crash between allocation and use leaves a gap, never a duplicate.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};

/// Name of the ConfigMap holding the counters.
pub const COUNTER_CONFIGMAP: &str = "vps-ids";

/// What is being counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdKind {
    Server,
    SshKey,
}

impl IdKind {
    fn key(self) -> &'static str {
        match self {
            IdKind::Server => "next-server-id",
            IdKind::SshKey => "next-ssh-key-id",
        }
    }
}

/// Errors of the allocator.
#[derive(Debug, thiserror::Error)]
pub enum IdError {
    #[error("Kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
    #[error("counter {0} in ConfigMap {COUNTER_CONFIGMAP} is not an integer")]
    Corrupt(&'static str),
    #[error("gave up allocating an id after {0} conflicting attempts")]
    Contended(u32),
}

/// Allocates ids from the counters in `namespace`.
#[derive(Clone)]
pub struct IdAllocator {
    api: Api<ConfigMap>,
}

impl IdAllocator {
    pub fn new(client: Client, namespace: &str) -> Self {
        IdAllocator { api: Api::namespaced(client, namespace) }
    }

    /// A new id of `kind`, never handed out before.
    pub async fn allocate(&self, kind: IdKind) -> Result<i64, IdError> {
        const ATTEMPTS: u32 = 100;
        for attempt in 0..ATTEMPTS {
            let Some(mut counters) = self.api.get_opt(COUNTER_CONFIGMAP).await? else {
                // First allocation in this cluster: create the counters, with this id taken.
                let mut data = BTreeMap::new();
                data.insert(kind.key().to_string(), "2".to_string());
                let cm = ConfigMap {
                    metadata: ObjectMeta { name: Some(COUNTER_CONFIGMAP.into()), ..Default::default() },
                    data: Some(data),
                    ..Default::default()
                };
                match self.api.create(&PostParams::default(), &cm).await {
                    Ok(_) => return Ok(1),
                    Err(kube::Error::Api(e)) if e.code == 409 => continue,
                    Err(e) => return Err(e.into()),
                }
            };
            let data = counters.data.get_or_insert_with(BTreeMap::new);
            let next = match data.get(kind.key()) {
                Some(v) => v.parse::<i64>().map_err(|_| IdError::Corrupt(kind.key()))?,
                None => 1,
            };
            data.insert(kind.key().to_string(), (next + 1).to_string());
            // `replace` sends the resourceVersion we read: the write fails with 409 if anyone
            // allocated in between.
            match self.api.replace(COUNTER_CONFIGMAP, &PostParams::default(), &counters).await {
                Ok(_) => return Ok(next),
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    tokio::time::sleep(Duration::from_millis(u64::from(attempt.min(20)) * 5)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(IdError::Contended(ATTEMPTS))
    }
}
