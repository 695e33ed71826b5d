//! Outbound webhooks: endpoints registered over `/v1/webhooks`, deliveries of
//! `omnigate.routed.v1` events signed per Standard Webhooks, durable retries in SQL,
//! and an SSRF guard on every connection.
//!
//! Pure parts ([`subscription`], [`retry`], [`signing`]) hold the rules; [`store`],
//! [`http_client`] and [`dispatcher`] do the I/O.

pub mod api;
pub mod config;
pub mod dispatcher;
pub mod http_client;
pub mod retry;
pub mod signing;
pub mod ssrf;
pub mod store;
pub mod subscription;

pub use config::WebhooksConfig;
pub use dispatcher::Dispatcher;
pub use store::WebhookStore;
