//! The whole configuration of one Omnigate process. Every option is documented in
//! `config/default.toml`, which is embedded as the defaults.

use omnigate_core::{
    ConfigError,
    config::{ApiKeyConfig, BlobConfig, LogConfig, ServerConfig},
};
use omnigate_kafka::KafkaConfig;
use serde::Deserialize;
use std::path::Path;

/// The defaults every file is layered on.
pub const DEFAULTS: &str = include_str!("../../../config/default.toml");

/// What a process can run. `serve` runs the roles named by `--role`, or `roles` from config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The `/v1` API: send commands (`POST /v1/messages`).
    Api,
    /// WhatsApp webhooks in, media fetching, and WhatsApp sends out.
    Whatsapp,
    /// Conversations to inboxes: `omnigate.inbound.v1` to `omnigate.routed.v1`.
    Router,
    /// The webhook dispatcher: `omnigate.routed.v1` to registered endpoints.
    Webhooks,
}

/// Top-level configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Roles `serve` runs when no `--role` is given.
    pub roles: Vec<Role>,
    /// The HTTP listener.
    pub server: ServerConfig,
    /// Logging.
    pub log: LogConfig,
    /// Kafka.
    pub kafka: KafkaConfig,
    /// Blob store.
    pub blobs: BlobConfig,
    /// `/v1` API keys (hashed).
    #[serde(default)]
    pub api_keys: Vec<ApiKeyConfig>,
    /// WhatsApp Business Cloud API channels.
    pub whatsapp: omnigate_connector_whatsapp::WhatsappConfig,
    /// The router.
    pub router: omnigate_router::RouterConfig,
    /// Outbound webhooks: registry storage and the dispatcher.
    pub webhooks: omnigate_webhooks::WebhooksConfig,
}

impl Config {
    /// Loads defaults, then `file`, then `OMNIGATE_*` env, and validates the result.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let config: Self = omnigate_core::config::load(DEFAULTS, file)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.kafka.validate()?;
        for (i, key) in self.api_keys.iter().enumerate() {
            key.validate(&format!("api_keys[{i}]"))?;
        }
        self.whatsapp.validate()?;
        self.router.validate()?;
        self.webhooks.validate()?;
        Ok(())
    }
}
