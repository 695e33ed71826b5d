//! The `[livechat]` table: limits, and one entry per website widget.

use omnigate_core::{
    ConfigError,
    config::{require_secret, valid_channel_name},
};
use secrecy::SecretString;
use serde::Deserialize;
use std::collections::BTreeMap;

/// Live chat settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LivechatConfig {
    /// Largest websocket frame accepted, in bytes; a larger one closes the socket with
    /// 4413. Default 65536.
    pub frame_max_bytes: usize,
    /// Longest message text, in characters (4413 past it). Default 4000.
    pub text_max_chars: usize,
    /// Messages a socket may send per second on average. Default 2.
    pub messages_per_second: f64,
    /// Messages a socket may send at once above that rate. Default 10.
    pub message_burst: u32,
    /// Open sockets per client address (a new one past it is refused). Default 20.
    pub sockets_per_ip: usize,
    /// The server sends a `ping` this often, in seconds. Default 25.
    pub heartbeat_secs: u64,
    /// A socket silent this long is closed with 4408, in seconds. Default 60.
    pub idle_timeout_secs: u64,
    /// How often each replica looks for new agent replies to push to the sockets it
    /// holds, in milliseconds. Default 250.
    pub reply_poll_ms: u64,
    /// Largest upload, in bytes (413 past it); at most `server.body_limit_bytes`.
    /// Default 3 MiB.
    pub upload_max_bytes: u64,
    /// MIME types visitors may upload; `image/*` allows every image type. Default
    /// images, PDF and plain text.
    pub upload_mime_types: Vec<String>,
    /// Widgets by channel id: the `{channel}` of `/livechat/{channel}/…`.
    #[serde(default)]
    pub channels: BTreeMap<String, ChannelConfig>,
}

/// One website's widget.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    /// The tenant this channel's events belong to. Default `default`.
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// Pages allowed to open the websocket, by `Origin` (`https://shop.example.com`);
    /// `"*"` allows any page and must be written out.
    pub allowed_origins: Vec<String>,
    /// Key of the visitor identity hashes (HMAC-SHA256) and of visitor tokens. Secret.
    pub identity_secret: SecretString,
    /// Refuse visitors without a verified identity. Default false.
    #[serde(default)]
    pub require_identity: bool,
    /// The name visitors see on agent replies. Default `Support`.
    #[serde(default = "default_agent_name")]
    pub agent_name: String,
}

fn default_agent_name() -> String {
    "Support".into()
}

fn default_tenant() -> String {
    "default".into()
}

impl std::fmt::Debug for ChannelConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelConfig")
            .field("tenant", &self.tenant)
            .field("allowed_origins", &self.allowed_origins)
            .field("require_identity", &self.require_identity)
            .finish_non_exhaustive()
    }
}

impl ChannelConfig {
    /// Whether a page of `origin` may open the websocket.
    pub fn allows(&self, origin: Option<&str>) -> bool {
        self.allowed_origins.iter().any(|allowed| {
            allowed == "*"
                || origin.is_some_and(|o| o.eq_ignore_ascii_case(allowed.trim_end_matches('/')))
        })
    }
}

impl LivechatConfig {
    /// Checks every channel; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.frame_max_bytes < 1024 {
            return Err(ConfigError::new(
                "livechat.frame_max_bytes",
                "must be at least 1024",
            ));
        }
        if self.messages_per_second.is_nan()
            || self.messages_per_second <= 0.0
            || self.message_burst == 0
        {
            return Err(ConfigError::new(
                "livechat.messages_per_second",
                "the rate and the burst must be above 0",
            ));
        }
        if self.idle_timeout_secs <= self.heartbeat_secs {
            return Err(ConfigError::new(
                "livechat.idle_timeout_secs",
                "must be longer than heartbeat_secs",
            ));
        }
        for (name, channel) in &self.channels {
            let key = format!("livechat.channels.{name}");
            if !valid_channel_name(name) {
                return Err(ConfigError::new(
                    key,
                    "channel names may use a-z, 0-9, '-' and '_' only (they appear in URLs)",
                ));
            }
            require_secret(&format!("{key}.identity_secret"), &channel.identity_secret)?;
            if channel.allowed_origins.is_empty() {
                return Err(ConfigError::new(
                    format!("{key}.allowed_origins"),
                    "list the origins of the pages that embed the widget (\"*\" for any)",
                ));
            }
            if let Some(bad) = channel
                .allowed_origins
                .iter()
                .find(|o| *o != "*" && !(o.starts_with("http://") || o.starts_with("https://")))
            {
                return Err(ConfigError::new(
                    format!("{key}.allowed_origins"),
                    format!("`{bad}` is not an origin such as https://shop.example.com"),
                ));
            }
        }
        Ok(())
    }
}
