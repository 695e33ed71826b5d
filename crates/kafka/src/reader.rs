//! Reads a whole topic from the beginning, outside any consumer group: for
//! `omnigate tail` and for tests that check what landed.

use crate::config::KafkaConfig;
use rdkafka::{
    Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
    error::KafkaError,
    message::Headers,
};
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

/// One record read back.
#[derive(Debug, Clone)]
pub struct ReadRecord {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key as UTF-8 (lossy).
    pub key: String,
    /// Value bytes.
    pub value: Vec<u8>,
    /// Headers as UTF-8 (lossy).
    pub headers: BTreeMap<String, String>,
}

/// Reads every partition of `topic` from the start until at least `expected` records
/// arrived and the topic has been quiet for `quiet`, or until `timeout`.
pub fn read_topic(
    config: &KafkaConfig,
    topic: &str,
    expected: usize,
    quiet: Duration,
    timeout: Duration,
) -> Result<Vec<ReadRecord>, KafkaError> {
    let consumer: BaseConsumer = config
        .client_config()
        .set(
            "group.id",
            format!("omnigate-reader-{}", std::process::id()),
        )
        .set("enable.auto.commit", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut assignment = TopicPartitionList::new();
    for t in metadata.topics() {
        for partition in t.partitions() {
            assignment.add_partition_offset(topic, partition.id(), Offset::Beginning)?;
        }
    }
    consumer.assign(&assignment)?;
    let mut records = Vec::new();
    let started = Instant::now();
    let mut last_record = Instant::now();
    while started.elapsed() < timeout {
        match consumer.poll(Duration::from_millis(100)) {
            Some(message) => {
                let message = message?;
                last_record = Instant::now();
                let headers = message
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                let value = String::from_utf8_lossy(h.value.unwrap_or_default());
                                (h.key.to_string(), value.into_owned())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                records.push(ReadRecord {
                    partition: message.partition(),
                    offset: message.offset(),
                    key: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
                    value: message.payload().unwrap_or_default().to_vec(),
                    headers,
                });
            }
            None if records.len() >= expected && last_record.elapsed() >= quiet => break,
            None => {}
        }
    }
    Ok(records)
}
