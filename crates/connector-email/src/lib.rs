//! Email connector: mailboxes followed over IMAP in real time, replies sent over SMTP.
//!
//! - [`follow`]: one long-lived IMAP connection per followed folder, in IDLE where
//!   the server offers it (polled where it does not), reading everything above a
//!   durable UID cursor ([`store`]) on start, after every reconnect and on every new
//!   mail. The cursor moves only once Kafka acknowledged every mail below it.
//! - [`normalize`]: a raw mail to a `message.received` event (pure).
//! - [`send`]: send commands for email channels become mail, threaded into the
//!   conversation they answer, then `message.sent` (or a failed `message.status`).

pub mod config;
mod follow;
pub mod imap;
pub mod lease;
pub mod normalize;
pub mod oauth;
pub mod quoted;
mod send;
pub mod store;

pub use config::{ChannelConfig, EmailConfig};

use async_trait::async_trait;
use omnigate_core::{
    ConfigError,
    connector::{
        ChannelInfo, ChannelState, ConfigSource, Connector, ConnectorContext, ConnectorError,
        ConnectorKind,
    },
    consume::HandlerError,
    telemetry::ChannelMetrics,
};
use omnigate_model::pb;
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

/// The metrics of email channels.
pub(crate) const METRICS: ChannelMetrics = ChannelMetrics::email();

/// The running connector.
#[derive(Clone, Debug)]
pub(crate) struct Email {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: EmailConfig,
    ctx: ConnectorContext,
    store: store::EmailStore,
    /// Access tokens of the channels that use OAuth2.
    tokens: BTreeMap<String, Arc<oauth::TokenSource>>,
    states: FolderStates,
}

/// Each followed folder's state, by (channel, folder).
type FolderStates = Arc<Mutex<BTreeMap<(String, String), ChannelState>>>;

impl Email {
    fn config(&self) -> &EmailConfig {
        &self.inner.config
    }

    fn deadline(&self) -> Duration {
        Duration::from_millis(self.inner.config.command_timeout_ms)
    }

    fn tokens(&self, channel_id: &str) -> Option<&oauth::TokenSource> {
        self.inner.tokens.get(channel_id).map(Arc::as_ref)
    }

    /// Records a folder's state for `/readyz` and the channel list.
    fn set_state(&self, channel_id: &str, folder: &str, state: ChannelState) {
        let mut states = self.inner.states.lock().unwrap_or_else(|e| e.into_inner());
        states.insert((channel_id.to_string(), folder.to_string()), state);
    }

    /// Forgets a folder's state: this replica no longer follows it.
    fn clear_state(&self, channel_id: &str, folder: &str) {
        let mut states = self.inner.states.lock().unwrap_or_else(|e| e.into_inner());
        states.remove(&(channel_id.to_string(), folder.to_string()));
    }
}

/// The email connector kind: its `[email]` table and role name.
#[derive(Debug, Clone, Copy, Default)]
pub struct EmailKind;

impl ConnectorKind for EmailKind {
    fn name(&self) -> &'static str {
        "email"
    }

    fn configure(&self, source: &ConfigSource) -> Result<Arc<dyn Connector>, ConfigError> {
        let config: EmailConfig = source.table("email")?;
        config.validate()?;
        Ok(Arc::new(EmailConnector {
            config,
            states: FolderStates::default(),
        }))
    }
}

/// Every configured mailbox, before it starts.
#[derive(Debug)]
struct EmailConnector {
    config: EmailConfig,
    states: FolderStates,
}

fn start_error(message: impl std::fmt::Display) -> ConnectorError {
    ConnectorError {
        connector: "email",
        message: message.to_string(),
    }
}

#[async_trait]
impl Connector for EmailConnector {
    fn channels(&self) -> Vec<ChannelInfo> {
        self.config
            .channels
            .iter()
            .map(|(id, channel)| ChannelInfo {
                id: id.clone(),
                kind: pb::ChannelKind::Email,
                tenant: channel.tenant.clone(),
            })
            .collect()
    }

    /// A channel is in error while any of its folders is; the reason names the folder.
    fn health(&self) -> Vec<(String, ChannelState)> {
        let states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        self.config
            .channels
            .iter()
            .map(|(id, channel)| {
                // A folder this replica does not follow (another one holds its lease)
                // has no state here.
                let error = channel.folders.iter().find_map(|folder| {
                    match states.get(&(id.clone(), folder.clone())) {
                        Some(ChannelState::Error(reason)) => Some(format!("{folder}: {reason}")),
                        Some(ChannelState::Ok) | None => None,
                    }
                });
                (
                    id.clone(),
                    error.map_or(ChannelState::Ok, ChannelState::Error),
                )
            })
            .collect()
    }

    async fn start(&self, ctx: ConnectorContext) -> Result<axum::Router, ConnectorError> {
        let store = store::EmailStore::connect(&ctx.database_url)
            .await
            .map_err(start_error)?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(self.config.command_timeout_ms))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(start_error)?;
        let tokens = self
            .config
            .channels
            .iter()
            .filter_map(|(id, channel)| {
                let oauth2 = channel.oauth2.clone()?;
                Some((
                    id.clone(),
                    Arc::new(oauth::TokenSource::new(oauth2, http.clone())),
                ))
            })
            .collect();
        let email = Email {
            inner: Arc::new(Inner {
                config: self.config.clone(),
                ctx: ctx.clone(),
                store,
                tokens,
                states: Arc::clone(&self.states),
            }),
        };
        let leases =
            lease::Leases::new(email.inner.store.clone(), uuid::Uuid::new_v4().to_string())
                .await
                .map_err(start_error)?;
        ctx.tasks.spawn(follow::coordinate(email.clone(), leases));
        let sender = email.clone();
        ctx.subscriber.commands_for(
            &ctx,
            "email-sender",
            pb::ChannelKind::Email,
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
        Ok(axum::Router::new())
    }
}
