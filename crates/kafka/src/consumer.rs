//! A consumer-group loop with at-least-once semantics: an offset is stored only after
//! the handler succeeded for that record, and committed in the background and at shutdown.

use crate::config::KafkaConfig;
pub use omnigate_core::consume::{
    Completion, ConsumedRecord, DecodeError, HandlerError, RecordHeaders, Transactional,
};
use omnigate_core::publish::Topic;
use omnigate_core::retry::Backoff;
use rdkafka::{
    Message,
    consumer::{CommitMode, Consumer, StreamConsumer},
    error::KafkaError,
    message::Headers,
};
use std::{future::Future, sync::Arc, time::Duration};

/// The first pause before a record whose handler failed retriably is tried again.
const RETRY_FIRST: Duration = Duration::from_millis(100);
/// The longest pause between tries of one record.
const RETRY_MAX: Duration = Duration::from_secs(30);
use tokio_util::sync::CancellationToken;

/// Creates a consumer in group `<topic_prefix><group>` subscribed to `topics`, ready
/// for [`run`]. The prefix keeps deployments that share a cluster (and tests) apart.
pub fn subscribe(
    config: &KafkaConfig,
    group: &str,
    topics: &[Topic],
) -> Result<StreamConsumer, KafkaError> {
    let mut client = config.client_config();
    if !config.instance_id.is_empty() {
        client.set(
            "group.instance.id",
            format!("{}-{group}", config.instance_id),
        );
    }
    client
        .set("group.id", format!("{}{group}", config.topic_prefix))
        // Stored offsets are committed by [`SoonCommit`] within `COMMIT_AFTER`, and only
        // when something new was stored. Auto-commit stays on for the commit librdkafka
        // makes when a rebalance takes partitions away; its timer, once a minute, is only
        // a backstop.
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "60000")
        // Offsets are stored by hand, after the handler succeeded.
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // A heartbeat every 5 s (librdkafka's default is 3 s) keeps an idle group's
        // requests down; a member that died is still evicted after 15 s.
        .set("session.timeout.ms", "15000")
        .set("heartbeat.interval.ms", "5000")
        // Bounds how long a rebalance waits for a member that died without leaving.
        .set("max.poll.interval.ms", "30000");
    fetch_settings(&mut client, config);
    let consumer: StreamConsumer = client.create()?;
    let names: Vec<String> = topics
        .iter()
        .map(|t| t.name(&config.topic_prefix))
        .collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    consumer.subscribe(&refs)?;
    Ok(consumer)
}

/// How every consumer fetches, in or out of a group.
pub(crate) fn fetch_settings(client: &mut rdkafka::ClientConfig, config: &KafkaConfig) {
    client
        // How often an idle consumer asks; a broker that answers only when this runs
        // out would add it to every delivery (see `fetch_wait_max_ms`).
        .set("fetch.wait.max.ms", config.fetch_wait_max_ms.to_string())
        .set("fetch.min.bytes", config.fetch_min_bytes.to_string())
        // A topic subscribed to before it existed is looked for again within a minute,
        // not at librdkafka's five-minute metadata refresh; more often would be a
        // request per consumer every few seconds on an idle broker.
        .set("topic.metadata.refresh.interval.ms", "60000");
}

/// How soon after an offset is stored it is committed: what a crash can make this
/// group read again.
const COMMIT_AFTER: Duration = Duration::from_millis(500);

/// Commits stored offsets `COMMIT_AFTER` after the first one stored since the last
/// commit. An idle consumer commits nothing and sets no timer, where librdkafka's
/// commit timer would wake it twice a second.
#[derive(Debug, Default)]
struct SoonCommit {
    due: Option<tokio::time::Instant>,
}

impl SoonCommit {
    /// An offset was stored: commit within `COMMIT_AFTER`.
    fn stored(&mut self) {
        self.due
            .get_or_insert_with(|| tokio::time::Instant::now() + COMMIT_AFTER);
    }

    /// Whether a commit is waiting.
    fn pending(&self) -> bool {
        self.due.is_some()
    }

    /// Resolves when the waiting commit is due (never while none waits).
    async fn due(&self) {
        match self.due {
            Some(due) => tokio::time::sleep_until(due).await,
            None => std::future::pending().await,
        }
    }

    /// Commits what was stored, without waiting for the broker (what a failed commit
    /// carried goes with the next one, librdkafka's timer, or the commit on close).
    fn commit(&mut self, consumer: &StreamConsumer) {
        if self.due.take().is_some()
            && let Err(err) = consumer.commit_consumer_state(CommitMode::Async)
        {
            tracing::debug!(error = %err, "Offsets not committed; the next commit carries them");
        }
    }
}

/// Feeds every record to `handler`, in partition order, until `shutdown`.
///
/// A retriable failure retries the same record with backoff (up to 30 s between
/// tries), so nothing is skipped; a permanent failure is logged and skipped.
pub async fn run<H, F>(
    consumer: StreamConsumer,
    shutdown: CancellationToken,
    mut handler: H,
) -> Result<(), KafkaError>
where
    H: FnMut(ConsumedRecord) -> F,
    F: Future<Output = Result<(), HandlerError>>,
{
    let consumed = metrics::counter!(omnigate_core::telemetry::metric::KAFKA_CONSUMED_TOTAL);
    let mut commits = SoonCommit::default();
    'records: loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => break,
            () = commits.due(), if commits.pending() => {
                commits.commit(&consumer);
                continue;
            }
            message = consumer.recv() => message,
        };
        let message = match message {
            Ok(message) => message,
            Err(err) => {
                tracing::warn!(error = %err, "Kafka consumer error");
                metrics::counter!(omnigate_core::telemetry::metric::KAFKA_CONSUME_ERRORS_TOTAL)
                    .increment(1);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let record = copy(&message);
        let mut backoff = Backoff::new(RETRY_FIRST, RETRY_MAX);
        loop {
            match handler(record.clone()).await {
                Ok(()) => break,
                Err(HandlerError::Permanent(reason)) => {
                    tracing::error!(topic = %record.topic, partition = record.partition, offset = record.offset, %reason, "Skipping record");
                    break;
                }
                Err(HandlerError::Retriable(reason)) => {
                    tracing::warn!(topic = %record.topic, partition = record.partition, offset = record.offset, %reason, "Retrying record");
                    // The records before this one are done: no need to do them again.
                    commits.commit(&consumer);
                    if !backoff.sleep_unless(&shutdown).await {
                        break 'records;
                    }
                }
            }
        }
        consumer.store_offset_from_message(&message)?;
        commits.stored();
        consumed.increment(1);
    }
    close(consumer, true).await
}

/// Commits the stored offsets (when `commit_stored`) and leaves the group, on a
/// blocking thread: with the broker away both can block for as long as librdkafka
/// keeps trying, and must hold up neither the runtime's workers nor the shutdown,
/// whose deadline bounds the wait for this task. Offsets not committed are read
/// again after a restart (at-least-once, same event ids).
async fn close(consumer: StreamConsumer, commit_stored: bool) -> Result<(), KafkaError> {
    let closing = tokio::task::spawn_blocking(move || {
        let result = if commit_stored {
            commit(&consumer)
        } else {
            Ok(())
        };
        drop(consumer);
        result
    });
    closing.await.unwrap_or(Ok(()))
}

fn commit(consumer: &StreamConsumer) -> Result<(), KafkaError> {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        // Nothing stored since the last commit.
        Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => Ok(()),
        other => other,
    }
}

/// Records whose completion is pending, in consumption order, each resolving to its
/// (topic, partition, offset), or to None when it was never decided (shutdown).
type InFlight = futures::stream::FuturesOrdered<InFlightEntry>;

/// One record of [`InFlight`].
type InFlightEntry = std::pin::Pin<Box<dyn Future<Output = Option<(String, i32, i64)>> + Send>>;

/// A decided record: its completion, running, or None when it was skipped.
type Decided = Option<tokio::task::JoinHandle<()>>;

/// A record for a decision lane, and where the lane answers.
type ForLane = (Arc<ConsumedRecord>, tokio::sync::oneshot::Sender<Decided>);

/// Like [`run`], but overlaps the waits for acknowledgements: `decide` runs for each
/// record and returns a [`Completion`]; up to `max_in_flight` completions run at once,
/// and offsets are stored strictly in consumption order as they finish.
///
/// With `lanes` above 1, that many tasks decide at once, each for the partitions whose
/// number modulo `lanes` is its own, so each partition is still decided in order. A
/// handler whose state is per record key (keys never span partitions) can use them to
/// spread its deciding over the cores; 1 decides every record in this loop.
pub async fn run_pipelined<H, F>(
    consumer: StreamConsumer,
    shutdown: CancellationToken,
    max_in_flight: usize,
    lanes: usize,
    mut decide: H,
) -> Result<(), KafkaError>
where
    H: FnMut(Arc<ConsumedRecord>) -> F + Clone + Send + 'static,
    F: Future<Output = Result<Completion, HandlerError>> + Send + 'static,
{
    use futures::{StreamExt, stream::FuturesOrdered};
    use tokio::sync::{mpsc, oneshot};
    let mut in_flight: InFlight = FuturesOrdered::new();
    let mut commits = SoonCommit::default();
    let consumed = metrics::counter!(omnigate_core::telemetry::metric::KAFKA_CONSUMED_TOTAL);
    let lanes: Vec<mpsc::UnboundedSender<ForLane>> = if lanes > 1 {
        (0..lanes)
            .map(|_| {
                let (lane, queue) = mpsc::unbounded_channel();
                tokio::spawn(decide_lane(queue, decide.clone(), shutdown.clone()));
                lane
            })
            .collect()
    } else {
        Vec::new()
    };
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = commits.due(), if commits.pending() => commits.commit(&consumer),
            Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                let finished = Finished::drain(done, &mut in_flight);
                for (topic, partition, offset) in &finished.last_per_partition {
                    consumer.store_offset(topic, *partition, *offset)?;
                    commits.stored();
                }
                consumed.increment(finished.records);
                // Undecided: its lane stopped, so nothing after it was stored.
                if finished.undecided {
                    if !shutdown.is_cancelled() {
                        tracing::error!("A decision lane stopped (its handler panicked); the consumer stops");
                    }
                    break;
                }
            }
            message = consumer.recv(), if in_flight.len() < max_in_flight => {
                let message = match message {
                    Ok(message) => message,
                    Err(err) => {
                        tracing::warn!(error = %err, "Kafka consumer error");
                        metrics::counter!(omnigate_core::telemetry::metric::KAFKA_CONSUME_ERRORS_TOTAL).increment(1);
                        continue;
                    }
                };
                // Shared, not cloned, with the handler: a retry needs the record again.
                let record = Arc::new(copy(&message));
                let position = (record.topic.clone(), record.partition, record.offset);
                if lanes.is_empty() {
                    let Some(decided) = decide_with_retry(&mut decide, record, &shutdown).await
                    else {
                        return finish(consumer, in_flight).await;
                    };
                    in_flight.push_back(awaiting(std::future::ready(Some(decided)), position));
                } else {
                    let (reply, decided) = oneshot::channel();
                    let lane = &lanes[record.partition.unsigned_abs() as usize % lanes.len()];
                    if lane.send((record, reply)).is_err() {
                        break;
                    }
                    // A lane that stopped (shutdown) drops the reply: not decided.
                    in_flight.push_back(awaiting(async { decided.await.ok() }, position));
                }
            }
        }
    }
    finish(consumer, in_flight).await
}

/// A run of in-flight records that finished, in consumption order.
#[derive(Debug, Default, PartialEq)]
struct Finished {
    /// The last finished offset of each partition, to store. Storing one offset costs
    /// librdkafka a topic handle made and dropped under its client lock, so a run of
    /// records (a delivery log batch resolves hundreds at once) stores one per partition.
    last_per_partition: Vec<(String, i32, i64)>,
    /// How many records finished.
    records: u64,
    /// The run ended at a record that was never decided.
    undecided: bool,
}

impl Finished {
    /// `first`, which has finished, and every entry after it that has finished too.
    fn drain(first: Option<(String, i32, i64)>, in_flight: &mut InFlight) -> Self {
        use futures::{FutureExt as _, StreamExt as _};
        let mut finished = Self::default();
        let mut next = Some(first);
        while let Some(done) = next {
            let Some((topic, partition, offset)) = done else {
                finished.undecided = true;
                break;
            };
            finished.records += 1;
            match finished
                .last_per_partition
                .iter_mut()
                .find(|(t, p, _)| *p == partition && *t == topic)
            {
                Some(last) => last.2 = offset,
                None => finished.last_per_partition.push((topic, partition, offset)),
            }
            next = in_flight.next().now_or_never().flatten();
        }
        finished
    }
}

/// The in-flight entry of a record at `position`: resolves once `decided` has and the
/// completion it started (if any) has finished; to None if the record was never decided.
fn awaiting(
    decided: impl Future<Output = Option<Decided>> + Send + 'static,
    position: (String, i32, i64),
) -> InFlightEntry {
    Box::pin(async move {
        if let Some(task) = decided.await? {
            let _ = task.await;
        }
        Some(position)
    })
}

/// One lane of [`run_pipelined`]: decides its records in the order they come.
async fn decide_lane<H, F>(
    mut queue: tokio::sync::mpsc::UnboundedReceiver<ForLane>,
    mut decide: H,
    shutdown: CancellationToken,
) where
    H: FnMut(Arc<ConsumedRecord>) -> F,
    F: Future<Output = Result<Completion, HandlerError>>,
{
    while let Some((record, reply)) = queue.recv().await {
        let Some(decided) = decide_with_retry(&mut decide, record, &shutdown).await else {
            return;
        };
        let _ = reply.send(decided);
    }
}

/// Decides one record, retrying a retriable failure with backoff (up to 30 s between
/// tries) and skipping a permanent one. The completion is spawned, so it progresses
/// while the next record is decided (a completion holding a pooled connection must
/// never wait on the deciding loop). None when shutdown came first.
async fn decide_with_retry<H, F>(
    decide: &mut H,
    record: Arc<ConsumedRecord>,
    shutdown: &CancellationToken,
) -> Option<Decided>
where
    H: FnMut(Arc<ConsumedRecord>) -> F,
    F: Future<Output = Result<Completion, HandlerError>>,
{
    let mut backoff = Backoff::new(RETRY_FIRST, RETRY_MAX);
    loop {
        if shutdown.is_cancelled() {
            return None;
        }
        match decide(Arc::clone(&record)).await {
            Ok(completion) => return Some(Some(tokio::spawn(completion))),
            Err(HandlerError::Permanent(reason)) => {
                tracing::error!(topic = %record.topic, partition = record.partition, offset = record.offset, %reason, "Skipping record");
                return Some(None);
            }
            Err(HandlerError::Retriable(reason)) => {
                tracing::warn!(topic = %record.topic, partition = record.partition, offset = record.offset, %reason, "Retrying record");
                if !backoff.sleep_unless(shutdown).await {
                    return None;
                }
            }
        }
    }
}

/// Lets acknowledged work finish (bounded), stores its offsets, and commits.
async fn finish(consumer: StreamConsumer, mut in_flight: InFlight) -> Result<(), KafkaError> {
    use futures::StreamExt;
    let drain = async {
        while let Some(Some((topic, partition, offset))) = in_flight.next().await {
            let _ = consumer.store_offset(&topic, partition, offset);
        }
    };
    // Unfinished work is simply re-read after the restart; its outputs are idempotent.
    let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
    close(consumer, true).await
}

pub(crate) fn copy(message: &rdkafka::message::BorrowedMessage<'_>) -> ConsumedRecord {
    ConsumedRecord {
        topic: message.topic().to_string(),
        partition: message.partition(),
        offset: message.offset(),
        key: message.key().map(<[u8]>::to_vec),
        value: message
            .payload()
            .map(bytes::Bytes::copy_from_slice)
            .unwrap_or_default(),
        headers: match message.headers() {
            Some(borrowed) => {
                // About 32 bytes a header: a routed event's eight CloudEvents headers
                // take about 250 bytes, names and values (the bench's events: 252).
                let count = borrowed.count();
                let mut headers = RecordHeaders::with_capacity(count, count * 32);
                for header in borrowed.iter() {
                    headers.push(header.key, header.value.unwrap_or_default());
                }
                headers
            }
            None => RecordHeaders::default(),
        },
    }
}

/// Exactly-once read-process-write: records are taken in batches (up to `batch_max`,
/// or what arrives within `linger`), and each batch's outputs and consumer offsets are
/// committed in one Kafka transaction of `producer`. When the transaction fails it is
/// aborted, the handler rolled back, and the batch read again. Returns on shutdown or
/// on a fatal error (a fenced or broken producer: the process should restart).
pub async fn run_transactional<T: Transactional>(
    consumer: StreamConsumer,
    producer: crate::KafkaPublisher,
    shutdown: CancellationToken,
    batch_max: usize,
    linger: Duration,
    handler: &T,
) -> Result<(), KafkaError> {
    loop {
        let first = tokio::select! {
            // Offsets go with each transaction: nothing left to commit.
            () = shutdown.cancelled() => return close(consumer, false).await,
            message = consumer.recv() => message,
        };
        let mut batch = match first {
            Ok(message) => vec![copy(&message)],
            Err(err) => {
                tracing::warn!(error = %err, "Kafka consumer error");
                metrics::counter!(omnigate_core::telemetry::metric::KAFKA_CONSUME_ERRORS_TOTAL)
                    .increment(1);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let deadline = tokio::time::Instant::now() + linger;
        while batch.len() < batch_max {
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Ok(Ok(message)) => batch.push(copy(&message)),
                Ok(Err(err)) => {
                    tracing::warn!(error = %err, "Kafka consumer error");
                    break;
                }
                Err(_) => break,
            }
        }
        let checkpoint = handler.checkpoint(&batch);
        let result = process_in_transaction(&consumer, &producer, &batch, handler, &shutdown).await;
        match result {
            Ok(()) => {
                metrics::counter!(omnigate_core::telemetry::metric::KAFKA_CONSUMED_TOTAL)
                    .increment(batch.len() as u64);
                metrics::counter!(omnigate_core::telemetry::metric::KAFKA_TRANSACTIONS_TOTAL, "outcome" => "committed")
                    .increment(1);
            }
            Err(err) if is_fatal(&err) => {
                tracing::error!(error = %err, "Kafka transaction failed fatally; stopping");
                return Err(err);
            }
            Err(err) => {
                metrics::counter!(omnigate_core::telemetry::metric::KAFKA_TRANSACTIONS_TOTAL, "outcome" => "aborted")
                    .increment(1);
                tracing::warn!(error = %err, records = batch.len(), "Kafka transaction aborted; processing the batch again");
                if let Err(abort) = producer.abort().await
                    && is_fatal(&abort)
                {
                    return Err(abort);
                }
                handler.rollback(checkpoint);
                rewind(&consumer, &batch);
                if shutdown.is_cancelled() {
                    return close(consumer, false).await;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// How long a transactional batch's outputs may take to be acknowledged before the
/// transaction is aborted and the batch read again.
const BATCH_PUBLISH_LIMIT: Duration = Duration::from_secs(30);

async fn process_in_transaction<T: Transactional>(
    consumer: &StreamConsumer,
    producer: &crate::KafkaPublisher,
    batch: &[ConsumedRecord],
    handler: &T,
    shutdown: &CancellationToken,
) -> Result<(), KafkaError> {
    producer.begin()?;
    let mut completions = Vec::with_capacity(batch.len());
    for record in batch {
        // Shorter than elsewhere: the transaction stays open meanwhile.
        let mut backoff = Backoff::new(RETRY_FIRST, Duration::from_secs(5));
        loop {
            match handler.handle(record).await {
                Ok(completion) => {
                    completions.push(completion);
                    break;
                }
                Err(HandlerError::Permanent(reason)) => {
                    tracing::error!(topic = %record.topic, partition = record.partition, offset = record.offset, %reason, "Skipping record");
                    break;
                }
                Err(HandlerError::Retriable(reason)) => {
                    tracing::warn!(topic = %record.topic, partition = record.partition, offset = record.offset, %reason, "Retrying record");
                    if !backoff.sleep_unless(shutdown).await {
                        return Err(KafkaError::Canceled);
                    }
                }
            }
        }
    }
    // The completions publish (and retry) inside the open transaction; a publish that
    // keeps failing (the transaction is in an abortable state) ends the batch.
    tokio::time::timeout(BATCH_PUBLISH_LIMIT, futures::future::join_all(completions))
        .await
        .map_err(|_| {
            KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::MessageTimedOut)
        })?;
    let mut next: std::collections::BTreeMap<(&str, i32), i64> = std::collections::BTreeMap::new();
    for record in batch {
        next.insert((record.topic.as_str(), record.partition), record.offset + 1);
    }
    let mut offsets = rdkafka::TopicPartitionList::new();
    for ((topic, partition), offset) in next {
        offsets.add_partition_offset(topic, partition, rdkafka::Offset::Offset(offset))?;
    }
    let group = consumer.group_metadata().ok_or(KafkaError::Canceled)?;
    producer.commit(offsets, group).await
}

/// Seeks every partition of `batch` back to its first record in the batch.
fn rewind(consumer: &StreamConsumer, batch: &[ConsumedRecord]) {
    let mut firsts: std::collections::BTreeMap<(&str, i32), i64> =
        std::collections::BTreeMap::new();
    for record in batch {
        firsts
            .entry((record.topic.as_str(), record.partition))
            .or_insert(record.offset);
    }
    for ((topic, partition), offset) in firsts {
        if let Err(err) = consumer.seek(
            topic,
            partition,
            rdkafka::Offset::Offset(offset),
            Duration::from_secs(5),
        ) {
            // Revoked meanwhile: its new owner starts from the last committed offset.
            tracing::warn!(topic, partition, error = %err, "Could not rewind");
        }
    }
}

fn is_fatal(err: &KafkaError) -> bool {
    match err {
        KafkaError::Transaction(e) => e.is_fatal(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(done: Option<(&str, i32, i64)>) -> InFlightEntry {
        let done = done.map(|(t, p, o)| (t.to_string(), p, o));
        Box::pin(async move { done })
    }

    #[test]
    fn a_finished_run_stores_the_last_offset_of_each_partition_and_stops_at_one_unfinished() {
        let mut in_flight = InFlight::new();
        in_flight.push_back(entry(Some(("t", 1, 11))));
        in_flight.push_back(entry(Some(("t", 0, 20))));
        in_flight.push_back(entry(Some(("t", 1, 12))));
        in_flight.push_back(Box::pin(std::future::pending()));
        in_flight.push_back(entry(Some(("t", 1, 13))));
        let finished = Finished::drain(Some(("t".into(), 0, 19)), &mut in_flight);
        assert_eq!(
            finished,
            Finished {
                last_per_partition: vec![("t".into(), 0, 20), ("t".into(), 1, 12)],
                records: 4,
                undecided: false,
            }
        );
        assert_eq!(
            in_flight.len(),
            2,
            "the unfinished record and the one after it wait"
        );
    }

    #[test]
    fn headers_keep_their_order_names_and_values() {
        let mut headers = RecordHeaders::default();
        headers.push("ce_id", b"ev-1");
        headers.push("empty", b"");
        headers.push("content-type", b"application/json");
        let record = ConsumedRecord {
            topic: "t".into(),
            partition: 0,
            offset: 0,
            key: None,
            value: bytes::Bytes::new(),
            headers,
        };
        assert_eq!(
            record.headers.iter().collect::<Vec<_>>(),
            vec![
                ("ce_id", &b"ev-1"[..]),
                ("empty", &b""[..]),
                ("content-type", &b"application/json"[..])
            ]
        );
        assert_eq!(record.header("content-type"), Some("application/json"));
        assert_eq!(record.header("empty"), Some(""));
        assert_eq!(record.header("ce_type"), None);
        assert_eq!(record.headers.len(), 3);
    }

    #[test]
    fn a_run_ends_at_an_undecided_record() {
        let mut in_flight = InFlight::new();
        in_flight.push_back(entry(None));
        in_flight.push_back(entry(Some(("t", 0, 21))));
        let finished = Finished::drain(Some(("t".into(), 0, 20)), &mut in_flight);
        assert_eq!(finished.last_per_partition, vec![("t".into(), 0, 20)]);
        assert_eq!((finished.records, finished.undecided), (1, true));
    }
}
