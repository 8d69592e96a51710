//! One error type for every handler, rendered in Django REST Framework's shapes, and the
//! body extractor that turns malformed or oversized bodies into the same shapes.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

/// Field errors in DRF's shape: `{"field": ["message", ...]}`, in the order they were found.
#[derive(Debug, Default)]
pub struct FieldErrors(Vec<(String, Vec<String>)>);

impl FieldErrors {
    pub fn add(&mut self, field: &str, message: impl Into<String>) {
        match self.0.iter_mut().find(|(f, _)| f == field) {
            Some((_, messages)) => messages.push(message.into()),
            None => self.0.push((field.to_string(), vec![message.into()])),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn has(&self, field: &str) -> bool {
        self.0.iter().any(|(f, _)| f == field)
    }

    /// `Ok(())` when nothing failed, else the 400 listing every failing field.
    pub fn into_result(self) -> Result<(), ApiError> {
        if self.is_empty() { Ok(()) } else { Err(ApiError::Fields(self)) }
    }

    fn to_json(&self) -> Value {
        Value::Object(self.0.iter().map(|(f, m)| (f.clone(), json!(m))).collect::<Map<_, _>>())
    }
}

/// Everything a handler can answer besides success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 401 with `WWW-Authenticate: Bearer`.
    #[error("unauthorized: {0}")]
    Unauthorized(&'static str),
    /// 404 `{"detail": "Not found."}`: also for another tenant's objects.
    #[error("not found")]
    NotFound,
    /// 400 `{"detail": ...}`.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// 400 `{"field": [...]}`.
    #[error("invalid fields: {0:?}")]
    Fields(FieldErrors),
    /// 402 `{"detail": ...}`.
    #[error("payment required: {0}")]
    PaymentRequired(String),
    /// 405 with an `Allow` header.
    #[error("method {method} not allowed")]
    MethodNotAllowed { method: String, allow: &'static str },
    /// 409 `{"detail": ...}`.
    #[error("conflict: {0}")]
    Conflict(String),
    /// 413.
    #[error("request body too large")]
    PayloadTooLarge,
    /// 429 with `Retry-After` and `RateLimit-*`: the token's rate limit.
    #[error("throttled")]
    Throttled(super::rate_limit::Refused),
    /// 503 `{"detail": ...}`.
    #[error("unavailable: {0}")]
    Unavailable(&'static str),
    /// 503 `{"detail": ...}` with `Retry-After`: the API server is overloaded or away.
    #[error("the cluster is unavailable: {0}")]
    ClusterUnavailable(String),
    /// 500; logged with its cause, never shown.
    #[error("internal error: {0:#}")]
    Internal(#[from] anyhow::Error),
}

/// How long a client is asked to wait when the cluster is unavailable.
const RETRY_AFTER_SECS: u32 = 5;

/// The one mapping of the API server's answers to the REST API's: what a client can
/// foresee gets a clear status, and only what is a bug stays a 500.
impl From<kube::Error> for ApiError {
    fn from(e: kube::Error) -> Self {
        match e {
            // The object is gone (a delete or patch of what was just deleted), or a
            // precondition on its uid failed (it is another object now).
            kube::Error::Api(s) if s.code == 404 || (s.code == 409 && s.reason == "Conflict") => ApiError::NotFound,
            kube::Error::Api(s) if s.code == 422 => {
                tracing::warn!(message = s.message, "The API server refused a write");
                ApiError::BadRequest("The request was refused by validation.".into())
            }
            kube::Error::Api(s) if s.code == 403 && s.message.contains("because it is being terminated") => {
                ApiError::Conflict("The account is being deleted: nothing can be created in it.".into())
            }
            kube::Error::Api(s) if s.code == 429 || s.code >= 500 => {
                tracing::warn!(code = s.code, message = s.message, "The API server is unavailable");
                ApiError::ClusterUnavailable(s.message)
            }
            kube::Error::HyperError(_) | kube::Error::Service(_) => {
                tracing::warn!(error = %e, "The API server did not answer");
                ApiError::ClusterUnavailable(e.to_string())
            }
            e => ApiError::Internal(anyhow::Error::new(e).context("Kubernetes API call failed")),
        }
    }
}

impl ApiError {
    pub fn detail(status: StatusCode, detail: &str) -> Response {
        (status, axum::Json(json!({ "detail": detail }))).into_response()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Unauthorized(detail) => {
                let mut res = ApiError::detail(StatusCode::UNAUTHORIZED, detail);
                res.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                res
            }
            ApiError::NotFound => ApiError::detail(StatusCode::NOT_FOUND, "Not found."),
            ApiError::BadRequest(detail) => ApiError::detail(StatusCode::BAD_REQUEST, &detail),
            ApiError::Fields(errors) => (StatusCode::BAD_REQUEST, axum::Json(errors.to_json())).into_response(),
            ApiError::PaymentRequired(detail) => ApiError::detail(StatusCode::PAYMENT_REQUIRED, &detail),
            ApiError::MethodNotAllowed { method, allow } => {
                let mut res =
                    ApiError::detail(StatusCode::METHOD_NOT_ALLOWED, &format!("Method \"{method}\" not allowed."));
                res.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
                res
            }
            ApiError::Conflict(detail) => ApiError::detail(StatusCode::CONFLICT, &detail),
            ApiError::PayloadTooLarge => ApiError::detail(StatusCode::PAYLOAD_TOO_LARGE, "Request body is too large."),
            ApiError::Throttled(refused) => {
                let wait = refused.retry_after.as_secs_f64().ceil().max(1.0) as u64;
                let unit = if wait == 1 { "second" } else { "seconds" };
                let detail = format!("Request was throttled. Expected available in {wait} {unit}.");
                let mut res = ApiError::detail(StatusCode::TOO_MANY_REQUESTS, &detail);
                let headers = res.headers_mut();
                headers.insert(header::RETRY_AFTER, HeaderValue::from(wait));
                headers.insert("ratelimit-limit", HeaderValue::from(refused.limit.burst as u64));
                headers.insert("ratelimit-remaining", HeaderValue::from(0));
                headers.insert("ratelimit-reset", HeaderValue::from(wait));
                headers.insert(
                    "ratelimit-policy",
                    HeaderValue::from_str(&format!("{};w=1;burst={}", refused.limit.rate, refused.limit.burst))
                        .unwrap_or(HeaderValue::from_static("")),
                );
                res
            }
            ApiError::Unavailable(detail) => ApiError::detail(StatusCode::SERVICE_UNAVAILABLE, detail),
            ApiError::ClusterUnavailable(_) => {
                let mut res = ApiError::detail(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The service is temporarily unavailable; try again shortly.",
                );
                res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
                res
            }
            ApiError::Internal(e) => {
                tracing::error!(error = format!("{e:#}"), "Request failed with an internal error");
                ApiError::detail(StatusCode::INTERNAL_SERVER_ERROR, "A server error occurred.")
            }
        }
    }
}

/// A request body read within the body limit (413 past it). Reading it is optional for the
/// client: an empty body is allowed and parses as `{}` (as DRF treats a missing body).
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Bytes::from_request(req, state).await {
            Ok(bytes) => Ok(RawBody(bytes)),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::PayloadTooLarge),
            Err(rejection) => Err(ApiError::BadRequest(format!("Could not read the request body: {rejection}"))),
        }
    }
}

impl RawBody {
    /// The body as a JSON object; anything else is `400 {"detail": "JSON parse error - ..."}`.
    pub fn json_object(&self) -> Result<Map<String, Value>, ApiError> {
        if self.0.iter().all(|b| b.is_ascii_whitespace()) {
            return Ok(Map::new());
        }
        match serde_json::from_slice::<Value>(&self.0) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(other) => Err(ApiError::BadRequest(format!(
                "JSON parse error - Expected a JSON object, but got {}.",
                json_type_name(&other)
            ))),
            Err(e) => Err(ApiError::BadRequest(format!("JSON parse error - {e}"))),
        }
    }
}

/// The JSON name of a value's type, for messages.
pub fn json_type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
