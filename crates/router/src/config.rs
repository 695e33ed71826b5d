//! The `[router]` table.

use omnigate_core::ConfigError;
use serde::Deserialize;
use std::path::PathBuf;

/// Router settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterConfig {
    /// The rules file (see `config/routing.toml`). Re-read on change or SIGHUP.
    pub rules_file: PathBuf,
    /// Where contacts and conversations are shared between router instances:
    /// `sqlite://path?mode=rwc` (embedded default) or `postgres://user@host/db`.
    pub database_url: String,
    /// Hours without an event after which a conversation is closed and the next event
    /// opens a new one. Default 72.
    pub reopen_after_hours: u32,
    /// Cross-channel continuity: a customer's new conversation joins the inbox of their
    /// open conversation on another channel. Default true.
    pub continuity: bool,
    /// Consumer group of the router instances, after the topic prefix. Default `router`.
    pub group_id: String,
    /// Exactly-once: each batch's outputs and offsets commit in one Kafka transaction,
    /// so read-committed consumers see every routed record once, even across crashes.
    /// Needs a broker with transactions (Apache Kafka has them; some Kafka-compatible
    /// brokers do not). Default false: at-least-once
    /// with deterministic ids.
    pub transactions: bool,
    /// How many partitions the router decides at once (each partition stays in order).
    /// Default 4; 1 decides one record at a time.
    pub decision_lanes: usize,
}

impl RouterConfig {
    /// Checks the values, naming the key at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        omnigate_core::db::validate_url("router.database_url", &self.database_url)?;
        if self.reopen_after_hours == 0 {
            return Err(ConfigError::new(
                "router.reopen_after_hours",
                "must be at least 1",
            ));
        }
        if self.decision_lanes == 0 {
            return Err(ConfigError::new(
                "router.decision_lanes",
                "must be at least 1",
            ));
        }
        if self.group_id.trim().is_empty() {
            return Err(ConfigError::new("router.group_id", "must not be empty"));
        }
        Ok(())
    }

    /// The policy settings these values give.
    pub fn policy(&self) -> crate::PolicySettings {
        crate::PolicySettings {
            reopen_after: chrono::Duration::hours(i64::from(self.reopen_after_hours)),
            continuity: self.continuity,
        }
    }
}
