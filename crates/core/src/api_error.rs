//! The one error body every HTTP endpoint answers with: `{"code", "detail"}`.

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use std::time::Duration;

/// An HTTP error with a stable machine-readable `code` and a human `detail`.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// Stable code for clients, e.g. `invalid_signature`.
    pub code: &'static str,
    /// What went wrong, without secrets or internals.
    pub detail: String,
    /// Sent as `Retry-After` (seconds) when set.
    pub retry_after: Option<Duration>,
}

impl ApiError {
    /// Builds an error.
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            retry_after: None,
        }
    }

    /// 401: missing or wrong credentials or signature.
    pub fn unauthorized(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, detail)
    }

    /// 404.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", detail)
    }

    /// 503 with `Retry-After`: the provider should send again later.
    pub fn unavailable(detail: impl Into<String>, retry_after: Duration) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail)
        }
    }
}

impl From<crate::publish::PublishError> for ApiError {
    fn from(err: crate::publish::PublishError) -> Self {
        let retry_after = err.retry_after();
        Self::unavailable(
            format!(
                "the event could not be stored, retry later: {}",
                err.message
            ),
            retry_after,
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "code": self.code, "detail": self.detail });
        let mut response = (self.status, Json(body)).into_response();
        if let Some(after) = self.retry_after {
            let secs = after.as_secs().max(1).to_string();
            if let Ok(value) = HeaderValue::from_str(&secs) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}
