//! The one HTTP listener: connector routes plus `/healthz`, `/readyz` and `/metrics`,
//! behind body limits, timeouts, request tracing and request metrics.
//!
//! A webhook receiver faces the internet, so connections are handled by our own
//! accept loop (see [`connections`]) that bounds what a hostile client can hold: a
//! deadline on each request head, on each body and on idle connections, a cap on
//! open connections and a lower one per client address.

pub mod connections;

use crate::{config::ServerConfig, health::Health};
use axum::{
    Router,
    body::Body,
    extract::{DefaultBodyLimit, MatchedPath, Request, State},
    http::StatusCode,
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use metrics_exporter_prometheus::PrometheusHandle;
use std::time::{Duration, Instant};
use tower_http::{timeout::TimeoutLayer, trace::TraceLayer};

#[derive(Clone)]
struct OpsState {
    health: Health,
    metrics: PrometheusHandle,
}

/// Wraps `app` with the operational endpoints and the shared layers.
pub fn with_ops(
    app: Router,
    config: &ServerConfig,
    health: Health,
    metrics: PrometheusHandle,
) -> Router {
    let body = BodyDeadline {
        timeout: Duration::from_millis(config.body_timeout_ms),
        limit: config.body_limit_bytes,
    };
    app.merge(ops_routes(health, metrics))
        .layer(middleware::from_fn(record_request))
        .layer(DefaultBodyLimit::max(config.body_limit_bytes))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_millis(config.request_timeout_ms),
        ))
        // Outside the request timeout: the handler's time starts once its body is in.
        .layer(middleware::from_fn_with_state(body, read_body_within))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request| {
                    // The path only: query strings can carry secrets (hub.verify_token).
                    tracing::info_span!("http", method = %request.method(), path = %loggable_path(request.uri().path()))
                })
                // 5xx answers here are expected (503 while Kafka is away), not crashes.
                .on_failure(tower_http::trace::DefaultOnFailure::new().level(tracing::Level::WARN)),
        )
}

/// A request path fit for logs: the token segment of `/webhooks/cti/{channel}/{token}`
/// is the whole credential of a CTI bridge, so it is masked.
pub fn loggable_path(path: &str) -> std::borrow::Cow<'_, str> {
    match path.strip_prefix("/webhooks/cti/") {
        Some(rest) if rest.trim_end_matches('/').contains('/') => {
            let channel = rest.split('/').next().unwrap_or_default();
            format!("/webhooks/cti/{channel}/***").into()
        }
        _ => path.into(),
    }
}

/// `/healthz`, `/readyz` and `/metrics`: on the public listener and on the admin one.
pub fn ops_routes(health: Health, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(OpsState { health, metrics })
}

#[derive(Clone, Copy)]
struct BodyDeadline {
    timeout: Duration,
    limit: usize,
}

/// Reads the whole body before the handler runs, within the body deadline: a body
/// trickled in a byte at a time is cut off with 408 and its connection closed, and no
/// handler (nor Kafka) ever sees part of it.
async fn read_body_within(
    State(deadline): State<BodyDeadline>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    match tokio::time::timeout(deadline.timeout, axum::body::to_bytes(body, deadline.limit)).await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(err)) => {
            let too_large = std::error::Error::source(&err)
                .is_some_and(|source| source.is::<http_body_util::LengthLimitError>());
            if too_large {
                (StatusCode::PAYLOAD_TOO_LARGE, "request body too large").into_response()
            } else {
                (StatusCode::BAD_REQUEST, "request body could not be read").into_response()
            }
        }
        Err(_) => {
            connections::count_cut(connections::Deadline::Body);
            tracing::warn!(
                timeout_ms = deadline.timeout.as_millis() as u64,
                "Request body not complete within server.body_timeout_ms; closing"
            );
            (
                StatusCode::REQUEST_TIMEOUT,
                [(http::header::CONNECTION, "close")],
                "request body too slow",
            )
                .into_response()
        }
    }
}

/// 200 while Kafka answers (a channel in error does not stop the others, so it does
/// not make the process unready); the body names each channel in error and why.
async fn readyz(State(state): State<OpsState>) -> Response {
    let mut body = if state.health.kafka_reachable() {
        "ready".to_string()
    } else {
        "kafka unreachable".to_string()
    };
    for (channel, channel_state) in state.health.channels() {
        if let crate::connector::ChannelState::Error(reason) = channel_state {
            body.push_str(&format!("\nchannel {channel}: {reason}"));
        }
    }
    let status = if state.health.kafka_reachable() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body).into_response()
}

async fn render_metrics(State(state): State<OpsState>) -> Response {
    // Brings omnigate_channel_up up to date.
    state.health.channels();
    (
        [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

async fn record_request(request: Request, next: Next) -> Response {
    // The route template, never the raw path, keeps label cardinality bounded.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::histogram!(crate::telemetry::metric::HTTP_REQUEST_DURATION_SECONDS, "route" => route.clone(), "status" => status.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!(crate::telemetry::metric::HTTP_REQUESTS_TOTAL, "route" => route, "status" => status)
        .increment(1);
    response
}

#[cfg(test)]
mod loggable_path_tests {
    use super::loggable_path;

    #[test]
    fn the_cti_path_token_is_masked_and_other_paths_kept() {
        assert_eq!(
            loggable_path("/webhooks/cti/pbx/s3cret-token"),
            "/webhooks/cti/pbx/***"
        );
        assert_eq!(loggable_path("/webhooks/cti/pbx"), "/webhooks/cti/pbx");
        assert_eq!(
            loggable_path("/webhooks/whatsapp/demo"),
            "/webhooks/whatsapp/demo"
        );
    }
}
