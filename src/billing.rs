//! Charging: every server of an account with prepaid funds (`VpsAccount.spec.fundsCents`)
//! costs its plan's monthly price by the hour, a 730th of it for each hour begun, and at most
//! the monthly price in a calendar month. The charges are kept in the cluster, in one ledger
//! per account: the ConfigMap `vps-billing-<account>` in the system namespace, a JSON
//! [`State`] changed only by compare-and-swap on its resourceVersion. Each server has a meter
//! there (the last hour charged), so an hour is charged once whatever the number of
//! processes that charge, and an operator that was down charges the hours it missed.
//!
//! Amounts are whole cents: the `k`-th hour of a month costs `⌊k·p/730⌋ − ⌊(k−1)·p/730⌋` of a
//! monthly price `p`, so 730 hours add up to exactly `p` and no hour's fraction is lost.
//!
//! Time is the billing [`Clock`]'s: real time, or time running faster from an epoch (tests run
//! an hour of billing in seconds).

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::Api;
use serde::{Deserialize, Serialize};

use crate::credit_ledger::LedgerError;

/// Hours in a month of billing: a monthly price is charged in 730ths.
pub const HOURS_PER_MONTH: i64 = 730;
/// Charges kept in the ledger, newest last.
pub const ENTRIES_KEPT: usize = 100;
/// How far back an operator that was down charges (62 days); older hours go uncharged.
pub const CATCH_UP_HOURS: i64 = 62 * 24;
/// The key of the ledger's JSON in its ConfigMap.
const KEY: &str = "ledger";

/// The ConfigMap name of an account's billing ledger.
pub fn ledger_name(account: &str) -> String {
    format!("vps-billing-{account}")
}

/// The billing clock: real time, or time running `scale` times faster from `epoch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clock {
    pub epoch: jiff::Timestamp,
    pub scale: u32,
}

impl Clock {
    /// Real time.
    pub fn real() -> Clock {
        Clock { epoch: jiff::Timestamp::UNIX_EPOCH, scale: 1 }
    }

    /// The billing time of the real time `real`.
    pub fn at(&self, real: jiff::Timestamp) -> jiff::Timestamp {
        if self.scale <= 1 {
            return real;
        }
        let nanos = real.as_nanosecond() - self.epoch.as_nanosecond();
        let scaled = self.epoch.as_nanosecond() + nanos * i128::from(self.scale);
        jiff::Timestamp::from_nanosecond(scaled).unwrap_or(jiff::Timestamp::MAX)
    }

    /// The billing time now.
    pub fn now(&self) -> jiff::Timestamp {
        self.at(jiff::Timestamp::now())
    }

    /// The real time until the next billing hour begins.
    pub fn until_next_hour(&self) -> Duration {
        let now = self.now();
        let next = hour_start(hour_of(now) + 1);
        let left = (next.as_nanosecond() - now.as_nanosecond()).max(0) / i128::from(self.scale.max(1));
        Duration::from_nanos(u64::try_from(left).unwrap_or(u64::MAX))
    }
}

/// The hour (since the Unix epoch) `t` falls in.
pub fn hour_of(t: jiff::Timestamp) -> i64 {
    t.as_second().div_euclid(3600)
}

/// When `hour` begins.
pub fn hour_start(hour: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_second(hour.saturating_mul(3600)).unwrap_or(jiff::Timestamp::MAX)
}

/// The calendar month (UTC) `hour` falls in, as `yyyymm`.
fn month_of(hour: i64) -> i32 {
    let date = hour_start(hour).to_zoned(jiff::tz::TimeZone::UTC);
    i32::from(date.year()) * 100 + i32::from(date.month())
}

/// What the `k`-th charged hour of a month costs of `monthly` cents.
pub fn hour_price(monthly: i64, k: i64) -> i64 {
    if !(1..=HOURS_PER_MONTH).contains(&k) {
        return 0;
    }
    monthly * k / HOURS_PER_MONTH - monthly * (k - 1) / HOURS_PER_MONTH
}

/// An account's ledger.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct State {
    /// The first hour charged: the ledger began then (servers are not charged for hours
    /// before the account was funded).
    pub since: i64,
    /// The last hour charged.
    pub through: i64,
    /// Everything charged.
    pub charged_cents: i64,
    /// Each server's meter, by object name.
    pub servers: BTreeMap<String, Meter>,
    /// The last charges, newest last.
    pub entries: VecDeque<Charge>,
}

/// How far one server has been charged.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Meter {
    /// The server object's uid: a new server of the same name has a meter of its own.
    pub uid: String,
    /// The last hour looked at (charged, or free).
    pub through: i64,
    /// The month of `hours`, `yyyymm`.
    pub month: i32,
    /// Hours charged in that month.
    pub hours: i64,
}

/// One server-hour charged.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Charge {
    pub hour: i64,
    pub server: String,
    /// The server's REST id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<i64>,
    pub cents: i64,
}

/// A server as charging sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Billable {
    pub name: String,
    pub uid: String,
    pub id: Option<i64>,
    pub monthly_cents: i64,
    /// The hour the server was created in: its first hour charged.
    pub from_hour: i64,
    /// Hours from this one on cost nothing: it was stopped before (on a plan that charges
    /// only running hours) or deleted.
    pub free_from: Option<i64>,
}

impl Billable {
    fn free(&self, hour: i64) -> bool {
        self.free_from.is_some_and(|f| hour >= f)
    }
}

/// Charges every hour from the ledger's last one through `now_hour`, hour by hour: each
/// server not free in it costs its price, until the balance (`funds` less the ledger's
/// charges) is used up; the hours after that go by uncharged (the account is suspended).
/// Meters of servers that are gone are dropped. Returns whether the ledger changed.
pub fn charge(state: &mut State, billables: &[Billable], funds: i64, now_hour: i64) -> bool {
    let before = state.clone();
    if state.since == 0 {
        (state.since, state.through) = (now_hour, now_hour - 1);
    }
    state.servers.retain(|name, meter| billables.iter().any(|b| &b.name == name && b.uid == meter.uid));
    let first = (state.through + 1).max(now_hour - CATCH_UP_HOURS);
    for hour in first..=now_hour {
        let month = month_of(hour);
        for b in billables {
            let meter = state.servers.entry(b.name.clone()).or_insert_with(|| Meter {
                uid: b.uid.clone(),
                through: b.from_hour.max(state.since) - 1,
                month,
                hours: 0,
            });
            if hour <= meter.through || hour < b.from_hour {
                continue;
            }
            meter.through = hour;
            if meter.month != month {
                (meter.month, meter.hours) = (month, 0);
            }
            if b.free(hour) || funds - state.charged_cents <= 0 {
                continue;
            }
            meter.hours += 1;
            let cents = hour_price(b.monthly_cents, meter.hours);
            if cents > 0 {
                state.charged_cents += cents;
                state.entries.push_back(Charge { hour, server: b.name.clone(), id: b.id, cents });
            }
        }
        state.through = hour;
    }
    while state.entries.len() > ENTRIES_KEPT {
        state.entries.pop_front();
    }
    *state != before
}

/// Where an account stands after charging.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Standing {
    pub balance_cents: i64,
    /// The monthly prices of the servers charged for the current hour.
    pub monthly_burn_cents: i64,
    /// Less than a day of burn left.
    pub low: bool,
    /// Nothing left: the servers are halted, creates refused.
    pub suspended: bool,
}

/// The standing of an account with `funds` whose ledger is `state`.
pub fn standing(state: &State, billables: &[Billable], funds: i64) -> Standing {
    let now = state.through;
    let monthly_burn_cents =
        billables.iter().filter(|b| !b.free(now) && b.from_hour <= now).map(|b| b.monthly_cents).sum();
    let balance_cents = funds - state.charged_cents;
    let suspended = balance_cents <= 0;
    // A day is 24 of the 730 hours of a month.
    let low = !suspended && balance_cents * HOURS_PER_MONTH < monthly_burn_cents * 24;
    Standing { balance_cents, monthly_burn_cents, low, suspended }
}

/// The billing ledgers of a system namespace.
#[derive(Clone)]
pub struct Ledgers {
    api: Api<ConfigMap>,
}

impl Ledgers {
    pub fn new(client: Client, system_namespace: &str) -> Ledgers {
        Ledgers { api: Api::namespaced(client, system_namespace) }
    }

    /// The ledger of `account`; empty before its first charge.
    pub async fn read(&self, account: &str) -> Result<State, LedgerError> {
        let cm = self.api.get_opt(&ledger_name(account)).await?;
        Ok(cm.and_then(|cm| cm.data).map(|data| parse(&data)).unwrap_or_default())
    }

    /// Charges `account` through `now_hour` ([`charge`]) by compare-and-swap; returns the
    /// ledger as written (or found, when there was nothing to charge).
    pub async fn charge(
        &self,
        account: &str,
        billables: &[Billable],
        funds: i64,
        now_hour: i64,
    ) -> Result<State, LedgerError> {
        crate::credit_ledger::update_data(&self.api, &ledger_name(account), account, |data| {
            let mut state = parse(data);
            let changed = charge(&mut state, billables, funds, now_hour);
            if changed {
                data.insert(KEY.into(), serde_json::to_string(&state).expect("a ledger serializes"));
            }
            (state, changed)
        })
        .await
    }
}

/// The ledger in a ConfigMap's data (an unreadable one reads as empty, and is logged).
fn parse(data: &BTreeMap<String, String>) -> State {
    let Some(json) = data.get(KEY) else { return State::default() };
    serde_json::from_str(json).unwrap_or_else(|e| {
        tracing::error!("A billing ledger does not parse: {e}");
        State::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hour(at: &str) -> i64 {
        hour_of(at.parse().unwrap())
    }

    fn server(name: &str, monthly_cents: i64, from_hour: i64) -> Billable {
        Billable { name: name.into(), uid: format!("uid-{name}"), id: None, monthly_cents, from_hour, free_from: None }
    }

    #[test]
    fn a_month_of_hours_adds_up_to_the_monthly_price_and_no_more() {
        for monthly in [0, 1, 500, 730, 1000, 2000, 99_999] {
            let month: i64 = (1..=HOURS_PER_MONTH).map(|k| hour_price(monthly, k)).sum();
            assert_eq!(month, monthly);
            assert_eq!(hour_price(monthly, HOURS_PER_MONTH + 1), 0);
        }
        assert_eq!((hour_price(1000, 1), hour_price(1000, 2), hour_price(1000, 3)), (1, 1, 2));
    }

    #[test]
    fn each_server_hour_is_charged_once_however_often_charging_runs() {
        let start = hour("2026-12-02T10:30:00Z");
        let servers = [server("srv-1", 7300, start), server("srv-2", 730, start + 2)];
        let mut state = State::default();
        assert!(charge(&mut state, &servers, 1_000_000, start));
        assert!(!charge(&mut state, &servers, 1_000_000, start), "the same hour again: nothing");
        for h in start + 1..=start + 4 {
            charge(&mut state, &servers, 1_000_000, h);
            charge(&mut state, &servers, 1_000_000, h);
        }
        // srv-1: 5 hours at 10 cents; srv-2 from its own creation: 3 hours at 1 cent.
        assert_eq!(state.charged_cents, 5 * 10 + 3);
        let mut seen = std::collections::BTreeSet::new();
        assert!(state.entries.iter().all(|c| seen.insert((c.server.clone(), c.hour))), "{:?}", state.entries);
        // One run after three missed hours charges the three.
        let mut late = state.clone();
        charge(&mut late, &servers, 1_000_000, start + 7);
        assert_eq!(late.charged_cents, state.charged_cents + 3 * 11);
    }

    #[test]
    fn charging_stops_when_the_balance_is_used_up_and_goes_on_after_a_top_up() {
        let start = hour("2026-12-02T00:00:00Z");
        let servers = [server("srv-1", 7300, start)];
        let mut state = State::default();
        charge(&mut state, &servers, 25, start);
        charge(&mut state, &servers, 25, start + 5);
        // 10, 20, 30: the third hour takes the balance below zero; nothing after it.
        assert_eq!(state.charged_cents, 30);
        let s = standing(&state, &servers, 25);
        assert_eq!((s.balance_cents, s.suspended, s.low), (-5, true, false));
        // A top-up: charged again from the current hour, not for the suspended ones.
        charge(&mut state, &servers, 1025, start + 6);
        assert_eq!(state.charged_cents, 40);
        let s = standing(&state, &servers, 1025);
        assert_eq!((s.balance_cents, s.monthly_burn_cents, s.suspended), (985, 7300, false));
        // 985 cents is less than a day (240 cents) of burn? No; 200 would be.
        assert!(!s.low);
        assert!(standing(&state, &servers, 240).low);
    }

    #[test]
    fn free_hours_a_new_month_and_servers_gone() {
        let start = hour("2026-11-30T22:00:00Z");
        let mut stopped = server("srv-1", 7300, start);
        stopped.free_from = Some(start + 1);
        let mut state = State::default();
        charge(&mut state, &[stopped.clone()], 10_000, start);
        charge(&mut state, &[stopped.clone()], 10_000, start + 3);
        assert_eq!(state.charged_cents, 10, "only the hour before it stopped");
        assert_eq!(standing(&state, &[stopped.clone()], 10_000).monthly_burn_cents, 0);
        // December began at start + 2: the month's hours count again from one.
        let meter = &state.servers["srv-1"];
        assert_eq!((meter.month, meter.hours), (202612, 0));
        // Gone: its meter goes; a new server of that name is charged afresh.
        charge(&mut state, &[], 10_000, start + 4);
        assert!(state.servers.is_empty());
        let again = Billable { uid: "uid-new".into(), ..server("srv-1", 7300, start + 5) };
        charge(&mut state, &[again], 10_000, start + 5);
        assert_eq!(state.charged_cents, 20);
    }

    #[test]
    fn a_ledger_begins_when_it_is_first_charged() {
        let now = hour("2026-12-02T10:00:00Z");
        let mut state = State::default();
        charge(&mut state, &[server("srv-1", 7300, now - 100)], 10_000, now);
        assert_eq!((state.since, state.charged_cents), (now, 10), "not the 100 hours before it was funded");
    }

    #[test]
    fn the_clock_runs_faster_from_its_epoch() {
        let epoch: jiff::Timestamp = "2026-12-02T10:00:00Z".parse().unwrap();
        let clock = Clock { epoch, scale: 1800 };
        let later = epoch + jiff::SignedDuration::from_secs(2);
        assert_eq!(clock.at(later), "2026-12-02T11:00:00Z".parse().unwrap());
        assert_eq!(Clock::real().at(later), later);
        assert!(clock.until_next_hour() <= Duration::from_secs(2));
    }
}
