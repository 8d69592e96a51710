//! A compact cache fed by a watch: per object only a small value derived from it (see
//! [`super::observed`]), keyed by `namespace/name`. kube-runtime's reflector stores keep the
//! whole typed object and a key with four strings; at 10,000 servers that was most of the
//! operator's memory.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use kube::Resource;
use kube::runtime::watcher;
use tokio::sync::watch;

/// The read side: cheap to clone, shared by every reconcile.
pub struct Cache<T> {
    objects: Arc<RwLock<HashMap<Box<str>, T>>>,
    ready: watch::Receiver<bool>,
}

impl<T> Clone for Cache<T> {
    fn clone(&self) -> Self {
        Cache { objects: self.objects.clone(), ready: self.ready.clone() }
    }
}

/// The write side, owned by the watch that feeds the cache.
pub struct CacheWriter<K, T> {
    objects: Arc<RwLock<HashMap<Box<str>, T>>>,
    ready: watch::Sender<bool>,
    /// Objects of a (re)list in progress; they replace the cache once it is complete.
    relist: Option<HashMap<Box<str>, T>>,
    derive: fn(&K) -> T,
}

/// An empty cache whose entries are `derive(object)`.
pub fn cache<K, T>(derive: fn(&K) -> T) -> (Cache<T>, CacheWriter<K, T>) {
    let objects = Arc::new(RwLock::new(HashMap::new()));
    let (ready_tx, ready) = watch::channel(false);
    (Cache { objects: objects.clone(), ready }, CacheWriter { objects, ready: ready_tx, relist: None, derive })
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

    /// Resolves once the first list is complete.
    pub async fn wait_until_ready(&self) {
        let mut ready = self.ready.clone();
        let _ = ready.wait_for(|r| *r).await;
    }
}

impl<K: Resource, T> CacheWriter<K, T> {
    /// Applies one watch event.
    pub fn apply(&mut self, event: &watcher::Event<K>) {
        match event {
            watcher::Event::Apply(object) => {
                let value = (self.derive)(object);
                self.objects.write().expect("cache lock").insert(key_of(object), value);
            }
            watcher::Event::Delete(object) => {
                self.objects.write().expect("cache lock").remove(&key_of(object));
            }
            watcher::Event::Init => self.relist = Some(HashMap::new()),
            watcher::Event::InitApply(object) => {
                let value = (self.derive)(object);
                self.relist.get_or_insert_default().insert(key_of(object), value);
            }
            watcher::Event::InitDone => {
                let mut fresh = self.relist.take().unwrap_or_default();
                fresh.shrink_to_fit();
                *self.objects.write().expect("cache lock") = fresh;
                self.ready.send_replace(true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

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
    async fn a_relist_replaces_everything_once_complete() {
        let (cache, mut writer) = cache::<ConfigMap, String>(value);
        writer.apply(&watcher::Event::Init);
        writer.apply(&watcher::Event::InitApply(cm("a", "x", "1")));
        assert_eq!(cache.get("a", "x"), None, "a list in progress is not visible");
        writer.apply(&watcher::Event::InitApply(cm("b", "x", "2")));
        writer.apply(&watcher::Event::InitDone);
        cache.wait_until_ready().await;
        assert_eq!((cache.get("a", "x"), cache.get("b", "x")), (Some("1".into()), Some("2".into())));

        writer.apply(&watcher::Event::Apply(cm("a", "x", "3")));
        writer.apply(&watcher::Event::Delete(cm("b", "x", "2")));
        assert_eq!((cache.get("a", "x"), cache.get("b", "x")), (Some("3".into()), None));

        // A relist after a lost watch drops what is gone.
        writer.apply(&watcher::Event::Init);
        writer.apply(&watcher::Event::InitApply(cm("c", "y", "4")));
        writer.apply(&watcher::Event::InitDone);
        assert_eq!((cache.get("a", "x"), cache.get("c", "y"), cache.len()), (None, Some("4".into()), 1));
    }
}
