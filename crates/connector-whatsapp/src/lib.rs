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
use omnigate_core::connector::{Connector, ConnectorContext};
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
    async fn publish_inbound(&self, event: omnigate_model::pb::Event) -> Result<(), WorkError> {
        self.inner
            .ctx
            .publisher
            .publish(
                omnigate_core::publish::Topic::Inbound,
                omnigate_core::publish::Outgoing::Event(Box::new(event)),
            )
            .await
            .map(|_| ())
            .map_err(|e| WorkError::Retriable(e.to_string()))
    }

    /// True when `channel_id` is one of this connector's channels.
    pub fn has_channel(&self, channel_id: &str) -> bool {
        self.inner.config.channels.contains_key(channel_id)
    }
}

#[async_trait]
impl Connector for Whatsapp {
    fn name(&self) -> &'static str {
        "whatsapp"
    }

    fn routes(&self) -> axum::Router {
        webhook::routes(self.clone())
    }
}
