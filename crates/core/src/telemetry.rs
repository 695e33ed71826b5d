//! Logs (tracing) and metrics (Prometheus), set up once per process.

use crate::config::{LogConfig, LogFormat};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

/// Installs the global log subscriber. `RUST_LOG`, when set, overrides `config.level`.
pub fn init_logs(config: &LogConfig) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(config.level.as_str()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a terminal: log files and collectors get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // try_init: a second call (tests) keeps the first subscriber.
    let _ = match config.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
}

/// Installs the Prometheus recorder and returns the handle `/metrics` renders.
pub fn init_metrics() -> PrometheusHandle {
    const BUCKETS: [f64; 14] = [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    // set_buckets only fails on an empty list.
    let builder = PrometheusBuilder::new()
        .set_buckets(&BUCKETS)
        .unwrap_or_else(|_| PrometheusBuilder::new());
    match builder.install_recorder() {
        Ok(handle) => handle,
        // Already installed in this process (tests): render a fresh, unregistered recorder.
        Err(_) => PrometheusBuilder::new().build_recorder().handle(),
    }
}

/// Every metric name, in one place: all are `omnigate_*`, and none takes a tenant,
/// contact or message id as a label (channel ids come from config, so they are a
/// bounded label).
pub mod metric {
    pub const CHANNEL_EVENTS_TOTAL: &str = "omnigate_channel_events_total";
    pub const CHANNEL_MEDIA_TOTAL: &str = "omnigate_channel_media_total";
    pub const CHANNEL_RECEIVED_BYTES_TOTAL: &str = "omnigate_channel_received_bytes_total";
    pub const CHANNEL_REQUEST_DURATION_SECONDS: &str = "omnigate_channel_request_duration_seconds";
    pub const CHANNEL_SENDS_TOTAL: &str = "omnigate_channel_sends_total";
    pub const CHANNEL_SEND_DURATION_SECONDS: &str = "omnigate_channel_send_duration_seconds";
    pub const HTTP_CONNECTIONS_OPEN: &str = "omnigate_http_connections_open";
    pub const HTTP_CONNECTIONS_REFUSED_TOTAL: &str = "omnigate_http_connections_refused_total";
    pub const HTTP_DEADLINE_CUTS_TOTAL: &str = "omnigate_http_deadline_cuts_total";
    pub const HTTP_REQUESTS_TOTAL: &str = "omnigate_http_requests_total";
    pub const HTTP_REQUEST_DURATION_SECONDS: &str = "omnigate_http_request_duration_seconds";
    pub const KAFKA_CONSUMED_TOTAL: &str = "omnigate_kafka_consumed_total";
    pub const KAFKA_CONSUME_ERRORS_TOTAL: &str = "omnigate_kafka_consume_errors_total";
    pub const KAFKA_PRODUCED_TOTAL: &str = "omnigate_kafka_produced_total";
    pub const KAFKA_PRODUCE_DURATION_SECONDS: &str = "omnigate_kafka_produce_duration_seconds";
    pub const KAFKA_PRODUCE_ERRORS_TOTAL: &str = "omnigate_kafka_produce_errors_total";
    pub const KAFKA_REACHABLE: &str = "omnigate_kafka_reachable";
    /// 1 while a channel works, 0 while it is in error (a mailbox that cannot log in,
    /// a PBX that went away); set when `/readyz` or `/metrics` is read.
    pub const CHANNEL_UP: &str = "omnigate_channel_up";
    pub const KAFKA_TRANSACTIONS_TOTAL: &str = "omnigate_kafka_transactions_total";
    pub const ROUTER_CONVERSATION_WRITE_BATCH_SIZE: &str =
        "omnigate_router_conversation_write_batch_size";
    pub const ROUTER_EVENTS_TOTAL: &str = "omnigate_router_events_total";
    pub const ROUTER_RULE_RELOADS_TOTAL: &str = "omnigate_router_rule_reloads_total";
    pub const SQLITE_CHECKPOINT_ERRORS_TOTAL: &str = "omnigate_sqlite_checkpoint_errors_total";
    pub const SQLITE_CHECKPOINT_SECONDS: &str = "omnigate_sqlite_checkpoint_seconds";
    pub const WEBHOOK_ATTEMPTS_TOTAL: &str = "omnigate_webhook_attempts_total";
    pub const WEBHOOK_ATTEMPT_DURATION_SECONDS: &str = "omnigate_webhook_attempt_duration_seconds";
    pub const WEBHOOK_DELIVERIES_CREATED_TOTAL: &str = "omnigate_webhook_deliveries_created_total";
    pub const WEBHOOK_ENDPOINTS: &str = "omnigate_webhook_endpoints";
    pub const WEBHOOK_ENDPOINTS_DISABLED_TOTAL: &str = "omnigate_webhook_endpoints_disabled_total";
    pub const WEBHOOK_STORE_ERRORS_TOTAL: &str = "omnigate_webhook_store_errors_total";
    pub const WEBHOOK_STORE_WRITE_BATCH_SIZE: &str = "omnigate_webhook_store_write_batch_size";
    pub const WEBHOOK_STORE_WRITE_SECONDS: &str = "omnigate_webhook_store_write_seconds";
}

/// What became of a provider's event on a channel: the `outcome` label of
/// [`metric::CHANNEL_EVENTS_TOTAL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOutcome {
    /// Normalized and acknowledged by Kafka.
    Published,
    /// Refused before normalizing (a bad signature or token).
    Rejected,
    /// Unreadable, or refused by Kafka for good: on the dead-letter topic.
    DeadLettered,
    /// Understood and deliberately not turned into an event.
    Ignored,
}

impl EventOutcome {
    fn label(self) -> &'static str {
        match self {
            Self::Published => "published",
            Self::Rejected => "rejected",
            Self::DeadLettered => "dead_lettered",
            Self::Ignored => "ignored",
        }
    }
}

/// The metrics of one connector kind, the same names for every channel kind so that
/// dashboards see every channel side by side.
#[derive(Debug, Clone, Copy)]
pub struct ChannelMetrics {
    kind: &'static str,
}

impl ChannelMetrics {
    /// The metrics of channels of `kind`.
    pub fn new(kind: omnigate_model::pb::ChannelKind) -> Self {
        Self {
            kind: kind.short_name(),
        }
    }

    /// The metrics of WhatsApp channels, as a constant.
    pub const fn whatsapp() -> Self {
        Self { kind: "whatsapp" }
    }

    /// The metrics of voice channels, for a `const`.
    pub const fn voice() -> Self {
        Self { kind: "voice" }
    }

    /// The metrics of live chat channels, for a `const`.
    pub const fn livechat() -> Self {
        Self { kind: "livechat" }
    }

    /// The metrics of email channels, for a `const`.
    pub const fn email() -> Self {
        Self { kind: "email" }
    }

    /// `n` events of `channel` ended as `outcome`.
    pub fn events(&self, channel: &str, outcome: EventOutcome, n: u64) {
        metrics::counter!(metric::CHANNEL_EVENTS_TOTAL, "kind" => self.kind, "channel" => channel.to_string(), "outcome" => outcome.label())
            .increment(n);
    }

    /// A provider request of `bytes` bytes arrived for `channel`.
    pub fn received_bytes(&self, channel: &str, bytes: u64) {
        metrics::counter!(metric::CHANNEL_RECEIVED_BYTES_TOTAL, "kind" => self.kind, "channel" => channel.to_string())
            .increment(bytes);
    }

    /// A provider request took `seconds` from arrival to its answer.
    pub fn request_duration(&self, seconds: f64) {
        metrics::histogram!(metric::CHANNEL_REQUEST_DURATION_SECONDS, "kind" => self.kind)
            .record(seconds);
    }

    /// A send on `channel` ended as `outcome` (`sent`, `failed`) after `seconds`.
    pub fn send(&self, channel: &str, outcome: &'static str, seconds: f64) {
        metrics::counter!(metric::CHANNEL_SENDS_TOTAL, "kind" => self.kind, "channel" => channel.to_string(), "outcome" => outcome)
            .increment(1);
        metrics::histogram!(metric::CHANNEL_SEND_DURATION_SECONDS, "kind" => self.kind)
            .record(seconds);
    }

    /// A media download or upload on `channel` ended as `outcome` (`stored`, `failed`).
    pub fn media(&self, channel: &str, outcome: &'static str) {
        metrics::counter!(metric::CHANNEL_MEDIA_TOTAL, "kind" => self.kind, "channel" => channel.to_string(), "outcome" => outcome)
            .increment(1);
    }
}
