//! The servers of each account, ordered by id: kept current from the server watch (updated
//! just before the reflector store, so a write the store shows is in the index too). A list
//! walks one account's entries in order with their API status precomputed, and touches only
//! the servers of the page; a lookup by id is one map access.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use kube::runtime::watcher::Event;

use super::cache::server_id;
use super::view::api_status;
use crate::api::VpsServer;

/// One indexed server.
pub struct Entry {
    pub server: Arc<VpsServer>,
    /// The REST API's `status`, computed once per change.
    pub status: &'static str,
}

type ByNamespace = HashMap<String, BTreeMap<i64, Entry>>;
/// (namespace, name) → id.
type Ids = HashMap<(String, String), i64>;

#[derive(Default)]
struct Inner {
    by_namespace: ByNamespace,
    /// (namespace, name) → id, to move or drop an entry when its object changes.
    ids: Ids,
    /// The index being rebuilt during a relist.
    staging: Option<(ByNamespace, Ids)>,
}

/// Servers with an id that are not being deleted, by namespace and id.
#[derive(Default)]
pub struct ServerIndex {
    inner: RwLock<Inner>,
}

fn key(server: &VpsServer) -> (String, String) {
    (server.metadata.namespace.clone().unwrap_or_default(), server.metadata.name.clone().unwrap_or_default())
}

fn upsert(by_namespace: &mut ByNamespace, ids: &mut Ids, server: &VpsServer) {
    let key = key(server);
    if let Some(old) = ids.remove(&key)
        && let Some(entries) = by_namespace.get_mut(&key.0)
    {
        entries.remove(&old);
    }
    let Some(id) = server_id(server).filter(|_| server.metadata.deletion_timestamp.is_none()) else { return };
    let entry = Entry { server: Arc::new(server.clone()), status: api_status(server) };
    by_namespace.entry(key.0.clone()).or_default().insert(id, entry);
    ids.insert(key, id);
}

impl ServerIndex {
    /// Follows one watch event.
    pub fn apply(&self, event: &Event<VpsServer>) {
        let mut inner = self.inner.write().expect("index lock");
        let inner = &mut *inner;
        match event {
            Event::Apply(s) => upsert(&mut inner.by_namespace, &mut inner.ids, s),
            Event::Delete(s) => {
                if let Some(id) = inner.ids.remove(&key(s))
                    && let Some(entries) = inner.by_namespace.get_mut(s.metadata.namespace.as_deref().unwrap_or(""))
                {
                    entries.remove(&id);
                }
            }
            Event::Init => inner.staging = Some(Default::default()),
            Event::InitApply(s) => {
                if let Some((by_namespace, ids)) = &mut inner.staging {
                    upsert(by_namespace, ids, s);
                }
            }
            Event::InitDone => {
                if let Some((by_namespace, ids)) = inner.staging.take() {
                    inner.by_namespace = by_namespace;
                    inner.ids = ids;
                }
            }
        }
    }

    /// One server by namespace and id.
    pub fn get(&self, namespace: &str, id: i64) -> Option<Arc<VpsServer>> {
        let inner = self.inner.read().expect("index lock");
        inner.by_namespace.get(namespace)?.get(&id).map(|e| e.server.clone())
    }

    /// The matching servers of a namespace in id order: their total, and those of
    /// `skip..skip + take`.
    pub fn page(
        &self,
        namespace: &str,
        matches: impl Fn(&Entry) -> bool,
        skip: usize,
        take: usize,
    ) -> (usize, Vec<Arc<VpsServer>>) {
        let inner = self.inner.read().expect("index lock");
        let Some(entries) = inner.by_namespace.get(namespace) else { return (0, Vec::new()) };
        let mut count = 0;
        let mut page = Vec::with_capacity(take.min(1000));
        for entry in entries.values().filter(|e| matches(e)) {
            if count >= skip && page.len() < take {
                page.push(entry.server.clone());
            }
            count += 1;
        }
        (count, page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mk(ns: &str, name: &str, id: Option<i64>, phase: &str) -> VpsServer {
        let mut labels = serde_json::Map::new();
        if let Some(id) = id {
            labels.insert(crate::api::SERVER_ID_LABEL.into(), json!(id.to_string()));
        }
        serde_json::from_value(json!({
            "apiVersion": "vps.org/v1alpha1", "kind": "VpsServer",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"name": name, "plan": "p", "os": "o", "location": "l"},
            "status": {"phase": phase},
        }))
        .unwrap()
    }

    #[test]
    fn follows_the_watch_in_id_order() {
        let index = ServerIndex::default();
        index.apply(&Event::Init);
        index.apply(&Event::InitApply(mk("a", "x", Some(9), "Active")));
        index.apply(&Event::InitApply(mk("a", "y", Some(3), "Stopped")));
        index.apply(&Event::InitApply(mk("b", "z", Some(5), "Active")));
        index.apply(&Event::InitApply(mk("a", "no-id", None, "Active")));
        assert_eq!(index.page("a", |_| true, 0, 10).0, 0, "nothing before the relist is done");
        index.apply(&Event::InitDone);
        let (count, page) = index.page("a", |_| true, 0, 10);
        assert_eq!(count, 2);
        assert_eq!(page.iter().map(|s| server_id(s).unwrap()).collect::<Vec<_>>(), [3, 9]);
        let (count, page) = index.page("a", |e| e.status == "active", 0, 10);
        assert_eq!((count, page.len()), (1, 1));
        assert_eq!(index.page("a", |_| true, 1, 1).1.len(), 1);

        // An id appears later (the operator labels a kubectl-made server); a deletion starts.
        index.apply(&Event::Apply(mk("a", "no-id", Some(1), "Active")));
        assert_eq!(index.get("a", 1).unwrap().metadata.name.as_deref(), Some("no-id"));
        let mut deleting = mk("a", "x", Some(9), "Active");
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()));
        index.apply(&Event::Apply(deleting));
        assert!(index.get("a", 9).is_none());
        index.apply(&Event::Delete(mk("a", "y", Some(3), "Stopped")));
        assert_eq!(index.page("a", |_| true, 0, 10).0, 1);
        assert!(index.get("b", 5).is_some() && index.get("a", 5).is_none(), "ids are per namespace");
    }
}
