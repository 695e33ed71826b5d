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
use tracing::Instrument as _;

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
    let edge = Edge {
        body_timeout: Duration::from_millis(config.body_timeout_ms),
        body_limit: config.body_limit_bytes,
        request_timeout: Duration::from_millis(config.request_timeout_ms),
    };
    app.merge(ops_routes(health, metrics))
        .layer(DefaultBodyLimit::max(config.body_limit_bytes))
        // One layer rather than a stack of four (trace, body deadline, timeout,
        // metrics): each layer boxes and clones per request, on every webhook.
        .layer(middleware::from_fn_with_state(edge, edge_of_request))
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

/// The limits every request passes through on its way in.
#[derive(Clone, Copy)]
struct Edge {
    body_timeout: Duration,
    body_limit: usize,
    request_timeout: Duration,
}

/// Every request's way through: a span named after its method and path, its body read
/// within the body deadline, the handler within the request timeout (which starts once
/// the body is in), a warning for a 5xx answer and the request metrics.
async fn edge_of_request(State(edge): State<Edge>, request: Request, next: Next) -> Response {
    // The path only: query strings can carry secrets (hub.verify_token).
    let span = tracing::info_span!("http", method = %request.method(), path = %loggable_path(request.uri().path()));
    // The route template, never the raw path, keeps label cardinality bounded.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let started = Instant::now();
    let response = async {
        let request = match read_body_within(edge, request).await {
            Ok(request) => request,
            Err(refused) => return refused,
        };
        match tokio::time::timeout(edge.request_timeout, next.run(request)).await {
            Ok(response) => response,
            Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        }
    }
    .instrument(span.clone())
    .await;
    let elapsed = started.elapsed();
    let status = response.status();
    if status.is_server_error() {
        // Expected while Kafka is away (503), so a warning, not an error.
        span.in_scope(|| {
            tracing::warn!(
                status = status.as_u16(),
                latency_ms = elapsed.as_millis() as u64,
                "Request answered with a server error"
            );
        });
    }
    let status = status.as_u16().to_string();
    metrics::histogram!(crate::telemetry::metric::HTTP_REQUEST_DURATION_SECONDS, "route" => route.clone(), "status" => status.clone())
        .record(elapsed.as_secs_f64());
    metrics::counter!(crate::telemetry::metric::HTTP_REQUESTS_TOTAL, "route" => route, "status" => status)
        .increment(1);
    response
}

/// Reads the whole body before the handler runs, within the body deadline: a body
/// trickled in a byte at a time is cut off with 408 and its connection closed, and no
/// handler (nor Kafka) ever sees part of it.
async fn read_body_within(edge: Edge, request: Request) -> Result<Request, Response> {
    let (parts, body) = request.into_parts();
    match tokio::time::timeout(
        edge.body_timeout,
        axum::body::to_bytes(body, edge.body_limit),
    )
    .await
    {
        Ok(Ok(bytes)) => Ok(Request::from_parts(parts, Body::from(bytes))),
        Ok(Err(err)) => {
            let too_large = std::error::Error::source(&err)
                .is_some_and(|source| source.is::<http_body_util::LengthLimitError>());
            Err(if too_large {
                (StatusCode::PAYLOAD_TOO_LARGE, "request body too large").into_response()
            } else {
                (StatusCode::BAD_REQUEST, "request body could not be read").into_response()
            })
        }
        Err(_) => {
            connections::count_cut(connections::Deadline::Body);
            tracing::warn!(
                timeout_ms = edge.body_timeout.as_millis() as u64,
                "Request body not complete within server.body_timeout_ms; closing"
            );
            Err((
                StatusCode::REQUEST_TIMEOUT,
                [(http::header::CONNECTION, "close")],
                "request body too slow",
            )
                .into_response())
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
