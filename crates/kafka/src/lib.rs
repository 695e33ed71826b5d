//! Kafka for Omnigate. This is the only crate that links librdkafka.
//!
//! - [`KafkaPublisher`]: the process's one idempotent producer (`acks=all`, bounded
//!   `message.timeout.ms`, lz4 or zstd), implementing [`omnigate_core::publish::Publish`];
//! - [`headers`]: the CloudEvents binary-mode headers every record carries;
//! - [`consumer`]: a consumer-group loop that stores an offset only after its handler succeeded;
//! - [`subscriber`]: [`omnigate_core::connector::Subscribe`] for connectors;
//! - [`admin`]: topic bootstrap at start.

pub mod admin;
pub mod config;
pub mod consumer;
pub mod headers;
pub mod publisher;
pub mod reader;
pub mod subscriber;

pub use config::KafkaConfig;
pub use publisher::KafkaPublisher;
pub use subscriber::KafkaSubscriber;
