//! The gateway's store of servers, kept from the server watch: every object by namespace and
//! name (what a write waits for), and each account's live servers ordered by id with their
//! REST status computed and counted. A list walks one account's entries in order and touches
//! only the servers of its page; a lookup by id is one map access. Each object is held once,
//! behind an `Arc` that every view shares, and its JSON is rendered at most once per change.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use super::view::{Rendered, api_status};
use crate::api::{Phase, VpsServer};
use crate::watch_cache::Index;

/// One numbered server of an account.
pub struct Entry {
    pub server: Arc<VpsServer>,
    /// The REST API's `status`, computed once per change.
    pub status: Phase,
    /// Its JSON and the catalog version it was rendered for.
    rendered: Mutex<Option<(u64, Rendered)>>,
}

impl Entry {
    fn new(server: Arc<VpsServer>) -> Entry {
        Entry { status: api_status(&server), server, rendered: Mutex::new(None) }
    }

    /// The server's JSON for catalog `version`: rendered by `render` once, then reused until
    /// the server or the catalog changes.
    pub fn rendered(&self, version: u64, render: impl FnOnce(&VpsServer) -> Option<Rendered>) -> Option<Rendered> {
        let mut slot = self.rendered.lock().expect("rendered lock");
        if let Some((v, r)) = &*slot
            && *v == version
        {
            return Some(r.clone());
        }
        let r = render(&self.server)?;
        *slot = Some((version, r.clone()));
        Some(r)
    }
}

/// The live (not deleting) servers of one account namespace.
#[derive(Default)]
struct Account {
    by_id: BTreeMap<i64, Entry>,
    /// Servers without an id of their own yet (made with kubectl, before the operator numbers
    /// them; or claiming by label an id another server holds).
    unnumbered: HashMap<String, Arc<VpsServer>>,
    /// How many of `by_id` have each status.
    statuses: HashMap<Phase, usize>,
}

impl Account {
    fn add(&mut self, server: Arc<VpsServer>) {
        if server.metadata.deletion_timestamp.is_some() {
            return;
        }
        let name = server.metadata.name.clone().unwrap_or_default();
        let Some(id) = server.id() else {
            self.unnumbered.insert(name, server);
            return;
        };
        // An id is the server's whose status records it; a label's claim never displaces it.
        let recorded = |s: &VpsServer| s.status.as_ref().and_then(|st| st.id) == Some(id);
        if let Some(holder) = self.by_id.get(&id)
            && holder.server.metadata.name.as_deref() != Some(name.as_str())
            && (recorded(&holder.server) || !recorded(&server))
        {
            self.unnumbered.insert(name, server);
            return;
        }
        let entry = Entry::new(server);
        *self.statuses.entry(entry.status).or_default() += 1;
        if let Some(displaced) = self.by_id.insert(id, entry) {
            self.uncount(displaced.status);
            if displaced.server.metadata.name.as_deref() != Some(name.as_str()) {
                let displaced_name = displaced.server.metadata.name.clone().unwrap_or_default();
                self.unnumbered.insert(displaced_name, displaced.server);
            }
        }
    }

    fn remove(&mut self, server: &VpsServer) {
        let name = server.metadata.name.as_deref().unwrap_or_default();
        if let Some(id) = server.id()
            && self.by_id.get(&id).is_some_and(|e| e.server.metadata.name.as_deref() == Some(name))
            && let Some(entry) = self.by_id.remove(&id)
        {
            self.uncount(entry.status);
        }
        self.unnumbered.remove(name);
    }

    fn uncount(&mut self, status: Phase) {
        if let Some(n) = self.statuses.get_mut(&status) {
            *n = n.saturating_sub(1);
        }
    }
}

/// Every server the index holds; a relist builds a new one.
#[derive(Default)]
pub struct Snapshot {
    /// Every server, deleting ones included, by (namespace, name).
    objects: HashMap<(String, String), Arc<VpsServer>>,
    accounts: HashMap<String, Account>,
}

fn key(server: &VpsServer) -> (String, String) {
    (server.metadata.namespace.clone().unwrap_or_default(), server.metadata.name.clone().unwrap_or_default())
}

impl Snapshot {
    fn upsert(&mut self, server: VpsServer) {
        let server = Arc::new(server);
        let key = key(&server);
        let namespace = key.0.clone();
        if let Some(old) = self.objects.insert(key, server.clone())
            && let Some(account) = self.accounts.get_mut(&namespace)
        {
            account.remove(&old);
        }
        self.accounts.entry(namespace).or_default().add(server);
    }

    fn delete(&mut self, server: &VpsServer) {
        let key = key(server);
        if let Some(old) = self.objects.remove(&key)
            && let Some(account) = self.accounts.get_mut(&key.0)
        {
            account.remove(&old);
        }
    }
}

/// Which servers of an account a list asks for.
#[derive(Clone, Copy, Default)]
pub struct Filter<'a> {
    /// A REST status.
    pub status: Option<Phase>,
    /// A location code.
    pub location: Option<&'a str>,
}

impl Filter<'_> {
    fn matches(&self, e: &Entry) -> bool {
        self.status.is_none_or(|s| e.status == s) && self.location.is_none_or(|l| e.server.spec.location == l)
    }
}

/// The servers the gateway knows, kept from a server watch ([`crate::watch_cache::Feed`]).
#[derive(Default)]
pub struct ServerIndex {
    live: RwLock<Snapshot>,
}

impl Index<VpsServer> for ServerIndex {
    type Staging = Snapshot;

    fn upsert(&self, server: VpsServer) {
        self.live.write().expect("index lock").upsert(server);
    }

    fn remove(&self, server: &VpsServer) {
        self.live.write().expect("index lock").delete(server);
    }

    fn stage(&self, staging: &mut Snapshot, server: VpsServer) {
        staging.upsert(server);
    }

    fn replace(&self, staging: Snapshot) {
        *self.live.write().expect("index lock") = staging;
    }
}

impl ServerIndex {
    /// The cached object of this namespace and name, also while it is being deleted.
    pub fn object(&self, namespace: &str, name: &str) -> Option<Arc<VpsServer>> {
        let live = self.live.read().expect("index lock");
        live.objects.get(&(namespace.to_string(), name.to_string())).cloned()
    }

    /// One live server by namespace and id.
    pub fn get(&self, namespace: &str, id: i64) -> Option<Arc<VpsServer>> {
        self.get_with(namespace, id, |e| e.server.clone())
    }

    /// `f` of one live server's entry.
    pub fn get_with<T>(&self, namespace: &str, id: i64, f: impl FnOnce(&Entry) -> T) -> Option<T> {
        let live = self.live.read().expect("index lock");
        live.accounts.get(namespace)?.by_id.get(&id).map(f)
    }

    /// Every live server of a namespace, numbered or not.
    pub fn servers_of(&self, namespace: &str) -> Vec<Arc<VpsServer>> {
        let live = self.live.read().expect("index lock");
        let Some(account) = live.accounts.get(namespace) else { return Vec::new() };
        account.by_id.values().map(|e| e.server.clone()).chain(account.unnumbered.values().cloned()).collect()
    }

    /// The numbered servers of a namespace matching `filter`, in id order: how many there
    /// are, and `f` of those of `skip..skip + take`. Without a location filter the total is a
    /// counter and the walk stops at the end of the page.
    pub fn page<T>(
        &self,
        namespace: &str,
        filter: Filter<'_>,
        skip: usize,
        take: usize,
        mut f: impl FnMut(&Entry) -> T,
    ) -> (usize, Vec<T>) {
        let live = self.live.read().expect("index lock");
        let Some(account) = live.accounts.get(namespace) else { return (0, Vec::new()) };
        let matching = account.by_id.values().filter(|e| filter.matches(e));
        if filter.location.is_none() {
            let count = match filter.status {
                None => account.by_id.len(),
                Some(s) => account.statuses.get(&s).copied().unwrap_or(0),
            };
            return (count, matching.skip(skip).take(take).map(f).collect());
        }
        let mut count = 0;
        let mut page = Vec::with_capacity(take.min(1000));
        for entry in matching {
            if count >= skip && page.len() < take {
                page.push(f(entry));
            }
            count += 1;
        }
        (count, page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::watcher::Event;
    use serde_json::json;

    fn mk(ns: &str, name: &str, id: Option<i64>, phase: &str) -> VpsServer {
        let mut labels = serde_json::Map::new();
        if let Some(id) = id {
            labels.insert(crate::api::SERVER_ID_LABEL.into(), json!(id.to_string()));
        }
        serde_json::from_value(json!({
            "apiVersion": "vps.org/v1alpha1", "kind": "VpsServer",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"name": name, "plan": "p", "os": "o", "location": if id == Some(3) { "eu" } else { "us" }},
            "status": {"phase": phase},
        }))
        .unwrap()
    }

    fn ids(servers: &[Arc<VpsServer>]) -> Vec<i64> {
        servers.iter().map(|s| s.id().unwrap()).collect()
    }

    /// `page` of the servers themselves.
    fn list(
        index: &ServerIndex,
        ns: &str,
        filter: Filter<'_>,
        skip: usize,
        take: usize,
    ) -> (usize, Vec<Arc<VpsServer>>) {
        index.page(ns, filter, skip, take, |e| e.server.clone())
    }

    const ALL: Filter<'static> = Filter { status: None, location: None };

    #[test]
    fn follows_the_watch_in_id_order() {
        let index = Arc::new(ServerIndex::default());
        let (mut feed, ready) = crate::watch_cache::feed(index.clone());
        let mut apply = |event| feed.apply(event);
        apply(Event::Init);
        apply(Event::InitApply(mk("a", "x", Some(9), "Active")));
        apply(Event::InitApply(mk("a", "y", Some(3), "Stopped")));
        apply(Event::InitApply(mk("b", "z", Some(5), "Active")));
        apply(Event::InitApply(mk("a", "no-id", None, "Active")));
        assert!(!ready.is_ready());
        assert_eq!(list(&index, "a", ALL, 0, 10).0, 0, "nothing before the relist is done");
        apply(Event::InitDone);
        assert!(ready.is_ready());
        let (count, page) = list(&index, "a", ALL, 0, 10);
        assert_eq!((count, ids(&page)), (2, vec![3, 9]));
        let active = Filter { status: Some(Phase::Active), location: None };
        assert_eq!((list(&index, "a", active, 0, 10).0, ids(&list(&index, "a", active, 0, 10).1)), (1, vec![9]));
        let eu = Filter { status: None, location: Some("eu") };
        assert_eq!((list(&index, "a", eu, 0, 10).0, ids(&list(&index, "a", eu, 0, 10).1)), (1, vec![3]));
        assert_eq!(ids(&list(&index, "a", ALL, 1, 1).1), vec![9]);
        assert_eq!(index.servers_of("a").len(), 3, "the unnumbered server counts for credit");

        // An id appears later (the operator numbers a kubectl-made server); a deletion starts.
        apply(Event::Apply(mk("a", "no-id", Some(1), "Active")));
        assert_eq!(index.get("a", 1).unwrap().metadata.name.as_deref(), Some("no-id"));
        assert_eq!(index.servers_of("a").len(), 3);
        assert_eq!(list(&index, "a", active, 0, 10).0, 2);
        let mut deleting = mk("a", "x", Some(9), "Active");
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()));
        apply(Event::Apply(deleting));
        assert!(index.get("a", 9).is_none());
        assert!(index.object("a", "x").is_some(), "a deleting object is still an object");
        assert_eq!(list(&index, "a", active, 0, 10).0, 1, "the status count follows");
        // A status change moves the count.
        apply(Event::Apply(mk("a", "y", Some(3), "Active")));
        assert_eq!(list(&index, "a", active, 0, 10).0, 2);
        apply(Event::Delete(mk("a", "y", Some(3), "Active")));
        assert_eq!(list(&index, "a", ALL, 0, 10).0, 1);
        assert_eq!(list(&index, "a", active, 0, 10).0, 1);
        assert!(index.object("a", "y").is_none());
        assert!(index.get("b", 5).is_some() && index.get("a", 5).is_none(), "ids are per namespace");

        // A server whose label claims the id another server's status records gets nowhere.
        let mut real = mk("a", "real", Some(20), "Active");
        real.status.as_mut().unwrap().id = Some(20);
        apply(Event::Apply(real));
        apply(Event::Apply(mk("a", "forged", Some(20), "Stopped")));
        assert_eq!(index.get("a", 20).unwrap().metadata.name.as_deref(), Some("real"), "never displaced");
        apply(Event::Delete(mk("a", "forged", Some(20), "Stopped")));
        assert_eq!(index.get("a", 20).unwrap().metadata.name.as_deref(), Some("real"), "its deletion changes nothing");
        // The status wins over a label that says otherwise.
        let mut relabeled = mk("a", "real", Some(21), "Active");
        relabeled.status.as_mut().unwrap().id = Some(20);
        apply(Event::Apply(relabeled));
        assert!(index.get("a", 21).is_none() && index.get("a", 20).is_some());

        // A relist replaces everything.
        feed.load([mk("b", "z", Some(5), "Active")]);
        assert_eq!(list(&index, "a", ALL, 0, 10).0, 0);
        assert!(index.object("a", "x").is_none() && index.get("b", 5).is_some());
    }
}

#[cfg(test)]
mod rendering {
    use super::*;
    use axum::body::Bytes;

    #[test]
    fn renders_once_per_catalog_version() {
        let server: VpsServer = serde_json::from_value(serde_json::json!({
            "apiVersion": "vps.org/v1alpha1", "kind": "VpsServer",
            "metadata": {"name": "s", "namespace": "a"},
            "spec": {"name": "s", "plan": "p", "os": "o", "location": "l"},
        }))
        .unwrap();
        let entry = Entry::new(Arc::new(server));
        let calls = std::cell::Cell::new(0);
        let render = |v: &str| {
            let calls = &calls;
            let v = v.to_string();
            move |_: &VpsServer| {
                calls.set(calls.get() + 1);
                Some(Rendered { detail: Bytes::from(v.clone()), item: Bytes::from(v) })
            }
        };
        assert_eq!(entry.rendered(1, render("one")).unwrap().detail, "one");
        assert_eq!(entry.rendered(1, render("two")).unwrap().detail, "one", "reused");
        assert_eq!(entry.rendered(2, render("two")).unwrap().item, "two", "a new catalog renders again");
        assert_eq!(calls.get(), 2);
        assert!(entry.rendered(3, |_| None).is_none());
    }
}
