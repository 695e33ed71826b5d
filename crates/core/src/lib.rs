//! What every Omnigate role shares: configuration loading, the one HTTP listener,
//! the [`Connector`](connector::Connector) trait and its context, the
//! [`Publisher`](publish::Publisher) handle, the blob store, API keys and shutdown.
//!
//! This crate does no Kafka I/O itself: `omnigate-kafka` implements
//! [`publish::Publish`], so connector crates build and test without librdkafka.

pub mod api_error;
pub mod auth;
pub mod blob;
pub mod config;
pub mod connector;
pub mod consume;
pub mod db;
pub mod health;
pub mod http;
pub mod ingest;
pub mod publish;
pub mod retry;
pub mod shutdown;
pub mod telemetry;

pub use config::ConfigError;
