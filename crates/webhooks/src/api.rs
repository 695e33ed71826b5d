//! `/v1/webhooks`: register, change, rotate, test, inspect and replay endpoints.
//! Tenant-scoped by the API key; every handler is described in the OpenAPI document.

use crate::{
    dispatcher::{delivery_id, message_key, now_ms},
    signing::SigningKey,
    store::{
        Attempt, Delivery, DeliveryQuery, Endpoint, EndpointFields, NewDelivery, NewMessage,
        WebhookStore, status,
    },
    subscription::{CHANNEL_KINDS, Filters, pattern_problem},
};
use axum::{
    Extension, Json, Router,
    extract::{Path, Query, State},
    http::StatusCode,
    routing::{get, post},
};
use chrono::{DateTime, Utc};
use omnigate_core::{
    api_error::{ApiError, ErrorBody, FieldError},
    auth::Tenant,
};
use omnigate_model::{EventType, pb};
use serde::{Deserialize, Serialize};
use std::{collections::BTreeMap, sync::Arc, time::Duration};
use tokio::sync::Notify;
use utoipa::{IntoParams, OpenApi, ToSchema};

/// What the webhook API needs.
#[derive(Clone)]
pub struct WebhookApi {
    /// The store.
    pub store: WebhookStore,
    /// Woken after every change, so a dispatcher in this process sees it at once.
    pub changes: Arc<Notify>,
    /// How long the old secret keeps signing after a rotation.
    pub rotation_overlap: Duration,
}

/// The `/v1/webhooks` routes (put them behind the API-key middleware).
pub fn routes(state: WebhookApi) -> Router {
    Router::new()
        .route("/v1/webhooks", post(create).get(list))
        .route("/v1/webhooks/{id}", get(show).patch(update).delete(remove))
        .route("/v1/webhooks/{id}/enable", post(enable))
        .route("/v1/webhooks/{id}/disable", post(disable))
        .route("/v1/webhooks/{id}/rotate-secret", post(rotate))
        .route("/v1/webhooks/{id}/test", post(send_test))
        .route("/v1/webhooks/{id}/deliveries", get(deliveries))
        .route("/v1/webhooks/{id}/deliveries/{delivery_id}", get(delivery))
        .route(
            "/v1/webhooks/{id}/deliveries/{delivery_id}/replay",
            post(replay_one),
        )
        .route("/v1/webhooks/{id}/replay", post(replay_failed))
        .with_state(state)
}

/// The OpenAPI description of `/v1/webhooks`.
#[derive(OpenApi)]
#[openapi(
    paths(create, list, show, update, remove, enable, disable, rotate, send_test, deliveries, delivery, replay_one, replay_failed),
    components(schemas(EndpointRequest, EndpointView, DeliveryView, AttemptView, DeliveryDetail, EndpointList, DeliveryList, ReplayRequest, ReplayCount, TestSent, Filters, ErrorBody, FieldError)),
    tags((name = "webhooks", description = "Outbound webhook endpoints, deliveries and replays"))
)]
pub struct WebhooksOpenApi;

/// An endpoint to create, or the fields to change (`PATCH`: only those given change).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointRequest {
    /// `https://…` (or `http://…`) URL deliveries are POSTed to. Required on create.
    pub url: Option<String>,
    /// Event types, with wildcards: `*`, `message.*`, `call.ended`. Required on create.
    pub events: Option<Vec<String>>,
    /// Narrow by channel kind, channel id and inbox.
    pub filters: Option<Filters>,
    /// Free text for people.
    pub description: Option<String>,
    /// Extra headers sent with every delivery, e.g. an authorization token.
    pub headers: Option<BTreeMap<String, String>>,
    /// At most this many deliveries per second (null: no limit).
    pub rate_limit: Option<u32>,
    /// Deliver each conversation's events one at a time, in order.
    pub ordered: Option<bool>,
}

/// An endpoint as the API shows it. `secret` appears only when created or rotated.
#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointView {
    /// `ep_…`.
    pub id: String,
    /// Delivery URL.
    pub url: String,
    /// Free text.
    pub description: String,
    /// Event-type patterns.
    pub events: Vec<String>,
    /// Filters.
    pub filters: Filters,
    /// Extra headers.
    pub headers: BTreeMap<String, String>,
    /// Deliveries per second at most, or null.
    pub rate_limit: Option<u32>,
    /// In-order delivery per conversation.
    pub ordered: bool,
    /// False when disabled.
    pub enabled: bool,
    /// Why it was disabled, e.g. `the endpoint answered 410 Gone`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub disabled_reason: String,
    /// When the current run of failures began.
    pub failing_since: Option<DateTime<Utc>>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
    /// The `whsec_…` signing secret: shown once, on create and rotation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// A list of endpoints.
#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointList {
    /// The tenant's endpoints, oldest first.
    pub endpoints: Vec<EndpointView>,
}

/// One delivery in the log.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryView {
    /// `msg_…`: the `webhook-id` header.
    pub id: String,
    /// The Omnigate event id.
    pub event_id: String,
    /// The event type.
    pub event_type: String,
    /// `pending`, `succeeded` or `failed`.
    pub status: String,
    /// Attempts made.
    pub attempts: i64,
    /// When the next attempt is due (pending only).
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The last HTTP status received.
    pub last_status_code: Option<i64>,
    /// How the last failed attempt ended.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub last_error: String,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

/// A page of the delivery log.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryList {
    /// Newest first.
    pub deliveries: Vec<DeliveryView>,
}

/// One attempt.
#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptView {
    /// 1 for the first.
    pub attempt: i64,
    /// Started.
    pub started_at: DateTime<Utc>,
    /// How long it took.
    pub duration_ms: i64,
    /// The HTTP status, if one arrived.
    pub status_code: Option<i64>,
    /// Why it failed.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// The start of the response body (capped by `webhooks.response_body_max_bytes`).
    pub response_body: String,
}

/// A delivery with its attempts.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryDetail {
    /// The delivery.
    #[serde(flatten)]
    pub delivery: DeliveryView,
    /// Its attempts, oldest first.
    pub attempt_log: Vec<AttemptView>,
}

/// Which failed deliveries to send again.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// Every failed delivery created at or after this time.
    pub since: DateTime<Utc>,
}

/// How many deliveries were made due again.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReplayCount {
    /// Deliveries replayed.
    pub replayed: u64,
}

/// The test delivery queued.
#[derive(Debug, Serialize, ToSchema)]
pub struct TestSent {
    /// Its id in the delivery log.
    pub delivery_id: String,
}

/// Filters of `GET …/deliveries`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveryParams {
    /// `pending`, `succeeded` or `failed`.
    pub status: Option<String>,
    /// Created at or after (RFC 3339).
    pub since: Option<String>,
    /// Created before (RFC 3339).
    pub until: Option<String>,
    /// At most this many (default 50, at most 1000).
    pub limit: Option<i64>,
}

fn time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

fn optional_time(ms: i64) -> Option<DateTime<Utc>> {
    (ms != 0).then(|| time(ms))
}

fn view(endpoint: Endpoint, secret: Option<String>) -> EndpointView {
    EndpointView {
        id: endpoint.id,
        url: endpoint.url,
        description: endpoint.description,
        events: endpoint.events,
        filters: endpoint.filters,
        headers: endpoint.headers,
        rate_limit: (endpoint.rate_limit != 0).then_some(endpoint.rate_limit),
        ordered: endpoint.ordered,
        enabled: endpoint.enabled,
        disabled_reason: endpoint.disabled_reason,
        failing_since: optional_time(endpoint.failing_since),
        created_at: time(endpoint.created_at),
        updated_at: time(endpoint.updated_at),
        secret,
    }
}

fn delivery_view(d: Delivery) -> DeliveryView {
    DeliveryView {
        next_attempt_at: (d.status == status::PENDING).then(|| time(d.next_attempt_at)),
        last_status_code: (d.last_status_code != 0).then_some(d.last_status_code),
        id: d.id,
        event_id: d.event_id,
        event_type: d.event_type,
        status: d.status,
        attempts: d.attempts,
        last_error: d.last_error,
        created_at: time(d.created_at),
        updated_at: time(d.updated_at),
    }
}

fn attempt_view(a: Attempt) -> AttemptView {
    AttemptView {
        attempt: a.attempt,
        started_at: time(a.started_at),
        duration_ms: a.duration_ms,
        status_code: (a.status_code != 0).then_some(a.status_code),
        error: a.error,
        response_body: a.response_body,
    }
}

fn store_error(err: crate::store::StoreError) -> ApiError {
    tracing::error!(error = %err, "Webhook store failed");
    ApiError::unavailable("the webhook store is unavailable", Duration::from_secs(5))
}

/// Parses a JSON body, answering 422 with the field serde names when it does not fit.
fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let text = e.to_string();
        // serde names the field in backticks for unknown and missing fields.
        let field = text
            .split('`')
            .nth(1)
            .filter(|_| text.contains("field"))
            .unwrap_or("body");
        ApiError::invalid_fields(vec![FieldError::new(field, text.clone())])
    })
}

/// Headers the dispatcher sets itself, which an endpoint may not override.
const RESERVED_HEADERS: [&str; 6] = [
    "content-type",
    "content-length",
    "host",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
];

/// Checks the fields, naming every one at fault.
fn validate(fields: &EndpointFields) -> Vec<FieldError> {
    let mut errors = Vec::new();
    match url::Url::parse(&fields.url) {
        Ok(url) if !matches!(url.scheme(), "http" | "https") => {
            errors.push(FieldError::new("url", "must be an http:// or https:// URL"));
        }
        Ok(url) if url.host().is_none() => errors.push(FieldError::new("url", "must name a host")),
        Ok(url) if !url.username().is_empty() || url.password().is_some() => {
            errors.push(FieldError::new(
                "url",
                "must not carry credentials (they would show in logs); send them in `headers`",
            ))
        }
        Ok(_) if fields.url.len() > 2048 => {
            errors.push(FieldError::new("url", "must be at most 2048 characters"))
        }
        Ok(_) => {}
        Err(e) => errors.push(FieldError::new("url", format!("is not a URL: {e}"))),
    }
    if fields.events.is_empty() {
        errors.push(FieldError::new(
            "events",
            "must name at least one event type (`*` for all)",
        ));
    }
    for (i, pattern) in fields.events.iter().enumerate() {
        if let Some(problem) = pattern_problem(pattern) {
            errors.push(FieldError::new(format!("events[{i}]"), problem));
        }
    }
    for (i, kind) in fields.filters.channel_kinds.iter().enumerate() {
        if !CHANNEL_KINDS.contains(&kind.as_str()) {
            errors.push(FieldError::new(
                format!("filters.channel_kinds[{i}]"),
                format!("must be one of {}", CHANNEL_KINDS.join(", ")),
            ));
        }
    }
    for (name, value) in &fields.headers {
        let field = format!("headers.{name}");
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            errors.push(FieldError::new(field, "is not a valid header name"));
        } else if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            errors.push(FieldError::new(
                field,
                "is set by Omnigate and cannot be overridden",
            ));
        } else if http::HeaderValue::from_str(value).is_err() {
            errors.push(FieldError::new(
                field,
                "has a value that is not a valid header value",
            ));
        }
    }
    if fields.rate_limit > 100_000 {
        errors.push(FieldError::new(
            "rate_limit",
            "must be at most 100000 per second",
        ));
    }
    if fields.description.len() > 1000 {
        errors.push(FieldError::new(
            "description",
            "must be at most 1000 characters",
        ));
    }
    errors
}

impl WebhookApi {
    async fn owned(&self, tenant: &str, id: &str) -> Result<Endpoint, ApiError> {
        self.store
            .endpoint(tenant, id)
            .await
            .map_err(store_error)?
            .ok_or_else(|| ApiError::not_found(format!("no webhook endpoint `{id}`")))
    }
}

/// Register an endpoint. The answer carries its `whsec_` secret, shown once.
#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks", request_body = EndpointRequest,
    responses((status = 201, body = EndpointView), (status = 422, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn create(
    State(api): State<WebhookApi>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<EndpointView>), ApiError> {
    let request: EndpointRequest = parse_body(&body)?;
    let mut missing = Vec::new();
    if request.url.is_none() {
        missing.push(FieldError::new("url", "is required"));
    }
    if request.events.is_none() {
        missing.push(FieldError::new(
            "events",
            "is required (`[\"*\"]` for every event)",
        ));
    }
    if !missing.is_empty() {
        return Err(ApiError::invalid_fields(missing));
    }
    let fields = merged(request, None);
    let errors = validate(&fields);
    if !errors.is_empty() {
        return Err(ApiError::invalid_fields(errors));
    }
    let now = now_ms();
    let secret = SigningKey::generate().to_secret();
    let endpoint = Endpoint {
        id: format!("ep_{}", uuid::Uuid::new_v4().simple()),
        tenant,
        url: fields.url,
        description: fields.description,
        events: fields.events,
        filters: fields.filters,
        headers: fields.headers,
        rate_limit: fields.rate_limit,
        ordered: fields.ordered,
        enabled: true,
        disabled_reason: String::new(),
        secret: secret.clone(),
        previous_secret: String::new(),
        previous_secret_until: 0,
        failing_since: 0,
        created_at: now,
        updated_at: now,
    };
    api.store
        .create_endpoint(&endpoint)
        .await
        .map_err(store_error)?;
    api.changes.notify_waiters();
    tracing::info!(endpoint = %endpoint.id, "Webhook endpoint created");
    Ok((StatusCode::CREATED, Json(view(endpoint, Some(secret)))))
}

/// The request's fields over `current`'s (or the defaults).
fn merged(request: EndpointRequest, current: Option<&Endpoint>) -> EndpointFields {
    EndpointFields {
        url: request
            .url
            .or_else(|| current.map(|c| c.url.clone()))
            .unwrap_or_default(),
        description: request
            .description
            .or_else(|| current.map(|c| c.description.clone()))
            .unwrap_or_default(),
        events: request
            .events
            .or_else(|| current.map(|c| c.events.clone()))
            .unwrap_or_default(),
        filters: request
            .filters
            .or_else(|| current.map(|c| c.filters.clone()))
            .unwrap_or_default(),
        headers: request
            .headers
            .or_else(|| current.map(|c| c.headers.clone()))
            .unwrap_or_default(),
        rate_limit: request
            .rate_limit
            .or_else(|| current.map(|c| c.rate_limit))
            .unwrap_or(0),
        ordered: request
            .ordered
            .or_else(|| current.map(|c| c.ordered))
            .unwrap_or(false),
    }
}

/// The tenant's endpoints.
#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks", responses((status = 200, body = EndpointList)))]
async fn list(
    State(api): State<WebhookApi>,
    Extension(Tenant(tenant)): Extension<Tenant>,
) -> Result<Json<EndpointList>, ApiError> {
    let endpoints = api.store.endpoints(&tenant).await.map_err(store_error)?;
    Ok(Json(EndpointList {
        endpoints: endpoints.into_iter().map(|e| view(e, None)).collect(),
    }))
}

/// One endpoint.
#[utoipa::path(get, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = String, Path, description = "Endpoint id")),
    responses((status = 200, body = EndpointView), (status = 404, body = ErrorBody)))]
async fn show(
    State(api): State<WebhookApi>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path(id): Path<String>,
) -> Result<Json<EndpointView>, ApiError> {
    Ok(Json(view(api.owned(&tenant, &id).await?, None)))
}

/// Change an endpoint: only the fields given change.
#[utoipa::path(patch, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = String, Path, description = "Endpoint id")),
    request_body = EndpointRequest, responses((status = 200, body = EndpointView), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn update(
    State(api): State<WebhookApi>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<EndpointView>, ApiError> {
    let request: EndpointRequest = parse_body(&body)?;
    let current = api.owned(&tenant, &id).await?;
    let fields = merged(request, Some(&current));
    let errors = validate(&fields);
    if !errors.is_empty() {
        return Err(ApiError::invalid_fields(errors));
    }
    api.store
        .update_endpoint(&tenant, &id, &fields, now_ms())
        .await
        .map_err(store_error)?;
    api.changes.notify_waiters();
    Ok(Json(view(api.owned(&tenant, &id).await?, None)))
}

/// Delete an endpoint with its delivery log.
#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = String, Path, description = "Endpoint id")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn remove(
    State(api): State<WebhookApi>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if api
        .store
        .delete_endpoint(&tenant, &id)
        .await
        .map_err(store_error)?
    {
        api.changes.notify_waiters();
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no webhook endpoint `{id}`")))
    }
}

async fn set_enabled(
    api: &WebhookApi,
    tenant: &str,
    id: &str,
    enabled: bool,
) -> Result<Json<EndpointView>, ApiError> {
    api.owned(tenant, id).await?;
    let reason = if enabled {
        ""
    } else {
        "disabled through the API"
    };
    api.store
        .set_enabled(tenant, id, enabled, reason, now_ms())
        .await
        .map_err(store_error)?;
    api.changes.notify_waiters();
    Ok(Json(view(api.owned(tenant, id).await?, None)))
}

/// Enable an endpoint: pending deliveries resume, and the failure clock restarts.
#[utoipa::path(post, path = "/v1/webhooks/{id}/enable", tag = "webhooks", params(("id" = String, Path, description = "Endpoint id")),
    responses((status = 200, body = EndpointView), (status = 404, body = ErrorBody)))]
async fn enable(
    State(api): State<WebhookApi>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path(id): Path<String>,
) -> Result<Json<EndpointView>, ApiError> {
    set_enabled(&api, &tenant, &id, true).await
}

/// Disable an endpoint: nothing is sent to it; new events still get pending deliveries.
#[utoipa::path(post, path = "/v1/webhooks/{id}/disable", tag = "webhooks", params(("id" = String, Path, description = "Endpoint id")),
    responses((status = 200, body = EndpointView), (status = 404, body = ErrorBody)))]
async fn disable(
    State(api): State<WebhookApi>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path(id): Path<String>,
) -> Result<Json<EndpointView>, ApiError> {
    set_enabled(&api, &tenant, &id, false).await
}

/// Rotate the secret. The old one keeps signing beside the new one for
/// `webhooks.rotation_overlap`, so receivers can switch without losing deliveries.
#[utoipa::path(post, path = "/v1/webhooks/{id}/rotate-secret", tag = "webhooks", params(("id" = String, Path, description = "Endpoint id")),
    responses((status = 200, body = EndpointView), (status = 404, body = ErrorBody)))]
async fn rotate(
    State(api): State<WebhookApi>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path(id): Path<String>,
) -> Result<Json<EndpointView>, ApiError> {
    api.owned(&tenant, &id).await?;
    let secret = SigningKey::generate().to_secret();
    let now = now_ms();
    let until = now + api.rotation_overlap.as_millis() as i64;
    api.store
        .rotate_secret(&tenant, &id, &secret, until, now)
        .await
        .map_err(store_error)?;
    api.changes.notify_waiters();
    tracing::info!(endpoint = %id, "Webhook secret rotated");
    Ok(Json(view(api.owned(&tenant, &id).await?, Some(secret))))
}

/// Send a `webhook.test` event to the endpoint (whatever its event types).
#[utoipa::path(post, path = "/v1/webhooks/{id}/test", tag = "webhooks", params(("id" = String, Path, description = "Endpoint id")),
    responses((status = 202, body = TestSent), (status = 404, body = ErrorBody)))]
async fn send_test(
    State(api): State<WebhookApi>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<TestSent>), ApiError> {
    let endpoint = api.owned(&tenant, &id).await?;
    let now = now_ms();
    let kind = EventType::WebhookTest;
    // Each test is a new event: its id derives from a fresh random one.
    let event = omnigate_model::EventBuilder::component(
        "webhooks",
        pb::ChannelKind::Unspecified,
        "webhooks",
        &tenant,
    )
    .event(
        kind,
        &uuid::Uuid::new_v4().to_string(),
        format!("webhook:{}", endpoint.id),
        time(now),
        pb::event::Payload::WebhookTest(pb::WebhookTest {
            endpoint_id: endpoint.id.clone(),
        }),
    );
    let event_id = event.id.clone();
    let delivery = NewDelivery {
        id: delivery_id(&endpoint.id, &event),
        endpoint_id: endpoint.id.clone(),
        tenant,
        ordering_key: String::new(),
        seq: 0,
        first_attempt_at: now,
        first_outcome: None,
    };
    let message = NewMessage {
        key: message_key(&event),
        event_id,
        event_type: kind.as_str().into(),
        body: omnigate_model::to_json(&event).into(),
        deliveries: vec![delivery.clone()],
    };
    api.store
        .write(
            &crate::store::WriteBatch {
                messages: vec![message],
                ..Default::default()
            },
            now,
        )
        .await
        .map_err(store_error)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(TestSent {
            delivery_id: delivery.id,
        }),
    ))
}

fn parse_time(field: &str, value: Option<&String>, errors: &mut Vec<FieldError>) -> Option<i64> {
    let value = value?;
    match DateTime::parse_from_rfc3339(value) {
        Ok(at) => Some(at.timestamp_millis()),
        Err(e) => {
            errors.push(FieldError::new(
                field,
                format!("is not an RFC 3339 time: {e}"),
            ));
            None
        }
    }
}

/// The endpoint's deliveries, newest first, filtered by status and time.
#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", tag = "webhooks", params(("id" = String, Path, description = "Endpoint id")),
    responses((status = 200, body = DeliveryList), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn deliveries(
    State(api): State<WebhookApi>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path(id): Path<String>,
    Query(params): Query<DeliveryParams>,
) -> Result<Json<DeliveryList>, ApiError> {
    let mut errors = Vec::new();
    if let Some(s) = &params.status
        && !status::ALL.contains(&s.as_str())
    {
        errors.push(FieldError::new(
            "status",
            format!("must be one of {}", status::ALL.join(", ")),
        ));
    }
    let since = parse_time("since", params.since.as_ref(), &mut errors);
    let until = parse_time("until", params.until.as_ref(), &mut errors);
    let limit = params.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        errors.push(FieldError::new("limit", "must be between 1 and 1000"));
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid_fields(errors));
    }
    api.owned(&tenant, &id).await?;
    let query = DeliveryQuery {
        status: params.status,
        since,
        until,
        limit,
    };
    let found = api
        .store
        .deliveries(&id, &query)
        .await
        .map_err(store_error)?;
    Ok(Json(DeliveryList {
        deliveries: found.into_iter().map(delivery_view).collect(),
    }))
}

/// One delivery with every attempt.
#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries/{delivery_id}", tag = "webhooks",
    params(("id" = String, Path, description = "Endpoint id"), ("delivery_id" = String, Path, description = "Delivery id (`webhook-id`)")),
    responses((status = 200, body = DeliveryDetail), (status = 404, body = ErrorBody)))]
async fn delivery(
    State(api): State<WebhookApi>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path((id, delivery_id)): Path<(String, String)>,
) -> Result<Json<DeliveryDetail>, ApiError> {
    api.owned(&tenant, &id).await?;
    let (delivery, attempts) = api
        .store
        .delivery(&id, &delivery_id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| ApiError::not_found(format!("no delivery `{delivery_id}`")))?;
    Ok(Json(DeliveryDetail {
        delivery: delivery_view(delivery),
        attempt_log: attempts.into_iter().map(attempt_view).collect(),
    }))
}

/// Send one finished delivery again (same `webhook-id`).
#[utoipa::path(post, path = "/v1/webhooks/{id}/deliveries/{delivery_id}/replay", tag = "webhooks",
    params(("id" = String, Path, description = "Endpoint id"), ("delivery_id" = String, Path, description = "Delivery id")),
    responses((status = 202, body = ReplayCount), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn replay_one(
    State(api): State<WebhookApi>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path((id, delivery_id)): Path<(String, String)>,
) -> Result<(StatusCode, Json<ReplayCount>), ApiError> {
    api.owned(&tenant, &id).await?;
    let replayed = api
        .store
        .replay(&id, Some(&delivery_id), 0, now_ms())
        .await
        .map_err(store_error)?;
    if replayed == 0 {
        let exists = api
            .store
            .delivery(&id, &delivery_id)
            .await
            .map_err(store_error)?
            .is_some();
        return Err(if exists {
            ApiError::new(
                StatusCode::CONFLICT,
                "still_pending",
                "the delivery is still pending; it is retried on its own",
            )
        } else {
            ApiError::not_found(format!("no delivery `{delivery_id}`"))
        });
    }
    Ok((StatusCode::ACCEPTED, Json(ReplayCount { replayed })))
}

/// Send every failed delivery created since a time again.
#[utoipa::path(post, path = "/v1/webhooks/{id}/replay", tag = "webhooks", params(("id" = String, Path, description = "Endpoint id")),
    request_body = ReplayRequest, responses((status = 202, body = ReplayCount), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn replay_failed(
    State(api): State<WebhookApi>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<ReplayCount>), ApiError> {
    let request: ReplayRequest = parse_body(&body)?;
    api.owned(&tenant, &id).await?;
    let replayed = api
        .store
        .replay(&id, None, request.since.timestamp_millis(), now_ms())
        .await
        .map_err(store_error)?;
    Ok((StatusCode::ACCEPTED, Json(ReplayCount { replayed })))
}
