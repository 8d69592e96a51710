//! Charging end to end: an account with funds is charged by the hour in its ledger (the
//! ConfigMap `vps-billing-<account>`), each server-hour once whoever charges; at zero its
//! servers are suspended and creates answer 402; a top-up with kubectl lifts it. The tests'
//! operator runs billing time 1800 times faster (an hour every 2 s).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};
use vps_operator::api::VpsServer;
use vps_operator::billing::{self, State};
use vps_operator::kubevirt::{VirtualMachine, VirtualMachineInstance};

use super::support::gateway::{Gateway, SYSTEM_NAMESPACE, Tenant};
use super::{action, setup, wait_status};

/// Tops the account up with kubectl, as its hosting team would: `spec.fundsCents`.
fn fund(account: &str, cents: i64) {
    let patch = json!({"spec": {"fundsCents": cents}}).to_string();
    let (ok, _, err) = super::support::kubectl(&["patch", "vpsaccount", account, "--type", "merge", "-p", &patch]);
    assert!(ok, "{err}");
}

/// Polls `GET /api/v1/account/` until `done` holds (60 s at most).
async fn account_until(gw: &Gateway, token: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = gw.call("GET", "/api/v1/account/", Some(token), None).await;
        assert_eq!(got.status, 200, "{got:?}");
        if done(&got.body) {
            return got.body;
        }
        assert!(Instant::now() < deadline, "the account is not {what} after 60 s: {}", got.body);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn ledger(client: &Client, account: &str) -> State {
    billing::Ledgers::new(client.clone(), SYSTEM_NAMESPACE).read(account).await.expect("read the ledger")
}

async fn create(gw: &Gateway, t: &Tenant, name: &str) -> super::support::gateway::Answer {
    let body = json!({"name": name, "plan_id": 1, "os_id": 5, "location": "us-west", "hostname": "b.example.com"});
    gw.call("POST", "/api/v1/servers/", Some(&t.token), Some(body)).await
}

/// Every server in the ledger was charged each hour from its first to the ledger's last
/// once, and the entries add up to what was charged.
fn assert_each_hour_charged_once(state: &State) {
    let mut hours: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for charge in &state.entries {
        hours.entry(&charge.server).or_default().push(charge.hour);
    }
    assert!(!hours.is_empty(), "nothing charged: {state:?}");
    for (server, hours) in hours {
        let expected: Vec<i64> = (hours[0]..=state.through).collect();
        assert_eq!(hours, expected, "{server}: each hour once, none missed");
    }
    assert!(state.entries.len() < billing::ENTRIES_KEPT, "the ledger kept every entry of the test");
    assert_eq!(state.entries.iter().map(|c| c.cents).sum::<i64>(), state.charged_cents);
}

#[tokio::test]
async fn each_server_hour_is_charged_once_whoever_charges() {
    let (client, gw, t) = setup("billing-once").await;
    let system = super::support::current().system.as_ref().unwrap();
    // A standby operator waits in the lease, and two more chargers race the operator's.
    let standby = system.start_replica("tests-billing-standby");
    let created = create(&gw, &t, "billed").await;
    assert_eq!(created.status, 201, "{created:?}");
    let id = created.body["id"].as_i64().unwrap();
    wait_status(&gw, &t.token, id, "active").await;
    let funds = 2_000_000;
    fund(&t.account, funds);
    let clock = system.operator_config.billing_clock();
    let racers: Vec<_> = (0..2)
        .map(|_| {
            let (client, namespace, account) = (client.clone(), t.namespace.clone(), t.account.clone());
            tokio::spawn(async move {
                let ledgers = billing::Ledgers::new(client.clone(), SYSTEM_NAMESPACE);
                let servers: Api<VpsServer> = Api::namespaced(client, &namespace);
                let until = Instant::now() + Duration::from_secs(10);
                while Instant::now() < until {
                    let listed = servers.list(&ListParams::default()).await.expect("list servers");
                    let billables: Vec<_> = listed
                        .items
                        .iter()
                        .filter_map(|s| vps_operator::operator::charging::billable(s, &clock))
                        .collect();
                    let hour = billing::hour_of(clock.now());
                    ledgers.charge(&account, &billables, funds, hour).await.expect("charge");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        })
        .collect();
    for racer in racers {
        racer.await.unwrap();
    }
    // The operator charges on: six billing hours after the first.
    let first = ledger(&client, &t.account).await;
    assert!(first.since > 0, "the account was charged");
    let deadline = Instant::now() + Duration::from_secs(60);
    let state = loop {
        let state = ledger(&client, &t.account).await;
        if state.through >= first.through + 6 {
            break state;
        }
        assert!(Instant::now() < deadline, "no six more hours charged: {state:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    standby.abort();
    assert_each_hour_charged_once(&state);
    // 1000 cents a month is 1 or 2 an hour.
    assert!(state.entries.iter().all(|c| c.cents == 1 || c.cents == 2), "{:?}", state.entries);

    // The customer sees it; kubectl shows the operator's status.
    let account = account_until(&gw, &t.token, "charged", |a| a["charged_cents"].as_i64() > Some(0)).await;
    assert_eq!(account["charged"], true);
    assert_eq!(account["funds_cents"], funds);
    let (balance, charged) = (account["balance_cents"].as_i64().unwrap(), account["charged_cents"].as_i64().unwrap());
    assert_eq!(balance + charged, funds);
    assert_eq!((account["suspended"].as_bool(), account["low_balance"].as_bool()), (Some(false), Some(false)));
    assert_eq!(account["monthly_burn_cents"], 1000);
    assert_eq!(account["hourly_burn_cents"], 1.3699);
    let charges = account["charges"].as_array().unwrap();
    assert!(!charges.is_empty() && charges.iter().all(|c| c["server_id"] == id), "{account}");
    let hours: Vec<&str> = charges.iter().map(|c| c["hour"].as_str().unwrap()).collect();
    assert!(hours.windows(2).all(|w| w[0] > w[1]), "newest first: {hours:?}");
    let (ok, out, err) = super::support::kubectl(&["get", "vpsaccount", &t.account, "--no-headers"]);
    assert!(ok, "{err}");
    let row: Vec<&str> = out.split_whitespace().collect();
    assert_eq!((row[3], row[5]), (funds.to_string().as_str(), "false"), "{out}");
    assert!(row[4].parse::<i64>().is_ok_and(|b| b < funds), "the balance column: {out}");
    assert_eq!(gw.call("DELETE", &format!("/api/v1/servers/{id}/"), Some(&t.token), None).await.status, 204);
}

/// Whether an Event of `reason` about `account` was recorded.
async fn told(client: &Client, account: &str, reason: &str) -> bool {
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let list = events.list(&ListParams::default()).await.expect("list events");
    list.items.iter().any(|e| {
        e.reason.as_deref() == Some(reason) && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(account)
    })
}

#[tokio::test]
async fn an_account_out_of_funds_is_suspended_until_a_top_up() {
    let (client, gw, t) = setup("billing-zero").await;
    let created = create(&gw, &t, "runs-dry").await;
    assert_eq!(created.status, 201, "{created:?}");
    let id = created.body["id"].as_i64().unwrap();
    wait_status(&gw, &t.token, id, "active").await;
    // Ten cents: less than a day of burn (33 cents), used up in about seven hours.
    fund(&t.account, 10);
    let low = account_until(&gw, &t.token, "low", |a| a["low_balance"] == true || a["suspended"] == true).await;
    assert_eq!(low["charged"], true, "{low}");
    assert!(told(&client, &t.account, "LowBalance").await, "a Warning event below a day of burn");
    let out = account_until(&gw, &t.token, "suspended", |a| a["suspended"] == true).await;
    assert!(out["balance_cents"].as_i64().unwrap() <= 0, "{out}");
    assert!(told(&client, &t.account, "Suspended").await);

    // Its server halts and shows suspended; no new server, no start.
    wait_status(&gw, &t.token, id, "suspended").await;
    let vm = Api::<VirtualMachine>::namespaced(client.clone(), &t.namespace).get(&format!("srv-{id}")).await.unwrap();
    assert_eq!(vm.spec.run_strategy.as_deref(), Some("Halted"));
    let instances: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), &t.namespace);
    let deadline = Instant::now() + Duration::from_secs(60);
    while instances.get_opt(&format!("srv-{id}")).await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "the suspended server's instance still runs after 60 s");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let detail = wait_status(&gw, &t.token, id, "suspended").await;
    assert_eq!(detail["ip_address"], Value::Null, "halted: {detail}");
    let refused = create(&gw, &t, "more").await;
    assert_eq!(refused.status, 402, "{refused:?}");
    assert!(refused.body["detail"].as_str().unwrap().contains("suspended"), "{refused:?}");
    assert_eq!(action(&gw, &t.token, id, "start").await.status, 400, "a suspended server does not start");
    // Nothing is charged while suspended.
    let charged = ledger(&client, &t.account).await.charged_cents;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let later = ledger(&client, &t.account).await;
    assert_eq!(later.charged_cents, charged, "three hours went by uncharged");

    // A top-up lifts it: the server runs again, creates are taken, charging goes on.
    fund(&t.account, 100_000);
    let back = account_until(&gw, &t.token, "lifted", |a| a["suspended"] == false).await;
    assert!(back["balance_cents"].as_i64().unwrap() > 0, "{back}");
    wait_status(&gw, &t.token, id, "active").await;
    assert!(told(&client, &t.account, "Resumed").await);
    let another = create(&gw, &t, "after-top-up").await;
    assert_eq!(another.status, 201, "{another:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while ledger(&client, &t.account).await.charged_cents <= charged {
        assert!(Instant::now() < deadline, "no charge after the top-up");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_each_hour_charged_once_or_skipped(&ledger(&client, &t.account).await);
    for server in [id, another.body["id"].as_i64().unwrap()] {
        assert_eq!(gw.call("DELETE", &format!("/api/v1/servers/{server}/"), Some(&t.token), None).await.status, 204);
    }
}

/// Hours of a suspension go uncharged, but none is charged twice.
fn assert_each_hour_charged_once_or_skipped(state: &State) {
    let mut seen = std::collections::BTreeSet::new();
    for charge in &state.entries {
        assert!(seen.insert((&charge.server, charge.hour)), "{} charged twice for hour {}", charge.server, charge.hour);
    }
    assert_eq!(state.entries.iter().map(|c| c.cents).sum::<i64>(), state.charged_cents);
}
