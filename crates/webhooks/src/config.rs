//! The `[webhooks]` table: storage, retry schedule, limits and the SSRF allowlist.

use ipnet::IpNet;
use omnigate_core::ConfigError;
use serde::{Deserialize, Deserializer};
use std::time::Duration;

/// Outbound webhook settings. Durations are written like `5s`, `30m`, `10h`, `5d`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Where endpoints, deliveries and attempts are kept: `sqlite://path?mode=rwc`
    /// (embedded default) or `postgres://user@host/db`.
    pub database_url: String,
    /// Consumer group of the dispatchers, after the topic prefix. Default `webhooks`.
    pub group_id: String,
    /// Delay before each attempt, the first counted from when the event arrives:
    /// default `0s, 5s, 5m, 30m, 2h, 5h, 10h, 10h` (Svix's schedule, 8 attempts).
    #[serde(deserialize_with = "durations")]
    pub retry_schedule: Vec<Duration>,
    /// Each retry delay is moved randomly by up to this fraction either way, so
    /// endpoints that failed together do not retry together. Default 0.2.
    pub retry_jitter: f64,
    /// The longest `Retry-After` honoured; a longer one is cut to this. Default `1h`.
    #[serde(deserialize_with = "duration")]
    pub retry_after_max: Duration,
    /// Total time for one attempt: connect, send, and read the answer. Default `15s`.
    #[serde(deserialize_with = "duration")]
    pub attempt_timeout: Duration,
    /// An endpoint with no success for this long is disabled, and a
    /// `webhook.endpoint_disabled` event says so. Default `5d`.
    #[serde(deserialize_with = "duration")]
    pub disable_after: Duration,
    /// After a secret rotation the old secret signs beside the new one for this long.
    /// Default `24h`.
    #[serde(deserialize_with = "duration")]
    pub rotation_overlap: Duration,
    /// Attempts in flight across all endpoints. Default 512.
    pub max_in_flight: usize,
    /// Attempts in flight to one endpoint, so a slow one cannot take every slot. Default 32.
    pub max_in_flight_per_endpoint: usize,
    /// How often due retries, replays and test events are looked for. Default `1s`.
    #[serde(deserialize_with = "duration")]
    pub poll_interval: Duration,
    /// How often the dispatcher re-reads endpoints, so changes made through another
    /// process reach it. Default `5s`.
    #[serde(deserialize_with = "duration")]
    pub endpoint_refresh: Duration,
    /// Bytes of each response body kept in the delivery log. Default 4096.
    pub response_body_max_bytes: usize,
    /// Deliveries and attempts older than this are deleted. Default `30d`.
    #[serde(deserialize_with = "duration")]
    pub retention: Duration,
    /// Networks endpoints may resolve to although they are private, loopback,
    /// link-local, CGNAT or otherwise not public, e.g. `["10.1.0.0/16"]`. Default none.
    pub allow_networks: Vec<IpNet>,
}

impl WebhooksConfig {
    /// Checks the values, naming the key at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        omnigate_core::db::validate_url("webhooks.database_url", &self.database_url)?;
        if self.group_id.trim().is_empty() {
            return Err(ConfigError::new("webhooks.group_id", "must not be empty"));
        }
        if self.retry_schedule.is_empty() {
            return Err(ConfigError::new(
                "webhooks.retry_schedule",
                "needs at least one entry (the first attempt)",
            ));
        }
        if !(0.0..1.0).contains(&self.retry_jitter) {
            return Err(ConfigError::new(
                "webhooks.retry_jitter",
                "must be at least 0 and below 1",
            ));
        }
        for (key, value) in [
            ("webhooks.attempt_timeout", self.attempt_timeout),
            ("webhooks.poll_interval", self.poll_interval),
            ("webhooks.endpoint_refresh", self.endpoint_refresh),
            ("webhooks.disable_after", self.disable_after),
        ] {
            if value.is_zero() {
                return Err(ConfigError::new(key, "must be longer than 0s"));
            }
        }
        for (key, value) in [
            ("webhooks.max_in_flight", self.max_in_flight),
            (
                "webhooks.max_in_flight_per_endpoint",
                self.max_in_flight_per_endpoint,
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::new(key, "must be at least 1"));
            }
        }
        Ok(())
    }

    /// How long a claimed delivery stays with its dispatcher before another may take it:
    /// longer than any attempt, so a live dispatcher is never raced, short enough that
    /// a crashed one's work resumes soon.
    pub fn lease(&self) -> Duration {
        self.attempt_timeout + Duration::from_secs(10)
    }
}

fn parse<E: serde::de::Error>(text: &str) -> Result<Duration, E> {
    humantime::parse_duration(text)
        .map_err(|e| E::custom(format!("`{text}` is not a duration like 5s or 10m: {e}")))
}

fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    parse(&String::deserialize(deserializer)?)
}

fn durations<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Duration>, D::Error> {
    Vec::<String>::deserialize(deserializer)?
        .iter()
        .map(|text| parse(text))
        .collect()
}
