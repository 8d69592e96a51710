//! Authentication: `Authorization: Bearer <token>` resolved, from the caches, to the account
//! it acts for. Checked before anything else a handler does.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;

use super::AppState;
use super::error::ApiError;

/// The authenticated caller: an account and its namespace.
#[derive(Clone, Debug)]
pub struct Tenant {
    pub account: String,
    pub namespace: String,
    pub credit_cents: i64,
    /// The account's balance is used up (the operator's charging): creates answer 402.
    pub suspended: bool,
}

impl FromRequestParts<AppState> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return Err(ApiError::Unauthorized("Authentication credentials were not provided."));
        };
        let value = value.to_str().map_err(|_| ApiError::Unauthorized("Invalid token header."))?;
        let mut words = value.split_whitespace();
        let (Some(scheme), Some(token), None) = (words.next(), words.next(), words.next()) else {
            return Err(ApiError::Unauthorized("Invalid token header. Expected \"Bearer <token>\"."));
        };
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(ApiError::Unauthorized("Authentication credentials were not provided."));
        }
        if !state.caches.is_ready() {
            return Err(ApiError::Unavailable("The gateway is starting; try again shortly."));
        }
        let record = state
            .caches
            .tokens
            .record(&crate::tokens::hash_token(token))
            .ok_or(ApiError::Unauthorized("Invalid token."))?;
        // The account it was made for: not one deleted and made again under the same name,
        // not one being deleted, and not after the token's expiry.
        let account = state
            .caches
            .account(&record.account)
            .filter(|a| a.metadata.deletion_timestamp.is_none())
            .filter(|a| record.valid_for(a.metadata.uid.as_deref(), jiff::Timestamp::now()))
            .ok_or(ApiError::Unauthorized("Invalid token."))?;
        state.rate_limiter.check(&record.hash, std::time::Instant::now()).map_err(ApiError::Throttled)?;
        Ok(Tenant {
            account: kube::ResourceExt::name_any(account.as_ref()),
            namespace: account.spec.namespace.clone(),
            credit_cents: account.spec.credit_cents,
            suspended: account.suspended(),
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::gateway::testing::{self, TOKEN, call, fixture, settings};
    use crate::tokens::EXPIRES_KEY;
    use k8s_openapi::ByteString;

    #[tokio::test]
    async fn a_token_acts_only_for_the_account_it_was_made_for() {
        let mut f = fixture(vec![], vec![]);
        // The account `acme` was deleted and made again: same name, another UID.
        f.accounts[0].metadata.uid = Some("uid-acme-again".into());
        // `other` is being deleted.
        f.accounts[1].metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()));
        // A third account whose token has expired, and a fourth whose token has not.
        f.accounts.push(testing::account("late"));
        f.accounts.push(testing::account("fresh"));
        let mut expired = testing::token("vps_test_late", "late");
        expired.data.as_mut().unwrap().insert(EXPIRES_KEY.into(), ByteString(b"2020-01-01T00:00:00Z".to_vec()));
        let mut valid = testing::token("vps_test_fresh", "fresh");
        valid.data.as_mut().unwrap().insert(EXPIRES_KEY.into(), ByteString(b"2999-01-01T00:00:00Z".to_vec()));
        f.tokens.extend([expired, valid]);
        let app = testing::app_of(f, &settings()).await;
        for token in [TOKEN, testing::OTHER_TOKEN, "vps_test_late"] {
            let a = call(&app, "GET", "/api/v1/servers/", Some(token), None).await;
            assert_eq!((a.status, a.header("www-authenticate")), (401, Some("Bearer")), "{token}: {a:?}");
        }
        assert_eq!(call(&app, "GET", "/api/v1/servers/", Some("vps_test_fresh"), None).await.status, 200);
    }

    #[tokio::test]
    async fn each_token_is_rate_limited() {
        let limited = crate::gateway::GatewayArgs { rate_limit: 1.0, rate_burst: 3, ..settings() };
        let app = testing::app_of(fixture(vec![], vec![]), &limited).await;
        for _ in 0..3 {
            assert_eq!(call(&app, "GET", "/api/v1/plans/", Some(TOKEN), None).await.status, 200);
        }
        let a = call(&app, "GET", "/api/v1/plans/", Some(TOKEN), None).await;
        assert_eq!(a.status, 429, "{a:?}");
        assert_eq!(a.header("retry-after"), Some("1"));
        assert_eq!((a.header("ratelimit-limit"), a.header("ratelimit-remaining")), (Some("3"), Some("0")));
        assert!(a.body["detail"].as_str().unwrap().starts_with("Request was throttled."), "{a:?}");
        // Another token has its own bucket; a bad token is a 401, never a 429.
        assert_eq!(call(&app, "GET", "/api/v1/plans/", Some(testing::OTHER_TOKEN), None).await.status, 200);
        assert_eq!(call(&app, "GET", "/api/v1/plans/", Some("nope"), None).await.status, 401);
    }
}
