//! A compact cache fed by a watch: per object only a small value derived from it (see
//! [`super::observed`]), keyed by `namespace/name`. kube-runtime's reflector stores keep the
//! whole typed object and a key with four strings; at 10,000 servers that was most of the
//! operator's memory. The relist bookkeeping is [`crate::watch_cache`]'s.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use kube::Resource;

use crate::watch_cache::{self, Feed, Index, Ready};

type Objects<T> = Arc<RwLock<HashMap<Box<str>, T>>>;

/// The read side: cheap to clone, shared by every reconcile.
pub struct Cache<T> {
    objects: Objects<T>,
    ready: Ready,
}

impl<T> Clone for Cache<T> {
    fn clone(&self) -> Self {
        Cache { objects: self.objects.clone(), ready: self.ready.clone() }
    }
}

/// The index a watch feeds: `derive(object)` under the object's key.
pub struct Derived<K, T> {
    objects: Objects<T>,
    derive: fn(&K) -> T,
}

/// The write side, owned by the watch that feeds the cache.
pub type CacheFeed<K, T> = Feed<K, Derived<K, T>>;

/// An empty cache whose entries are `derive(object)`.
pub fn cache<K: Resource, T: Send + Sync>(derive: fn(&K) -> T) -> (Cache<T>, CacheFeed<K, T>) {
    let objects = Objects::default();
    let (feed, ready) = watch_cache::feed(Arc::new(Derived { objects: objects.clone(), derive }));
    (Cache { objects, ready }, feed)
}

/// The cache key of an object.
pub fn key(namespace: &str, name: &str) -> Box<str> {
    format!("{namespace}/{name}").into_boxed_str()
}

/// The cache key of an object.
pub fn key_of(object: &impl Resource) -> Box<str> {
    let meta = object.meta();
    key(meta.namespace.as_deref().unwrap_or_default(), meta.name.as_deref().unwrap_or_default())
}

impl<K: Resource, T: Send + Sync> Index<K> for Derived<K, T> {
    type Staging = HashMap<Box<str>, T>;

    fn upsert(&self, object: K) {
        let value = (self.derive)(&object);
        self.objects.write().expect("cache lock").insert(key_of(&object), value);
    }

    fn remove(&self, object: &K) {
        self.objects.write().expect("cache lock").remove(&key_of(object));
    }

    fn stage(&self, staging: &mut Self::Staging, object: K) {
        staging.insert(key_of(&object), (self.derive)(&object));
    }

    fn replace(&self, mut staging: Self::Staging) {
        staging.shrink_to_fit();
        *self.objects.write().expect("cache lock") = staging;
    }
}

impl<T: Clone> Cache<T> {
    /// The entry of the object `namespace/name`.
    pub fn get(&self, namespace: &str, name: &str) -> Option<T> {
        self.objects.read().expect("cache lock").get(&*key(namespace, name)).cloned()
    }
}

impl<T> Cache<T> {
    /// `f` of the entry under `key` (as [`key`] makes it).
    pub fn with<R>(&self, key: &str, f: impl FnOnce(&T) -> R) -> Option<R> {
        self.objects.read().expect("cache lock").get(key).map(f)
    }

    /// `f` of every entry (under the read lock: keep it quick).
    pub fn for_each(&self, mut f: impl FnMut(&T)) {
        self.objects.read().expect("cache lock").values().for_each(&mut f);
    }

    /// Every key.
    pub fn keys(&self) -> Vec<Box<str>> {
        self.objects.read().expect("cache lock").keys().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.objects.read().expect("cache lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The signal of the first complete list.
    pub fn ready(&self) -> Ready {
        self.ready.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::watcher::Event;

    fn cm(ns: &str, name: &str, value: &str) -> ConfigMap {
        let mut cm = ConfigMap::default();
        cm.metadata.namespace = Some(ns.into());
        cm.metadata.name = Some(name.into());
        cm.data = Some([("v".to_string(), value.to_string())].into());
        cm
    }

    fn value(cm: &ConfigMap) -> String {
        cm.data.as_ref().and_then(|d| d.get("v")).cloned().unwrap_or_default()
    }

    #[tokio::test]
    async fn entries_are_derived_and_keyed_by_namespace_and_name() {
        let (cache, mut feed) = cache::<ConfigMap, String>(value);
        feed.load([cm("a", "x", "1"), cm("b", "x", "2")]);
        cache.ready().wait().await;
        assert_eq!((cache.get("a", "x"), cache.get("b", "x")), (Some("1".into()), Some("2".into())));
        feed.apply(Event::Apply(cm("a", "x", "3")));
        feed.apply(Event::Delete(cm("b", "x", "2")));
        assert_eq!((cache.get("a", "x"), cache.get("b", "x"), cache.len()), (Some("3".into()), None, 1));
        assert_eq!(cache.with("a/x", |v| v.len()), Some(1));
        assert_eq!(cache.keys(), vec![Box::from("a/x")]);
    }
}
