//! The `/v1` API: send commands and look up conversations.

use axum::{
    Extension, Json, Router,
    extract::{Path, State},
    http::StatusCode,
    middleware,
    routing::{get, post},
};
use omnigate_core::{
    api_error::ApiError,
    auth::{ApiKeys, Tenant, require_api_key},
    publish::{Outgoing, Publisher, Topic},
};
use omnigate_model::pb;
use omnigate_router::contacts::{ContactStore, ConversationView};
use std::{collections::HashMap, sync::Arc};

/// What the API needs to accept commands.
#[derive(Clone)]
pub struct ApiState {
    /// Where commands go.
    pub publisher: Publisher,
    /// Channel name -> kind, for every configured channel.
    pub channels: Arc<HashMap<String, pb::ChannelKind>>,
    /// The router's shared store of conversations.
    pub contacts: Arc<ContactStore>,
}

/// The `/v1` routes behind the API-key middleware.
pub fn routes(state: ApiState, keys: ApiKeys) -> Router {
    Router::new()
        .route("/v1/messages", post(send_message))
        .route("/v1/conversations/{id}", get(conversation))
        .with_state(state)
        .layer(middleware::from_fn_with_state(keys, require_api_key))
}

fn unprocessable(detail: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", detail)
}

/// `POST /v1/messages`: validates a send command, puts it on `omnigate.outbound.v1`
/// and answers 202 with its id. The result arrives later as an event.
async fn send_message(
    State(state): State<ApiState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let mut command: pb::SendCommand = serde_json::from_slice(&body)
        .map_err(|e| unprocessable(format!("body is not a send command: {e}")))?;
    let channel = command
        .channel
        .as_mut()
        .ok_or_else(|| unprocessable("`channel.channelId` is required"))?;
    let kind = *state
        .channels
        .get(&channel.channel_id)
        .ok_or_else(|| unprocessable(format!("unknown channel `{}`", channel.channel_id)))?;
    channel.kind = kind as i32;
    let channel_id = channel.channel_id.clone();
    if command.to.trim().is_empty() {
        return Err(unprocessable("`to` is required"));
    }
    if command.content.is_none() {
        return Err(unprocessable(
            "one of `text`, `media`, `template` or `markRead` is required",
        ));
    }
    command.tenant = tenant;
    if command.command_id.is_empty() {
        // A repeated request with the same idempotency key gets the same command id.
        command.command_id = if command.idempotency_key.is_empty() {
            uuid::Uuid::new_v4().to_string()
        } else {
            omnigate_model::event_id(kind, &channel_id, &command.idempotency_key, "send")
                .to_string()
        };
    }
    let command_id = command.command_id.clone();
    state
        .publisher
        .publish(Topic::Outbound, Outgoing::Command(Box::new(command)))
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "commandId": command_id })),
    ))
}

/// `GET /v1/conversations/{id}`: inbox, contact, channel and linked conversations.
async fn conversation(
    State(state): State<ApiState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path(id): Path<String>,
) -> Result<Json<ConversationView>, ApiError> {
    let view = state
        .contacts
        .conversation(&tenant, &id)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "Conversation lookup failed");
            ApiError::unavailable(
                "the conversation store is unavailable",
                std::time::Duration::from_secs(5),
            )
        })?;
    view.map(Json)
        .ok_or_else(|| ApiError::not_found("no such conversation"))
}
