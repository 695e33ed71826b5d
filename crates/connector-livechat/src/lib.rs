//! Live chat connector: a websocket per visitor (`/livechat/{channel}/ws`, protocol
//! `omnigate.livechat.v1`, see `docs/livechat.md`), the embeddable widget
//! (`/livechat/{channel}/widget.js`) and a demo page (`/livechat/{channel}/demo`).
//!
//! - [`protocol`]: frames, visitor tokens, identity hashes (pure);
//! - [`normalize`]: visitor messages and reply statuses as events (pure);
//! - [`store`]: acknowledged messages and agent replies in SQL;
//! - [`hub`]: the sockets this replica holds, and the pusher that brings them replies
//!   stored by any replica.

pub mod config;
pub mod hub;
pub mod normalize;
pub mod protocol;
mod socket;
pub mod store;
mod uploads;

pub use config::{ChannelConfig, LivechatConfig};

use async_trait::async_trait;
use axum::{
    extract::{Path, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use chrono::Utc;
use omnigate_core::{
    ConfigError,
    connector::{
        ChannelInfo, ConfigSource, Connector, ConnectorContext, ConnectorError, ConnectorKind,
        ReplyAddress,
    },
    consume::HandlerError,
    publish::Topic,
    telemetry::ChannelMetrics,
};
use omnigate_model::{
    EventBuilder, EventType,
    builder::{send_failed_payload, send_once_key, sent_payload},
    pb,
};
use std::{sync::Arc, time::Duration};

/// The metrics of live chat channels.
pub(crate) const METRICS: ChannelMetrics = ChannelMetrics::livechat();

/// The widget, served as it is.
const WIDGET_JS: &str = include_str!("../assets/widget.js");
/// The demo page; `{{CHANNEL}}` is replaced with the channel id.
const DEMO_HTML: &str = include_str!("../assets/demo.html");

/// The running connector.
#[derive(Clone, Debug)]
pub(crate) struct Livechat {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: LivechatConfig,
    ctx: ConnectorContext,
    store: store::LivechatStore,
    hub: Arc<hub::Hub>,
    history: store::HistoryWriter,
}

/// The live chat connector kind: its `[livechat]` table and role name.
#[derive(Debug, Clone, Copy, Default)]
pub struct LivechatKind;

impl ConnectorKind for LivechatKind {
    fn name(&self) -> &'static str {
        "livechat"
    }

    fn configure(&self, source: &ConfigSource) -> Result<Arc<dyn Connector>, ConfigError> {
        let config: LivechatConfig = source.table("livechat")?;
        config.validate()?;
        Ok(Arc::new(LivechatConnector { config }))
    }
}

#[derive(Debug)]
struct LivechatConnector {
    config: LivechatConfig,
}

fn start_error(message: impl std::fmt::Display) -> ConnectorError {
    ConnectorError {
        connector: "livechat",
        message: message.to_string(),
    }
}

#[async_trait]
impl Connector for LivechatConnector {
    fn channels(&self) -> Vec<ChannelInfo> {
        self.config
            .channels
            .iter()
            .map(|(id, channel)| ChannelInfo {
                id: id.clone(),
                kind: pb::ChannelKind::Livechat,
                tenant: channel.tenant.clone(),
            })
            .collect()
    }

    fn reply_address(&self, conversation_key: &str) -> Option<ReplyAddress> {
        let (channel, visitor) = conversation_key
            .strip_prefix("livechat:")?
            .split_once(':')?;
        self.config
            .channels
            .contains_key(channel)
            .then(|| ReplyAddress {
                channel_id: channel.to_string(),
                kind: pb::ChannelKind::Livechat,
                to: visitor.to_string(),
            })
    }

    async fn start(&self, ctx: ConnectorContext) -> Result<axum::Router, ConnectorError> {
        let store = store::LivechatStore::connect(&ctx.database_url)
            .await
            .map_err(start_error)?;
        let hub = Arc::new(hub::Hub::default());
        ctx.tasks.spawn(hub::push_replies(
            Arc::clone(&hub),
            store.clone(),
            Duration::from_millis(self.config.reply_poll_ms),
            ctx.shutdown.clone(),
        ));
        let (history, writing) = store::HistoryWriter::start(store.clone(), ctx.shutdown.clone());
        ctx.tasks.spawn(writing);
        let chat = Livechat {
            inner: Arc::new(Inner {
                config: self.config.clone(),
                ctx: ctx.clone(),
                store,
                hub,
                history,
            }),
        };
        let sender = chat.clone();
        ctx.subscriber.commands_for(
            &ctx,
            "livechat-sender",
            pb::ChannelKind::Livechat,
            move |command| {
                let sender = sender.clone();
                Box::pin(async move { sender.send(&command).await })
            },
        )?;
        Ok(axum::Router::new()
            .route("/livechat/{channel}/ws", get(socket::upgrade))
            .route("/livechat/{channel}/widget.js", get(widget))
            .route("/livechat/{channel}/demo", get(demo))
            .route(
                "/livechat/{channel}/uploads",
                axum::routing::post(uploads::upload).options(uploads::preflight),
            )
            .with_state(chat))
    }
}

async fn widget(State(chat): State<Livechat>, Path(channel): Path<String>) -> Response {
    if !chat.inner.config.channels.contains_key(&channel) {
        return (StatusCode::NOT_FOUND, "no such live chat channel").into_response();
    }
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        WIDGET_JS,
    )
        .into_response()
}

async fn demo(State(chat): State<Livechat>, Path(channel): Path<String>) -> Response {
    // Channel names are [a-z0-9_-] (checked at start), so they need no escaping.
    if !chat.inner.config.channels.contains_key(&channel) {
        return (StatusCode::NOT_FOUND, "no such live chat channel").into_response();
    }
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        DEMO_HTML.replace("{{CHANNEL}}", &channel),
    )
        .into_response()
}

impl Livechat {
    /// The agent's typing state: stored over the conversation's last one (so every
    /// replica's pusher sees it) and pushed to the visitor's sockets here; no event.
    async fn set_typing(
        &self,
        channel_id: &str,
        channel: &ChannelConfig,
        visitor: &str,
        typing: &pb::Typing,
    ) -> Result<(), HandlerError> {
        let agent = if typing.agent.is_empty() {
            &channel.agent_name
        } else {
            &typing.agent
        };
        let state = store::AgentTyping {
            channel: channel_id.to_string(),
            visitor: visitor.to_string(),
            on: typing.on,
            agent: agent.clone(),
            updated_ms: Utc::now().timestamp_millis(),
        };
        self.inner
            .store
            .set_typing(&state)
            .await
            .map_err(|e| HandlerError::Retriable(e.to_string()))?;
        self.inner.hub.push_typing(&state);
        Ok(())
    }

    /// An agent reply for a live chat channel: stored under the conversation's next
    /// sequence (once per command), pushed to the visitor's sockets, `message.sent`.
    /// A typing state goes to [`Self::set_typing`].
    async fn send(&self, command: &pb::SendCommand) -> Result<(), HandlerError> {
        let Some(channel_id) = command.channel.as_ref().map(|c| c.channel_id.as_str()) else {
            return Ok(());
        };
        let Some(channel) = self.inner.config.channels.get(channel_id) else {
            return Ok(());
        };
        if let Some(pb::send_command::Content::Typing(typing)) = &command.content {
            return self
                .set_typing(channel_id, channel, &command.to, typing)
                .await;
        }
        let started = std::time::Instant::now();
        let visitor = command.to.as_str();
        let builder = EventBuilder::channel(pb::ChannelKind::Livechat, channel_id, &command.tenant);
        let channel_ref = pb::Channel {
            kind: pb::ChannelKind::Livechat as i32,
            channel_id: channel_id.to_string(),
            address: channel_id.to_string(),
        };
        let key = protocol::conversation_key(channel_id, visitor);
        let now = Utc::now();
        let text = match &command.content {
            Some(pb::send_command::Content::Text(text)) if !text.is_empty() => text.clone(),
            _ => {
                let failed = builder.event(
                    EventType::MessageStatus,
                    &format!("{}:failed", command.command_id),
                    key,
                    now,
                    send_failed_payload(
                        command,
                        channel_ref,
                        "omnigate.invalid_command".into(),
                        "live chat replies are text".into(),
                        now,
                    ),
                );
                return self.publish(failed).await;
            }
        };
        let command_key = send_once_key(command);
        let sent = builder.event(
            EventType::MessageSent,
            &command.command_id,
            key,
            now,
            sent_payload(command, channel_ref, String::new(), now),
        );
        let stored = self
            .inner
            .store
            .add_reply(&store::NewReply {
                channel: channel_id,
                visitor,
                command_key: &command_key,
                event_id: &sent.id,
                text: &text,
                agent: &channel.agent_name,
                now_ms: now.timestamp_millis(),
            })
            .await
            .map_err(|e| HandlerError::Retriable(e.to_string()))?;
        self.inner.hub.push(&stored);
        let mut sent = sent;
        if let Some(pb::event::Payload::Sent(s)) = sent.payload.as_mut() {
            s.provider_message_id = stored.event_id.clone();
        }
        METRICS.send(channel_id, "sent", started.elapsed().as_secs_f64());
        self.publish(sent).await
    }

    async fn publish(&self, event: pb::Event) -> Result<(), HandlerError> {
        self.inner
            .ctx
            .publisher
            .event(Topic::Inbound, event)
            .await
            .map(|_| ())
            .map_err(|e| HandlerError::Retriable(e.to_string()))
    }
}
