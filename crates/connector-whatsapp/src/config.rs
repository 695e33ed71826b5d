//! The `[whatsapp]` table: Graph API settings and one entry per channel.

use omnigate_core::{
    ConfigError,
    config::{require_secret, valid_channel_name},
};
use secrecy::SecretString;
use serde::Deserialize;
use std::collections::BTreeMap;
use url::Url;

/// WhatsApp Business Cloud API settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WhatsappConfig {
    /// Graph API base URL. Default `https://graph.facebook.com`; tests point it at a fake.
    pub graph_api_base: Url,
    /// Graph API version in paths. Default `v23.0`.
    pub api_version: String,
    /// Largest media file accepted, in bytes. Default 100 MiB (WhatsApp documents).
    pub media_max_bytes: u64,
    /// Pauses between media download attempts, in milliseconds; after the last one the
    /// media is marked failed for good. Default `[1000, 5000, 30000]`.
    pub media_retry_delays_ms: Vec<u64>,
    /// Pauses between send attempts after a 429 or 5xx, in milliseconds.
    /// Default `[500, 2000, 8000]`.
    pub send_retry_delays_ms: Vec<u64>,
    /// Timeout of one Graph API call, in milliseconds. Default 10000.
    pub http_timeout_ms: u64,
    /// Channels by name; the name is the `{channel}` in `/webhooks/whatsapp/{channel}`.
    #[serde(default)]
    pub channels: BTreeMap<String, ChannelConfig>,
}

/// One WhatsApp business phone number (or one Meta app serving several).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    /// The tenant this channel's events belong to. Default `default`.
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// The business phone number id (from Meta's dashboard), used to send.
    pub phone_number_id: String,
    /// The token Meta echoes in the verification handshake.
    pub verify_token: SecretString,
    /// The Meta app secret that signs webhook bodies (`X-Hub-Signature-256`).
    pub app_secret: SecretString,
    /// The Graph API access token used for media downloads and sends.
    pub access_token: SecretString,
}

fn default_tenant() -> String {
    "default".into()
}

impl std::fmt::Debug for ChannelConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelConfig")
            .field("tenant", &self.tenant)
            .field("phone_number_id", &self.phone_number_id)
            .field("verify_token", &"[REDACTED]")
            .field("app_secret", &"[REDACTED]")
            .field("access_token", &"[REDACTED]")
            .finish()
    }
}

impl WhatsappConfig {
    /// Checks names, ids and secrets, naming the key at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !matches!(self.graph_api_base.scheme(), "http" | "https") {
            return Err(ConfigError::new(
                "whatsapp.graph_api_base",
                "must be an http(s) URL",
            ));
        }
        for (name, channel) in &self.channels {
            let key = format!("whatsapp.channels.{name}");
            if !valid_channel_name(name) {
                return Err(ConfigError::new(
                    key,
                    "channel names may use a-z, 0-9, '-' and '_' only (they appear in URLs)",
                ));
            }
            if channel.phone_number_id.is_empty()
                || !channel.phone_number_id.chars().all(|c| c.is_ascii_digit())
            {
                return Err(ConfigError::new(
                    format!("{key}.phone_number_id"),
                    "must be the numeric phone number id from Meta's dashboard",
                ));
            }
            require_secret(&format!("{key}.verify_token"), &channel.verify_token)?;
            require_secret(&format!("{key}.app_secret"), &channel.app_secret)?;
            require_secret(&format!("{key}.access_token"), &channel.access_token)?;
        }
        Ok(())
    }
}
