//! The `/v1` API: send commands, look up conversations, manage webhooks, and the
//! OpenAPI document that describes all of it.

use axum::{
    Extension, Json, Router,
    extract::{Path, State},
    http::StatusCode,
    middleware,
    routing::{get, post},
};
use omnigate_core::{
    api_error::{ApiError, ErrorBody},
    auth::{ApiKeys, Tenant, require_api_key},
    connector::Connector,
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
    /// Every configured connector, to find where a reply into a conversation goes.
    pub connectors: Arc<Vec<Arc<dyn Connector>>>,
}

/// Builds the API's state from the context: the channels and connectors of the
/// configuration, the router's store and the webhook registry.
pub async fn start(ctx: &crate::roles::RoleContext<'_>) -> anyhow::Result<Router> {
    let config = ctx.config;
    let channels: HashMap<String, pb::ChannelKind> = config
        .channels()
        .into_iter()
        .map(|(_, channel)| (channel.id, channel.kind))
        .collect();
    let state = ApiState {
        connectors: Arc::new(
            config
                .connectors
                .iter()
                .map(|(_, c)| Arc::clone(c))
                .collect(),
        ),
        publisher: ctx.connector.publisher.clone(),
        channels: Arc::new(channels),
        contacts: ctx.contacts().await?,
    };
    let webhooks = omnigate_webhooks::api::WebhookApi {
        store: ctx.webhook_store().await?,
        changes: Arc::clone(&ctx.webhook_changes),
        rotation_overlap: config.webhooks.rotation_overlap,
    };
    Ok(routes(state, webhooks, ApiKeys::new(&config.api_keys)))
}

/// The `/v1` routes behind the API-key middleware, and `/openapi.json` in front of it.
pub fn routes(
    state: ApiState,
    webhooks: omnigate_webhooks::api::WebhookApi,
    keys: ApiKeys,
) -> Router {
    let v1 = Router::new()
        .route("/v1/messages", post(send_message))
        .route("/v1/conversations/{id}", get(conversation))
        .route(
            "/v1/conversations/{id}/messages",
            post(reply_in_conversation),
        )
        .with_state(state)
        .merge(omnigate_webhooks::api::routes(webhooks))
        .layer(middleware::from_fn_with_state(keys, require_api_key));
    v1.route("/openapi.json", get(|| async { Json(openapi()) }))
}

/// The OpenAPI document of every `/v1` endpoint, generated from the handlers.
pub fn openapi() -> utoipa::openapi::OpenApi {
    use utoipa::OpenApi as _;
    let mut doc = V1OpenApi::openapi();
    doc.merge(omnigate_webhooks::api::WebhooksOpenApi::openapi());
    doc
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "Omnigate API", description = "Send replies, look up conversations, and manage outbound webhooks. Every /v1 path takes `Authorization: Bearer <API key>`."),
    paths(send_message, reply_in_conversation, conversation),
    components(schemas(ErrorBody, ConversationView)),
    modifiers(&BearerAuth),
    security(("api_key" = [])),
)]
struct V1OpenApi;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "api_key",
                SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
            );
    }
}

/// `POST /v1/messages`: validates a send command, puts it on `omnigate.outbound.v1`
/// and answers 202 with its id. The result arrives later as an event.
#[utoipa::path(post, path = "/v1/messages", tag = "messages",
    request_body(content = serde_json::Value, description = "A SendCommand in canonical JSON: `channel.channelId`, `to`, and one of `text`, `media`, `template`, `markRead`, `typing` (live chat: `{\"on\": true, \"agent\": \"Ana\"}`); optional `idempotencyKey`."),
    responses((status = 202, description = "Accepted: `{\"commandId\": …}`; the result arrives as `message.sent` or a failed `message.status`", body = serde_json::Value),
        (status = 422, body = ErrorBody), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn send_message(
    State(state): State<ApiState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let command: pb::SendCommand = serde_json::from_slice(&body)
        .map_err(|e| ApiError::unprocessable(format!("body is not a send command: {e}")))?;
    accept(&state, tenant, command).await
}

/// `POST /v1/conversations/{id}/messages`: a reply into a conversation by the id on
/// `omnigate.routed.v1`; Omnigate picks the channel and the recipient's address.
#[utoipa::path(post, path = "/v1/conversations/{id}/messages", tag = "messages", params(("id" = String, Path, description = "Conversation id, as in `routing.conversationId`")),
    request_body(content = serde_json::Value, description = "The content of a SendCommand in canonical JSON: one of `text`, `media`, `template`, `markRead`, `typing`; optional `replyToProviderId` and `idempotencyKey`. `channel` and `to` come from the conversation."),
    responses((status = 202, description = "Accepted: `{\"commandId\": …}`", body = serde_json::Value),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn reply_in_conversation(
    State(state): State<ApiState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let mut command: pb::SendCommand = serde_json::from_slice(&body)
        .map_err(|e| ApiError::unprocessable(format!("body is not a message: {e}")))?;
    if command.channel.is_some() || !command.to.is_empty() {
        return Err(ApiError::unprocessable(
            "`channel` and `to` come from the conversation; leave them out (or use POST /v1/messages)",
        ));
    }
    let conversation = lookup(&state, &tenant, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("no such conversation"))?;
    let address = state
        .connectors
        .iter()
        .find_map(|c| c.reply_address(&conversation.conversation_key))
        .ok_or_else(|| {
            ApiError::unprocessable(format!(
                "no configured channel can reply into conversation key `{}`",
                conversation.conversation_key
            ))
        })?;
    command.channel = Some(pb::Channel {
        kind: address.kind as i32,
        channel_id: address.channel_id,
        address: String::new(),
    });
    command.to = address.to;
    accept(&state, tenant, command).await
}

/// Checks a send command, fills in its tenant, kind and id, and puts it on
/// `omnigate.outbound.v1`.
async fn accept(
    state: &ApiState,
    tenant: String,
    mut command: pb::SendCommand,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let channel = command
        .channel
        .as_mut()
        .ok_or_else(|| ApiError::unprocessable("`channel.channelId` is required"))?;
    let kind = *state.channels.get(&channel.channel_id).ok_or_else(|| {
        ApiError::unprocessable(format!("unknown channel `{}`", channel.channel_id))
    })?;
    channel.kind = kind as i32;
    let channel_id = channel.channel_id.clone();
    if command.to.trim().is_empty() {
        return Err(ApiError::unprocessable("`to` is required"));
    }
    match &command.content {
        None => {
            return Err(ApiError::unprocessable(
                "one of `text`, `media`, `template`, `markRead` or `typing` is required",
            ));
        }
        Some(pb::send_command::Content::Typing(_)) if kind != pb::ChannelKind::Livechat => {
            return Err(ApiError::unprocessable(
                "`typing` is for live chat channels",
            ));
        }
        Some(_) => {}
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
#[utoipa::path(get, path = "/v1/conversations/{id}", tag = "conversations", params(("id" = String, Path, description = "Conversation id")),
    responses((status = 200, body = ConversationView), (status = 404, body = ErrorBody)))]
async fn conversation(
    State(state): State<ApiState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path(id): Path<String>,
) -> Result<Json<ConversationView>, ApiError> {
    lookup(&state, &tenant, &id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("no such conversation"))
}

async fn lookup(
    state: &ApiState,
    tenant: &str,
    id: &str,
) -> Result<Option<ConversationView>, ApiError> {
    state.contacts.conversation(tenant, id).await.map_err(|e| {
        tracing::error!(error = %e, "Conversation lookup failed");
        ApiError::unavailable(
            "the conversation store is unavailable",
            std::time::Duration::from_secs(5),
        )
    })
}
