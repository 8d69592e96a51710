//! The operator's work queue: a server is reconciled when something about it changed (its
//! spec or metadata, its VM, its instance, the catalog) or when its last reconcile asked to
//! run again; never twice at once, at most `concurrency` at a time, none before the caches
//! have synced, and a failing one backs off (per server, exponentially, with jitter).
//!
//! Why not kube-runtime's `Controller` (or `Controller::for_stream`): it reconciles objects
//! that it looks up in a reflector `Store` of parsed objects, which at 10,000 servers held
//! about 1.9 KB per server. This queue works on keys (`namespace/name`) and the servers stay
//! in a compact [`super::cache::Cache`] as JSON (about 1.1 KB each): with it the operator's
//! resident memory at 10,000 servers went from 64.1 to 50.5 MiB (README, "Benchmarks").
//! What the `Controller` gave besides is kept here: merging of requests for one key, a
//! requeue per reconcile, per-key backoff, no reconcile before the caches are ready, and a
//! shutdown that lets running reconciles finish. kube-runtime's `scheduler` would cover the
//! delays but not the "never twice at once" rule or the backoff, so the schedule is our own.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// What a reconcile asks for next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Run again after this long (and on the next change).
    After(Duration),
    /// Run again on the next change only.
    OnChange,
    /// It failed: run again after this key's next backoff delay.
    Backoff,
}

/// Backoff of failing reconciles: the n-th failure in a row waits `base·2ⁿ⁻¹`, at most
/// `cap`, less up to half of it at random (so failures of many servers spread out).
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { base: Duration::from_millis(500), cap: Duration::from_secs(60) }
    }
}

impl Backoff {
    /// The longest wait after `failures` failures in a row (at least one).
    pub fn ceiling(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(30);
        self.base.saturating_mul(1 << doublings).min(self.cap)
    }

    /// The wait after `failures` failures: between half the ceiling and the ceiling.
    fn delay(&self, failures: u32) -> Duration {
        let ceiling = self.ceiling(failures);
        ceiling / 2 + ceiling.mul_f64(rand::random::<f64>() / 2.0)
    }
}

/// What the queue reports to `/metrics`: keys waiting, reconciles running, and retries
/// (failed reconciles scheduled again after their backoff).
#[derive(Clone, Default)]
pub struct Stats {
    pub waiting: prometheus_client::metrics::gauge::Gauge,
    pub running: prometheus_client::metrics::gauge::Gauge,
    pub retries: prometheus_client::metrics::counter::Counter,
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
    /// Failures in a row, of keys whose last run failed.
    failures: HashMap<Box<str>, u32>,
    backoff: Backoff,
}

impl Schedule {
    fn new(backoff: Backoff) -> Schedule {
        Schedule { backoff, ..Schedule::default() }
    }

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
        match next {
            Next::After(delay) => {
                self.failures.remove(&key);
                self.schedule(key, now + delay);
            }
            Next::OnChange => {
                self.failures.remove(&key);
            }
            Next::Backoff => {
                let failures = self.failures.entry(key.clone()).or_insert(0);
                *failures = failures.saturating_add(1);
                let delay = self.backoff.delay(*failures);
                self.schedule(key, now + delay);
            }
        }
    }
}

/// Runs reconciles as they are asked for: none before `ready` resolves (requests made
/// before wait), and until `shutdown` resolves; then it takes no new work and returns once
/// the running reconciles have finished.
pub async fn run<F, Fut>(
    mut requests: mpsc::UnboundedReceiver<(Box<str>, Instant)>,
    concurrency: usize,
    backoff: Backoff,
    stats: Stats,
    ready: impl Future<Output = ()>,
    shutdown: impl Future<Output = ()>,
    reconcile: F,
) where
    F: Fn(Box<str>) -> Fut,
    Fut: Future<Output = Next>,
{
    let concurrency = concurrency.max(1);
    let mut schedule = Schedule::new(backoff);
    let mut tasks = FuturesUnordered::new();
    let mut open = true;
    let mut ready = std::pin::pin!(ready);
    let mut shutdown = std::pin::pin!(shutdown);
    // Until the caches are ready, only collect requests.
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => return,
            () = &mut ready => break,
            request = requests.recv(), if open => match request {
                Some((key, when)) => schedule.schedule(key, when),
                None => open = false,
            },
        }
    }
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
        stats.waiting.set(i64::try_from(schedule.due.len()).unwrap_or(i64::MAX));
        stats.running.set(i64::try_from(tasks.len()).unwrap_or(i64::MAX));
        let next_due = schedule.due.first().map(|(t, _)| *t).filter(|_| tasks.len() < concurrency);
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            request = requests.recv(), if open => match request {
                Some((key, when)) => schedule.schedule(key, when),
                None => open = false,
            },
            Some((key, next)) = tasks.next(), if !tasks.is_empty() => {
                if next == Next::Backoff {
                    stats.retries.inc();
                }
                schedule.done(key, next, Instant::now());
            }
            () = tokio::time::sleep_until(next_due.unwrap_or(now)), if next_due.is_some() => {}
            else => std::future::pending::<()>().await,
        }
    }
    tracing::info!(running = tasks.len(), "Shutting down: waiting for running reconciles");
    while tasks.next().await.is_some() {}
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

    #[test]
    fn failures_back_off_per_key_and_success_resets() {
        let backoff = Backoff { base: Duration::from_secs(1), cap: Duration::from_secs(8) };
        assert_eq!(
            (1..=6).map(|n| backoff.ceiling(n).as_secs()).collect::<Vec<_>>(),
            [1, 2, 4, 8, 8, 8],
            "doubling up to the cap"
        );
        for failures in 1..=6 {
            let d = backoff.delay(failures);
            assert!(d <= backoff.ceiling(failures) && d >= backoff.ceiling(failures) / 2, "{d:?}");
        }
        let t0 = Instant::now();
        let mut schedule = Schedule::new(backoff);
        let fail = |schedule: &mut Schedule, now: Instant| {
            schedule.schedule("a".into(), now);
            assert_eq!(schedule.pop_due(now).as_deref(), Some("a"));
            schedule.done("a".into(), Next::Backoff, now);
            schedule.at["a"] - now
        };
        let waits: Vec<Duration> = (0..4).map(|_| fail(&mut schedule, t0)).collect();
        for (n, wait) in waits.iter().enumerate() {
            let ceiling = backoff.ceiling(n as u32 + 1);
            assert!(*wait <= ceiling && *wait >= ceiling / 2, "failure {}: {wait:?}", n + 1);
        }
        // "b" fails on its own count.
        schedule.schedule("b".into(), t0);
        schedule.pop_due(t0);
        schedule.done("b".into(), Next::Backoff, t0);
        assert!(schedule.at["b"] - t0 <= Duration::from_secs(1));
        // A success forgets the failures of "a".
        let tb = schedule.at["b"];
        assert_eq!(schedule.pop_due(tb).as_deref(), Some("b"));
        schedule.done("b".into(), Next::OnChange, tb);
        let t1 = schedule.at["a"];
        assert_eq!(schedule.pop_due(t1).as_deref(), Some("a"));
        schedule.done("a".into(), Next::OnChange, t1);
        assert!(fail(&mut schedule, t1) <= Duration::from_secs(1), "back to the base delay");
    }

    #[tokio::test]
    async fn runs_each_key_once_at_a_time_within_the_limit_after_ready_until_shutdown() {
        let (requests, rx) = queue();
        let log = Arc::new(Mutex::new((0usize, 0usize, Vec::<String>::new())));
        let l = log.clone();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let backoff = Backoff { base: Duration::from_millis(20), cap: Duration::from_millis(40) };
        let ready = async move {
            let _ = ready_rx.await;
        };
        let shutdown = async move {
            let _ = stop_rx.await;
        };
        let runner = tokio::spawn(run(rx, 2, backoff, Stats::default(), ready, shutdown, move |key: Box<str>| {
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
                let runs = l.lock().unwrap().2.iter().filter(|k| **k == *key).count();
                match &*key {
                    "retry" if runs < 3 => Next::After(Duration::from_millis(50)),
                    "failing" if runs < 3 => Next::Backoff,
                    _ => Next::OnChange,
                }
            }
        }));
        for key in ["a", "b", "c", "a", "a", "retry", "failing"] {
            requests.now(key.into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(log.lock().unwrap().2.is_empty(), "nothing runs before the caches are ready");
        ready_tx.send(()).unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (_, max_parallel, ran) = log.lock().unwrap().clone();
        assert_eq!(max_parallel, 2);
        let count = |k: &str| ran.iter().filter(|r| *r == k).count();
        assert_eq!((count("a"), count("b"), count("c")), (1, 1, 1), "requests for a queued key merge: {ran:?}");
        assert_eq!(count("retry"), 3, "requeued until it settles");
        assert_eq!(count("failing"), 3, "retried with backoff until it succeeds");

        // Shutdown: the running reconcile finishes, nothing new starts.
        requests.now("last".into());
        tokio::time::sleep(Duration::from_millis(5)).await;
        stop_tx.send(()).unwrap();
        requests.now("never".into());
        tokio::time::timeout(Duration::from_secs(2), runner).await.expect("the queue stops").unwrap();
        let (running, _, ran) = log.lock().unwrap().clone();
        assert_eq!(running, 0, "the running reconcile was waited for");
        assert!(ran.iter().any(|k| k == "last") && !ran.iter().any(|k| k == "never"), "{ran:?}");
    }
}
