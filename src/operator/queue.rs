//! The operator's work queue: a server is reconciled when something about it changed (its
//! spec or metadata, its VM, its instance, the catalog) or when its last reconcile asked to
//! run again; never twice at once, and at most `concurrency` at a time. It does what
//! kube-runtime's `Controller` did here, on keys (`namespace/name`) instead of a store of
//! parsed objects: the servers themselves stay in a compact [`super::cache::Cache`].

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// When a reconcile wants to run again, besides on the next change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    After(Duration),
    OnChange,
}

/// Asks for reconciles; cheap to clone.
#[derive(Clone)]
pub struct Requests(mpsc::UnboundedSender<(Box<str>, Instant)>);

/// A new queue: the handle that asks, and the receiving end for [`run`].
pub fn queue() -> (Requests, mpsc::UnboundedReceiver<(Box<str>, Instant)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Requests(tx), rx)
}

impl Requests {
    /// Reconcile `key` as soon as possible.
    pub fn now(&self, key: Box<str>) {
        let _ = self.0.send((key, Instant::now()));
    }
}

/// What is due when, and what runs.
#[derive(Default)]
struct Schedule {
    due: BTreeSet<(Instant, Box<str>)>,
    at: HashMap<Box<str>, Instant>,
    running: HashSet<Box<str>>,
    /// Asked for while running: scheduled once that run ends.
    again: HashMap<Box<str>, Instant>,
}

impl Schedule {
    /// Schedules `key` at `when`, unless it is due earlier already.
    fn schedule(&mut self, key: Box<str>, when: Instant) {
        if self.running.contains(&key) {
            let entry = self.again.entry(key).or_insert(when);
            *entry = (*entry).min(when);
            return;
        }
        match self.at.get(&key) {
            Some(&t) if t <= when => {}
            Some(&t) => {
                self.due.remove(&(t, key.clone()));
                self.due.insert((when, key.clone()));
                self.at.insert(key, when);
            }
            None => {
                self.due.insert((when, key.clone()));
                self.at.insert(key, when);
            }
        }
    }

    /// Takes the next key that is due by `now`.
    fn pop_due(&mut self, now: Instant) -> Option<Box<str>> {
        if self.due.first()?.0 > now {
            return None;
        }
        let (_, key) = self.due.pop_first()?;
        self.at.remove(&key);
        if self.at.is_empty() {
            // A burst (every server at startup) leaves a large empty table behind.
            self.at.shrink_to_fit();
        }
        self.running.insert(key.clone());
        Some(key)
    }

    /// A run of `key` ended and wants `next`.
    fn done(&mut self, key: Box<str>, next: Next, now: Instant) {
        self.running.remove(&key);
        if self.running.is_empty() {
            self.running.shrink_to_fit();
        }
        if let Some(when) = self.again.remove(&key) {
            self.schedule(key.clone(), when);
        }
        if let Next::After(delay) = next {
            self.schedule(key, now + delay);
        }
    }
}

/// Runs reconciles as they are asked for, forever.
pub async fn run<F, Fut>(mut requests: mpsc::UnboundedReceiver<(Box<str>, Instant)>, concurrency: usize, reconcile: F)
where
    F: Fn(Box<str>) -> Fut,
    Fut: Future<Output = Next>,
{
    let concurrency = concurrency.max(1);
    let mut schedule = Schedule::default();
    let mut tasks = FuturesUnordered::new();
    let mut open = true;
    loop {
        // Every request already waiting first: requests for one key merge before it runs.
        while open {
            match requests.try_recv() {
                Ok((key, when)) => schedule.schedule(key, when),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => open = false,
            }
        }
        let now = Instant::now();
        while tasks.len() < concurrency {
            let Some(key) = schedule.pop_due(now) else { break };
            let run = reconcile(key.clone());
            tasks.push(async move { (key, run.await) });
        }
        let next_due = schedule.due.first().map(|(t, _)| *t).filter(|_| tasks.len() < concurrency);
        tokio::select! {
            request = requests.recv(), if open => match request {
                Some((key, when)) => schedule.schedule(key, when),
                None => open = false,
            },
            Some((key, next)) = tasks.next(), if !tasks.is_empty() => schedule.done(key, next, Instant::now()),
            () = tokio::time::sleep_until(next_due.unwrap_or(now)), if next_due.is_some() => {}
            else => std::future::pending::<()>().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn earliest_wins_and_a_running_key_waits_its_turn() {
        let t0 = Instant::now();
        let s = |secs| t0 + Duration::from_secs(secs);
        let mut schedule = Schedule::default();
        schedule.schedule("a".into(), s(5));
        schedule.schedule("a".into(), s(9));
        schedule.schedule("b".into(), s(1));
        schedule.schedule("a".into(), s(2));
        assert_eq!(schedule.due.len(), 2, "one entry per key");
        assert_eq!(schedule.pop_due(s(0)), None, "nothing due yet");
        assert_eq!(schedule.pop_due(s(3)).as_deref(), Some("b"));
        assert_eq!(schedule.pop_due(s(3)).as_deref(), Some("a"));
        // Asked for while running: not run twice at once, but once it ends.
        schedule.schedule("a".into(), s(3));
        assert_eq!(schedule.pop_due(s(4)), None);
        schedule.done("a".into(), Next::After(Duration::from_secs(10)), s(4));
        assert_eq!(schedule.pop_due(s(4)).as_deref(), Some("a"), "the request made while it ran");
        schedule.done("a".into(), Next::OnChange, s(5));
        schedule.done("b".into(), Next::After(Duration::from_secs(1)), s(5));
        assert_eq!(schedule.pop_due(s(5)), None);
        assert_eq!(schedule.pop_due(s(6)).as_deref(), Some("b"), "its requeue");
        assert!(schedule.due.is_empty() && schedule.at.is_empty());
    }

    #[tokio::test]
    async fn runs_each_key_once_at_a_time_within_the_limit() {
        let (requests, rx) = queue();
        let log = Arc::new(Mutex::new((0usize, 0usize, Vec::<String>::new())));
        let l = log.clone();
        let runner = tokio::spawn(run(rx, 2, move |key: Box<str>| {
            let l = l.clone();
            async move {
                {
                    let mut g = l.lock().unwrap();
                    g.0 += 1;
                    g.1 = g.1.max(g.0);
                    g.2.push(key.to_string());
                }
                tokio::time::sleep(Duration::from_millis(30)).await;
                l.lock().unwrap().0 -= 1;
                if &*key == "retry" && l.lock().unwrap().2.iter().filter(|k| *k == "retry").count() < 3 {
                    Next::After(Duration::from_millis(50))
                } else {
                    Next::OnChange
                }
            }
        }));
        for key in ["a", "b", "c", "a", "a", "retry"] {
            requests.now(key.into());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (_, max_parallel, ran) = log.lock().unwrap().clone();
        assert_eq!(max_parallel, 2);
        let count = |k: &str| ran.iter().filter(|r| *r == k).count();
        assert_eq!((count("a"), count("b"), count("c")), (1, 1, 1), "requests for a queued key merge: {ran:?}");
        assert_eq!(count("retry"), 3, "requeued until it settles");
        runner.abort();
    }
}
