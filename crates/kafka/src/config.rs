//! Kafka settings (the `[kafka]` table).

use rdkafka::ClientConfig;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::collections::BTreeMap;

/// Kafka settings shared by the producer, consumers and topic bootstrap.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma-separated. Default `127.0.0.1:9092`.
    pub brokers: String,
    /// Prefix of every topic name. Default `omnigate.`.
    pub topic_prefix: String,
    /// Partitions of topics created at start. Default 6.
    pub partitions: i32,
    /// Replication factor of topics created at start. Default 1 (use 3 in production).
    pub replication_factor: i32,
    /// Create missing topics at start. When off, or when creation fails, start fails
    /// with the list of topics to create.
    pub create_topics: bool,
    /// Longest a record may wait for the broker's acknowledgement, in milliseconds.
    /// This bounds how long a webhook waits before answering 503. Default 5000.
    pub message_timeout_ms: u64,
    /// How long the producer batches before sending, in milliseconds. Default 5.
    pub linger_ms: u64,
    /// Batch compression: `lz4`, `zstd` or `none`. Default `lz4`.
    pub compression: String,
    /// Client id reported to the broker. Default `omnigate`.
    pub client_id: String,
    /// How often readiness checks the broker, in milliseconds. Default 2000.
    pub probe_interval_ms: u64,
    /// Longest a consumer's fetch waits at the broker when nothing new is there, in
    /// milliseconds. Kafka answers as soon as a record arrives, so this only sets how
    /// often an idle consumer asks. Default 5000.
    pub fetch_wait_max_ms: u64,
    /// `fetch_wait_max_ms` of the consumers off the main path: WhatsApp media
    /// downloads and send commands, and the router's follower of other instances'
    /// state. Default 5000.
    pub background_fetch_wait_max_ms: u64,
    /// Least data a consumer's fetch waits for at the broker (up to its fetch wait),
    /// in bytes. Default 1: a record is handed over as soon as it arrives.
    #[serde(default = "one_byte")]
    pub fetch_min_bytes: u32,
    /// `fetch_min_bytes` of the consumers off the main path. Default 1. Raising it
    /// batches what they fetch, at the price of waiting up to
    /// `background_fetch_wait_max_ms` when traffic is light.
    #[serde(default = "background_min_bytes")]
    pub background_fetch_min_bytes: u32,
    /// A stable id of this instance (e.g. the pod name) for static consumer-group
    /// membership: a restarted instance takes its partitions back at once instead of
    /// waiting for the group to notice the old one is gone. Empty: dynamic membership.
    /// Must differ between instances running at the same time.
    #[serde(default)]
    pub instance_id: String,
    /// Topic suffixes (e.g. `inbound.v1`) whose values are protobuf instead of JSON.
    #[serde(default)]
    pub protobuf_topics: Vec<String>,
    /// Extra librdkafka properties, e.g. `security.protocol` or `sasl.password`.
    /// Values are treated as secrets and never logged.
    #[serde(default)]
    pub properties: BTreeMap<String, SecretString>,
}

fn one_byte() -> u32 {
    1
}

fn background_min_bytes() -> u32 {
    1
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("topic_prefix", &self.topic_prefix)
            .field("partitions", &self.partitions)
            .field("replication_factor", &self.replication_factor)
            .field("create_topics", &self.create_topics)
            .field("message_timeout_ms", &self.message_timeout_ms)
            .field("linger_ms", &self.linger_ms)
            .field("compression", &self.compression)
            .field("client_id", &self.client_id)
            .field("fetch_wait_max_ms", &self.fetch_wait_max_ms)
            .field(
                "background_fetch_wait_max_ms",
                &self.background_fetch_wait_max_ms,
            )
            .field("fetch_min_bytes", &self.fetch_min_bytes)
            .field(
                "background_fetch_min_bytes",
                &self.background_fetch_min_bytes,
            )
            .field("instance_id", &self.instance_id)
            .field("protobuf_topics", &self.protobuf_topics)
            .field("properties", &self.properties.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl KafkaConfig {
    /// Checks values librdkafka would only reject later, naming the key.
    pub fn validate(&self) -> Result<(), omnigate_core::ConfigError> {
        use omnigate_core::ConfigError;
        if self.brokers.trim().is_empty() {
            return Err(ConfigError::new(
                "kafka.brokers",
                "must list at least one host:port",
            ));
        }
        for broker in self.brokers.split(',') {
            let ok = broker
                .trim()
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !ok {
                return Err(ConfigError::new(
                    "kafka.brokers",
                    format!("`{broker}` is not host:port"),
                ));
            }
        }
        if !matches!(self.compression.as_str(), "lz4" | "zstd" | "none") {
            return Err(ConfigError::new(
                "kafka.compression",
                "must be lz4, zstd or none",
            ));
        }
        if self.partitions < 1 {
            return Err(ConfigError::new("kafka.partitions", "must be at least 1"));
        }
        if self.message_timeout_ms < 100 {
            return Err(ConfigError::new(
                "kafka.message_timeout_ms",
                "must be at least 100",
            ));
        }
        for (key, wait) in [
            ("kafka.fetch_wait_max_ms", self.fetch_wait_max_ms),
            (
                "kafka.background_fetch_wait_max_ms",
                self.background_fetch_wait_max_ms,
            ),
        ] {
            if wait > 300_000 {
                return Err(ConfigError::new(
                    key,
                    "must be at most 300000 (librdkafka's limit)",
                ));
            }
        }
        Ok(())
    }

    /// This config for a consumer off the main path: its fetches wait
    /// `background_fetch_wait_max_ms` instead of `fetch_wait_max_ms`.
    pub fn for_background(&self) -> Self {
        Self {
            fetch_wait_max_ms: self.background_fetch_wait_max_ms,
            fetch_min_bytes: self.background_fetch_min_bytes,
            ..self.clone()
        }
    }

    /// The librdkafka settings every client shares.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("client.id", &self.client_id)
            // Local single-broker setups listen on 127.0.0.1 only.
            .set("broker.address.family", "v4")
            // Reconnect within a second of the broker's return (librdkafka backs off to
            // 10 s by default), so readiness and webhooks recover quickly.
            .set("reconnect.backoff.max.ms", "1000")
            // Small requests go out at once: with Nagle's algorithm they can wait for the
            // peer's delayed ACK, tens of milliseconds per round trip.
            .set("socket.nagle.disable", "true");
        for (key, value) in &self.properties {
            config.set(key, value.expose_secret());
        }
        config
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn background_consumers_get_their_own_fetch_wait_and_nothing_else_changes() {
        let config = KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            topic_prefix: "omnigate.".into(),
            partitions: 6,
            replication_factor: 1,
            create_topics: true,
            message_timeout_ms: 5000,
            linger_ms: 5,
            compression: "lz4".into(),
            client_id: "omnigate".into(),
            probe_interval_ms: 2000,
            fetch_wait_max_ms: 10,
            background_fetch_wait_max_ms: 100,
            fetch_min_bytes: 1,
            background_fetch_min_bytes: 4096,
            instance_id: String::new(),
            protobuf_topics: Vec::new(),
            properties: BTreeMap::new(),
        };
        let background = config.for_background();
        assert_eq!(background.fetch_wait_max_ms, 100);
        assert_eq!(background.background_fetch_wait_max_ms, 100);
        assert_eq!(background.fetch_min_bytes, 4096);
        assert_eq!(
            format!(
                "{:?}",
                KafkaConfig {
                    fetch_wait_max_ms: 10,
                    fetch_min_bytes: 1,
                    ..background
                }
            ),
            format!("{config:?}")
        );
    }
}
