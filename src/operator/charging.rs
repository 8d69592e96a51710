//! An account's charging ([`crate::billing`]), one step of its reconcile: its servers are
//! charged for the hours begun since the last step, and its status tells where it stands.
//! Below a day of burn the account gets a Warning (`LowBalance`); at zero it is suspended: the
//! watch wakes its servers, which halt and show `suspended` ([`billing_suspension`]), until a
//! top-up (a higher `spec.fundsCents`) lifts it.

use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::{Context, Result};
use crate::api::{Condition, ConditionStatus, Phase, VpsAccount, VpsAccountStatus, VpsServer};
use crate::billing::{self, Billable, Clock, Standing};

/// The reason and message of a server halted because its account is suspended.
pub const SUSPENDED_REASON: &str = "AccountSuspended";
const SUSPENDED_MESSAGE: &str = "The account's balance is used up: the server is halted until the account is topped up";

/// Charges `account` (which has funds) through the billing hour now, writes its status when
/// it changed, and says when to look again (the next hour).
pub async fn step(account: &VpsAccount, funds: i64, ctx: &Context) -> Result<Duration> {
    let clock = ctx.config.billing_clock();
    let name = account.name_any();
    let billables = billables(&account.spec.namespace, ctx, &clock);
    let now_hour = billing::hour_of(clock.now());
    let state = ctx.billing.charge(&name, &billables, funds, now_hour).await?;
    let standing = billing::standing(&state, &billables, funds);
    let old = account.status.clone().unwrap_or_default();
    let now = jiff::Timestamp::now().to_string();
    let new = status(&old, &standing, state.charged_cents, billing::hour_start(state.through), &now);
    if new != old {
        let api: Api<VpsAccount> = Api::all(ctx.client.clone());
        let patch = json!({"status": new});
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        for (type_, reason, note) in notices(&old, &new, &standing) {
            let event =
                Event { type_, reason: reason.into(), note: Some(note), action: "Charge".into(), secondary: None };
            if let Err(e) = ctx.recorder.publish(&event, &account.object_ref(&())).await {
                tracing::warn!(account = name, "Could not publish an event: {e}");
            }
        }
    }
    // A little after the hour begins, so that the clock has surely passed it.
    Ok(clock.until_next_hour() + Duration::from_millis(20))
}

/// The servers of `namespace` as charging sees them: those whose plan resolved (nothing was
/// built for the others).
fn billables(namespace: &str, ctx: &Context, clock: &Clock) -> Vec<Billable> {
    let prefix = format!("{namespace}/");
    let mut out = Vec::new();
    for key in ctx.servers.keys().into_iter().filter(|k| k.starts_with(&prefix)) {
        let Some(Ok(server)) = ctx.servers.with(&key, |json| serde_json::from_slice::<VpsServer>(json)) else {
            continue;
        };
        if let Some(b) = billable(&server, clock) {
            out.push(b);
        }
    }
    out
}

/// One server as charging sees it, in billing time.
pub fn billable(server: &VpsServer, clock: &Clock) -> Option<Billable> {
    let status = server.status.as_ref()?;
    let plan = &status.resolved.as_ref()?.plan.spec;
    let hour = |t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time| billing::hour_of(clock.at(t.0));
    let created = server.metadata.creation_timestamp.as_ref()?;
    // A stopped server of a plan that charges only running hours costs nothing from the hour
    // after it stopped (its Ready condition turned False then).
    let stopped = (!plan.charged_while_stopped && status.phase == Some(Phase::Stopped))
        .then(|| status.conditions.iter().find(|c| c.type_ == "Ready"))
        .flatten()
        .and_then(|c| c.last_transition_time.parse::<jiff::Timestamp>().ok())
        .map(|t| billing::hour_of(clock.at(t)) + 1);
    let deleted = server.metadata.deletion_timestamp.as_ref().map(|t| hour(t) + 1);
    Some(Billable {
        name: server.name_any(),
        uid: server.uid()?,
        id: status.id,
        monthly_cents: plan.monthly_price_cents,
        from_hour: hour(created),
        free_from: [stopped, deleted].into_iter().flatten().min(),
    })
}

/// The account's next status: the standing, with `LowBalance` and `Suspended` conditions
/// whose transition times move only when they flip.
fn status(old: &VpsAccountStatus, s: &Standing, charged: i64, through: jiff::Timestamp, now: &str) -> VpsAccountStatus {
    let condition = |type_: &str, on: bool, reason: &str, message: String| {
        let status = if on { ConditionStatus::True } else { ConditionStatus::False };
        Condition::observed(type_, status, reason.into(), message, &old.conditions, now, None)
    };
    let balance = s.balance_cents;
    let low = if s.low {
        condition("LowBalance", true, "LessThanADayLeft", format!("{balance} cents left: less than a day of burn"))
    } else {
        condition("LowBalance", false, "Sufficient", format!("{balance} cents left"))
    };
    let suspended = if s.suspended {
        condition("Suspended", true, "BalanceUsedUp", format!("The balance is {balance} cents: the servers are halted"))
    } else {
        condition("Suspended", false, "Funded", "The balance is positive".into())
    };
    VpsAccountStatus {
        balance_cents: Some(balance),
        charged_cents: charged,
        monthly_burn_cents: s.monthly_burn_cents,
        charged_through: Some(crate::timestamps::seconds(through)),
        suspended: s.suspended,
        conditions: vec![low, suspended],
    }
}

/// The Events a status change tells of.
fn notices(old: &VpsAccountStatus, new: &VpsAccountStatus, s: &Standing) -> Vec<(EventType, &'static str, String)> {
    let on = |st: &VpsAccountStatus, type_: &str| {
        st.conditions.iter().any(|c| c.type_ == type_ && c.status == ConditionStatus::True)
    };
    let mut out = Vec::new();
    if on(new, "LowBalance") && !on(old, "LowBalance") {
        let note = format!(
            "The balance ({} cents) is less than a day of burn ({} cents a month): top up the account",
            s.balance_cents, s.monthly_burn_cents
        );
        out.push((EventType::Warning, "LowBalance", note));
    }
    match (on(old, "Suspended"), new.suspended) {
        (false, true) => {
            let note = format!("The balance is {} cents: the account's servers are halted", s.balance_cents);
            out.push((EventType::Warning, "Suspended", note));
        }
        (true, false) => {
            let note = format!("Topped up to {} cents: the account's servers run again", s.balance_cents);
            out.push((EventType::Normal, "Resumed", note));
        }
        _ => {}
    }
    out
}

/// The server as the operator builds it: suspended (halted) while its account is, with the
/// reason of it. A server its administrator suspended stays so whatever the account.
pub fn billing_suspension(server: std::sync::Arc<VpsServer>, ctx: &Context) -> (std::sync::Arc<VpsServer>, bool) {
    let ns = server.namespace().unwrap_or_default();
    if server.spec.suspended || !ctx.account_of(&ns).is_some_and(|a| a.suspended()) {
        return (server, false);
    }
    let mut halted = (*server).clone();
    halted.spec.suspended = true;
    (std::sync::Arc::new(halted), true)
}

/// The observation of a server its account's suspension halts.
pub fn observe_suspension(obs: &mut super::phase::Observation) {
    if obs.phase == Phase::Suspended {
        obs.reason = SUSPENDED_REASON.into();
        obs.message = SUSPENDED_MESSAGE.into();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn standing(balance_cents: i64, low: bool, suspended: bool) -> Standing {
        Standing { balance_cents, monthly_burn_cents: 7300, low, suspended }
    }

    #[test]
    fn conditions_flip_with_the_standing_and_tell_of_it_once() {
        let through: jiff::Timestamp = "2026-12-02T10:00:00Z".parse().unwrap();
        let empty = VpsAccountStatus::default();
        let fine = status(&empty, &standing(1000, false, false), 10, through, "t1");
        assert!(notices(&empty, &fine, &standing(1000, false, false)).is_empty());
        let low = status(&fine, &standing(100, true, false), 910, through, "t2");
        let told = notices(&fine, &low, &standing(100, true, false));
        assert_eq!(told.iter().map(|n| (n.0, n.1)).collect::<Vec<_>>(), [(EventType::Warning, "LowBalance")]);
        let again = status(&low, &standing(90, true, false), 920, through, "t3");
        assert!(notices(&low, &again, &standing(90, true, false)).is_empty(), "told once");
        assert_eq!(again.conditions[0].last_transition_time, "t2");
        let out = status(&again, &standing(-5, false, true), 1015, through, "t4");
        let told = notices(&again, &out, &standing(-5, false, true));
        assert_eq!(told.iter().map(|n| n.1).collect::<Vec<_>>(), ["Suspended"]);
        assert!(out.suspended && out.balance_cents == Some(-5));
        let topped = status(&out, &standing(995, false, false), 1015, through, "t5");
        let told = notices(&out, &topped, &standing(995, false, false));
        assert_eq!(told.iter().map(|n| (n.0, n.1)).collect::<Vec<_>>(), [(EventType::Normal, "Resumed")]);
        assert_eq!(topped.charged_through.as_deref(), Some("2026-12-02T10:00:00Z"));
    }
}
