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
        let account = state
            .caches
            .tokens
            .account(&crate::tokens::hash_token(token))
            .ok_or(ApiError::Unauthorized("Invalid token."))?;
        let account = state.caches.account(&account).ok_or(ApiError::Unauthorized("Invalid token."))?;
        Ok(Tenant {
            account: kube::ResourceExt::name_any(account.as_ref()),
            namespace: account.spec.namespace.clone(),
            credit_cents: account.spec.credit_cents,
        })
    }
}
