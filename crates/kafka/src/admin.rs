//! Topic bootstrap: make sure the contract's topics exist before serving.

use crate::config::KafkaConfig;
use omnigate_core::publish::Topic;
use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    error::{KafkaError, RDKafkaErrorCode},
    util::Timeout,
};
use std::{collections::HashSet, sync::Arc, time::Duration};

/// Topics are missing and could not be created.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// The broker did not answer.
    #[error("cannot reach Kafka at {brokers} to check topics: {source}")]
    Unreachable {
        /// Bootstrap servers tried.
        brokers: String,
        /// The client's error.
        source: KafkaError,
    },
    /// Some topics are missing; the message lists how to create them.
    #[error("missing Kafka topics, create them and start again:\n{instructions}")]
    Missing {
        /// One line per topic with its partitions and config.
        instructions: String,
    },
}

/// Topic-level config of a contract topic.
fn topic_config(topic: Topic) -> &'static [(&'static str, &'static str)] {
    match topic {
        // The router's state: only the latest assignment per conversation key matters.
        Topic::Assignments => &[("cleanup.policy", "compact")],
        _ => &[],
    }
}

/// Creates the contract topics that are missing (when `create_topics` is on).
///
/// Returns the names of the topics it created. Fails, naming each topic to create,
/// when topics are missing and cannot be created.
pub async fn ensure_topics(config: &KafkaConfig) -> Result<Vec<String>, BootstrapError> {
    let admin = admin_client(config)?;
    let wanted: Vec<(Topic, String)> = Topic::ALL
        .into_iter()
        .map(|t| (t, t.name(&config.topic_prefix)))
        .collect();

    let existing = existing_topics(&admin, config).await?;
    let missing: Vec<&(Topic, String)> = wanted
        .iter()
        .filter(|(_, n)| !existing.contains(n))
        .collect();
    if missing.is_empty() {
        return Ok(Vec::new());
    }

    let mut failures = Vec::new();
    let mut created = Vec::new();
    if config.create_topics {
        let new_topics: Vec<NewTopic<'_>> = missing
            .iter()
            .map(|(topic, name)| {
                topic_config(*topic).iter().fold(
                    NewTopic::new(
                        name,
                        config.partitions,
                        TopicReplication::Fixed(config.replication_factor),
                    ),
                    |t, (k, v)| t.set(k, v),
                )
            })
            .collect();
        let options =
            AdminOptions::new().operation_timeout(Some(Timeout::After(Duration::from_secs(10))));
        match admin.create_topics(&new_topics, &options).await {
            Ok(results) => {
                for result in results {
                    match result {
                        Ok(name) => created.push(name),
                        Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => created.push(name),
                        Err((name, code)) => failures.push(format!("{name}: {code}")),
                    }
                }
            }
            Err(err) => failures.push(err.to_string()),
        }
    }

    let still_missing: Vec<&&(Topic, String)> = missing
        .iter()
        .filter(|(_, n)| !created.contains(n))
        .collect();
    if still_missing.is_empty() {
        tracing::info!(topics = ?created, "Created missing Kafka topics");
        wait_until_visible(&admin, config, &created).await;
        return Ok(created);
    }
    let mut instructions: Vec<String> = still_missing
        .iter()
        .map(|(topic, name)| {
            let configs: Vec<String> = topic_config(*topic).iter().map(|(k, v)| format!(" --config {k}={v}")).collect();
            format!(
                "  kafka-topics.sh --create --topic {name} --partitions {} --replication-factor {}{}",
                config.partitions,
                config.replication_factor,
                configs.concat()
            )
        })
        .collect();
    if !config.create_topics {
        instructions.push("(kafka.create_topics is false, so Omnigate did not try)".into());
    }
    if !failures.is_empty() {
        instructions.push(format!("(creating them failed: {})", failures.join("; ")));
    }
    Err(BootstrapError::Missing {
        instructions: instructions.join("\n"),
    })
}

/// Waits (up to 10 s) until new topics have a leader for every partition in the
/// metadata. A consumer that subscribes to a topic the broker does not report yet is
/// told it does not exist and looks again only at its next metadata refresh.
async fn wait_until_visible(
    admin: &Arc<AdminClient<DefaultClientContext>>,
    config: &KafkaConfig,
    names: &[String],
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        let (admin, names, expected) = (Arc::clone(admin), names.to_vec(), config.partitions);
        let visible = tokio::task::spawn_blocking(move || {
            names.iter().all(|name| {
                admin
                    .inner()
                    .fetch_metadata(Some(name), Timeout::After(Duration::from_secs(2)))
                    .is_ok_and(|metadata| {
                        metadata.topics().iter().any(|t| {
                            t.name() == name
                                && t.error().is_none()
                                && t.partitions().len() >= expected as usize
                                && t.partitions().iter().all(|p| p.leader() >= 0)
                        })
                    })
            })
        })
        .await
        .unwrap_or(false);
        if visible {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tracing::warn!(topics = ?names, "New topics not in the broker's metadata after 10 s");
}

async fn existing_topics(
    admin: &Arc<AdminClient<DefaultClientContext>>,
    config: &KafkaConfig,
) -> Result<HashSet<String>, BootstrapError> {
    // fetch_metadata blocks; keep it off the async workers.
    let admin = Arc::clone(admin);
    let metadata = tokio::task::spawn_blocking(move || {
        admin
            .inner()
            .fetch_metadata(None, Timeout::After(Duration::from_secs(10)))
            .map(|m| {
                m.topics()
                    .iter()
                    .map(|t| t.name().to_string())
                    .collect::<HashSet<_>>()
            })
    })
    .await
    .unwrap_or(Err(KafkaError::Canceled));
    metadata.map_err(|source| BootstrapError::Unreachable {
        brokers: config.brokers.clone(),
        source,
    })
}

/// The broker's current value of each config entry of `topic` (its own settings and
/// the broker defaults it inherits), e.g. to check `cleanup.policy`.
pub async fn topic_settings(
    config: &KafkaConfig,
    topic: &str,
) -> Result<std::collections::BTreeMap<String, String>, BootstrapError> {
    use rdkafka::admin::ResourceSpecifier;
    let admin = admin_client(config)?;
    let unreachable = |source| BootstrapError::Unreachable {
        brokers: config.brokers.clone(),
        source,
    };
    let options =
        AdminOptions::new().request_timeout(Some(Timeout::After(Duration::from_secs(10))));
    let results = admin
        .describe_configs([&ResourceSpecifier::Topic(topic)], &options)
        .await
        .map_err(unreachable)?;
    let mut settings = std::collections::BTreeMap::new();
    for result in results {
        let resource = result.map_err(|code| unreachable(KafkaError::AdminOp(code)))?;
        for entry in resource.entries {
            if let Some(value) = entry.value {
                settings.insert(entry.name, value);
            }
        }
    }
    Ok(settings)
}

/// Names of every topic the broker reports, sorted.
pub async fn list_topics(config: &KafkaConfig) -> Result<Vec<String>, BootstrapError> {
    let admin = admin_client(config)?;
    let mut names: Vec<String> = existing_topics(&admin, config).await?.into_iter().collect();
    names.sort();
    Ok(names)
}

fn admin_client(
    config: &KafkaConfig,
) -> Result<Arc<AdminClient<DefaultClientContext>>, BootstrapError> {
    let client = config
        .client_config()
        .create()
        .map_err(|source| BootstrapError::Unreachable {
            brokers: config.brokers.clone(),
            source,
        })?;
    Ok(Arc::new(client))
}
