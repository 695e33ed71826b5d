//! [`Subscribe`] over Kafka consumer groups: what connectors consume through.

use crate::{KafkaConfig, consumer};
use futures::future::BoxFuture;
use omnigate_core::{
    connector::{ConnectorError, Pace, RecordHandler, Subscribe},
    publish::Topic,
};
use tokio_util::sync::CancellationToken;

/// Consumer groups on the configured cluster, each running [`consumer::run`].
#[derive(Debug, Clone)]
pub struct KafkaSubscriber {
    config: KafkaConfig,
}

impl KafkaSubscriber {
    /// Subscribes with `config` (its `topic_prefix` prefixes every group).
    pub fn new(config: KafkaConfig) -> Self {
        Self { config }
    }
}

impl Subscribe for KafkaSubscriber {
    fn consume(
        &self,
        group: &str,
        topic: Topic,
        pace: Pace,
        handler: RecordHandler,
        shutdown: CancellationToken,
    ) -> Result<BoxFuture<'static, ()>, ConnectorError> {
        let config = match pace {
            Pace::Main => self.config.clone(),
            Pace::Background => self.config.for_background(),
        };
        let consumer =
            consumer::subscribe(&config, group, &[topic]).map_err(|err| ConnectorError {
                connector: "kafka",
                message: format!("cannot start the consumer group {group}: {err}"),
            })?;
        let group = group.to_string();
        Ok(Box::pin(async move {
            if let Err(err) = consumer::run(consumer, shutdown, handler).await {
                tracing::error!(group, error = %err, "Consumer stopped");
            }
        }))
    }
}
