//! The `[voice]` table: one entry per phone line, each fed by one provider.

use omnigate_core::{
    ConfigError,
    config::{require_secret, valid_channel_name},
};
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use std::collections::BTreeMap;
use url::Url;

/// Voice settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoiceConfig {
    /// How many calls the state machine remembers (the oldest are forgotten first).
    /// Default 100000.
    pub max_tracked_calls: usize,
    /// Where Twilio recordings are fetched from; a recording URL elsewhere is never
    /// fetched. Default `https://api.twilio.com`; tests point it at a fake.
    pub twilio_api_base: Url,
    /// Largest recording copied into the blob store, in bytes. Default 50 MiB.
    pub recording_max_bytes: u64,
    /// Timeout of one recording download, in milliseconds. Default 30000.
    pub http_timeout_ms: u64,
    /// Channels by name; the name is the `{channel}` in the webhook paths.
    #[serde(default)]
    pub channels: BTreeMap<String, ChannelConfig>,
}

/// Where a voice channel's call events come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// Twilio Voice status callbacks, signed with `X-Twilio-Signature`.
    Twilio,
    /// Zammad's generic CTI format, posted by PBX bridges (3CX, Asterisk,
    /// FreeSWITCH, STARFACE), authenticated by a path token or a body HMAC.
    Cti,
    /// Asterisk's Manager Interface, watched passively over TCP.
    Asterisk,
}

/// One phone line.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    /// The tenant this channel's events belong to. Default `default`.
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// `twilio` or `cti`.
    pub provider: Provider,
    /// Our number, E.164 (`+15550100200`).
    pub number: String,
    /// The ISO 3166 country of callers sent without a country code (`US`, `DE`).
    /// Without it, such numbers are read as international.
    #[serde(default)]
    pub default_country: Option<String>,
    /// Twilio: the account SID (`AC` and 32 hex digits); callbacks for any other
    /// account are refused.
    #[serde(default)]
    pub account_sid: Option<String>,
    /// Twilio: the auth token that signs callbacks. Secret.
    #[serde(default)]
    pub auth_token: Option<SecretString>,
    /// Twilio: the base URL Twilio calls (`https://omnigate.example.com`), as the
    /// signature covers the URL Twilio saw, not the one behind a proxy.
    #[serde(default)]
    pub public_url: Option<Url>,
    /// Twilio: the number `/incoming` dials first (E.164); without it, callers go
    /// straight to voicemail.
    #[serde(default)]
    pub forward_to: Option<String>,
    /// Twilio: how long `forward_to` rings before the caller goes to voicemail, in
    /// seconds. Default 20.
    #[serde(default = "default_ring_seconds")]
    pub ring_seconds: u32,
    /// Twilio: what a caller hears before leaving a voicemail.
    #[serde(default = "default_greeting")]
    pub voicemail_greeting: String,
    /// Twilio: the longest voicemail, in seconds. Default 120.
    #[serde(default = "default_voicemail_max_seconds")]
    pub voicemail_max_seconds: u32,
    /// CTI: the path token of `/webhooks/cti/{channel}/{token}`. Secret.
    #[serde(default)]
    pub token: Option<SecretString>,
    /// CTI: the key of the `X-Omnigate-Signature` body HMAC on
    /// `/webhooks/cti/{channel}`. Secret.
    #[serde(default)]
    pub hmac_secret: Option<SecretString>,
    /// Asterisk: the AMI address, `tcp://pbx.example.com:5038`.
    #[serde(default)]
    pub ami_url: Option<Url>,
    /// Asterisk: the AMI user (`manager.conf`), with `read = call` at least.
    #[serde(default)]
    pub username: Option<String>,
    /// Asterisk: the AMI user's secret. Secret.
    #[serde(default)]
    pub secret: Option<SecretString>,
}

fn default_tenant() -> String {
    "default".into()
}

fn default_ring_seconds() -> u32 {
    20
}

fn default_greeting() -> String {
    "Sorry, nobody can take your call right now. Please leave a message after the tone.".into()
}

fn default_voicemail_max_seconds() -> u32 {
    120
}

impl std::fmt::Debug for ChannelConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |s: &Option<SecretString>| s.as_ref().map(|_| "[REDACTED]");
        f.debug_struct("ChannelConfig")
            .field("tenant", &self.tenant)
            .field("provider", &self.provider)
            .field("number", &self.number)
            .field("default_country", &self.default_country)
            .field("account_sid", &self.account_sid)
            .field("auth_token", &redacted(&self.auth_token))
            .field("public_url", &self.public_url)
            .field("forward_to", &self.forward_to)
            .field("ring_seconds", &self.ring_seconds)
            .field("voicemail_max_seconds", &self.voicemail_max_seconds)
            .field("token", &redacted(&self.token))
            .field("hmac_secret", &redacted(&self.hmac_secret))
            .field("ami_url", &self.ami_url)
            .field("username", &self.username)
            .field("secret", &redacted(&self.secret))
            .finish()
    }
}

impl ChannelConfig {
    /// The parsed `default_country` (validated at load).
    pub fn country(&self) -> Option<phonenumber::country::Id> {
        self.default_country.as_deref()?.parse().ok()
    }
}

impl VoiceConfig {
    /// Checks names, numbers, providers' keys and secrets, naming the key at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, channel) in &self.channels {
            let key = format!("voice.channels.{name}");
            if !valid_channel_name(name) {
                return Err(ConfigError::new(
                    key,
                    "channel names may use a-z, 0-9, '-' and '_' only (they appear in URLs)",
                ));
            }
            if omnigate_model::phone::to_e164(&channel.number).as_deref()
                != Some(channel.number.as_str())
            {
                return Err(ConfigError::new(
                    format!("{key}.number"),
                    "must be our number in E.164, such as +15550100200",
                ));
            }
            if let Some(country) = &channel.default_country
                && country.parse::<phonenumber::country::Id>().is_err()
            {
                return Err(ConfigError::new(
                    format!("{key}.default_country"),
                    format!("`{country}` is not an ISO 3166 country code such as US or DE"),
                ));
            }
            let misplaced = |field: &str, present: bool| -> Result<(), ConfigError> {
                if present {
                    return Err(ConfigError::new(
                        format!("{key}.{field}"),
                        format!("does not apply to provider {:?}", channel.provider).to_lowercase(),
                    ));
                }
                Ok(())
            };
            match channel.provider {
                Provider::Twilio => {
                    let sid = channel.account_sid.as_deref().unwrap_or_default();
                    if !(sid.len() == 34
                        && sid.starts_with("AC")
                        && sid[2..].chars().all(|c| c.is_ascii_hexdigit()))
                    {
                        return Err(ConfigError::new(
                            format!("{key}.account_sid"),
                            "must be the Twilio account SID: AC and 32 hex digits",
                        ));
                    }
                    require_secret(
                        &format!("{key}.auth_token"),
                        channel
                            .auth_token
                            .as_ref()
                            .unwrap_or(&SecretString::from("")),
                    )?;
                    match &channel.public_url {
                        Some(url) if matches!(url.scheme(), "http" | "https") => {}
                        _ => {
                            return Err(ConfigError::new(
                                format!("{key}.public_url"),
                                "must be the http(s) base URL Twilio calls, such as https://omnigate.example.com",
                            ));
                        }
                    }
                    if let Some(forward_to) = &channel.forward_to
                        && omnigate_model::phone::to_e164(forward_to).as_deref()
                            != Some(forward_to.as_str())
                    {
                        return Err(ConfigError::new(
                            format!("{key}.forward_to"),
                            "must be a number in E.164, such as +15550100300",
                        ));
                    }
                    misplaced("token", channel.token.is_some())?;
                    misplaced("hmac_secret", channel.hmac_secret.is_some())?;
                    misplaced("ami_url", channel.ami_url.is_some())?;
                }
                Provider::Cti => {
                    let given = |s: &Option<SecretString>| {
                        s.as_ref()
                            .is_some_and(|s| !s.expose_secret().trim().is_empty())
                    };
                    if !given(&channel.token) && !given(&channel.hmac_secret) {
                        return Err(ConfigError::new(
                            format!("{key}.token"),
                            "a CTI channel needs a token (path token), an hmac_secret (body signature), or both",
                        ));
                    }
                    misplaced("account_sid", channel.account_sid.is_some())?;
                    misplaced("auth_token", channel.auth_token.is_some())?;
                    misplaced("public_url", channel.public_url.is_some())?;
                    misplaced("forward_to", channel.forward_to.is_some())?;
                    misplaced("ami_url", channel.ami_url.is_some())?;
                }
                Provider::Asterisk => {
                    match &channel.ami_url {
                        Some(url)
                            if url.scheme() == "tcp"
                                && url.host_str().is_some()
                                && url.port().is_some() => {}
                        _ => {
                            return Err(ConfigError::new(
                                format!("{key}.ami_url"),
                                "must be the AMI address with its port, such as tcp://pbx.example.com:5038",
                            ));
                        }
                    }
                    if channel.username.as_deref().unwrap_or_default().is_empty() {
                        return Err(ConfigError::new(
                            format!("{key}.username"),
                            "the AMI user (manager.conf) is missing",
                        ));
                    }
                    require_secret(
                        &format!("{key}.secret"),
                        channel.secret.as_ref().unwrap_or(&SecretString::from("")),
                    )?;
                    misplaced("account_sid", channel.account_sid.is_some())?;
                    misplaced("token", channel.token.is_some())?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use omnigate_core::connector::ConfigSource;

    const DEFAULTS: &str = include_str!("../../../config/default.toml");

    fn load(channels: &str) -> Result<(), ConfigError> {
        let config: VoiceConfig = ConfigSource::from_toml(DEFAULTS, channels).table("voice")?;
        config.validate()
    }

    fn problem(channels: &str) -> String {
        match load(channels) {
            Ok(()) => "accepted".into(),
            Err(err) => err.to_string(),
        }
    }

    const TWILIO: &str = r#"
[voice.channels.line]
provider = "twilio"
number = "+15550100200"
account_sid = "AC00000000000000000000000000000000"
auth_token = "t"
public_url = "https://omnigate.example.test"
"#;

    #[test]
    fn a_complete_twilio_channel_is_accepted() {
        assert_eq!(problem(TWILIO), "accepted");
    }

    #[test]
    fn each_mistake_is_named_by_its_key() {
        let cases = [
            (
                TWILIO.replace("+15550100200", "5550100"),
                "voice.channels.line.number",
            ),
            (
                TWILIO.replace("AC000", "XX000"),
                "voice.channels.line.account_sid",
            ),
            (
                TWILIO.replace("auth_token = \"t\"", "auth_token = \"\""),
                "voice.channels.line.auth_token",
            ),
            (
                TWILIO.replace("https://omnigate", "ftp://omnigate"),
                "voice.channels.line.public_url",
            ),
            (
                format!("{TWILIO}token = \"x\"\n"),
                "voice.channels.line.token",
            ),
            (
                format!("{TWILIO}default_country = \"Atlantis\"\n"),
                "voice.channels.line.default_country",
            ),
            (TWILIO.replace("twilio", "asterisk"), "voice.channels.line"),
            (
                "[voice.channels.pbx]\nprovider = \"cti\"\nnumber = \"+493055571600\"\n"
                    .to_string(),
                "voice.channels.pbx.token",
            ),
        ];
        for (config, key) in cases {
            let problem = problem(&config);
            assert!(problem.contains(key), "{key}: {problem}");
        }
    }
}
