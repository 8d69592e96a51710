//! One ledger of credit commitments per account, kept in the cluster: the ConfigMap
//! `vps-credit-<account>` in the system namespace, one entry per server (by object name)
//! holding the monthly price it commits and since when. Gateway replicas and the operator
//! change it only by compare-and-swap on its `resourceVersion` (as the id allocator does), so
//! two creates never spend the same credit, whichever processes they run in. A server counts
//! from before its object is created (the gateway's reservation, or the operator's before it
//! builds a VM for a server made with kubectl) until its teardown has finished (the
//! operator's release).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};

/// Errors of the ledger.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("Kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
    #[error("gave up changing the credit ledger after {0} conflicting attempts")]
    Contended(u32),
    /// The error of a batch this reservation was part of (one write for several).
    #[error("{0}")]
    Batch(String),
}

/// One reservation asked for: `server` commits `cents` a month within `limit`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ask {
    pub server: String,
    pub cents: i64,
    pub limit: i64,
}

/// The answers to `asks`, in order, each seeing the commitments of those before it, and
/// whether `data` changed: a server already in the ledger stays as it is.
pub fn decide(data: &mut BTreeMap<String, String>, asks: &[Ask], now: jiff::Timestamp) -> (Vec<Reservation>, bool) {
    let mut used: i64 = entries(data).values().map(|e| e.cents).sum();
    let mut changed = false;
    let answers = asks
        .iter()
        .map(|ask| {
            if data.contains_key(&ask.server) {
                return Reservation::Reserved;
            }
            if used + ask.cents > ask.limit {
                return Reservation::Insufficient { used };
            }
            data.insert(ask.server.clone(), Entry { cents: ask.cents, since: now }.render());
            used += ask.cents;
            changed = true;
            Reservation::Reserved
        })
        .collect();
    (answers, changed)
}

/// What a reservation found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reservation {
    /// The server's price is committed (now, or it was already).
    Reserved,
    /// It does not fit: the account's servers already commit `used` cents.
    Insufficient { used: i64 },
}

/// One commitment: cents per month, since when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub cents: i64,
    pub since: jiff::Timestamp,
}

impl Entry {
    fn parse(value: &str) -> Option<Entry> {
        let (cents, since) = value.split_once(' ')?;
        Some(Entry { cents: cents.parse().ok()?, since: since.parse().ok()? })
    }

    fn render(&self) -> String {
        format!("{} {}", self.cents, crate::timestamps::seconds(self.since))
    }
}

/// The ConfigMap name of an account's ledger.
pub fn ledger_name(account: &str) -> String {
    format!("vps-credit-{account}")
}

/// The entries of a ledger's data (unreadable ones count as nothing).
pub fn entries(data: &BTreeMap<String, String>) -> BTreeMap<String, Entry> {
    data.iter().filter_map(|(k, v)| Some((k.clone(), Entry::parse(v)?))).collect()
}

/// The ledgers of a system namespace.
#[derive(Clone)]
pub struct Ledger {
    api: Api<ConfigMap>,
}

const ATTEMPTS: u32 = 100;

impl Ledger {
    pub fn new(client: Client, system_namespace: &str) -> Ledger {
        Ledger { api: Api::namespaced(client, system_namespace) }
    }

    /// Applies `change` to the data of `account`'s ledger by compare-and-swap; `change`
    /// returns what to answer and whether it changed anything.
    async fn update<T>(
        &self,
        account: &str,
        change: impl FnMut(&mut BTreeMap<String, String>) -> (T, bool),
    ) -> Result<T, LedgerError> {
        update_data(&self.api, &ledger_name(account), account, change).await
    }

    /// Commits `cents` a month for `server` of `account` when the account's commitments
    /// leave room under `limit`; a server already in the ledger stays as it is.
    pub async fn reserve(
        &self,
        account: &str,
        server: &str,
        cents: i64,
        limit: i64,
    ) -> Result<Reservation, LedgerError> {
        let ask = Ask { server: server.to_string(), cents, limit };
        let answers = self.reserve_all(account, std::slice::from_ref(&ask)).await?;
        Ok(answers.into_iter().next().unwrap_or(Reservation::Reserved))
    }

    /// [`Ledger::reserve`] of several servers of `account` in one compare-and-swap ([`decide`]).
    pub async fn reserve_all(&self, account: &str, asks: &[Ask]) -> Result<Vec<Reservation>, LedgerError> {
        let now = jiff::Timestamp::now();
        self.update(account, |data| decide(data, asks, now)).await
    }

    /// Changes the commitment of `server` of `account` to `cents` (a resize) when the
    /// account's other commitments leave room under `limit`; a price no higher than the
    /// one committed always fits.
    pub async fn recommit(
        &self,
        account: &str,
        server: &str,
        cents: i64,
        limit: i64,
    ) -> Result<Reservation, LedgerError> {
        let now = jiff::Timestamp::now();
        self.update(account, |data| {
            let all = entries(data);
            let current = all.get(server).map(|e| e.cents);
            if current == Some(cents) {
                return (Reservation::Reserved, false);
            }
            let others: i64 = all.iter().filter(|(k, _)| k.as_str() != server).map(|(_, e)| e.cents).sum();
            if current.is_none_or(|c| cents > c) && others + cents > limit {
                return (Reservation::Insufficient { used: others }, false);
            }
            data.insert(server.to_string(), Entry { cents, since: now }.render());
            (Reservation::Reserved, true)
        })
        .await
    }

    /// Whether `server` of `account` holds a commitment.
    pub async fn holds(&self, account: &str, server: &str) -> Result<bool, LedgerError> {
        let ledger = self.api.get_opt(&ledger_name(account)).await?;
        Ok(ledger.and_then(|cm| cm.data).is_some_and(|d| d.contains_key(server)))
    }

    /// Ends the commitment of `server` of `account` (it is gone).
    pub async fn release(&self, account: &str, server: &str) -> Result<(), LedgerError> {
        self.update(account, |data| ((), data.remove(server).is_some())).await
    }

    /// Ends the commitments older than `grace` of servers that `exists` does not know (a
    /// gateway that reserved and died before it created the server); returns how many.
    pub async fn forget_stale(
        &self,
        account: &str,
        exists: impl Fn(&str) -> bool,
        grace: Duration,
    ) -> Result<usize, LedgerError> {
        let cutoff = jiff::Timestamp::now() - jiff::SignedDuration::try_from(grace).unwrap_or_default();
        self.update(account, |data| {
            let stale: Vec<String> =
                entries(data).into_iter().filter(|(k, e)| e.since < cutoff && !exists(k)).map(|(k, _)| k).collect();
            for k in &stale {
                data.remove(k);
            }
            (stale.len(), !stale.is_empty())
        })
        .await
    }
}

/// Applies `change` to the data of the ConfigMap `name` of `api` (made, labelled with
/// `account`, when missing) by compare-and-swap on its resourceVersion, trying again on a
/// conflict; `change` returns what to answer and whether it changed anything.
pub async fn update_data<T>(
    api: &Api<ConfigMap>,
    name: &str,
    account: &str,
    mut change: impl FnMut(&mut BTreeMap<String, String>) -> (T, bool),
) -> Result<T, LedgerError> {
    for attempt in 0..ATTEMPTS {
        let Some(mut ledger) = api.get_opt(name).await? else {
            let mut data = BTreeMap::new();
            let (answer, changed) = change(&mut data);
            if !changed {
                return Ok(answer);
            }
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(name.to_string()),
                    labels: Some(BTreeMap::from([(crate::api::ACCOUNT_LABEL.to_string(), account.to_string())])),
                    ..Default::default()
                },
                data: Some(data),
                ..Default::default()
            };
            match api.create(&PostParams::default(), &cm).await {
                Ok(_) => return Ok(answer),
                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                Err(e) => return Err(e.into()),
            }
        };
        let data = ledger.data.get_or_insert_with(BTreeMap::new);
        let (answer, changed) = change(data);
        if !changed {
            return Ok(answer);
        }
        // `replace` sends the resourceVersion read: a concurrent change makes it a 409.
        match api.replace(name, &PostParams::default(), &ledger).await {
            Ok(_) => return Ok(answer),
            Err(kube::Error::Api(e)) if e.code == 409 => {
                tokio::time::sleep(Duration::from_millis(u64::from(attempt.min(20)) * 3)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(LedgerError::Contended(ATTEMPTS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_decided_in_order_each_seeing_the_ones_before() {
        let now: jiff::Timestamp = "2026-12-01T09:00:00Z".parse().unwrap();
        let mut data = BTreeMap::from([("srv-1".to_string(), Entry { cents: 400, since: now }.render())]);
        let ask = |server: &str, cents| Ask { server: server.into(), cents, limit: 1000 };
        let asks = [ask("srv-2", 400), ask("srv-3", 400), ask("srv-1", 400), ask("srv-4", 200)];
        let (answers, changed) = decide(&mut data, &asks, now);
        assert_eq!(
            answers,
            [
                Reservation::Reserved,
                Reservation::Insufficient { used: 800 },
                Reservation::Reserved, // already committed: as it is
                Reservation::Reserved,
            ]
        );
        assert!(changed);
        assert_eq!(entries(&data).values().map(|e| e.cents).sum::<i64>(), 1000);
        assert!(!data.contains_key("srv-3"));
        let (again, changed) = decide(&mut data, &asks[2..3], now);
        assert_eq!((again, changed), (vec![Reservation::Reserved], false));
    }

    #[test]
    fn entries_round_trip_and_bad_ones_count_as_nothing() {
        let e = Entry { cents: 1000, since: "2026-12-01T09:00:00Z".parse().unwrap() };
        assert_eq!(e.render(), "1000 2026-12-01T09:00:00Z");
        assert_eq!(Entry::parse(&e.render()), Some(e.clone()));
        let data = BTreeMap::from([("srv-1".to_string(), e.render()), ("srv-2".to_string(), "lots".to_string())]);
        assert_eq!(entries(&data).keys().collect::<Vec<_>>(), ["srv-1"]);
    }
}
