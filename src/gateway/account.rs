//! The caller's account: `GET /api/v1/account/` shows its credit, and for an account charged
//! here ([`crate::billing`]: prepaid funds) the balance, the burn and the last charges of its
//! ledger. The balance is read from the ledger itself; the burn and the suspension are what
//! the operator's last charge found (the account's status).

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::Tenant;
use super::error::ApiError;
use super::{AppState, route_both, with_405};
use crate::api::ConditionStatus;
use crate::billing::{self, HOURS_PER_MONTH};

/// Charges shown, newest first.
pub const CHARGES_SHOWN: usize = 20;

pub fn router() -> Router<AppState> {
    route_both(Router::new(), "/api/v1/account/", with_405(get(get_account), "GET, HEAD"))
}

/// The caller's account.
#[derive(Serialize, ToSchema, Debug, PartialEq)]
pub struct AccountView {
    /// The account's name.
    #[schema(example = "demo")]
    pub name: String,
    /// Monthly credit: the plans of the account's servers may cost at most this much a month.
    pub credit_cents: i64,
    /// Whether the account is charged by the hour against prepaid funds here; without it the
    /// fields below are null or zero.
    pub charged: bool,
    /// Everything paid in (the hosting team tops it up).
    pub funds_cents: Option<i64>,
    /// Funds less everything charged.
    pub balance_cents: Option<i64>,
    /// Everything charged so far.
    pub charged_cents: i64,
    /// What an hour of the account's servers costs now: a 730th of `monthly_burn_cents`.
    #[schema(example = 4.1096)]
    pub hourly_burn_cents: f64,
    /// The monthly prices of the servers charged now, added up.
    pub monthly_burn_cents: i64,
    /// The start of the last hour charged.
    pub charged_through: Option<String>,
    /// Less than a day of burn is left.
    pub low_balance: bool,
    /// The balance is used up: the servers are halted and creates answer 402 until a top-up.
    pub suspended: bool,
    /// The last charges, newest first (at most 20): one per server and hour.
    pub charges: Vec<ChargeView>,
}

/// One server-hour charged.
#[derive(Serialize, ToSchema, Debug, PartialEq)]
pub struct ChargeView {
    /// The start of the hour charged.
    #[schema(example = "2026-12-02T10:00:00Z")]
    pub hour: String,
    /// The server charged.
    pub server_id: Option<i64>,
    pub amount_cents: i64,
}

#[utoipa::path(get, path = "/api/v1/account/", tag = "account",
    responses(
        (status = 200, description = "The caller's account: credit, balance, burn and the last charges", body = AccountView),
        (status = 401, description = "Missing or unknown token"),
        (status = 503, description = "The cluster is unavailable"),
    ),
    security(("bearer" = [])))]
pub async fn get_account(tenant: Tenant, State(state): State<AppState>) -> Result<Json<AccountView>, ApiError> {
    let account = state.caches.account(&tenant.account).ok_or(ApiError::Unauthorized("Invalid token."))?;
    let status = account.status.clone().unwrap_or_default();
    // An account not charged here has no ledger: nothing charged, nothing to read.
    let ledger = match account.spec.funds_cents {
        Some(_) => billing::Ledgers::new(state.client.clone(), &state.system_namespace)
            .read(&tenant.account)
            .await
            .map_err(|e| ApiError::ClusterUnavailable(e.to_string()))?,
        None => billing::State::default(),
    };
    let funds = account.spec.funds_cents;
    let low = status.conditions.iter().any(|c| c.type_ == "LowBalance" && c.status == ConditionStatus::True);
    let charges = ledger
        .entries
        .iter()
        .rev()
        .take(CHARGES_SHOWN)
        .map(|c| ChargeView {
            hour: crate::timestamps::seconds(billing::hour_start(c.hour)),
            server_id: c.id,
            amount_cents: c.cents,
        })
        .collect();
    Ok(Json(AccountView {
        name: tenant.account,
        credit_cents: account.spec.credit_cents,
        charged: funds.is_some(),
        funds_cents: funds,
        balance_cents: funds.map(|f| f - ledger.charged_cents),
        charged_cents: ledger.charged_cents,
        hourly_burn_cents: hourly(status.monthly_burn_cents),
        monthly_burn_cents: status.monthly_burn_cents,
        charged_through: status.charged_through.clone(),
        low_balance: low,
        suspended: status.suspended,
        charges,
    }))
}

/// A 730th of a monthly sum, to four decimals.
fn hourly(monthly_cents: i64) -> f64 {
    (monthly_cents as f64 / HOURS_PER_MONTH as f64 * 10_000.0).round() / 10_000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::testing::{TOKEN, app, call};
    use serde_json::json;

    #[test]
    fn an_hour_is_a_730th_of_a_month() {
        assert_eq!((hourly(3000), hourly(730), hourly(0)), (4.1096, 1.0, 0.0));
    }

    #[tokio::test]
    async fn an_account_not_charged_here_shows_its_credit_only() {
        let app = app(vec![], vec![]).await;
        let got = call(&app, "GET", "/api/v1/account/", Some(TOKEN), None).await;
        assert_eq!(got.status, 200, "{}", got.body);
        let b = &got.body;
        assert_eq!((b["name"].as_str(), b["credit_cents"].as_i64()), (Some("acme"), Some(100_000)));
        assert_eq!((b["charged"].as_bool(), b["balance_cents"].is_null()), (Some(false), true));
        assert_eq!(call(&app, "GET", "/api/v1/account", None, None).await.status, 401);
        assert_eq!(call(&app, "POST", "/api/v1/account/", Some(TOKEN), Some(json!({}))).await.status, 405);
    }
}
