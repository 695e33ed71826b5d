//! The Connector trait: how a channel plugs into the gateway.
//!
//! Push connectors (webhooks, websockets) hand the gateway a router to mount on the
//! one listener; pull connectors (IMAP) and background work (media retries, outbound
//! senders) run in [`Connector::run`] until the shutdown token fires.

use crate::{blob::BlobStore, health::Health, publish::Publisher};
use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

/// What every connector gets from the gateway.
#[derive(Debug, Clone)]
pub struct ConnectorContext {
    /// The process's one publisher.
    pub publisher: Publisher,
    /// Media, attachments and raw payloads.
    pub blobs: BlobStore,
    /// Fires when the process shuts down; long-running work must stop when it does.
    pub shutdown: CancellationToken,
    /// Readiness of the process (Kafka reachable).
    pub health: Health,
}

/// A failure that stops a connector's background work.
#[derive(Debug, thiserror::Error)]
#[error("connector {connector}: {message}")]
pub struct ConnectorError {
    /// The connector's name.
    pub connector: String,
    /// What went wrong.
    pub message: String,
}

/// A channel connector.
#[async_trait]
pub trait Connector: Send + Sync + 'static {
    /// A short name for logs and metrics labels, e.g. `whatsapp`.
    fn name(&self) -> &'static str;

    /// HTTP routes to mount on the shared listener (absolute paths).
    fn routes(&self) -> axum::Router {
        axum::Router::new()
    }

    /// Background work; returns when `shutdown` fires. The default has none.
    async fn run(&self) -> Result<(), ConnectorError> {
        Ok(())
    }
}
