//! The router role: state from the compacted topic, rules with hot reload, the consumer.

use crate::roles::RoleContext;
use anyhow::Context as _;
use omnigate_core::publish::{Publisher, Topic};
use omnigate_kafka::{consumer, reader};
use omnigate_router::{Rules, service::Router};
use std::{path::Path, time::Duration};
use tokio_util::sync::CancellationToken;

/// Loads and validates the rules file, naming the file, rule and field on failure.
pub fn load_rules(path: &Path) -> anyhow::Result<Rules> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read router.rules_file {}", path.display()))?;
    Rules::from_toml(&text).with_context(|| format!("router.rules_file {}", path.display()))
}

/// Restores the router's state, then starts its consumers and rules reloader on the
/// context's tasks.
pub async fn start(ctx: &RoleContext<'_>) -> anyhow::Result<()> {
    let config = ctx.config;
    let (tasks, shutdown) = (&ctx.connector.tasks, &ctx.connector.shutdown);
    let rules = load_rules(&config.router.rules_file)?;
    let contacts = ctx.contacts().await?;
    // Exactly-once mode: the router's outputs and offsets go through its own
    // transactional producer; its id is stable per instance so a restart fences the
    // dead predecessor and aborts whatever it left open.
    let transactional = if config.router.transactions {
        let instance = if config.kafka.instance_id.is_empty() {
            uuid::Uuid::new_v4().to_string()
        } else {
            config.kafka.instance_id.clone()
        };
        let id = format!("{}router-{instance}", config.kafka.topic_prefix);
        Some(
            omnigate_kafka::KafkaPublisher::transactional(&config.kafka, &id)
                .await
                .with_context(|| format!("cannot start the transactional producer {id}"))?,
        )
    } else {
        None
    };
    let publisher = match &transactional {
        Some(producer) => Publisher::new(producer.clone()),
        None => ctx.connector.publisher.clone(),
    };
    let router = Router::new(rules, contacts, publisher, config.router.policy());

    // State first: every assignment on the compacted topic, before routing anything.
    let kafka = config.kafka.clone();
    let topic = Topic::Assignments.name(&kafka.topic_prefix);
    // Read to the end offsets taken now, whatever the broker's pace: stopping early
    // would route conversations as new that already have an id.
    let restoring = router.clone();
    let (restore_kafka, restore_topic) = (kafka.clone(), topic.clone());
    let positions = tokio::task::spawn_blocking(move || {
        reader::read_to_end(
            &restore_kafka,
            &restore_topic,
            Duration::from_secs(300),
            |record| restoring.apply_state(&as_consumed(&record)),
        )
    })
    .await?
    .context("cannot restore the router's state from its assignments topic")?;
    tracing::info!(conversations = router.state_len(), "Router state loaded");

    // Then follow it from there, so assignments made by other instances arrive before
    // a rebalance hands us their keys. Every instance needs every partition: no group.
    let follower = reader::assign_from(&kafka.for_background(), &topic, &positions)?;
    {
        let (router, shutdown) = (router.clone(), shutdown.clone());
        tasks.spawn(reader::follow_from(follower, shutdown, move |record| {
            router.apply_state(&record);
        }));
    }

    let main = consumer::subscribe(&config.kafka, &config.router.group_id, &[Topic::Inbound])?;
    let lanes = config.router.decision_lanes;
    {
        let (router, shutdown) = (router.clone(), shutdown.clone());
        tasks.spawn(async move {
            let result = match transactional {
                Some(producer) => {
                    let result = consumer::run_transactional(
                        main,
                        producer,
                        shutdown.clone(),
                        500,
                        Duration::from_millis(100),
                        &router,
                    )
                    .await;
                    // A fenced or broken transactional producer cannot recover: stop the
                    // process so its supervisor restarts it with a fresh one.
                    if let Err(err) = &result {
                        omnigate_core::shutdown::fail(
                            &shutdown,
                            format!("the transactional router cannot go on: {err}"),
                        );
                    }
                    result
                }
                None => {
                    consumer::run_pipelined(main, shutdown, 2000, lanes, move |record| {
                        let router = router.clone();
                        async move { router.handle(&record).await }
                    })
                    .await
                }
            };
            if let Err(err) = result {
                tracing::error!(error = %err, "Router consumer stopped");
            }
        });
    }

    let (reloader, path, shutdown) = (
        router.clone(),
        config.router.rules_file.clone(),
        shutdown.clone(),
    );
    tasks.spawn(async move { reload_rules(reloader, &path, shutdown).await });
    Ok(())
}

fn as_consumed(record: &reader::ReadRecord) -> consumer::ConsumedRecord {
    consumer::ConsumedRecord {
        topic: String::new(),
        partition: record.partition,
        offset: record.offset,
        key: Some(record.key.clone().into_bytes()),
        value: record.value.clone().into(),
        headers: Default::default(),
    }
}

/// Re-reads the rules when the file changes or on SIGHUP; a broken file keeps the old rules.
async fn reload_rules(router: Router, path: &Path, shutdown: CancellationToken) {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut seen = modified(path);
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        let signalled = async {
            match hangup.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(2)) => {
                let now = modified(path);
                if now == seen { continue; }
                seen = now;
            }
            () = signalled => {}
        }
        match load_rules(path) {
            Ok(rules) => {
                router.replace_rules(rules);
                metrics::counter!(omnigate_core::telemetry::metric::ROUTER_RULE_RELOADS_TOTAL, "outcome" => "ok")
                    .increment(1);
                tracing::info!(file = %path.display(), "Routing rules reloaded");
            }
            Err(err) => {
                metrics::counter!(omnigate_core::telemetry::metric::ROUTER_RULE_RELOADS_TOTAL, "outcome" => "rejected")
                    .increment(1);
                tracing::error!(
                    error = format!("{err:#}"),
                    "Routing rules not reloaded; keeping the previous rules"
                );
            }
        }
    }
}
