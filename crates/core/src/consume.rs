//! What a consumer hands its handler, and what the handler answers: plain types, so
//! that handlers (the router, the webhook dispatcher, connectors) build and test
//! without librdkafka. `omnigate-kafka` runs the consumer loops that use them.

use std::future::Future;

/// `content-type` of JSON values.
pub const JSON: &str = "application/json";
/// `content-type` of protobuf values.
pub const PROTOBUF: &str = "application/protobuf";

/// One record read from a topic, copied out of the client's buffers.
#[derive(Debug, Clone)]
pub struct ConsumedRecord {
    /// Full topic name.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset in the partition.
    pub offset: i64,
    /// The record key.
    pub key: Option<Vec<u8>>,
    /// The record value (shared, not copied, by whoever keeps it).
    pub value: bytes::Bytes,
    /// Headers, in order.
    pub headers: RecordHeaders,
}

impl ConsumedRecord {
    /// The first header named `name`, as UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .and_then(|v| std::str::from_utf8(v).ok())
    }
}

/// A record's headers, in order, copied into one buffer: a routed event carries eight
/// CloudEvents headers, which as a string and a vector each were sixteen allocations
/// per record. A header without a value reads as empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordHeaders {
    /// Each header's name, then its value.
    bytes: Vec<u8>,
    /// Each header's name and value, as ranges of `bytes`.
    ranges: Vec<(std::ops::Range<usize>, std::ops::Range<usize>)>,
}

impl RecordHeaders {
    /// Room for `headers` headers of about `bytes` bytes in all.
    pub fn with_capacity(headers: usize, bytes: usize) -> Self {
        Self {
            bytes: Vec::with_capacity(bytes),
            ranges: Vec::with_capacity(headers),
        }
    }

    /// Adds a header after the others.
    pub fn push(&mut self, name: &str, value: &[u8]) {
        let name_start = self.bytes.len();
        self.bytes.extend_from_slice(name.as_bytes());
        let value_start = self.bytes.len();
        self.bytes.extend_from_slice(value);
        self.ranges
            .push((name_start..value_start, value_start..self.bytes.len()));
    }

    /// The headers in order, as (name, value).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.ranges.iter().map(|(name, value)| {
            // Names were pushed as `&str`, so they are UTF-8.
            let name = std::str::from_utf8(&self.bytes[name.clone()]).unwrap_or_default();
            (name, &self.bytes[value.clone()])
        })
    }

    /// The value of the first header named `name`. Names are compared as bytes, so a
    /// lookup (one or two per record) checks no name's UTF-8.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.ranges
            .iter()
            .find(|(key, _)| self.bytes[key.clone()] == *name.as_bytes())
            .map(|(_, value)| &self.bytes[value.clone()])
    }

    /// How many headers there are.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

/// What a handler reports for a record it could not process.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Try the same record again after a pause; its offset is not stored.
    #[error("retriable: {0}")]
    Retriable(String),
    /// Skip it: the handler already dead-lettered it or it can never succeed.
    #[error("permanent: {0}")]
    Permanent(String),
}

/// A record value that is not the expected message.
#[derive(Debug, thiserror::Error)]
#[error("undecodable record at {topic}/{partition}@{offset}: {reason}")]
pub struct DecodeError {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// What was wrong.
    pub reason: String,
}

impl ConsumedRecord {
    /// Decodes the value as `T`, in JSON or protobuf according to `content-type`.
    pub fn decode<T>(&self) -> Result<T, DecodeError>
    where
        T: prost::Message + Default + serde::de::DeserializeOwned,
    {
        let result = if self.header("content-type") == Some(PROTOBUF) {
            T::decode(&self.value[..]).map_err(|e| e.to_string())
        } else {
            serde_json::from_slice(&self.value).map_err(|e| e.to_string())
        };
        result.map_err(|reason| DecodeError {
            topic: self.topic.clone(),
            partition: self.partition,
            offset: self.offset,
            reason,
        })
    }

    /// A dead letter keeping this record's exact bytes, for a consumer (`source`,
    /// e.g. `/omnigate/router`) that cannot process it.
    pub fn dead_letter(&self, source: &str, reason: &str) -> omnigate_model::pb::DeadLetter {
        omnigate_model::pb::DeadLetter {
            id: format!("{}/{}/{}", self.topic, self.partition, self.offset),
            source: source.to_string(),
            reason: reason.to_string(),
            raw: self.value.to_vec(),
            content_type: self.header("content-type").unwrap_or("").to_string(),
            time: Some(omnigate_model::timestamp(chrono::Utc::now())),
            ..Default::default()
        }
    }
}

/// The second stage of a pipelined handler: resolves when the record's outputs are
/// acknowledged. It should retry on its own; it is awaited in consumption order.
pub type Completion = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// A handler whose work can be undone: the read-process-write loop of
/// the Kafka crate's `run_transactional` checkpoints it before each batch and rolls it back when the
/// batch's transaction aborts, so the batch is processed again from the same state.
pub trait Transactional: Send + Sync {
    /// Whatever restores the handler's state.
    type Checkpoint: Send;
    /// Captures the state `batch` may change.
    fn checkpoint(&self, batch: &[ConsumedRecord]) -> Self::Checkpoint;
    /// Processes one record; its outputs are published by the returned completion.
    fn handle(
        &self,
        record: &ConsumedRecord,
    ) -> impl Future<Output = Result<Completion, HandlerError>> + Send;
    /// Restores the state captured by `checkpoint`.
    fn rollback(&self, checkpoint: Self::Checkpoint);
}
