//! WhatsApp Business Cloud API connector.
//!
//! - `GET /webhooks/whatsapp/{channel}`: the verification handshake;
//! - `POST /webhooks/whatsapp/{channel}`: signed events, normalized and acknowledged by
//!   Kafka before the 200;
//! - [`Whatsapp::fetch_media`]: downloads pending media into the blob store (driven by a
//!   consumer of `omnigate.inbound.v1`, so a crash never loses a download);
//! - [`Whatsapp::send`]: executes send commands from `omnigate.outbound.v1`.

pub mod config;
pub mod graph;
mod media;
pub mod normalize;
mod payload;
mod send;
pub mod verify;
mod webhook;

pub use config::{ChannelConfig, WhatsappConfig};
pub use normalize::{NormalizeCtx, Normalized, normalize};

use async_trait::async_trait;
use omnigate_core::{
    ConfigError,
    connector::{
        ChannelInfo, ConfigSource, Connector, ConnectorContext, ConnectorError, ConnectorKind,
        Pace, ReplyAddress,
    },
    consume::HandlerError,
    publish::Topic,
};
use omnigate_model::pb;
use std::{sync::Arc, time::Duration};

/// A failure of background work on one record; drives the consumer's retry.
#[derive(Debug, thiserror::Error)]
pub enum WorkError {
    /// Kafka or the blob store failed; the record should be tried again.
    #[error("retriable: {0}")]
    Retriable(String),
}

/// The connector: every configured WhatsApp channel.
#[derive(Clone, Debug)]
pub struct Whatsapp {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: WhatsappConfig,
    ctx: ConnectorContext,
    graph: graph::GraphClient,
    windows: send::ServiceWindows,
    sent: send::SentCommands,
}

impl Whatsapp {
    /// Builds the connector from validated config.
    pub fn new(config: WhatsappConfig, ctx: ConnectorContext) -> Self {
        let graph = graph::GraphClient::new(
            config.graph_api_base.clone(),
            &config.api_version,
            Duration::from_millis(config.http_timeout_ms),
        );
        Self {
            inner: Arc::new(Inner {
                config,
                ctx,
                graph,
                windows: send::ServiceWindows::default(),
                sent: send::SentCommands::default(),
            }),
        }
    }

    /// Publishes an event this connector made after the webhook (media, send results).
    async fn publish_inbound(&self, event: pb::Event) -> Result<(), WorkError> {
        self.inner
            .ctx
            .publisher
            .publish(
                Topic::Inbound,
                omnigate_core::publish::Outgoing::Event(Box::new(event)),
            )
            .await
            .map(|_| ())
            .map_err(|e| WorkError::Retriable(e.to_string()))
    }
}

/// The WhatsApp connector kind: its `[whatsapp]` table and role name.
#[derive(Debug, Clone, Copy, Default)]
pub struct WhatsappKind;

impl ConnectorKind for WhatsappKind {
    fn name(&self) -> &'static str {
        "whatsapp"
    }

    fn configure(&self, source: &ConfigSource) -> Result<Arc<dyn Connector>, ConfigError> {
        let config: WhatsappConfig = source.table("whatsapp")?;
        config.validate()?;
        Ok(Arc::new(WhatsappConnector { config }))
    }
}

/// Every configured WhatsApp channel, before it starts.
#[derive(Debug)]
struct WhatsappConnector {
    config: WhatsappConfig,
}

#[async_trait]
impl Connector for WhatsappConnector {
    fn channels(&self) -> Vec<ChannelInfo> {
        self.config
            .channels
            .iter()
            .map(|(id, channel)| ChannelInfo {
                id: id.clone(),
                kind: pb::ChannelKind::Whatsapp,
                tenant: channel.tenant.clone(),
            })
            .collect()
    }

    fn reply_address(&self, conversation_key: &str) -> Option<ReplyAddress> {
        // whatsapp:{phone_number_id}:{wa_id}
        let (phone_number_id, wa_id) = conversation_key
            .strip_prefix("whatsapp:")?
            .split_once(':')?;
        let (channel_id, _) = self
            .config
            .channels
            .iter()
            .find(|(_, channel)| channel.phone_number_id == phone_number_id)?;
        Some(ReplyAddress {
            channel_id: channel_id.clone(),
            kind: pb::ChannelKind::Whatsapp,
            to: wa_id.to_string(),
        })
    }

    async fn start(&self, ctx: ConnectorContext) -> Result<axum::Router, ConnectorError> {
        let whatsapp = Whatsapp::new(self.config.clone(), ctx.clone());
        // Media downloads follow the jobs topic, where the webhook put each event with
        // pending media before its 200: a crash in between never loses the download.
        let media = whatsapp.clone();
        ctx.subscriber.spawn(
            &ctx,
            "whatsapp-media",
            Topic::Jobs,
            Pace::Background,
            Box::new(move |record| {
                let media = media.clone();
                Box::pin(async move {
                    // Other connectors' jobs: skip them without decoding.
                    if !media::has_pending_media(&record) {
                        return Ok(());
                    }
                    let event: pb::Event = record
                        .decode()
                        .map_err(|e| HandlerError::Permanent(e.to_string()))?;
                    media
                        .fetch_media(&event)
                        .await
                        .map_err(|e| HandlerError::Retriable(e.to_string()))
                })
            }),
        )?;
        let sender = whatsapp.clone();
        ctx.subscriber.commands_for(
            &ctx,
            "whatsapp-sender",
            pb::ChannelKind::Whatsapp,
            move |command| {
                let sender = sender.clone();
                Box::pin(async move {
                    sender
                        .send(&command)
                        .await
                        .map_err(|e| HandlerError::Retriable(e.to_string()))
                })
            },
        )?;
        Ok(webhook::routes(whatsapp))
    }
}
