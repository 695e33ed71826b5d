//! The process's one Kafka producer.

use crate::{
    config::KafkaConfig,
    headers::{self, CloudEvent},
};
use async_trait::async_trait;
use omnigate_core::{
    health::Health,
    publish::{Delivered, ErrorKind, Outgoing, Publish, PublishError, Topic},
};
use prost::Message as _;
use rdkafka::{
    ClientContext, Message as _,
    error::{KafkaError, RDKafkaErrorCode},
    producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext},
    util::Timeout,
};
use std::{
    borrow::Cow,
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// Where a record landed, or why it did not.
type DeliveryOutcome = Result<(i32, i64), KafkaError>;

/// Hands each delivery report to the task waiting for it.
struct DeliveryContext;

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Box<oneshot::Sender<DeliveryOutcome>>;

    fn delivery(&self, result: &DeliveryResult<'_>, waiter: Self::DeliveryOpaque) {
        let outcome = match result {
            Ok(message) => Ok((message.partition(), message.offset())),
            Err((err, _)) => Err(err.clone()),
        };
        // The waiter may have given up (its bounded wait ran out); nothing to tell.
        let _ = waiter.send(outcome);
    }
}

/// The longest a delivery-report poll waits: also how long the serving thread can
/// outlive the publisher.
const DELIVERY_POLL: Duration = Duration::from_secs(5);

/// librdkafka's producer with a thread of our own serving its delivery reports.
///
/// rdkafka's `FutureProducer` polls every 100 ms, and its poll spins through the last
/// sub-millisecond of each wait (the timeout is rounded down to whole milliseconds):
/// an idle gateway burned about 1% of a core there. A report wakes a poll at once
/// whatever its timeout, so this one waits five seconds at a time: the spin comes once
/// per wait, and the thread still ends within five seconds of the last handle's drop.
struct ServedProducer {
    producer: Arc<BaseProducer<DeliveryContext>>,
    stop: Arc<AtomicBool>,
}

impl ServedProducer {
    fn new(config: &rdkafka::ClientConfig) -> Result<Self, KafkaError> {
        let producer: Arc<BaseProducer<DeliveryContext>> =
            Arc::new(config.create_with_context(DeliveryContext)?);
        let stop = Arc::new(AtomicBool::new(false));
        let (served, stopped) = (producer.clone(), stop.clone());
        std::thread::Builder::new()
            .name("kafka-deliveries".into())
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    served.poll(DELIVERY_POLL);
                }
            })
            .map_err(|_| KafkaError::Canceled)?;
        Ok(Self { producer, stop })
    }
}

impl Drop for ServedProducer {
    fn drop(&mut self) {
        // The thread ends within `DELIVERY_POLL` and drops the last handle to the producer.
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// An idempotent producer with `acks=all` and a bounded delivery wait.
///
/// `publish` resolves only on the broker's acknowledgement, or with an error within
/// `message.timeout.ms` plus the queue wait: never later, never silently.
#[derive(Clone)]
pub struct KafkaPublisher {
    served: Arc<ServedProducer>,
    /// Each topic's name, encoding and metrics, in [`Topic::ALL`] order.
    topics: Arc<[PerTopic]>,
    prefix: String,
    /// How long `send` may wait for room in librdkafka's local queue.
    queue_wait: Duration,
    /// A safety net over librdkafka's own `message.timeout.ms`.
    deadline: Duration,
}

/// What the publisher needs of one topic on every record, worked out once: looking a
/// labelled metric up by name cost more than the increment itself.
struct PerTopic {
    /// The full name.
    name: String,
    /// Its records are protobuf (`kafka.protobuf_topics`), not JSON.
    protobuf: bool,
    produced: metrics::Counter,
    duration: metrics::Histogram,
}

impl PerTopic {
    fn all(config: &KafkaConfig) -> Arc<[Self]> {
        let protobuf: HashSet<&str> = config.protobuf_topics.iter().map(String::as_str).collect();
        Topic::ALL
            .iter()
            .map(|topic| Self {
                name: topic.name(&config.topic_prefix),
                protobuf: protobuf.contains(topic.suffix()),
                produced: metrics::counter!(omnigate_core::telemetry::metric::KAFKA_PRODUCED_TOTAL, "topic" => topic.suffix()),
                duration: metrics::histogram!(omnigate_core::telemetry::metric::KAFKA_PRODUCE_DURATION_SECONDS, "topic" => topic.suffix()),
            })
            .collect()
    }
}

impl std::fmt::Debug for KafkaPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaPublisher")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl KafkaPublisher {
    /// Creates the producer. It connects lazily; use [`Self::probe`] for readiness.
    pub fn new(config: &KafkaConfig) -> Result<Self, KafkaError> {
        let message_timeout = Duration::from_millis(config.message_timeout_ms);
        let served = ServedProducer::new(
            config
                .client_config()
                .set("enable.idempotence", "true")
                .set("acks", "all")
                .set("message.timeout.ms", config.message_timeout_ms.to_string())
                // A request must give up before the message does, or the timeout never fires.
                .set(
                    "request.timeout.ms",
                    (config.message_timeout_ms.saturating_sub(100))
                        .max(100)
                        .to_string(),
                )
                .set("linger.ms", config.linger_ms.to_string())
                .set("compression.type", &config.compression)
                .set("queue.buffering.max.messages", "200000")
                .set("statistics.interval.ms", "0"),
        )?;
        Ok(Self {
            served: Arc::new(served),
            topics: PerTopic::all(config),
            prefix: config.topic_prefix.clone(),
            queue_wait: Duration::from_millis(500),
            deadline: message_timeout + Duration::from_secs(2),
        })
    }

    /// Creates a transactional producer with `transactional_id` (stable per instance,
    /// so a restarted instance fences its dead predecessor and aborts what it left
    /// open) and registers it with the transaction coordinator.
    pub async fn transactional(
        config: &KafkaConfig,
        transactional_id: &str,
    ) -> Result<Self, KafkaError> {
        let mut with_id = config.clone();
        with_id.properties.insert(
            "transactional.id".into(),
            transactional_id.to_string().into(),
        );
        let publisher = Self::new(&with_id)?;
        let producer = publisher.producer().clone();
        tokio::task::spawn_blocking(move || producer.init_transactions(Duration::from_secs(30)))
            .await
            .map_err(|_| KafkaError::Canceled)??;
        Ok(publisher)
    }

    /// Starts a transaction: what is published until [`Self::commit`] or
    /// [`Self::abort`] becomes visible to read-committed consumers all at once, or never.
    pub fn begin(&self) -> Result<(), KafkaError> {
        self.producer().begin_transaction()
    }

    /// Adds the consumer's next `offsets` to the open transaction and commits it.
    pub async fn commit(
        &self,
        offsets: rdkafka::TopicPartitionList,
        group: rdkafka::consumer::ConsumerGroupMetadata,
    ) -> Result<(), KafkaError> {
        let producer = self.producer().clone();
        tokio::task::spawn_blocking(move || {
            producer.send_offsets_to_transaction(&offsets, &group, Duration::from_secs(30))?;
            producer.commit_transaction(Duration::from_secs(30))
        })
        .await
        .map_err(|_| KafkaError::Canceled)?
    }

    /// Aborts the open transaction: nothing published in it becomes visible.
    pub async fn abort(&self) -> Result<(), KafkaError> {
        let producer = self.producer().clone();
        tokio::task::spawn_blocking(move || producer.abort_transaction(Duration::from_secs(30)))
            .await
            .map_err(|_| KafkaError::Canceled)?
    }

    fn producer(&self) -> &Arc<BaseProducer<DeliveryContext>> {
        &self.served.producer
    }

    /// What the publisher keeps of `topic`.
    fn per_topic(&self, topic: Topic) -> &PerTopic {
        // `Topic::ALL` lists the variants in declaration order.
        &self.topics[topic as usize]
    }

    /// Waits for every queued record to be acknowledged, for up to `timeout`.
    /// Returns how many records were still queued (and are now lost to this process).
    pub fn flush(&self, timeout: Duration) -> i32 {
        if let Err(err) = self.producer().flush(Timeout::After(timeout)) {
            tracing::error!(error = %err, "Producer flush did not finish");
        }
        let left = self.producer().in_flight_count();
        if left > 0 {
            tracing::error!(records = left, "Records still unacknowledged at shutdown");
        }
        left
    }

    /// Checks the broker every `interval` and records the result in `health`, until `shutdown`.
    pub async fn probe(&self, health: Health, interval: Duration, shutdown: CancellationToken) {
        // One topic's metadata proves the broker answers as well as every topic's
        // would, and costs the broker a fraction of building the whole list.
        let topic = self.per_topic(Topic::Inbound).name.clone();
        loop {
            let (producer, topic) = (self.producer().clone(), topic.clone());
            let wait = interval.clamp(Duration::from_millis(500), Duration::from_secs(5));
            let reachable = tokio::task::spawn_blocking(move || {
                producer
                    .client()
                    .fetch_metadata(Some(&topic), Timeout::After(wait))
                    .is_ok()
            })
            .await
            .unwrap_or(false);
            health.set_kafka_reachable(reachable);
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
        }
    }

    fn encode<'a>(
        &self,
        topic: Topic,
        record: &'a Outgoing,
    ) -> (Cow<'a, str>, Cow<'a, [u8]>, CloudEvent<'a>) {
        let protobuf = self.per_topic(topic).protobuf;
        let content_type = if protobuf {
            headers::PROTOBUF
        } else {
            headers::JSON
        };
        match record {
            Outgoing::Event(event) | Outgoing::EventJson { event, .. } => {
                let value = match record {
                    _ if protobuf => event.encode_to_vec().into(),
                    Outgoing::EventJson { json, .. } => Cow::Borrowed(json.as_slice()),
                    _ => omnigate_model::to_json(event).into(),
                };
                let ce = CloudEvent::of_event(event, content_type);
                (Cow::Borrowed(&event.conversation_key), value, ce)
            }
            Outgoing::DeadLetter(letter) => {
                let value = if protobuf {
                    letter.encode_to_vec()
                } else {
                    serde_json::to_vec(letter.as_ref()).unwrap_or_default()
                };
                let ce = CloudEvent {
                    id: Cow::Borrowed(&letter.id),
                    source: Cow::Borrowed(&letter.source),
                    ce_type: "io.omnigate.deadletter.v1".into(),
                    time: headers::rfc3339(letter.time.as_ref()),
                    subject: "".into(),
                    tenant: Cow::Borrowed(&letter.tenant),
                    content_type,
                };
                (Cow::Borrowed(&letter.source), value.into(), ce)
            }
            Outgoing::Command(command) => {
                let value = if protobuf {
                    command.encode_to_vec()
                } else {
                    serde_json::to_vec(command.as_ref()).unwrap_or_default()
                };
                let channel = command
                    .channel
                    .as_ref()
                    .map(|c| c.channel_id.as_str())
                    .unwrap_or("");
                let ce = CloudEvent {
                    id: Cow::Borrowed(&command.command_id),
                    source: "/omnigate/api".into(),
                    ce_type: "io.omnigate.command.send.v1".into(),
                    time: headers::now(),
                    subject: "".into(),
                    tenant: Cow::Borrowed(&command.tenant),
                    content_type,
                };
                // One recipient's commands stay in order in one partition.
                (format!("{channel}:{}", command.to).into(), value.into(), ce)
            }
            Outgoing::State {
                key,
                value,
                ce_type,
                source,
            } => {
                let ce = CloudEvent {
                    id: Cow::Borrowed(key),
                    source: Cow::Borrowed(source),
                    ce_type: (*ce_type).into(),
                    time: headers::now(),
                    subject: Cow::Borrowed(key),
                    tenant: "".into(),
                    content_type: headers::JSON,
                };
                (Cow::Borrowed(key), Cow::Borrowed(value.as_slice()), ce)
            }
        }
    }
}

/// Classifies a producer error into retriable, backpressure or permanent.
pub fn classify(err: &KafkaError) -> ErrorKind {
    use RDKafkaErrorCode as C;
    match err.rdkafka_error_code() {
        Some(C::QueueFull) => ErrorKind::Backpressure,
        Some(
            C::MessageSizeTooLarge
            | C::InvalidMessage
            | C::InvalidMessageSize
            | C::InvalidRecord
            | C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::InvalidTopic,
        ) => ErrorKind::Permanent,
        _ => ErrorKind::Retriable,
    }
}

#[async_trait]
impl Publish for KafkaPublisher {
    async fn publish(&self, topic: Topic, record: &Outgoing) -> Result<Delivered, PublishError> {
        let per_topic = self.per_topic(topic);
        let name = per_topic.name.as_str();
        let (key, value, ce) = self.encode(topic, record);
        let started = Instant::now();
        let fail = |kind: ErrorKind, message: String| {
            metrics::counter!(omnigate_core::telemetry::metric::KAFKA_PRODUCE_ERRORS_TOTAL, "topic" => topic.suffix(), "kind" => format!("{kind:?}").to_lowercase()).increment(1);
            PublishError {
                kind,
                topic: name.to_string(),
                message,
            }
        };
        let (waiter, delivery) = oneshot::channel();
        let mut record = BaseRecord::with_opaque_to(name, Box::new(waiter))
            .key(key.as_ref())
            .payload(value.as_ref())
            .headers(ce.to_headers());
        // A full local queue is waited out for up to `queue_wait`, then answered as
        // backpressure.
        let queue_deadline = started + self.queue_wait;
        let queued = loop {
            match self.producer().send(record) {
                Ok(()) => break Ok(()),
                Err((err, back))
                    if err.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull)
                        && Instant::now() < queue_deadline =>
                {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err((err, _)) => break Err(err),
            }
        };
        let result = match queued {
            Err(err) => Err(fail(classify(&err), err.to_string())),
            Ok(()) => match tokio::time::timeout(self.deadline, delivery).await {
                Ok(Ok(Ok((partition, offset)))) => Ok(Delivered { partition, offset }),
                Ok(Ok(Err(err))) => Err(fail(classify(&err), err.to_string())),
                Ok(Err(_)) | Err(_) => Err(fail(
                    ErrorKind::Retriable,
                    "no acknowledgement within the bounded wait".into(),
                )),
            },
        };
        per_topic.duration.record(started.elapsed().as_secs_f64());
        if result.is_ok() {
            per_topic.produced.increment(1);
        }
        result
    }
}
