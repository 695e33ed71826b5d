//! Reads a whole topic from the beginning, outside any consumer group, and follows it
//! on: for the router's state, `omnigate tail` and tests that check what landed.

use crate::{config::KafkaConfig, consumer::ConsumedRecord};
use rdkafka::{
    Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer, StreamConsumer},
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
    /// The record's timestamp (when it was produced), in milliseconds since the epoch.
    pub timestamp_ms: Option<i64>,
}

/// Why a topic could not be read to its end.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The broker has no such topic.
    #[error("topic {0} does not exist")]
    NoSuchTopic(String),
    /// The end offsets taken at start were not reached in time.
    #[error("topic {topic}: {missing} partition(s) not read to their end within {timeout:?}")]
    Incomplete {
        /// The topic.
        topic: String,
        /// Partitions short of their end offset.
        missing: usize,
        /// The deadline that ran out.
        timeout: Duration,
    },
    /// The client failed.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
}

/// A consumer outside any group, assigned every partition of `topic` from `start`;
/// returns it with each partition's end offset at the time of the call.
fn assign_all(
    config: &KafkaConfig,
    topic: &str,
    start: Offset,
) -> Result<(BaseConsumer, BTreeMap<i32, i64>), ReadError> {
    let consumer: BaseConsumer = reader_client(config)
        .set("enable.partition.eof", "true")
        .create()?;
    let partitions = partitions_of(&consumer, topic)?;
    let mut ends = BTreeMap::new();
    let mut assignment = TopicPartitionList::new();
    for partition in partitions {
        ends.insert(partition, end_offset(&consumer, topic, partition)?);
        assignment.add_partition_offset(topic, partition, start)?;
    }
    consumer.assign(&assignment)?;
    Ok((consumer, ends))
}

/// The partitions of `topic`. A topic created a moment ago may not be in every
/// broker's metadata yet, so a missing one is asked for again for a few seconds before
/// it is called missing.
fn partitions_of(consumer: &BaseConsumer, topic: &str) -> Result<Vec<i32>, ReadError> {
    let started = Instant::now();
    loop {
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter())
            .filter(|p| p.leader() >= 0)
            .map(|p| p.id())
            .collect();
        if !partitions.is_empty() {
            return Ok(partitions);
        }
        if started.elapsed() >= METADATA_PATIENCE {
            return Err(ReadError::NoSuchTopic(topic.to_string()));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The end offset of a partition. Right after a topic is created its leaders may not
/// be elected yet (`NotLeaderForPartition`): asked again for a few seconds.
fn end_offset(consumer: &BaseConsumer, topic: &str, partition: i32) -> Result<i64, ReadError> {
    let started = Instant::now();
    loop {
        match consumer.fetch_watermarks(topic, partition, Duration::from_secs(10)) {
            Ok((_, high)) => return Ok(high),
            Err(err) if started.elapsed() < METADATA_PATIENCE => {
                tracing::debug!(topic, partition, error = %err, "End offset not known yet");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(err) => return Err(err.into()),
        }
    }
}

/// How long a topic may take to appear in the metadata after it was created.
const METADATA_PATIENCE: Duration = Duration::from_secs(5);

/// The settings of a reader: a group id of its own (librdkafka assigns partitions only
/// to a consumer with one; it never joins the group nor commits, so the broker keeps
/// nothing of it), committed records only.
fn reader_client(config: &KafkaConfig) -> rdkafka::ClientConfig {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut client = config.client_config();
    client
        .set(
            "group.id",
            format!(
                "omnigate-reader-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ),
        )
        .set("enable.auto.commit", "false")
        // What a transactional producer aborted, or has not committed yet, is not state.
        .set("isolation.level", "read_committed");
    client
}

fn to_record(message: &rdkafka::message::BorrowedMessage<'_>) -> ReadRecord {
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
    ReadRecord {
        timestamp_ms: message.timestamp().to_millis(),
        partition: message.partition(),
        offset: message.offset(),
        key: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
        value: message.payload().unwrap_or_default().to_vec(),
        headers,
    }
}

/// Reads every partition of `topic` from the beginning up to the end offsets it takes
/// at the start of the call, however slowly the broker answers, and calls `each` with
/// every record (committed records only). Fails when the ends are not reached within
/// `timeout`, so a caller never mistakes a slow broker for an empty topic. Returns those
/// end offsets (partition to the next offset to read), where [`follow_from`] goes on.
pub fn read_to_end(
    config: &KafkaConfig,
    topic: &str,
    timeout: Duration,
    mut each: impl FnMut(ReadRecord),
) -> Result<BTreeMap<i32, i64>, ReadError> {
    let (consumer, ends) = assign_all(config, topic, Offset::Beginning)?;
    // A partition is done once its position reaches the end taken at start; an empty
    // one is done at once.
    let mut pending = ends.clone();
    pending.retain(|_, end| *end > 0);
    let started = Instant::now();
    while !pending.is_empty() {
        if started.elapsed() >= timeout {
            return Err(ReadError::Incomplete {
                topic: topic.to_string(),
                missing: pending.len(),
                timeout,
            });
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                let (partition, offset) = (message.partition(), message.offset());
                if pending.get(&partition).is_some_and(|end| offset < *end) {
                    each(to_record(&message));
                }
                if pending
                    .get(&partition)
                    .is_some_and(|end| offset + 1 >= *end)
                {
                    pending.remove(&partition);
                }
            }
            // The end of what is readable: with read_committed, aborted records and
            // transaction markers may lie between the last record and the end offset.
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                let position = consumer
                    .position()
                    .ok()
                    .and_then(|list| {
                        list.find_partition(topic, partition)
                            .and_then(|p| p.offset().to_raw())
                    })
                    .unwrap_or(-1);
                if pending.get(&partition).is_some_and(|end| position >= *end) {
                    pending.remove(&partition);
                }
            }
            Some(Err(err)) => return Err(err.into()),
            None => {}
        }
    }
    Ok(ends)
}

/// A consumer of `topic`, outside any consumer group, that starts each partition at the
/// offset `positions` gives (as [`read_to_end`] returns them) and reads committed
/// records only: for a follower that needs every partition. A group of its own would
/// add heartbeats, librdkafka's twice-a-second poll check, commits, and a group left
/// behind on the broker by every restart. Run it with [`follow_from`].
pub fn assign_from(
    config: &KafkaConfig,
    topic: &str,
    positions: &BTreeMap<i32, i64>,
) -> Result<StreamConsumer, KafkaError> {
    let mut client = reader_client(config);
    crate::consumer::fetch_settings(&mut client, config);
    let consumer: StreamConsumer = client.create()?;
    let mut assignment = TopicPartitionList::new();
    for (partition, offset) in positions {
        assignment.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
    }
    consumer.assign(&assignment)?;
    Ok(consumer)
}

/// Calls `each` with every record `consumer` (from [`assign_from`]) receives, until
/// `shutdown`.
pub async fn follow_from(
    consumer: StreamConsumer,
    shutdown: tokio_util::sync::CancellationToken,
    mut each: impl FnMut(ConsumedRecord),
) {
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => return,
            message = consumer.recv() => message,
        };
        match message {
            Ok(message) => each(crate::consumer::copy(&message)),
            Err(err) => {
                tracing::warn!(error = %err, "Kafka follower error");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Prints nothing of its own: calls `each` with every committed record of `topic` as it
/// arrives, from the beginning (or from the current end when `from_end`), until
/// `each` returns false.
pub fn follow(
    config: &KafkaConfig,
    topic: &str,
    from_end: bool,
    mut each: impl FnMut(ReadRecord) -> bool,
) -> Result<(), ReadError> {
    let start = if from_end {
        Offset::End
    } else {
        Offset::Beginning
    };
    let (consumer, _) = assign_all(config, topic, start)?;
    loop {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(message)) => {
                if !each(to_record(&message)) {
                    return Ok(());
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) | None => {}
            Some(Err(err)) => return Err(err.into()),
        }
    }
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
    let consumer: BaseConsumer = reader_client(config).create()?;
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
                records.push(to_record(&message));
            }
            None if records.len() >= expected && last_record.elapsed() >= quiet => break,
            None => {}
        }
    }
    Ok(records)
}
