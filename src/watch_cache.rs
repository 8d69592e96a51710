//! Caches kept from a watch, with the relist bookkeeping written once.
//!
//! kube-runtime's watcher delivers each (re)list as `Init`, one `InitApply` per object and
//! `InitDone`, and single changes as `Apply` and `Delete`. A cache must never show half a
//! list, nor keep what a relist no longer lists: the objects of a relist are staged and
//! replace the cache's contents at once when the list is complete, and the first complete
//! list makes the cache ready. [`Feed`] does this for any [`Index`]: the operator's compact
//! caches and the gateway's server and token indexes. [`Ready`] tells waiters without
//! polling.

use std::marker::PhantomData;
use std::sync::Arc;

use kube::runtime::watcher::Event;
use tokio::sync::watch;

/// An in-memory index of the objects of one watch.
pub trait Index<K>: Send + Sync {
    /// What a relist collects before it replaces the index's contents.
    type Staging: Default + Send;
    /// An object appeared or changed.
    fn upsert(&self, object: K);
    /// An object is gone.
    fn remove(&self, object: &K);
    /// One object of a relist in progress (not visible yet).
    fn stage(&self, staging: &mut Self::Staging, object: K);
    /// A relist is complete: exactly its objects are the contents now.
    fn replace(&self, staging: Self::Staging);
}

/// Feeds watch events into an index; owned by the watch.
pub struct Feed<K, I: Index<K>> {
    index: Arc<I>,
    staging: Option<I::Staging>,
    ready: watch::Sender<bool>,
    _objects: PhantomData<fn(K)>,
}

/// Whether a cache has seen its first complete list; cheap to clone.
#[derive(Clone, Debug)]
pub struct Ready(watch::Receiver<bool>);

/// A feed into `index`, and the signal of its first complete list.
pub fn feed<K, I: Index<K>>(index: Arc<I>) -> (Feed<K, I>, Ready) {
    let (tx, rx) = watch::channel(false);
    (Feed { index, staging: None, ready: tx, _objects: PhantomData }, Ready(rx))
}

impl<K, I: Index<K>> Feed<K, I> {
    /// Follows one watch event.
    pub fn apply(&mut self, event: Event<K>) {
        match event {
            Event::Apply(object) => self.index.upsert(object),
            Event::Delete(object) => self.index.remove(&object),
            Event::Init => self.staging = Some(I::Staging::default()),
            Event::InitApply(object) => {
                let staging = self.staging.get_or_insert_with(I::Staging::default);
                self.index.stage(staging, object);
            }
            Event::InitDone => {
                self.index.replace(self.staging.take().unwrap_or_default());
                self.ready.send_replace(true);
            }
        }
    }

    /// Loads `objects` as one complete list, as a watch's first list would (a cache filled
    /// from a fixture).
    pub fn load(&mut self, objects: impl IntoIterator<Item = K>) {
        self.apply(Event::Init);
        for object in objects {
            self.apply(Event::InitApply(object));
        }
        self.apply(Event::InitDone);
    }
}

impl Ready {
    /// A signal that is ready from the start.
    pub fn now() -> Ready {
        Ready(watch::channel(true).1)
    }

    pub fn is_ready(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the first list is complete (or never, if its watch is gone before).
    pub async fn wait(&self) {
        let mut rx = self.0.clone();
        if rx.wait_for(|ready| *ready).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Resolves once every one of `signals` is ready.
    pub async fn all(signals: impl IntoIterator<Item = Ready>) {
        futures::future::join_all(signals.into_iter().map(|s| async move { s.wait().await })).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    /// Strings by their first character.
    #[derive(Default)]
    struct ByInitial(Mutex<BTreeMap<char, String>>);

    impl Index<String> for ByInitial {
        type Staging = BTreeMap<char, String>;
        fn upsert(&self, s: String) {
            self.0.lock().unwrap().insert(s.chars().next().unwrap(), s);
        }
        fn remove(&self, s: &String) {
            self.0.lock().unwrap().remove(&s.chars().next().unwrap());
        }
        fn stage(&self, staging: &mut Self::Staging, s: String) {
            staging.insert(s.chars().next().unwrap(), s);
        }
        fn replace(&self, staging: Self::Staging) {
            *self.0.lock().unwrap() = staging;
        }
    }

    fn contents(index: &ByInitial) -> Vec<String> {
        index.0.lock().unwrap().values().cloned().collect()
    }

    #[tokio::test]
    async fn a_relist_replaces_everything_once_complete() {
        let index = Arc::new(ByInitial::default());
        let (mut feed, ready) = feed(index.clone());
        assert!(!ready.is_ready());
        feed.apply(Event::Init);
        feed.apply(Event::InitApply("apple".to_string()));
        assert!(contents(&index).is_empty(), "a list in progress is not visible");
        feed.apply(Event::InitApply("banana".to_string()));
        feed.apply(Event::InitDone);
        tokio::time::timeout(std::time::Duration::from_secs(1), ready.wait()).await.expect("ready");
        assert_eq!(contents(&index), ["apple", "banana"]);

        feed.apply(Event::Apply("avocado".to_string()));
        feed.apply(Event::Delete("banana".to_string()));
        assert_eq!(contents(&index), ["avocado"]);

        // A relist after a lost watch drops what is gone.
        feed.load(["cherry".to_string()]);
        assert_eq!(contents(&index), ["cherry"]);
        assert!(ready.is_ready());
        tokio::time::timeout(std::time::Duration::from_secs(1), Ready::all([ready.clone(), Ready::now()]))
            .await
            .expect("all ready");
    }
}
