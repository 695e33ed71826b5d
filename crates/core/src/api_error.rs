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
    /// For 422: each field at fault and what is wrong with it.
    pub fields: Vec<FieldError>,
}

/// The JSON body of every error answer.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Stable machine-readable code, e.g. `invalid_request`, `not_found`, `unavailable`.
    pub code: String,
    /// What went wrong, for humans.
    pub detail: String,
    /// For `invalid_request`: each field at fault.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldError>,
}

/// One field of a request that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// The field's path in the request body, e.g. `filters.channel_kinds[0]`.
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
}

impl FieldError {
    /// Builds a field error.
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

impl ApiError {
    /// Builds an error.
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            retry_after: None,
            fields: Vec::new(),
        }
    }

    /// 422: the request is well-formed HTTP but its content is invalid.
    pub fn unprocessable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", detail)
    }

    /// 422 naming every field at fault.
    pub fn invalid_fields(fields: Vec<FieldError>) -> Self {
        let detail = fields
            .iter()
            .map(|f| format!("{}: {}", f.field, f.problem))
            .collect::<Vec<_>>()
            .join("; ");
        Self {
            fields,
            ..Self::unprocessable(detail)
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
        let body = ErrorBody {
            code: self.code.to_string(),
            detail: self.detail,
            fields: self.fields,
        };
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
