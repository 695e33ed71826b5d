//! Small operator tools: list topics, print a topic.

use crate::config::Config;
use omnigate_kafka::{admin, reader};
use std::time::Duration;

/// `omnigate topics`
pub async fn topics(config: &Config) -> anyhow::Result<()> {
    for name in admin::list_topics(&config.kafka).await? {
        println!("{name}");
    }
    Ok(())
}

/// `omnigate tail TOPIC`
pub fn tail(config: &Config, topic: &str) -> anyhow::Result<()> {
    let name = if topic.starts_with(&config.kafka.topic_prefix) {
        topic.to_string()
    } else {
        format!("{}{topic}", config.kafka.topic_prefix)
    };
    let records = reader::read_topic(
        &config.kafka,
        &name,
        0,
        Duration::from_secs(2),
        Duration::from_secs(30),
    )?;
    for record in records {
        let value =
            serde_json::from_slice::<serde_json::Value>(&record.value).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&record.value).into_owned())
            });
        let line = serde_json::json!({
            "partition": record.partition,
            "offset": record.offset,
            "key": record.key,
            "headers": record.headers,
            "value": value,
        });
        println!("{line}");
    }
    Ok(())
}
