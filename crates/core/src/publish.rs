//! The publisher handle connectors use to put events on Kafka.
//!
//! The trait lives here so connector crates do not link librdkafka; `omnigate-kafka`
//! implements it. `publish` resolves only once the broker acknowledged the record
//! (`acks=all`), or fails within a bounded wait: that is what lets a webhook answer
//! 2xx only for events that are safe.

use async_trait::async_trait;
use omnigate_model::pb;
use std::{sync::Arc, time::Duration};

/// The topics of the contract, without the configurable prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    /// `inbound.v1`: every normalized inbound event.
    Inbound,
    /// `routed.v1`: inbound events with routing, and `conversation.*` events.
    Routed,
    /// `outbound.v1`: send commands.
    Outbound,
    /// `router.assignments.v1`: the router's compacted state.
    Assignments,
    /// `deadletter.v1`: what could not be normalized or delivered.
    Deadletter,
    /// `jobs.v1`: a copy of each inbound event its connector still has work for
    /// (media to download, a recording to copy), read only by that connector. The
    /// work survives a crash after the provider's 2xx, and the connector reads only
    /// those events instead of following every inbound one.
    Jobs,
}

impl Topic {
    /// Every topic, in contract order.
    pub const ALL: [Topic; 6] = [
        Self::Inbound,
        Self::Routed,
        Self::Outbound,
        Self::Assignments,
        Self::Deadletter,
        Self::Jobs,
    ];

    /// The name without prefix, e.g. `inbound.v1`.
    pub fn suffix(self) -> &'static str {
        match self {
            Self::Inbound => "inbound.v1",
            Self::Routed => "routed.v1",
            Self::Outbound => "outbound.v1",
            Self::Assignments => "router.assignments.v1",
            Self::Deadletter => "deadletter.v1",
            Self::Jobs => "jobs.v1",
        }
    }

    /// The full name under `prefix`, e.g. `omnigate.inbound.v1`.
    pub fn name(self, prefix: &str) -> String {
        format!("{prefix}{}", self.suffix())
    }
}

/// What goes on a topic.
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// An event, keyed by its conversation key, with CloudEvents headers.
    Event(Box<pb::Event>),
    /// An event whose JSON the sender already has: the router adds routing to
    /// the inbound bytes ([`omnigate_model::with_routing_json`]) instead of encoding the
    /// whole event again. Protobuf topics still get the event encoded.
    EventJson {
        /// The event, for the key, the headers and protobuf topics.
        event: Box<pb::Event>,
        /// The event as JSON (`to_json`, or the same fields in another order).
        json: Vec<u8>,
    },
    /// A dead letter, keyed by its source.
    DeadLetter(Box<pb::DeadLetter>),
    /// A send command, keyed by its channel and recipient.
    Command(Box<pb::SendCommand>),
    /// A state record (JSON) on a compacted topic, keyed by `key`.
    State {
        /// Record key, e.g. the conversation key.
        key: String,
        /// Record value.
        value: Vec<u8>,
        /// `ce_type` header, e.g. `io.omnigate.router.assignment.v1`.
        ce_type: &'static str,
        /// `ce_source` header: who wrote it, e.g. `/omnigate/router/<instance>`.
        source: String,
    },
}

/// Adds an inbound event to `records`: the event on `inbound.v1` and, when its
/// connector still has work for it (`needs_work`: media to download, a recording to
/// copy), a copy on `jobs.v1` for that connector's own consumer. Published together,
/// both are on Kafka before the provider hears 2xx.
pub fn push_inbound(records: &mut Vec<(Topic, Outgoing)>, event: pb::Event, needs_work: bool) {
    let job = needs_work.then(|| (Topic::Jobs, Outgoing::Event(Box::new(event.clone()))));
    records.push((Topic::Inbound, Outgoing::Event(Box::new(event))));
    records.extend(job);
}

/// How a failed publish should be handled. Drives retries and HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The broker was unreachable or slow; the same record may succeed later (HTTP 503).
    Retriable,
    /// The local queue is full; slow down and retry (HTTP 503 with a short `Retry-After`).
    Backpressure,
    /// The record can never be accepted (too large, invalid); retrying is pointless.
    Permanent,
}

/// A failed publish.
#[derive(Debug, Clone, thiserror::Error)]
#[error("publish to {topic} failed ({kind:?}): {message}")]
pub struct PublishError {
    /// How to handle it.
    pub kind: ErrorKind,
    /// The full topic name.
    pub topic: String,
    /// The broker's or client's reason.
    pub message: String,
}

impl PublishError {
    /// How long a provider should wait before retrying, for a `Retry-After` header.
    pub fn retry_after(&self) -> Duration {
        match self.kind {
            ErrorKind::Backpressure => Duration::from_secs(1),
            ErrorKind::Retriable | ErrorKind::Permanent => Duration::from_secs(5),
        }
    }
}

/// Where an acknowledged record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// Partition the record was written to.
    pub partition: i32,
    /// Its offset in that partition.
    pub offset: i64,
}

/// Puts records on Kafka and waits for the acknowledgement.
#[async_trait]
pub trait Publish: Send + Sync + 'static {
    /// Publishes one record; resolves after the broker acknowledged it, or fails within
    /// the configured bounded wait.
    async fn publish(&self, topic: Topic, record: &Outgoing) -> Result<Delivered, PublishError>;
}

/// A cheap-to-clone handle on the process's one publisher.
#[derive(Clone)]
pub struct Publisher(Arc<dyn Publish>);

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Publisher")
    }
}

impl Publisher {
    /// Wraps a publisher implementation.
    pub fn new(inner: impl Publish) -> Self {
        Self(Arc::new(inner))
    }

    /// Publishes one record and waits for its acknowledgement.
    pub async fn publish(&self, topic: Topic, record: Outgoing) -> Result<Delivered, PublishError> {
        self.0.publish(topic, &record).await
    }

    /// Publishes an event.
    pub async fn event(&self, topic: Topic, event: pb::Event) -> Result<Delivered, PublishError> {
        self.publish(topic, Outgoing::Event(Box::new(event))).await
    }

    /// Publishes every record concurrently and succeeds only if all were acknowledged.
    /// The first error is returned; the others may still have landed, which is fine
    /// because ids are deterministic and consumers drop duplicates. The records are
    /// borrowed, so a caller can retry with the same ones without copying them.
    pub async fn publish_all<'a>(
        &self,
        records: impl IntoIterator<Item = &'a (Topic, Outgoing)>,
    ) -> Result<Vec<Delivered>, PublishError> {
        let sends = records
            .into_iter()
            .map(|(topic, record)| self.0.publish(*topic, record));
        futures::future::try_join_all(sends).await
    }
}

/// A [`Publish`] that keeps records in memory, for unit tests of connectors and
/// handlers without a broker: it can fail the next publishes, or hold every publish
/// until released (to see that nothing answers before the acknowledgement).
#[derive(Clone, Default)]
pub struct MemoryPublisher {
    state: Arc<std::sync::Mutex<MemoryState>>,
    gate: Arc<std::sync::OnceLock<Arc<tokio::sync::Semaphore>>>,
}

#[derive(Default)]
struct MemoryState {
    records: Vec<(Topic, Outgoing)>,
    failures: std::collections::VecDeque<ErrorKind>,
}

impl MemoryPublisher {
    /// Everything acknowledged so far, in order.
    pub fn records(&self) -> Vec<(Topic, Outgoing)> {
        self.lock().records.clone()
    }

    /// The next `times` publishes fail with `kind`.
    pub fn fail_next(&self, kind: ErrorKind, times: usize) {
        self.lock()
            .failures
            .extend(std::iter::repeat_n(kind, times));
    }

    /// From now on every publish waits for a [`MemoryPublisher::release`].
    pub fn hold(&self) {
        let _ = self.gate.set(Arc::new(tokio::sync::Semaphore::new(0)));
    }

    /// Lets `n` held publishes through.
    pub fn release(&self, n: usize) {
        if let Some(gate) = self.gate.get() {
            gate.add_permits(n);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Publish for MemoryPublisher {
    async fn publish(&self, topic: Topic, record: &Outgoing) -> Result<Delivered, PublishError> {
        if let Some(gate) = self.gate.get() {
            // A closed semaphore is never made here; a failed acquire only lets it through.
            if let Ok(permit) = gate.acquire().await {
                permit.forget();
            }
        }
        let mut state = self.lock();
        if let Some(kind) = state.failures.pop_front() {
            return Err(PublishError {
                kind,
                topic: topic.suffix().to_string(),
                message: format!("memory publisher told to fail ({kind:?})"),
            });
        }
        state.records.push((topic, record.clone()));
        Ok(Delivered {
            partition: 0,
            offset: state.records.len() as i64 - 1,
        })
    }
}
