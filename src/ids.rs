//! Integer ids for servers and SSH keys: allocated once, unique in the cluster, never reused.
//!
//! The counters live in one ConfigMap (`vps-ids` in the system namespace). Allocation is a
//! compare-and-swap on its `resourceVersion`: read `next`, write `next + 1` with the version
//! read, retry on 409 Conflict. Any number of gateways and operators can allocate at once.
//! A crash between allocation and use leaves a gap, never a duplicate.
//!
//! An allocator may take a block of ids per compare-and-swap ([`IdAllocator::with_block`]) and
//! hand them out from memory: parallel allocations in one process then cost one write per
//! block instead of racing each other on the counter. What is left of a block when the
//! process stops is a gap.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};

/// Name of the ConfigMap holding the counters.
pub const COUNTER_CONFIGMAP: &str = "vps-ids";

/// What is being counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IdKind {
    Server,
    SshKey,
    Action,
    Backup,
}

impl IdKind {
    fn key(self) -> &'static str {
        match self {
            IdKind::Server => "next-server-id",
            IdKind::SshKey => "next-ssh-key-id",
            IdKind::Action => "next-action-id",
            IdKind::Backup => "next-backup-id",
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
    /// Ids taken per compare-and-swap.
    block: i64,
    /// What is left of the current block of each kind.
    left: Arc<tokio::sync::Mutex<HashMap<IdKind, Range<i64>>>>,
}

impl IdAllocator {
    /// An allocator taking one id per compare-and-swap.
    pub fn new(client: Client, namespace: &str) -> Self {
        IdAllocator { api: Api::namespaced(client, namespace), block: 1, left: Arc::default() }
    }

    /// Takes `block` ids per compare-and-swap (at least 1).
    pub fn with_block(mut self, block: i64) -> Self {
        self.block = block.max(1);
        self
    }

    /// A new id of `kind`, never handed out before.
    pub async fn allocate(&self, kind: IdKind) -> Result<i64, IdError> {
        let mut left = self.left.lock().await;
        let range = left.entry(kind).or_insert(0..0);
        if let Some(id) = range.next() {
            return Ok(id);
        }
        let first = self.take(kind, self.block).await?;
        *range = first + 1..first + self.block;
        Ok(first)
    }

    /// Moves the counter of `kind` on by `count`; returns the first of the ids taken.
    async fn take(&self, kind: IdKind, count: i64) -> Result<i64, IdError> {
        const ATTEMPTS: u32 = 100;
        for attempt in 0..ATTEMPTS {
            let Some(mut counters) = self.api.get_opt(COUNTER_CONFIGMAP).await? else {
                // First allocation in this cluster: create the counters, with this id taken.
                let mut data = BTreeMap::new();
                data.insert(kind.key().to_string(), (1 + count).to_string());
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
            data.insert(kind.key().to_string(), (next + count).to_string());
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
