//! The `[email]` table: one entry per mailbox we answer from.

use omnigate_core::{
    ConfigError,
    config::{require_secret, valid_channel_name},
};
use secrecy::SecretString;
use serde::Deserialize;
use std::collections::BTreeMap;
use url::Url;

/// Email settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// How long one IDLE lasts before it is ended and issued again, in seconds
    /// (servers drop an IDLE after 30 minutes; a re-issue also proves the connection
    /// alive). Default 300.
    pub idle_renew_secs: u64,
    /// Deadline of every IMAP command and SMTP send, in milliseconds: a silent server
    /// never hangs a mailbox. Default 30000.
    pub command_timeout_ms: u64,
    /// How often a folder is checked for new mail on servers without IDLE, in
    /// seconds. Default 60.
    pub poll_interval_secs: u64,
    /// First pause before reconnecting a mailbox that failed, in milliseconds; it
    /// doubles (with jitter) up to `reconnect_max_ms`. Default 500.
    pub reconnect_min_ms: u64,
    /// Longest pause between reconnects, in milliseconds. Default 60000.
    pub reconnect_max_ms: u64,
    /// How many mails are fetched and published at once during a backfill; the
    /// cursor moves after each batch. Default 50.
    pub fetch_batch: u32,
    /// Pauses between tries of an SMTP send that failed temporarily (4xx or a
    /// connection error), in milliseconds; after the last, the send is reported
    /// failed. Default [1000, 5000, 30000].
    pub send_retry_delays_ms: Vec<u64>,
    /// Mailboxes by channel id.
    #[serde(default)]
    pub channels: BTreeMap<String, ChannelConfig>,
}

/// One mailbox: where mail to our address is read, and how replies are sent.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    /// The tenant this channel's events belong to. Default `default`.
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// Our address: replies come from it, and mail from it is never ingested as a
    /// customer's.
    pub address: String,
    /// The display name replies are sent under (`Support <support@…>`). Optional.
    #[serde(default)]
    pub display_name: Option<String>,
    /// `imaps://host:993` (TLS) or `imap://host:143` (plain, or STARTTLS with
    /// `starttls = true`).
    pub imap_url: Url,
    /// The IMAP (and, unless `smtp_username` is set, SMTP) login.
    pub username: String,
    /// The password (LOGIN). Secret. Give this or `oauth2`, not both.
    #[serde(default)]
    pub password: Option<SecretString>,
    /// OAuth2 (XOAUTH2) instead of a password.
    #[serde(default)]
    pub oauth2: Option<OAuth2Config>,
    /// Folders followed, each on a connection of its own. Default `["INBOX"]`.
    /// Gmail's `[Gmail]/All Mail` holds every mail of the other folders and is
    /// refused, so no mail is read twice.
    #[serde(default = "default_folders")]
    pub folders: Vec<String>,
    /// `smtps://host:465` (TLS), `smtp://host:587` with `starttls = true`, or
    /// `smtp://host:25` (plain, for local servers).
    pub smtp_url: Url,
    /// The SMTP login, when it differs from `username`.
    #[serde(default)]
    pub smtp_username: Option<String>,
    /// Upgrade plain `imap://` and `smtp://` connections with STARTTLS. Default false.
    #[serde(default)]
    pub starttls: bool,
    /// Log in to SMTP at all. Default true; false for a local relay that takes mail
    /// from 127.0.0.1 without authentication.
    #[serde(default = "default_true")]
    pub smtp_auth: bool,
    /// The first read of a new mailbox skips mail older than this date
    /// (`YYYY-MM-DD`); without it, the whole folder is read.
    #[serde(default)]
    pub backfill_since: Option<chrono::NaiveDate>,
    /// After sending, a copy is appended to this IMAP folder (e.g. `Sent`). Optional.
    #[serde(default)]
    pub sent_folder: Option<String>,
}

/// OAuth2 with the refresh-token grant, for IMAP and SMTP alike.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuth2Config {
    /// The token endpoint (`https://login.microsoftonline.com/<tenant>/oauth2/v2.0/token`).
    pub token_url: Url,
    /// The application's client id.
    pub client_id: String,
    /// The application's client secret. Secret; optional for public clients.
    #[serde(default)]
    pub client_secret: Option<SecretString>,
    /// The refresh token. Secret.
    pub refresh_token: SecretString,
    /// The scope asked for (`https://outlook.office.com/IMAP.AccessAsUser.All …`).
    #[serde(default)]
    pub scope: Option<String>,
}

fn default_tenant() -> String {
    "default".into()
}

fn default_folders() -> Vec<String> {
    vec!["INBOX".into()]
}

fn default_true() -> bool {
    true
}

impl std::fmt::Debug for ChannelConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelConfig")
            .field("tenant", &self.tenant)
            .field("address", &self.address)
            .field("imap_url", &self.imap_url)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "[REDACTED]"))
            .field("oauth2", &self.oauth2)
            .field("folders", &self.folders)
            .field("smtp_url", &self.smtp_url)
            .field("starttls", &self.starttls)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for OAuth2Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuth2Config")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// Host and port of an `imap[s]://` or `smtp[s]://` URL, and whether it is TLS from
/// the first byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name or address.
    pub host: String,
    /// Port (the scheme's default when the URL has none).
    pub port: u16,
    /// `imaps` / `smtps`: TLS from the first byte.
    pub implicit_tls: bool,
}

impl Endpoint {
    /// Reads `url`, whose scheme must be `plain` or `tls` (`imap`/`imaps`).
    fn parse(url: &Url, plain: (&str, u16), tls: (&str, u16)) -> Result<Self, String> {
        let implicit_tls = match url.scheme() {
            s if s == plain.0 => false,
            s if s == tls.0 => true,
            other => {
                return Err(format!(
                    "`{other}://` is not supported; use {}:// or {}://",
                    tls.0, plain.0
                ));
            }
        };
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or("the URL has no host")?
            .to_string();
        let port = url
            .port()
            .unwrap_or(if implicit_tls { tls.1 } else { plain.1 });
        Ok(Self {
            host,
            port,
            implicit_tls,
        })
    }
}

impl ChannelConfig {
    /// The IMAP server.
    pub fn imap(&self) -> Result<Endpoint, String> {
        Endpoint::parse(&self.imap_url, ("imap", 143), ("imaps", 993))
    }

    /// The SMTP server.
    pub fn smtp(&self) -> Result<Endpoint, String> {
        Endpoint::parse(&self.smtp_url, ("smtp", 25), ("smtps", 465))
    }

    /// The SMTP login.
    pub fn smtp_login(&self) -> &str {
        self.smtp_username.as_deref().unwrap_or(&self.username)
    }
}

impl EmailConfig {
    /// Checks every channel; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.fetch_batch == 0 {
            return Err(ConfigError::new("email.fetch_batch", "must be at least 1"));
        }
        if self.command_timeout_ms == 0 || self.idle_renew_secs == 0 {
            return Err(ConfigError::new(
                "email.command_timeout_ms",
                "timeouts must be above 0",
            ));
        }
        if self.idle_renew_secs > 29 * 60 {
            return Err(ConfigError::new(
                "email.idle_renew_secs",
                "must be under 29 minutes (1740 s): servers end an IDLE after 30",
            ));
        }
        let mut addresses = BTreeMap::new();
        for (name, channel) in &self.channels {
            let key = format!("email.channels.{name}");
            if !valid_channel_name(name) {
                return Err(ConfigError::new(
                    key,
                    "channel names may use a-z, 0-9, '-' and '_' only",
                ));
            }
            let address = channel.address.trim();
            if address.split('@').count() != 2 || address.starts_with('@') || address.ends_with('@')
            {
                return Err(ConfigError::new(
                    format!("{key}.address"),
                    format!("`{address}` is not an email address"),
                ));
            }
            if let Some(other) = addresses.insert(address.to_lowercase(), name) {
                return Err(ConfigError::new(
                    format!("{key}.address"),
                    format!("channel `{other}` already uses {address}"),
                ));
            }
            channel
                .imap()
                .map_err(|e| ConfigError::new(format!("{key}.imap_url"), e))?;
            channel
                .smtp()
                .map_err(|e| ConfigError::new(format!("{key}.smtp_url"), e))?;
            if channel.username.trim().is_empty() {
                return Err(ConfigError::new(format!("{key}.username"), "is empty"));
            }
            match (&channel.password, &channel.oauth2) {
                (Some(_), Some(_)) => {
                    return Err(ConfigError::new(
                        format!("{key}.oauth2"),
                        "give either password or oauth2, not both",
                    ));
                }
                (None, None) => {
                    return Err(ConfigError::new(
                        format!("{key}.password"),
                        "secret is missing: set password (or an [oauth2] table)",
                    ));
                }
                (Some(password), None) => require_secret(&format!("{key}.password"), password)?,
                (None, Some(oauth2)) => {
                    require_secret(
                        &format!("{key}.oauth2.refresh_token"),
                        &oauth2.refresh_token,
                    )?;
                    if !matches!(oauth2.token_url.scheme(), "https" | "http") {
                        return Err(ConfigError::new(
                            format!("{key}.oauth2.token_url"),
                            "must be an https:// URL",
                        ));
                    }
                    if oauth2.client_id.trim().is_empty() {
                        return Err(ConfigError::new(
                            format!("{key}.oauth2.client_id"),
                            "is empty",
                        ));
                    }
                }
            }
            if channel.folders.is_empty() {
                return Err(ConfigError::new(
                    format!("{key}.folders"),
                    "follow at least one folder",
                ));
            }
            if let Some(all) = channel
                .folders
                .iter()
                .find(|f| f.eq_ignore_ascii_case("[Gmail]/All Mail"))
            {
                return Err(ConfigError::new(
                    format!("{key}.folders"),
                    format!(
                        "`{all}` repeats the mail of every other folder; follow INBOX (and labels) instead"
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn config(channel: &str) -> Result<EmailConfig, ConfigError> {
        let defaults = include_str!("../../../config/default.toml");
        let source = omnigate_core::connector::ConfigSource::from_toml(defaults, channel);
        let config: EmailConfig = source.table("email")?;
        config.validate()?;
        Ok(config)
    }

    const GOOD: &str = r#"
[email.channels.support]
address = "support@example.test"
imap_url = "imap://127.0.0.1:1143"
username = "support@example.test"
password = "pw"
smtp_url = "smtp://127.0.0.1:2525"
"#;

    #[test]
    fn a_plain_channel_reads_with_defaults() {
        let config = config(GOOD).unwrap();
        let channel = &config.channels["support"];
        assert_eq!(channel.folders, ["INBOX"]);
        assert_eq!(channel.imap().unwrap().port, 1143);
        assert!(!channel.smtp().unwrap().implicit_tls);
        assert!(!format!("{channel:?}").contains("pw"), "no secret in Debug");
    }

    #[test]
    fn errors_name_the_key() {
        let bad_url = GOOD.replace("imap://127.0.0.1:1143", "pop3://host");
        assert_eq!(
            config(&bad_url).unwrap_err().key,
            "email.channels.support.imap_url"
        );
        let no_secret = GOOD.replace("password = \"pw\"\n", "");
        assert_eq!(
            config(&no_secret).unwrap_err().key,
            "email.channels.support.password"
        );
        let both = format!(
            "{GOOD}[email.channels.support.oauth2]\ntoken_url = \"https://t.example/token\"\nclient_id = \"c\"\nrefresh_token = \"r\"\n"
        );
        assert_eq!(
            config(&both).unwrap_err().key,
            "email.channels.support.oauth2"
        );
        let unknown = GOOD.replace("password", "pasword");
        assert!(
            config(&unknown)
                .unwrap_err()
                .to_string()
                .contains("pasword")
        );
    }
}
