//! The credit check of creates: an account's servers, plus the creates this gateway has in
//! flight for it, may not cost more per month than the account's credit. Creates of one
//! account run in parallel; only the check itself is serialized.
//!
//! A create reserves its plan's price before it writes and holds the reservation until the
//! cache shows the new server; a reservation whose server the cache already shows is not
//! counted twice. Reservations live in one gateway: two replicas creating for one account at
//! the same instant could each pass the check.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use super::index::ServerIndex;
use crate::api::VpsServer;

/// Creates in flight, by reservation number.
#[derive(Default)]
pub struct Credit {
    pending: Mutex<Pending>,
}

#[derive(Default)]
struct Pending {
    next: u64,
    by_number: HashMap<u64, Hold>,
}

struct Hold {
    namespace: String,
    cents: i64,
    /// The server's object name, once it is known.
    name: Option<String>,
}

/// A held reservation; dropping it releases it.
pub struct Reservation {
    credit: Arc<Credit>,
    number: u64,
}

impl Reservation {
    /// Names the server this reservation is for: once the cache shows it, it counts there.
    pub fn name(&self, name: &str) {
        if let Some(hold) = self.credit.pending.lock().expect("credit lock").by_number.get_mut(&self.number) {
            hold.name = Some(name.to_string());
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.credit.pending.lock().expect("credit lock").by_number.remove(&self.number);
    }
}

impl Credit {
    /// Reserves `cents` for a server of `namespace` when the account's servers (in `servers`,
    /// priced by `price`) and its reservations leave room under `limit`; otherwise returns
    /// what they already use.
    pub fn reserve(
        self: &Arc<Self>,
        namespace: &str,
        cents: i64,
        limit: i64,
        servers: &ServerIndex,
        price: impl Fn(&VpsServer) -> i64,
    ) -> Result<Reservation, i64> {
        let mut pending = self.pending.lock().expect("credit lock");
        let existing = servers.servers_of(namespace);
        let names: HashSet<&str> = existing.iter().filter_map(|s| s.metadata.name.as_deref()).collect();
        let in_flight: i64 = pending
            .by_number
            .values()
            .filter(|h| h.namespace == namespace && h.name.as_deref().is_none_or(|n| !names.contains(n)))
            .map(|h| h.cents)
            .sum();
        let used = existing.iter().map(|s| price(s)).sum::<i64>() + in_flight;
        if used + cents > limit {
            return Err(used);
        }
        pending.next += 1;
        let number = pending.next;
        pending.by_number.insert(number, Hold { namespace: namespace.to_string(), cents, name: None });
        Ok(Reservation { credit: self.clone(), number })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::watcher::Event;
    use serde_json::json;

    fn server(name: &str) -> VpsServer {
        serde_json::from_value(json!({
            "apiVersion": "vps.org/v1alpha1", "kind": "VpsServer",
            "metadata": {"name": name, "namespace": "a", "labels": {crate::api::SERVER_ID_LABEL: "1"}},
            "spec": {"name": name, "plan": "p", "os": "o", "location": "l"},
        }))
        .unwrap()
    }

    #[test]
    fn reservations_count_until_the_cache_shows_the_server() {
        let index = Arc::new(ServerIndex::default());
        let (mut feed, _) = crate::watch_cache::feed(index.clone());
        feed.load([]);
        let credit = Arc::new(Credit::default());
        let reserve = |cents| credit.reserve("a", cents, 1000, &index, |_| 400);
        let first = reserve(400).unwrap();
        let second = reserve(400).unwrap();
        assert_eq!(reserve(400).err(), Some(800), "two creates in flight use 800");
        assert!(credit.reserve("b", 400, 1000, &index, |_| 400).is_ok(), "other accounts are apart");
        first.name("srv-1");
        feed.apply(Event::Apply(server("srv-1")));
        assert_eq!(reserve(400).err(), Some(800), "the created server is counted once");
        drop(first);
        drop(second);
        assert!(reserve(400).is_ok(), "released reservations make room again");
        assert_eq!(reserve(700).err(), Some(400), "the server still counts");
    }
}
