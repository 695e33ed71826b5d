//! The Connector trait: how a channel plugs into the gateway.
//!
//! A connector is the unit of wiring. It is one crate that implements [`Connector`],
//! listed once in the binary (`crates/omnigate/src/connectors.rs`); nothing else in the
//! binary knows about it.
//!
//! # Writing a connector, step by step
//!
//! Say the new channel is SMS from a provider that posts webhooks.
//!
//! 1. **A crate** `crates/connector-sms` (package `omnigate-connector-sms`) that depends
//!    on `omnigate-core` and `omnigate-model`, never on `omnigate-kafka`: records,
//!    publishing and subscribing come through the context as plain types.
//! 2. **Its config table** `[sms]`, with channels under `[sms.channels.<id>]`: a
//!    `serde` struct with `#[serde(deny_unknown_fields)]`, a doc comment on every field,
//!    defaults in `config/default.toml` and a `validate` that names the bad key. Its
//!    [`ConnectorKind`] reads it with [`ConfigSource::table`].
//! 3. **A pure `normalize`** from the provider's payload (and the time, passed in) to
//!    events built with `omnigate_model::EventBuilder`, tested against golden fixtures
//!    and fuzzed. No I/O in it.
//! 4. **The [`Connector`]**:
//!    - [`Connector::channels`]: its configured channels (ids are unique across every
//!      connector: the API and the metrics name a channel by its id);
//!    - [`Connector::start`]: given the [`ConnectorContext`], it returns its HTTP
//!      routes (absolute paths, e.g. `/webhooks/sms/{channel}`) and spawns its
//!      background work on `ctx.tasks`: consumers through `ctx.subscriber` (its sender
//!      takes the send commands of its own channel kind with
//!      [`Subscriber::commands_for`]), pollers, retries. Everything stops when
//!      `ctx.shutdown` fires;
//!    - [`Connector::reply_address`]: the channel and recipient of a reply into one of
//!      its conversations, from the conversation key it made;
//!    - [`Connector::health`]: each channel's state, shown in `/readyz`'s detail.
//! 5. **Telemetry** through [`crate::telemetry::ChannelMetrics`]: the same metric names
//!    for every channel (`omnigate_channel_events_total{kind, channel, outcome}` and
//!    friends), never a metric of its own naming scheme.
//! 6. **One line** in the binary's connector list, and the config docs.
//!
//! A provider gets 2xx only after `ctx.publisher` returned Ok (Kafka acknowledged);
//! a retriable publish error is a 503 with `Retry-After`; what cannot be normalized
//! is dead-lettered with its raw bytes and acknowledged.

use crate::{
    ConfigError,
    blob::BlobStore,
    consume::{ConsumedRecord, HandlerError},
    health::Health,
    publish::{Publisher, Topic},
};
use async_trait::async_trait;
use futures::future::BoxFuture;
use omnigate_model::pb;
use std::sync::Arc;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// One configured channel of a connector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelInfo {
    /// The channel id from config (`[whatsapp.channels.<id>]`), unique across kinds.
    pub id: String,
    /// The channel kind.
    pub kind: pb::ChannelKind,
    /// The tenant the channel belongs to.
    pub tenant: String,
}

/// Where a reply into a conversation is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyAddress {
    /// The channel id.
    pub channel_id: String,
    /// The channel kind.
    pub kind: pb::ChannelKind,
    /// The recipient's address on that channel (a wa_id, an email address, ...).
    pub to: String,
}

/// A channel's state, for `/readyz`'s detail and the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelState {
    /// Working.
    Ok,
    /// Not working; the reason is something an operator can act on.
    Error(String),
}

/// What every connector gets from the gateway when it starts.
#[derive(Clone)]
pub struct ConnectorContext {
    /// The process's one publisher.
    pub publisher: Publisher,
    /// Consumer groups over the contract's topics.
    pub subscriber: Subscriber,
    /// The SQL database roles share (`sqlite://…` or `postgres://…`), for cursors and
    /// buffers a connector keeps; connect with [`crate::db::connect`].
    pub database_url: String,
    /// Media, attachments and raw payloads.
    pub blobs: BlobStore,
    /// Fires when the process shuts down; background work must stop when it does.
    pub shutdown: CancellationToken,
    /// Where background work runs; shutdown waits for it (within its budget).
    pub tasks: TaskTracker,
    /// Readiness of the process (Kafka reachable).
    pub health: Health,
}

impl ConnectorContext {
    /// A context for a connector's unit tests: `publisher` stands in for Kafka, blobs
    /// go to `blob_dir`, consumers consume nothing ([`IdleSubscriber`]), and the SQL
    /// database is in memory.
    pub fn for_tests(
        publisher: Publisher,
        blob_dir: &std::path::Path,
    ) -> Result<Self, ConfigError> {
        let blobs = crate::config::BlobConfig {
            url: format!("file:{}", blob_dir.display()),
            s3_region: String::new(),
            s3_endpoint: String::new(),
            s3_access_key_id: String::new(),
            s3_secret_access_key: secrecy::SecretString::from(""),
        };
        Ok(Self {
            publisher,
            subscriber: Subscriber::new(IdleSubscriber),
            database_url: "sqlite::memory:".into(),
            blobs: BlobStore::open(&blobs)?,
            shutdown: Default::default(),
            tasks: Default::default(),
            health: Health::default(),
        })
    }
}

impl std::fmt::Debug for ConnectorContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectorContext")
            .field("publisher", &self.publisher)
            .field("blobs", &self.blobs)
            .finish_non_exhaustive()
    }
}

/// A failure that keeps a connector from starting.
#[derive(Debug, thiserror::Error)]
#[error("connector {connector}: {message}")]
pub struct ConnectorError {
    /// The connector's name.
    pub connector: &'static str,
    /// What went wrong.
    pub message: String,
}

/// A channel connector, configured and ready to start.
#[async_trait]
pub trait Connector: Send + Sync + 'static {
    /// The configured channels.
    fn channels(&self) -> Vec<ChannelInfo>;

    /// Starts background work on `ctx.tasks` and returns the HTTP routes to mount on
    /// the shared listener (absolute paths; none for a pull connector).
    async fn start(&self, ctx: ConnectorContext) -> Result<axum::Router, ConnectorError>;

    /// Where a reply into the conversation keyed `conversation_key` goes: the channel
    /// and the recipient's address, when the key is one of this connector's. This is
    /// how `POST /v1/conversations/{id}/messages` picks channel and recipient.
    fn reply_address(&self, conversation_key: &str) -> Option<ReplyAddress> {
        let _ = conversation_key;
        None
    }

    /// Each channel's state, by channel id. The default: all working.
    fn health(&self) -> Vec<(String, ChannelState)> {
        self.channels()
            .into_iter()
            .map(|c| (c.id, ChannelState::Ok))
            .collect()
    }
}

/// A kind of connector the binary knows: its name (the config table and the role)
/// and how to build it from config.
pub trait ConnectorKind: Send + Sync {
    /// The config table and role name, e.g. `whatsapp`.
    fn name(&self) -> &'static str;

    /// Reads and validates its table; errors name the key.
    fn configure(&self, config: &ConfigSource) -> Result<Arc<dyn Connector>, ConfigError>;
}

/// The loaded configuration, from which each connector reads its own table.
pub struct ConfigSource {
    figment: figment::Figment,
}

impl ConfigSource {
    /// Wraps a layered configuration.
    pub fn new(figment: figment::Figment) -> Self {
        Self { figment }
    }

    /// A configuration of `defaults` (the shipped `config/default.toml`, say) with
    /// `toml` over it, for tests.
    pub fn from_toml(defaults: &str, toml: &str) -> Self {
        use figment::providers::{Format, Toml};
        Self::new(
            figment::Figment::new()
                .merge(Toml::string(defaults))
                .merge(Toml::string(toml)),
        )
    }

    /// Table `name` as `T` (`config/default.toml`, embedded in the binary, gives every
    /// connector's table its defaults). Errors carry the full key
    /// (`whatsapp.channels.demo.app_secret`).
    pub fn table<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<T, ConfigError> {
        self.figment
            .extract_inner(name)
            .map_err(|err| crate::config::from_figment(err, name))
    }
}

/// A [`Subscribe`] that consumes nothing: its consumers only wait for shutdown. For
/// unit tests of connectors, whose consumers are tested end to end against Kafka.
#[derive(Debug, Clone, Copy, Default)]
pub struct IdleSubscriber;

impl Subscribe for IdleSubscriber {
    fn consume(
        &self,
        _group: &str,
        _topic: Topic,
        _pace: Pace,
        _handler: RecordHandler,
        shutdown: CancellationToken,
    ) -> Result<BoxFuture<'static, ()>, ConnectorError> {
        Ok(Box::pin(async move { shutdown.cancelled().await }))
    }
}

/// How eagerly a consumer fetches from the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// On the main path: each record is handed over the moment it arrives.
    Main,
    /// Off the main path (send commands, state followers): idle consumers ask the
    /// broker less often; records still arrive one by one.
    Background,
}

/// Runs a record handler over one topic in one consumer group, at least once, until
/// shutdown. Implemented by `omnigate-kafka`.
pub trait Subscribe: Send + Sync + 'static {
    /// A future that consumes `topic` in group `<topic_prefix><group>` and calls
    /// `handler` for every record (a retriable error retries the record with backoff;
    /// a permanent one skips it), until `shutdown`, fetching at `pace`.
    fn consume(
        &self,
        group: &str,
        topic: Topic,
        pace: Pace,
        handler: RecordHandler,
        shutdown: CancellationToken,
    ) -> Result<BoxFuture<'static, ()>, ConnectorError>;
}

/// A record handler for [`Subscribe::consume`].
pub type RecordHandler =
    Box<dyn FnMut(ConsumedRecord) -> BoxFuture<'static, Result<(), HandlerError>> + Send>;

/// The handle connectors subscribe through.
#[derive(Clone)]
pub struct Subscriber(Arc<dyn Subscribe>);

impl Subscriber {
    /// Wraps an implementation.
    pub fn new(inner: impl Subscribe) -> Self {
        Self(Arc::new(inner))
    }

    /// Spawns a consumer of `topic` in group `group` on `ctx.tasks`.
    pub fn spawn(
        &self,
        ctx: &ConnectorContext,
        group: &str,
        topic: Topic,
        pace: Pace,
        handler: RecordHandler,
    ) -> Result<(), ConnectorError> {
        let consuming = self
            .0
            .consume(group, topic, pace, handler, ctx.shutdown.clone())?;
        ctx.tasks.spawn(consuming);
        Ok(())
    }

    /// Spawns a consumer of `omnigate.outbound.v1` in group `group` that hands
    /// `handler` the send commands addressed to channels of `kind` only: every
    /// connector's sender reads the one outbound topic.
    pub fn commands_for<H>(
        &self,
        ctx: &ConnectorContext,
        group: &str,
        kind: pb::ChannelKind,
        mut handler: H,
    ) -> Result<(), ConnectorError>
    where
        H: FnMut(pb::SendCommand) -> BoxFuture<'static, Result<(), HandlerError>> + Send + 'static,
    {
        let handler: RecordHandler = Box::new(move |record: ConsumedRecord| {
            let command: pb::SendCommand = match record.decode() {
                Ok(command) => command,
                Err(err) => {
                    let reason = err.to_string();
                    return Box::pin(async move { Err(HandlerError::Permanent(reason)) });
                }
            };
            let ours = command
                .channel
                .as_ref()
                .is_some_and(|c| c.kind == kind as i32);
            if !ours {
                return Box::pin(async { Ok(()) });
            }
            handler(command)
        });
        self.spawn(ctx, group, Topic::Outbound, Pace::Background, handler)
    }
}
