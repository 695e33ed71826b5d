//! The webhooks role: the dispatcher, fed by a pipelined consumer of
//! `omnigate.routed.v1`.

use crate::roles::RoleContext;
use anyhow::Context as _;
use omnigate_core::publish::Topic;
use omnigate_kafka::consumer;
use std::sync::Arc;

/// How many routed records the dispatcher's consumer keeps in flight.
const MAX_IN_FLIGHT: usize = 4096;

/// Starts the dispatcher and its consumer on the context's tasks.
pub async fn start(ctx: &RoleContext<'_>) -> anyhow::Result<()> {
    let config = ctx.config;
    let (tasks, shutdown) = (&ctx.connector.tasks, &ctx.connector.shutdown);
    let dispatcher = omnigate_webhooks::Dispatcher::start(
        config.webhooks.clone(),
        ctx.webhook_store().await?,
        ctx.connector.publisher.clone(),
        Arc::clone(&ctx.webhook_changes),
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
