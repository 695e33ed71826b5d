//! The whole configuration of one Omnigate process. Every option is documented in
//! `config/default.toml`, which is embedded as the defaults.

use omnigate_core::connector::{ChannelInfo, ConfigSource, Connector};
use omnigate_core::{
    ConfigError,
    config::{ApiKeyConfig, BlobConfig, LogConfig, ServerConfig},
};
use omnigate_kafka::KafkaConfig;
use serde::Deserialize;
use std::{collections::BTreeMap, path::Path, sync::Arc};

/// The defaults every file is layered on.
pub const DEFAULTS: &str = include_str!("../../../config/default.toml");

/// Roles that are not connectors: every other role is a connector's name.
pub const CORE_ROLES: [&str; 3] = ["api", "router", "webhooks"];

/// Top-level configuration.
#[derive(Deserialize)]
pub struct Config {
    /// Roles `serve` runs when no `--role` is given: `api`, `router`, `webhooks` and
    /// connector names (`whatsapp`).
    pub roles: Vec<String>,
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
    /// The router.
    pub router: omnigate_router::RouterConfig,
    /// Outbound webhooks: registry storage and the dispatcher.
    pub webhooks: omnigate_webhooks::WebhooksConfig,
    /// Every other top-level table: each must be a connector's, read by the connector.
    #[serde(flatten)]
    other_tables: BTreeMap<String, serde::de::IgnoredAny>,
    /// The configured connectors, by name, in the order of [`crate::connectors::kinds`].
    #[serde(skip)]
    pub connectors: Vec<(&'static str, Arc<dyn Connector>)>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("roles", &self.roles)
            .field("server", &self.server)
            .field("kafka", &self.kafka)
            .field(
                "connectors",
                &self.connectors.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Loads defaults, then `file`, then `OMNIGATE_*` env, and validates the result.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let layered = omnigate_core::config::layered(DEFAULTS, file)?;
        let mut config: Self = omnigate_core::config::extract(&layered)?;
        let source = ConfigSource::new(layered);
        let kinds = crate::connectors::kinds();
        for table in config.other_tables.keys() {
            if !kinds.iter().any(|kind| kind.name() == table) {
                return Err(ConfigError::new(
                    table.clone(),
                    "unknown key (not a setting, nor a connector's table)",
                ));
            }
        }
        for kind in kinds {
            config
                .connectors
                .push((kind.name(), kind.configure(&source)?));
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.kafka.validate()?;
        for (i, key) in self.api_keys.iter().enumerate() {
            key.validate(&format!("api_keys[{i}]"))?;
        }
        self.router.validate()?;
        self.webhooks.validate()?;
        for role in &self.roles {
            self.check_role(role)?;
        }
        // The API and the metrics name a channel by its id alone.
        let mut seen: BTreeMap<String, &str> = BTreeMap::new();
        for (name, connector) in &self.connectors {
            for channel in connector.channels() {
                if let Some(other) = seen.insert(channel.id.clone(), name) {
                    return Err(ConfigError::new(
                        format!("{name}.channels.{}", channel.id),
                        format!(
                            "channel id `{}` is also a {other} channel; channel ids must be unique across kinds",
                            channel.id
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Fails unless `role` is a core role or a connector's name.
    pub fn check_role(&self, role: &str) -> Result<(), ConfigError> {
        let known = CORE_ROLES.contains(&role) || self.connectors.iter().any(|(n, _)| *n == role);
        if known {
            return Ok(());
        }
        let mut names: Vec<&str> = CORE_ROLES.to_vec();
        names.extend(self.connectors.iter().map(|(n, _)| *n));
        Err(ConfigError::new(
            "roles",
            format!("unknown role `{role}`; known: {}", names.join(", ")),
        ))
    }

    /// Every configured channel, with its connector's name.
    pub fn channels(&self) -> Vec<(&'static str, ChannelInfo)> {
        self.connectors
            .iter()
            .flat_map(|(name, c)| c.channels().into_iter().map(move |ch| (*name, ch)))
            .collect()
    }
}
