//! The one HTTP listener: connector routes plus `/healthz`, `/readyz` and `/metrics`,
//! behind body limits, timeouts, request tracing and request metrics.

use crate::{config::ServerConfig, health::Health};
use axum::{
    Router,
    extract::{DefaultBodyLimit, MatchedPath, Request, State},
    http::StatusCode,
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use metrics_exporter_prometheus::PrometheusHandle;
use std::{
    future::IntoFuture,
    time::{Duration, Instant},
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
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
    let ops = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(OpsState { health, metrics });
    app.merge(ops)
        .layer(middleware::from_fn(record_request))
        .layer(DefaultBodyLimit::max(config.body_limit_bytes))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_millis(config.request_timeout_ms),
        ))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request| {
                    // The path only: query strings can carry secrets (hub.verify_token).
                    tracing::info_span!("http", method = %request.method(), path = %request.uri().path())
                })
                // 5xx answers here are expected (503 while Kafka is away), not crashes.
                .on_failure(tower_http::trace::DefaultOnFailure::new().level(tracing::Level::WARN)),
        )
}

async fn readyz(State(state): State<OpsState>) -> Response {
    if state.health.kafka_reachable() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "kafka unreachable").into_response()
    }
}

async fn render_metrics(State(state): State<OpsState>) -> Response {
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
    metrics::histogram!("omnigate_http_request_duration_seconds", "route" => route.clone(), "status" => status.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!("omnigate_http_requests_total", "route" => route, "status" => status)
        .increment(1);
    response
}

/// Serves `app` until `shutdown` fires, then drains in-flight requests for up to `grace`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
    grace: Duration,
) -> std::io::Result<()> {
    let signal = shutdown.clone();
    let server = axum::serve(listener, app)
        .with_graceful_shutdown(async move { signal.cancelled().await })
        .into_future();
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => result,
        () = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(grace_ms = grace.as_millis() as u64, "Requests still in flight after the grace period; closing");
            Ok(())
        }
    }
}
