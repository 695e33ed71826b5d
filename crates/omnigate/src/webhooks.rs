//! The webhooks role: the dispatcher, fed by a pipelined consumer of
//! `omnigate.routed.v1`. Started like the router role (`crate::router::start`).

use crate::config::Config;
use anyhow::Context as _;
use omnigate_core::publish::{Publisher, Topic};
use omnigate_kafka::consumer;
use omnigate_webhooks::WebhookStore;
use std::sync::Arc;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// How many routed records the dispatcher's consumer keeps in flight.
const MAX_IN_FLIGHT: usize = 4096;

/// Starts the dispatcher and its consumer on `tasks`.
pub async fn start(
    config: &Config,
    store: WebhookStore,
    publisher: Publisher,
    changes: Arc<tokio::sync::Notify>,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let dispatcher = omnigate_webhooks::Dispatcher::start(
        config.webhooks.clone(),
        store,
        publisher,
        changes,
        tasks,
        shutdown,
    )
    .await
    .context("cannot start the webhook dispatcher")?;
    let consumer = consumer::subscribe(&config.kafka, &config.webhooks.group_id, &[Topic::Routed])
        .context("cannot start the Kafka consumer for webhooks")?;
    let shutdown = shutdown.clone();
    tasks.spawn(async move {
        let result = consumer::run_pipelined(consumer, shutdown, MAX_IN_FLIGHT, 1, move |record| {
            let dispatcher = dispatcher.clone();
            async move { dispatcher.handle(&record).await }
        })
        .await;
        if let Err(err) = result {
            tracing::error!(error = %err, "Webhook consumer stopped");
        }
    });
    Ok(())
}
