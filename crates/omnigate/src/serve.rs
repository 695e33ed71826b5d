//! `omnigate serve`: wires the configured roles onto one listener and one producer.

use crate::config::Config;
use anyhow::Context as _;
use omnigate_core::{
    blob::BlobStore,
    connector::{ConnectorContext, Subscriber},
    health::Health,
    http::{self, connections},
    publish::Publisher,
    shutdown, telemetry,
};
use omnigate_kafka::{KafkaPublisher, KafkaSubscriber, admin};
use std::time::Duration;
use tokio_util::task::TaskTracker;

/// Runs until SIGINT or SIGTERM, then drains requests, stops consumers and flushes Kafka.
pub async fn serve(config: Config, roles: Vec<String>) -> anyhow::Result<()> {
    telemetry::init_logs(&config.log);
    let metrics = telemetry::init_metrics();
    let roles = if roles.is_empty() {
        config.roles.clone()
    } else {
        roles
    };
    tracing::info!(version = env!("CARGO_PKG_VERSION"), ?roles, brokers = %config.kafka.brokers, "Starting Omnigate");

    admin::ensure_topics(&config.kafka).await?;
    let producer =
        KafkaPublisher::new(&config.kafka).context("cannot create the Kafka producer")?;
    let publisher = Publisher::new(producer.clone());
    let health = Health::default();
    let shutdown = shutdown::on_signal();
    let grace = Duration::from_millis(config.server.shutdown_grace_ms);
    let flush_timeout = Duration::from_millis(config.kafka.message_timeout_ms);
    let budget = shutdown::Budget::enforce(&shutdown, grace, flush_timeout);
    let tasks = TaskTracker::new();
    {
        let (producer, health, shutdown) = (producer.clone(), health.clone(), shutdown.clone());
        let interval = Duration::from_millis(config.kafka.probe_interval_ms);
        tasks.spawn(async move { producer.probe(health, interval, shutdown).await });
    }

    let blobs = BlobStore::open(&config.blobs)?;
    let ctx = ConnectorContext {
        publisher: publisher.clone(),
        subscriber: Subscriber::new(KafkaSubscriber::new(config.kafka.clone())),
        database_url: config.router.database_url.clone(),
        blobs,
        shutdown: shutdown.clone(),
        tasks: tasks.clone(),
        health: health.clone(),
    };

    let roles_ctx = crate::roles::RoleContext::new(&config, ctx);
    let mut app = axum::Router::new();
    for (name, role) in crate::roles::enabled(&config, &roles) {
        let routes = role
            .start(&roles_ctx)
            .await
            .with_context(|| format!("cannot start the {name} role"))?;
        app = app.merge(routes);
    }

    let server = &config.server;
    let open_files = connections::raise_open_file_limit();
    let public = connections::Limits {
        listener: "public",
        header_timeout: Duration::from_millis(server.header_timeout_ms),
        idle_timeout: Duration::from_millis(server.idle_timeout_ms),
        max_connections: connections::fit_to_file_limit(server.max_connections, open_files),
        max_per_client: server.max_connections_per_client,
    };
    if let Some(admin_listen) = server.admin_listen {
        let listener = tokio::net::TcpListener::bind(admin_listen)
            .await
            .with_context(|| format!("cannot listen on {admin_listen} (server.admin_listen)"))?;
        let admin = connections::Limits {
            listener: "admin",
            max_connections: 64,
            max_per_client: 0,
            ..public
        };
        let routes = http::ops_routes(health.clone(), metrics.clone());
        tracing::info!(listen = %admin_listen, "Admin listener (/healthz, /readyz, /metrics)");
        let (shutdown, grace) = (shutdown.clone(), grace);
        tasks.spawn(async move {
            connections::serve(listener, routes, admin, shutdown, grace).await;
        });
    }
    let app = http::with_ops(app, server, health, metrics);
    let listener = tokio::net::TcpListener::bind(server.listen)
        .await
        .with_context(|| format!("cannot listen on {} (server.listen)", server.listen))?;
    tracing::info!(
        listen = %server.listen,
        open_file_limit = open_files,
        max_connections = public.max_connections,
        max_connections_per_client = public.max_per_client,
        header_timeout_ms = server.header_timeout_ms,
        body_timeout_ms = server.body_timeout_ms,
        idle_timeout_ms = server.idle_timeout_ms,
        "Listening"
    );
    let abandoned_requests =
        connections::serve(listener, app, public, shutdown.clone(), budget.grace_left()).await;

    shutdown.cancel();
    tasks.close();
    let stopped = tokio::time::timeout(budget.grace_left(), tasks.wait())
        .await
        .is_ok();
    if !stopped {
        // Their records are not acknowledged: consumers read them again after a restart.
        tracing::warn!(
            tasks = tasks.len(),
            "Background tasks (consumers, dispatcher, probes) did not stop within the grace period; abandoning them"
        );
    }
    let unacknowledged = tokio::task::spawn_blocking(move || producer.flush(flush_timeout)).await?;
    if let Some(reason) = shutdown::failure() {
        anyhow::bail!("stopped because {reason}");
    }
    if !stopped || unacknowledged > 0 || abandoned_requests > 0 {
        anyhow::bail!(
            "shutdown was not clean: {abandoned_requests} connection(s) still busy at the grace deadline, {} background task(s) abandoned, {unacknowledged} record(s) not acknowledged by Kafka",
            if stopped { 0 } else { tasks.len() }
        );
    }
    tracing::info!(unacknowledged, "Stopped cleanly");
    Ok(())
}
