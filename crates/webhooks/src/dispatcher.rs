//! The dispatcher role: each routed event becomes a delivery per matching endpoint,
//! POSTed at once and written to the store with that first attempt's result before
//! the event's offset is stored; one write per delivery keeps thousands a second
//! within SQLite's single writer. A crash before the write means the event is consumed
//! and delivered again with the same `webhook-id` (receivers deduplicate by it).
//! Retries, replays and test events are found in the store by a poll, so they survive
//! a crash.

use crate::{
    config::WebhooksConfig,
    http_client::{ClientError, Target, WebhookClient},
    retry::{RetryPolicy, Verdict, describe},
    ssrf::AddressPolicy,
    store::{
        Attempt, DueDelivery, Endpoint, NewDelivery, NewMessage, Outcome, WebhookStore, WriteBatch,
        status,
    },
    subscription::{EventFacts, matches},
};
use bytes::Bytes;
use omnigate_core::consume::{Completion, ConsumedRecord, HandlerError};
use omnigate_core::{
    db::linger_for_batch,
    publish::{Outgoing, Publisher, Topic},
};
use omnigate_model::{EventType, pb};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument as _;

/// The dispatcher could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The HTTP client could not be built.
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The `webhook-id` of an event's delivery to an endpoint: the same whenever the
/// event is consumed again, and on every attempt.
///
/// It starts with the event's time (see [`push_time_prefix`]), then 20 hex digits of a
/// hash of the endpoint and event ids.
pub fn delivery_id(endpoint_id: &str, event: &pb::Event) -> String {
    const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6f6d_6e69_6761_5e00_8000_0000_0000_0004);
    let name = [endpoint_id.as_bytes(), b"\x1f", event.id.as_bytes()].concat();
    let mut hash = uuid::Uuid::encode_buffer();
    let hash = uuid::Uuid::new_v5(&NAMESPACE, &name)
        .simple()
        .encode_lower(&mut hash);
    // Built in place: formatting it in steps allocates for every delivery.
    let mut id = String::with_capacity(36);
    id.push_str("msg_");
    push_time_prefix(&mut id, event);
    id.push_str(&hash[..20]);
    id
}

/// The key of an event's body in the delivery log: its time (see [`push_time_prefix`]),
/// then its id. The same whenever the event is consumed again.
pub fn message_key(event: &pb::Event) -> String {
    let mut key = String::with_capacity(12 + event.id.len());
    push_time_prefix(&mut key, event);
    key.push_str(&event.id);
    key
}

/// Appends the event's time as 12 hex digits of Unix milliseconds. Keys that start
/// with it grow with time, so the delivery log's inserts land at the end of its key
/// indexes; with random keys, every batch rewrote pages all over those indexes.
fn push_time_prefix(out: &mut String, event: &pb::Event) {
    use std::fmt::Write as _;
    let millis = event
        .time
        .as_ref()
        .map(|t| t.seconds.saturating_mul(1000) + i64::from(t.nanos / 1_000_000))
        .unwrap_or_default()
        .clamp(0, 0xffff_ffff_ffff);
    let _ = write!(out, "{millis:012x}"); // writing to a String cannot fail
}

/// Endpoints as the dispatcher last read them.
#[derive(Debug, Default)]
struct Endpoints {
    by_tenant: HashMap<String, Vec<Arc<Endpoint>>>,
    /// Each endpoint, with what its attempts need.
    by_id: HashMap<String, Prepared>,
}

/// An endpoint as its attempts use it.
#[derive(Debug)]
struct Prepared {
    endpoint: Arc<Endpoint>,
    /// Its URL, headers and keys prepared for the client.
    target: Target,
    /// Its slots (the same semaphore across refreshes, see `Inner::endpoint_slots`).
    slots: Arc<Semaphore>,
}

enum Write {
    Message(NewMessage, oneshot::Sender<()>),
    Outcome(Outcome),
    Defer(String, i64),
}

/// How long a new delivery waits for a slot of its endpoint before it is left to the poll.
const FAST_PATH_SLOT_WAIT: Duration = Duration::from_millis(200);

/// How long the consumer waits for a new delivery's first attempt. A slower attempt
/// goes on, but its delivery is logged as pending (held by this dispatcher) without
/// the result, which updates the row when it comes: a slow endpoint never holds up
/// the offsets of everything behind it.
const FIRST_ATTEMPT_WAIT: Duration = Duration::from_secs(1);

/// Leave to attempt a delivery now: one of the dispatcher's slots and one of the
/// endpoint's, released when the attempt ends.
struct Slots {
    _global: OwnedSemaphorePermit,
    _endpoint: OwnedSemaphorePermit,
}

/// The dispatcher's per-delivery metrics, registered once, instead of a lookup by name
/// and labels for every attempt.
struct Meters {
    created: metrics::Counter,
    delivered: metrics::Counter,
    retry: metrics::Counter,
    failed: metrics::Counter,
    gone: metrics::Counter,
    attempt_duration: metrics::Histogram,
}

impl Meters {
    fn register() -> Self {
        let attempts = |outcome: &'static str| metrics::counter!(omnigate_core::telemetry::metric::WEBHOOK_ATTEMPTS_TOTAL, "outcome" => outcome);
        Self {
            created: metrics::counter!(
                omnigate_core::telemetry::metric::WEBHOOK_DELIVERIES_CREATED_TOTAL
            ),
            delivered: attempts("delivered"),
            retry: attempts("retry"),
            failed: attempts("failed"),
            gone: attempts("gone"),
            attempt_duration: metrics::histogram!(
                omnigate_core::telemetry::metric::WEBHOOK_ATTEMPT_DURATION_SECONDS
            ),
        }
    }
}

/// A running dispatcher; cheap to clone.
#[derive(Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
}

struct Inner {
    config: WebhooksConfig,
    store: WebhookStore,
    client: WebhookClient,
    retry: RetryPolicy,
    publisher: Publisher,
    endpoints: RwLock<Arc<Endpoints>>,
    global: Arc<Semaphore>,
    per_endpoint: Mutex<HashMap<String, Arc<Semaphore>>>,
    next_slot: Mutex<HashMap<String, tokio::time::Instant>>,
    writes: mpsc::Sender<Write>,
    tasks: TaskTracker,
    meters: Meters,
}

impl Dispatcher {
    /// Reads the endpoints and starts the writer, the retry poll, the endpoint refresh
    /// (also woken by `changes`) and the retention purge on `tasks`.
    pub async fn start(
        config: WebhooksConfig,
        store: WebhookStore,
        publisher: Publisher,
        changes: Arc<Notify>,
        tasks: &TaskTracker,
        shutdown: &CancellationToken,
    ) -> Result<Self, StartError> {
        let client = WebhookClient::new(
            AddressPolicy::new(config.allow_networks.clone()),
            config.attempt_timeout,
            config.response_body_max_bytes,
        )?;
        let (writes, write_queue) = mpsc::channel(4096);
        let inner = Arc::new(Inner {
            retry: RetryPolicy {
                schedule: config.retry_schedule.clone(),
                jitter: config.retry_jitter,
                retry_after_max: config.retry_after_max,
            },
            global: Arc::new(Semaphore::new(config.max_in_flight)),
            config,
            store,
            client,
            publisher,
            endpoints: RwLock::default(),
            per_endpoint: Mutex::default(),
            next_slot: Mutex::default(),
            writes,
            tasks: tasks.clone(),
            meters: Meters::register(),
        });
        inner.refresh().await?;
        tasks.spawn(write_loop(
            inner.store.clone(),
            write_queue,
            shutdown.clone(),
        ));
        tasks.spawn(refresh_loop(Arc::clone(&inner), changes, shutdown.clone()));
        tasks.spawn(poll_loop(Arc::clone(&inner), shutdown.clone()));
        tasks.spawn(purge_loop(Arc::clone(&inner), shutdown.clone()));
        Ok(Self { inner })
    }

    /// The consumer's first stage for one routed record: match. The returned
    /// completion makes the first attempts, then logs the deliveries with their
    /// results; it resolves (so the offset may be stored) once they are stored.
    pub async fn handle(&self, record: &ConsumedRecord) -> Result<Completion, HandlerError> {
        let event: pb::Event = match record.decode() {
            Ok(event) => event,
            Err(err) => {
                let letter = record.dead_letter("/omnigate/webhooks", &err.to_string());
                self.inner
                    .publisher
                    .publish(Topic::Deadletter, Outgoing::DeadLetter(Box::new(letter)))
                    .await
                    .map_err(|e| HandlerError::Retriable(e.to_string()))?;
                return Ok(Box::pin(async {}));
            }
        };
        // One snapshot of the endpoints from matching to the first attempts, rather than
        // reading the shared one again for each step.
        let endpoints = self.inner.endpoints();
        let Some(message) = self.inner.message_for(&endpoints, &event, record) else {
            return Ok(Box::pin(async {}));
        };
        let inner = Arc::clone(&self.inner);
        Ok(Box::pin(async move {
            inner.deliver_new(endpoints, message).await
        }))
    }
}

impl Inner {
    /// Attempts a new event's deliveries that can go at once, then logs them all.
    async fn deliver_new(self: Arc<Self>, endpoints: Arc<Endpoints>, mut message: NewMessage) {
        let mut attempts = Vec::new();
        for (index, due, endpoint_slots) in self.hold_for_first_attempt(&endpoints, &mut message) {
            match self.slots_for(endpoint_slots, FAST_PATH_SLOT_WAIT).await {
                Some(slots) => {
                    let (result, outcome) = oneshot::channel();
                    let (inner, endpoints) = (Arc::clone(&self), Arc::clone(&endpoints));
                    // Only the attempt's arguments are moved into the task: its future
                    // (kilobytes, with hyper's) is boxed where it starts, instead of
                    // copied on each step of spawning.
                    self.tasks.spawn(async move {
                        if let Some(late) = Box::pin(inner.attempt(&endpoints, due, slots))
                            .await
                            .and_then(|o| result.send(o).err())
                        {
                            // Logged as pending meanwhile: the result updates the row.
                            inner.record(late).await;
                        }
                    });
                    attempts.push((index, outcome));
                }
                // The endpoint is busy: the delivery is logged as due now, for the poll.
                None => message.deliveries[index].first_attempt_at = now_ms(),
            }
        }
        let deadline = tokio::time::Instant::now() + FIRST_ATTEMPT_WAIT;
        let mut unfinished = Vec::new();
        for (index, mut outcome) in attempts {
            match tokio::time::timeout_at(deadline, &mut outcome).await {
                Ok(Ok(done)) => message.deliveries[index].first_outcome = Some(done),
                // No result (endpoint deleted or disabled meanwhile): it stays held
                // until its lease ends, then the poll decides.
                Ok(Err(_)) => {}
                Err(_) => unfinished.push(outcome),
            }
        }
        let (stored, is_stored) = oneshot::channel();
        if self
            .writes
            .send(Write::Message(message, stored))
            .await
            .is_err()
            || is_stored.await.is_err()
        {
            // Not stored (shutting down): never resolve, so the offset is not stored
            // and the event is consumed again after the restart.
            return std::future::pending().await;
        }
        // The rows exist now. A result that came in the meantime is recorded here;
        // after `close` the attempt's own task records it.
        for mut outcome in unfinished {
            outcome.close();
            if let Ok(done) = outcome.try_recv() {
                self.record(done).await;
            }
        }
    }

    /// Queues an attempt's result for the store.
    async fn record(&self, outcome: Outcome) {
        if self.writes.send(Write::Outcome(outcome)).await.is_err() {
            tracing::warn!(
                "Attempt outcome not recorded (shutting down); the delivery is retried after its lease"
            );
        }
    }

    fn endpoints(&self) -> Arc<Endpoints> {
        self.endpoints
            .read()
            .map(|e| Arc::clone(&e))
            .unwrap_or_default()
    }

    async fn refresh(&self) -> Result<(), crate::store::StoreError> {
        let mut endpoints = Endpoints::default();
        for endpoint in self.store.all_endpoints().await? {
            let endpoint = Arc::new(endpoint);
            let prepared = Prepared {
                endpoint: Arc::clone(&endpoint),
                target: self.client.target(&endpoint),
                slots: self.endpoint_slots(&endpoint.id),
            };
            endpoints.by_id.insert(endpoint.id.clone(), prepared);
            if endpoint.enabled {
                endpoints
                    .by_tenant
                    .entry(endpoint.tenant.clone())
                    .or_default()
                    .push(endpoint);
            }
        }
        metrics::gauge!(omnigate_core::telemetry::metric::WEBHOOK_ENDPOINTS)
            .set(endpoints.by_id.len() as f64);
        if let Ok(mut current) = self.endpoints.write() {
            *current = Arc::new(endpoints);
        }
        Ok(())
    }

    /// The body and deliveries of a routed event, or None when no endpoint wants it.
    fn message_for(
        &self,
        endpoints: &Endpoints,
        event: &pb::Event,
        record: &ConsumedRecord,
    ) -> Option<NewMessage> {
        let facts = EventFacts::of(event);
        let now = now_ms();
        let ordering_key = event
            .routing
            .as_ref()
            .map(|r| r.conversation_id.clone())
            .filter(|id| !id.is_empty())
            .unwrap_or_else(|| event.conversation_key.clone());
        let deliveries: Vec<NewDelivery> = endpoints
            .by_tenant
            .get(&event.tenant)?
            .iter()
            .filter(|e| matches(&e.events, &e.filters, &facts))
            .map(|e| NewDelivery {
                id: delivery_id(&e.id, event),
                endpoint_id: e.id.clone(),
                tenant: e.tenant.clone(),
                ordering_key: ordering_key.clone(),
                seq: record.offset,
                // Due now for the poll, unless `hold_for_first_attempt` attempts it at once.
                first_attempt_at: now,
                first_outcome: None,
            })
            .collect();
        if deliveries.is_empty() {
            return None;
        }
        self.meters.created.increment(deliveries.len() as u64);
        // The same JSON as on Kafka: the record itself, or its JSON form if it is protobuf.
        let body = if record.header("content-type") == Some(omnigate_core::consume::PROTOBUF) {
            Bytes::from(omnigate_model::to_json(event))
        } else {
            record.value.clone()
        };
        Some(NewMessage {
            key: message_key(event),
            event_id: event.id.clone(),
            event_type: event.r#type.clone(),
            body,
            deliveries,
        })
    }

    /// Marks the deliveries of a new message that this dispatcher attempts at once as
    /// held by it for a lease, and returns them with their index and their endpoint's
    /// slots. Deliveries to ordered endpoints stay due for the poll, which keeps each
    /// conversation in order.
    fn hold_for_first_attempt(
        &self,
        endpoints: &Endpoints,
        message: &mut NewMessage,
    ) -> Vec<(usize, DueDelivery, Arc<Semaphore>)> {
        let lease_until = now_ms() + self.config.lease().as_millis() as i64;
        let mut held = Vec::new();
        for (index, delivery) in message.deliveries.iter_mut().enumerate() {
            let Some(prepared) = endpoints
                .by_id
                .get(&delivery.endpoint_id)
                .filter(|p| !p.endpoint.ordered)
            else {
                continue;
            };
            delivery.first_attempt_at = lease_until;
            held.push((
                index,
                DueDelivery {
                    id: delivery.id.clone(),
                    endpoint_id: delivery.endpoint_id.clone(),
                    event_id: message.event_id.clone(),
                    attempts: 0,
                    body: message.body.clone(),
                },
                Arc::clone(&prepared.slots),
            ));
        }
        held
    }

    /// Slots for a delivery: a dispatcher slot (waiting as long as it takes: every slot
    /// busy means the dispatcher is at capacity), then up to `wait` for one of the
    /// endpoint's `slots`; None if the endpoint stays busy.
    async fn slots_for(&self, slots: Arc<Semaphore>, wait: Duration) -> Option<Slots> {
        let global = Arc::clone(&self.global).acquire_owned().await.ok()?;
        // A free slot is taken without arming a timer (one per delivery showed in the profile).
        let endpoint = match Arc::clone(&slots).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => tokio::time::timeout(wait, slots.acquire_owned())
                .await
                .ok()?
                .ok()?,
        };
        Some(Slots {
            _global: global,
            _endpoint: endpoint,
        })
    }

    fn endpoint_slots(&self, endpoint_id: &str) -> Arc<Semaphore> {
        let mut slots = self.per_endpoint.lock().unwrap_or_else(|p| p.into_inner());
        // Looked up before `entry`, which would copy the id for every delivery.
        if let Some(semaphore) = slots.get(endpoint_id) {
            return Arc::clone(semaphore);
        }
        Arc::clone(
            slots.entry(endpoint_id.to_string()).or_insert_with(|| {
                Arc::new(Semaphore::new(self.config.max_in_flight_per_endpoint))
            }),
        )
    }

    /// Endpoints with no free slot, which the poll skips.
    fn busy_endpoints(&self) -> Vec<String> {
        let slots = self.per_endpoint.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .iter()
            .filter(|(_, s)| s.available_permits() == 0)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// How long to wait so the endpoint's rate limit holds (0 when it has none).
    fn rate_wait(&self, endpoint: &Endpoint) -> Duration {
        if endpoint.rate_limit == 0 {
            return Duration::ZERO;
        }
        let interval = Duration::from_secs(1) / endpoint.rate_limit;
        let now = tokio::time::Instant::now();
        let mut slots = self.next_slot.lock().unwrap_or_else(|p| p.into_inner());
        let slot = slots.entry(endpoint.id.clone()).or_insert(now);
        let start = (*slot).max(now);
        *slot = start + interval;
        start - now
    }

    /// Makes one attempt and returns its result for the store; None when the endpoint
    /// is gone or disabled in `endpoints`.
    async fn attempt(
        &self,
        endpoints: &Endpoints,
        due: DueDelivery,
        slots: Slots,
    ) -> Option<Outcome> {
        let Some(Prepared {
            endpoint, target, ..
        }) = endpoints.by_id.get(&due.endpoint_id)
        else {
            return None; // deleted meanwhile: its deliveries went with it
        };
        if !endpoint.enabled {
            return None; // stays pending; the poll takes it up if the endpoint is enabled again
        }
        let rate_wait = self.rate_wait(endpoint);
        if !rate_wait.is_zero() {
            tokio::time::sleep(rate_wait).await;
        }
        let number = due.attempts + 1;
        let span = tracing::info_span!("webhook_attempt", delivery = %due.id, endpoint = %endpoint.id, attempt = number);
        let outcome = async {
            let started_at = now_ms();
            let report = self
                .client
                .attempt(target, &due.id, due.body.clone(), started_at / 1000)
                .await;
            let verdict = self
                .retry
                .verdict(number as usize, &report.end, fastrand::f64());
            let finished = now_ms();
            let meters = &self.meters;
            let (state, next_attempt_at, error, outcome, counter) = match &verdict {
                Verdict::Delivered => (
                    status::SUCCEEDED,
                    0,
                    String::new(),
                    "delivered",
                    &meters.delivered,
                ),
                Verdict::RetryIn(delay) => (
                    status::PENDING,
                    finished + delay.as_millis() as i64,
                    describe(&report.end),
                    "retry",
                    &meters.retry,
                ),
                Verdict::Failed(reason) => {
                    (status::FAILED, 0, reason.clone(), "failed", &meters.failed)
                }
                Verdict::EndpointGone => (
                    status::FAILED,
                    0,
                    "answered 410 Gone".into(),
                    "gone",
                    &meters.gone,
                ),
            };
            counter.increment(1);
            meters
                .attempt_duration
                .record(report.duration.as_secs_f64());
            tracing::debug!(outcome, error, "Webhook attempt");
            let status_code = match report.end {
                crate::retry::AttemptEnd::Answered { status, .. } => i64::from(status),
                _ => 0,
            };
            let outcome = Outcome {
                delivery_id: due.id.clone(),
                status: state,
                next_attempt_at,
                attempt: Attempt {
                    attempt: number,
                    started_at,
                    duration_ms: report.duration.as_millis() as i64,
                    status_code,
                    error,
                    response_body: report.response_body,
                },
            };
            drop(slots);
            self.track_health(endpoint, &verdict, finished).await;
            outcome
        }
        .instrument(span)
        .await;
        Some(outcome)
    }

    /// Keeps the endpoint's failure clock and disables it on 410 or after failing too long.
    async fn track_health(&self, endpoint: &Endpoint, verdict: &Verdict, now: i64) {
        let result = match verdict {
            Verdict::Delivered if endpoint.failing_since != 0 => {
                self.store.set_failing_since(&endpoint.id, 0).await
            }
            Verdict::Delivered => Ok(()),
            Verdict::EndpointGone => {
                self.disable(endpoint, "the endpoint answered 410 Gone", now)
                    .await;
                Ok(())
            }
            Verdict::RetryIn(_) | Verdict::Failed(_) => {
                let limit = self.config.disable_after.as_millis() as i64;
                if endpoint.failing_since != 0 && now - endpoint.failing_since >= limit {
                    let reason = format!(
                        "no successful delivery for {}",
                        humantime::format_duration(self.config.disable_after)
                    );
                    self.disable(endpoint, &reason, now).await;
                    Ok(())
                } else {
                    self.store.set_failing_since(&endpoint.id, now).await
                }
            }
        };
        if let Err(err) = result {
            tracing::warn!(error = %err, "Endpoint failure clock not updated");
        }
    }

    async fn disable(&self, endpoint: &Endpoint, reason: &str, now: i64) {
        match self
            .store
            .set_enabled("", &endpoint.id, false, reason, now)
            .await
        {
            Ok(true) => {}
            Ok(false) => return, // another attempt or dispatcher did it already
            Err(err) => {
                tracing::error!(error = %err, endpoint = %endpoint.id, "Could not disable the endpoint");
                return;
            }
        }
        tracing::warn!(endpoint = %endpoint.id, reason, "Webhook endpoint disabled");
        metrics::counter!(omnigate_core::telemetry::metric::WEBHOOK_ENDPOINTS_DISABLED_TOTAL)
            .increment(1);
        if let Err(err) = self.refresh().await {
            tracing::warn!(error = %err, "Endpoints not re-read");
        }
        let event = disabled_event(endpoint, reason, now);
        if let Err(err) = self.publisher.event(Topic::Routed, event).await {
            tracing::error!(error = %err, endpoint = %endpoint.id, "webhook.endpoint_disabled not published");
        }
    }
}

/// The `webhook.endpoint_disabled` event, published on `omnigate.routed.v1` so Kafka
/// consumers and endpoints subscribed to it learn of it.
fn disabled_event(endpoint: &Endpoint, reason: &str, now: i64) -> pb::Event {
    let kind = EventType::WebhookEndpointDisabled;
    let at = chrono::DateTime::from_timestamp_millis(now).unwrap_or_default();
    omnigate_model::EventBuilder::component(
        "webhooks",
        pb::ChannelKind::Unspecified,
        "webhooks",
        &endpoint.tenant,
    )
    .event(
        kind,
        &format!("{}/{now}", endpoint.id),
        format!("webhook:{}", endpoint.id),
        at,
        pb::event::Payload::WebhookEndpointDisabled(pb::WebhookEndpointDisabled {
            endpoint_id: endpoint.id.clone(),
            url: endpoint.url.clone(),
            reason: reason.to_string(),
            failing_since: chrono::DateTime::from_timestamp_millis(endpoint.failing_since)
                .filter(|_| endpoint.failing_since != 0)
                .map(omnigate_model::timestamp),
        }),
    )
}

/// The most writes one store transaction carries. Large batches are cheaper per
/// delivery, since a commit writes each changed page once however many rows changed it.
pub const WRITE_BATCH: usize = 2048;

/// How long the writer waits for more writes after the first of a batch.
const WRITE_LINGER: Duration = Duration::from_millis(10);

/// Writes in batches: one transaction for whatever queued up meanwhile, so the store
/// keeps up with thousands of deliveries a second. A failed write is retried until it
/// lands or the process stops.
async fn write_loop(
    store: WebhookStore,
    mut queue: mpsc::Receiver<Write>,
    shutdown: CancellationToken,
) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    loop {
        let received = tokio::select! {
            n = queue.recv_many(&mut batch, WRITE_BATCH) => n,
            // Outcomes of attempts still finishing are written for a little longer.
            () = shutdown.cancelled() => tokio::time::timeout(Duration::from_secs(3), queue.recv_many(&mut batch, WRITE_BATCH))
                .await
                .unwrap_or_default(),
        };
        if received == 0 {
            return;
        }
        if !shutdown.is_cancelled() {
            linger_for_batch(&mut batch, WRITE_BATCH, WRITE_LINGER, || {
                queue.try_recv().ok()
            })
            .await;
        }
        let mut writes = WriteBatch::default();
        let mut replies = Vec::new();
        for write in batch.drain(..) {
            match write {
                Write::Message(message, reply) => {
                    writes.messages.push(message);
                    replies.push(reply);
                }
                Write::Outcome(outcome) => writes.outcomes.push(outcome),
                Write::Defer(id, at) => writes.deferred.push((id, at)),
            }
        }
        let mut backoff =
            omnigate_core::retry::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let started = std::time::Instant::now();
        loop {
            match store.write(&writes, now_ms()).await {
                Ok(()) => {
                    metrics::histogram!(
                        omnigate_core::telemetry::metric::WEBHOOK_STORE_WRITE_SECONDS
                    )
                    .record(started.elapsed().as_secs_f64());
                    metrics::histogram!(
                        omnigate_core::telemetry::metric::WEBHOOK_STORE_WRITE_BATCH_SIZE
                    )
                    .record(received as f64);
                    break;
                }
                Err(err) => {
                    metrics::counter!(omnigate_core::telemetry::metric::WEBHOOK_STORE_ERRORS_TOTAL)
                        .increment(1);
                    tracing::warn!(error = %err, "Webhook store write failed; retrying");
                    // Unstored messages are consumed again; outcomes retried after their lease.
                    if !backoff.sleep_unless(&shutdown).await {
                        return;
                    }
                }
            }
        }
        for reply in replies {
            let _ = reply.send(());
        }
    }
}

async fn refresh_loop(inner: Arc<Inner>, changes: Arc<Notify>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(inner.config.endpoint_refresh) => {}
            () = changes.notified() => {}
        }
        if let Err(err) = inner.refresh().await {
            tracing::warn!(error = %err, "Endpoints not re-read; using the previous list");
        }
        inner.client.close_stale_connections();
    }
}

/// Claims due deliveries (retries, replays, test events, ordered endpoints, deliveries
/// that found their endpoint busy, and work a crashed dispatcher held) and attempts
/// them, no more than there are free slots. A full batch is followed at once by the next.
async fn poll_loop(inner: Arc<Inner>, shutdown: CancellationToken) {
    const BATCH: i64 = 256;
    let mut full = false;
    loop {
        if !full {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(inner.config.poll_interval) => {}
            }
        } else if shutdown.is_cancelled() {
            return;
        }
        full = false;
        let free = inner.global.available_permits() as i64;
        if free == 0 {
            continue;
        }
        let now = now_ms();
        let lease_until = now + inner.config.lease().as_millis() as i64;
        let limit = free.min(BATCH);
        let busy = inner.busy_endpoints();
        match inner.store.claim_due(now, lease_until, limit, &busy).await {
            Ok(due) => {
                full = due.len() as i64 == limit;
                for delivery in due {
                    let inner2 = Arc::clone(&inner);
                    inner.tasks.spawn(async move {
                        let endpoint_slots = inner2.endpoint_slots(&delivery.endpoint_id);
                        match inner2
                            .slots_for(endpoint_slots, Duration::from_secs(1))
                            .await
                        {
                            Some(slots) => {
                                let endpoints = inner2.endpoints();
                                if let Some(outcome) =
                                    inner2.attempt(&endpoints, delivery, slots).await
                                {
                                    inner2.record(outcome).await;
                                }
                            }
                            None => {
                                let again =
                                    now_ms() + inner2.config.poll_interval.as_millis() as i64;
                                let _ = inner2.writes.send(Write::Defer(delivery.id, again)).await;
                            }
                        }
                    });
                }
            }
            Err(err) => {
                metrics::counter!(omnigate_core::telemetry::metric::WEBHOOK_STORE_ERRORS_TOTAL)
                    .increment(1);
                tracing::warn!(error = %err, "Due deliveries not read");
            }
        }
    }
}

async fn purge_loop(inner: Arc<Inner>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(3600)) => {}
        }
        let cutoff = now_ms() - inner.config.retention.as_millis() as i64;
        match inner.store.purge(cutoff).await {
            Ok(deleted) => tracing::info!(deleted, "Old webhook deliveries purged"),
            Err(err) => tracing::warn!(error = %err, "Webhook purge failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event_at(id: &str, seconds: i64) -> pb::Event {
        pb::Event {
            id: id.into(),
            time: Some(omnigate_model::Timestamp { seconds, nanos: 0 }),
            ..Default::default()
        }
    }

    /// Log keys are the same for the same event and grow with the event's time,
    /// whatever the (random) event ids.
    #[test]
    fn log_keys_are_deterministic_and_grow_with_time() {
        let (early, late) = (event_at("ffff-early", 1_000), event_at("0000-late", 1_001));
        assert_eq!(delivery_id("ep_1", &early), delivery_id("ep_1", &early));
        assert_ne!(delivery_id("ep_1", &early), delivery_id("ep_2", &early));
        assert!(delivery_id("ep_1", &early) < delivery_id("ep_1", &late));
        assert!(message_key(&early) < message_key(&late));
        assert_eq!(message_key(&early), "0000000f4240ffff-early");
        // Pinned: a delivery logged by an earlier version must keep its `webhook-id`
        // (the UUIDv5 of "ep_1\x1fffff-early", as Python's `uuid.uuid5` makes it).
        assert_eq!(
            delivery_id("ep_1", &early),
            "msg_0000000f4240082232eda6f25f418219"
        );
    }
}
