//! The webhook endpoints.

use crate::{Whatsapp, normalize::NormalizeCtx, verify};
use axum::{
    Router,
    body::Bytes,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use chrono::Utc;
use omnigate_core::{
    api_error::ApiError,
    ingest, publish,
    telemetry::{ChannelMetrics, EventOutcome},
};
use omnigate_model::pb;
use secrecy::ExposeSecret;
use std::collections::HashMap;

/// The channel metrics of every WhatsApp channel.
pub(crate) const METRICS: ChannelMetrics = ChannelMetrics::whatsapp();

pub(crate) fn routes(connector: Whatsapp) -> Router {
    Router::new()
        .route("/webhooks/whatsapp/{channel}", get(handshake).post(receive))
        .with_state(connector)
}

/// `GET`: answers Meta's handshake with the raw challenge when the token matches.
async fn handshake(
    State(wa): State<Whatsapp>,
    Path(channel): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let Some(config) = wa.inner.config.channels.get(&channel) else {
        return ApiError::not_found("no such WhatsApp channel").into_response();
    };
    let mode = query.get("hub.mode").map(String::as_str);
    let token = query
        .get("hub.verify_token")
        .map(String::as_str)
        .unwrap_or("");
    let challenge = query.get("hub.challenge");
    match (mode, challenge) {
        (Some("subscribe"), Some(challenge))
            if verify::verify_token_matches(config.verify_token.expose_secret(), token) =>
        {
            tracing::info!(channel, "WhatsApp webhook verified");
            ([(header::CONTENT_TYPE, "text/plain")], challenge.clone()).into_response()
        }
        _ => {
            tracing::warn!(channel, "WhatsApp verification refused");
            ApiError::new(
                StatusCode::FORBIDDEN,
                "verification_failed",
                "hub.mode or hub.verify_token is wrong",
            )
            .into_response()
        }
    }
}

/// `POST`: verifies, normalizes, publishes, and answers 200 only after Kafka acknowledged.
async fn receive(
    State(wa): State<Whatsapp>,
    Path(channel): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let started = std::time::Instant::now();
    let answer = handle(wa, channel, headers, body).await;
    METRICS.request_duration(started.elapsed().as_secs_f64());
    answer
}

async fn handle(
    wa: Whatsapp,
    channel: String,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let Some(config) = wa.inner.config.channels.get(&channel) else {
        return Err(ApiError::not_found("no such WhatsApp channel"));
    };
    let signature = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok());
    if let Err(err) = verify::verify_signature(
        config.app_secret.expose_secret().as_bytes(),
        signature,
        &body,
    ) {
        METRICS.events(&channel, EventOutcome::Rejected, 1);
        tracing::warn!(channel, reason = %err, "WhatsApp webhook signature refused");
        return Err(ApiError::unauthorized("invalid_signature", err.to_string()));
    }
    METRICS.received_bytes(&channel, body.len() as u64);

    let received_at = Utc::now();
    let cx = NormalizeCtx {
        channel_id: &channel,
        tenant: &config.tenant,
        received_at,
    };
    let publisher = &wa.inner.ctx.publisher;
    let normalized = match crate::normalize(&body, &cx) {
        Ok(normalized) => normalized,
        Err(err) => {
            // Signed by Meta but unreadable: keep the bytes, answer 200 so Meta stops retrying.
            dead_letter(&wa, &cx, &body, &err.to_string()).await?;
            return Ok(StatusCode::OK);
        }
    };
    for event in &normalized.events {
        wa.inner.windows.observe(event);
    }
    let count = normalized.events.len();
    let mut records = Vec::with_capacity(count);
    for event in normalized.events {
        let needs_download = crate::media::pending_media(&event);
        publish::push_inbound(&mut records, event, needs_download);
    }
    let ingested = ingest::publish_or_dead_letter(publisher, &wa.inner.ctx.blobs, &records, || {
        raw_letter(&cx, &body, "")
    })
    .await
    .inspect_err(
        |err| tracing::warn!(channel, error = %err, "Kafka did not take the events; answering 503"),
    )?;
    if ingested == ingest::Ingested::DeadLettered {
        METRICS.events(&channel, EventOutcome::DeadLettered, 1);
        return Ok(StatusCode::OK);
    }
    if !normalized.rejected.is_empty() {
        dead_letter(&wa, &cx, &body, &normalized.rejected.join("; ")).await?;
    }
    if normalized.ignored_changes > 0 {
        METRICS.events(
            &channel,
            EventOutcome::Ignored,
            normalized.ignored_changes as u64,
        );
    }
    METRICS.events(&channel, EventOutcome::Published, count as u64);
    tracing::debug!(channel, events = count, "WhatsApp webhook accepted");
    Ok(StatusCode::OK)
}

async fn dead_letter(
    wa: &Whatsapp,
    cx: &NormalizeCtx<'_>,
    body: &Bytes,
    reason: &str,
) -> Result<(), ApiError> {
    METRICS.events(cx.channel_id, EventOutcome::DeadLettered, 1);
    tracing::warn!(channel = cx.channel_id, %reason, bytes = body.len(), "WhatsApp body dead-lettered");
    ingest::dead_letter(
        &wa.inner.ctx.publisher,
        &wa.inner.ctx.blobs,
        raw_letter(cx, body, reason),
    )
    .await?;
    Ok(())
}

/// A dead letter carrying the request's exact bytes.
fn raw_letter(cx: &NormalizeCtx<'_>, body: &Bytes, reason: &str) -> pb::DeadLetter {
    ingest::raw_dead_letter(
        pb::ChannelKind::Whatsapp,
        cx.channel_id,
        cx.tenant,
        "application/json",
        body,
        reason,
        cx.received_at,
    )
}
