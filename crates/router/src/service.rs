//! The router's Kafka shell: consume `omnigate.inbound.v1` in a group, decide, publish
//! the routed event, conversation and contact events, and the new state; store the
//! offset only after all of it is acknowledged.

use crate::{
    Facts, Input, Outcome, PolicySettings, Rules,
    contacts::{ContactStore, Resolution},
    decide,
    policy::Assignment,
};
use chrono::{DateTime, Utc};
use omnigate_core::consume::{Completion, ConsumedRecord, HandlerError};
use omnigate_core::publish::{Outgoing, Publisher, Topic};
use omnigate_model::{EventBuilder, EventType, pb};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock},
};

/// `ce_type` of assignment records.
pub const ASSIGNMENT_TYPE: &str = "io.omnigate.router.assignment.v1";

/// The router: rules (hot-swappable), per-key state, the contact store, the publisher.
#[derive(Debug, Clone)]
pub struct Router {
    /// `ce_source` of this process's state records, so its follower can skip them.
    source: Arc<str>,
    rules: Arc<RwLock<Arc<Rules>>>,
    /// Shared, so reading a conversation's state for a decision copies nothing.
    state: Arc<Mutex<HashMap<String, Arc<Assignment>>>>,
    contacts: Arc<ContactStore>,
    publisher: Publisher,
    settings: PolicySettings,
}

impl Router {
    /// Builds a router with loaded rules and an empty state.
    pub fn new(
        rules: Rules,
        contacts: Arc<ContactStore>,
        publisher: Publisher,
        settings: PolicySettings,
    ) -> Self {
        Self {
            source: format!("/omnigate/router/{}", uuid::Uuid::new_v4()).into(),
            rules: Arc::new(RwLock::new(Arc::new(rules))),
            state: Arc::default(),
            contacts,
            publisher,
            settings,
        }
    }

    /// Swaps in new rules; conversations already open keep their inbox.
    pub fn replace_rules(&self, rules: Rules) {
        if let Ok(mut current) = self.rules.write() {
            *current = Arc::new(rules);
        }
    }

    /// The contact store (for the conversation API).
    pub fn contacts(&self) -> Arc<ContactStore> {
        Arc::clone(&self.contacts)
    }

    /// Applies a record of the assignments topic to the state: keeps whichever of the
    /// stored and the incoming assignment saw the later event.
    pub fn apply_state(&self, record: &ConsumedRecord) {
        if record.header("ce_source") == Some(&*self.source) {
            // Our own decision: the state already has it (and maybe newer ones).
            return;
        }
        let Ok(mut incoming) = serde_json::from_slice::<Assignment>(&record.value) else {
            return;
        };
        // A state record can be acknowledged before the routed records of the same
        // decision (or of an earlier one), so its fingerprints may name events whose
        // output never landed. Forget them: a replay then routes such events again (same
        // ids) instead of dropping them as duplicates.
        incoming.recent_events.clear();
        incoming.stored_last_event_at = incoming.last_event_at;
        if let Ok(mut state) = self.state.lock() {
            let newer = state
                .get(&incoming.conversation_key)
                .is_none_or(|current| incoming.last_event_at >= current.last_event_at);
            if newer {
                state.insert(incoming.conversation_key.clone(), Arc::new(incoming));
            }
        }
    }

    /// How many conversation keys the state holds.
    pub fn state_len(&self) -> usize {
        self.state.lock().map(|s| s.len()).unwrap_or(0)
    }

    /// Routes one record of `omnigate.inbound.v1`: decides now (in order, updating the
    /// state), and returns the completion that publishes the outputs, retrying until
    /// they are acknowledged.
    pub async fn handle(&self, record: &ConsumedRecord) -> Result<Completion, HandlerError> {
        let event: pb::Event = match record.decode() {
            Ok(event) => event,
            Err(err) => {
                self.dead_letter(record, &err.to_string()).await?;
                return Ok(Box::pin(async {}));
            }
        };
        let key = event.conversation_key.clone();
        let at = event
            .time
            .as_ref()
            .and_then(omnigate_model::datetime)
            .unwrap_or_else(Utc::now);
        let facts = Facts::of(&event);
        let retriable = |e: &dyn std::fmt::Display| HandlerError::Retriable(e.to_string());
        let Resolution {
            contact_id,
            merges,
            new_contact,
        } = self
            .contacts
            .resolve(&facts.identifiers(), &key)
            .await
            .map_err(|e| retriable(&e))?;
        let existing = self
            .state
            .lock()
            .ok()
            .and_then(|s| s.get(&key).map(Arc::clone));
        let still_open = existing.as_ref().is_some_and(|e| {
            at.timestamp() - e.last_event_at <= self.settings.reopen_after.num_seconds()
        });
        let elsewhere = if still_open || new_contact || !self.settings.continuity {
            None
        } else {
            self.contacts
                .open_elsewhere(&contact_id, &key)
                .await
                .map_err(|e| retriable(&e))?
        };
        let rules = self
            .rules
            .read()
            .map(|r| Arc::clone(&r))
            .map_err(|e| retriable(&e))?;
        let decision = decide(
            &Input {
                event_id: &event.id,
                conversation_key: &key,
                at,
                facts: &facts,
                contact_id: &contact_id,
                existing: existing.as_deref(),
                open_elsewhere: elsewhere.as_ref(),
            },
            &rules,
            self.settings,
        );
        if decision.outcome == Outcome::Duplicate {
            metrics::counter!(omnigate_core::telemetry::metric::ROUTER_EVENTS_TOTAL, "outcome" => "duplicate")
                .increment(1);
            return Ok(Box::pin(async {}));
        }
        let mut assignment = decision.assignment;
        let mut records = Vec::with_capacity(3);
        let outcome_label = match &decision.outcome {
            Outcome::Opened => {
                records.push((
                    Topic::Routed,
                    assignment_event(&event, &assignment, EventType::ConversationAssigned, "", at),
                ));
                "opened"
            }
            Outcome::Reassigned { previous_inbox } => {
                records.push((
                    Topic::Routed,
                    assignment_event(
                        &event,
                        &assignment,
                        EventType::ConversationReassigned,
                        previous_inbox,
                        at,
                    ),
                ));
                "reassigned"
            }
            Outcome::Continued | Outcome::Duplicate => "continued",
        };
        for merge in &merges {
            records.push((Topic::Routed, linked_event(&event, merge, at)));
        }
        // The state record and the SQL copy are written when the conversation opens or
        // moves, and otherwise when its last event is more than 10 minutes newer than
        // the stored one: the stored time only serves the reopen window (hours), and
        // the fingerprints are dropped on load anyway. This halves the records per event.
        let stale = existing.as_ref().is_none_or(|e| {
            e.inbox != assignment.inbox
                || e.contact_id != assignment.contact_id
                || assignment.last_event_at - e.stored_last_event_at > 600
        });
        let changed = decision.outcome != Outcome::Continued || stale;
        if changed {
            assignment.stored_last_event_at = assignment.last_event_at;
            records.push((
                Topic::Assignments,
                Outgoing::State {
                    key: key.clone(),
                    value: serde_json::to_vec(&assignment).unwrap_or_default(),
                    ce_type: ASSIGNMENT_TYPE,
                    source: self.source.to_string(),
                },
            ));
        }
        let assignment = Arc::new(assignment);
        let to_save = changed.then(|| Arc::clone(&assignment));
        let tenant = event.tenant.clone();
        // The routed event goes first; it is built last because it takes the event.
        records.insert(0, (Topic::Routed, routed(event, record, &assignment)));
        if let Ok(mut state) = self.state.lock() {
            state.insert(key, assignment);
        }
        metrics::counter!(omnigate_core::telemetry::metric::ROUTER_EVENTS_TOTAL, "outcome" => outcome_label).increment(1);
        let (publisher, contacts) = (self.publisher.clone(), self.contacts());
        Ok(Box::pin(async move {
            // The SQL copy only feeds continuity and the API, so it is written beside the
            // records, not before them: the offset waits for the slower of the two only.
            let saved = async {
                if let Some(assignment) = &to_save {
                    retry_until_ok("Conversation not saved", || {
                        contacts.save(&tenant, assignment)
                    })
                    .await;
                }
            };
            // The records are deterministic, so publishing them again is harmless.
            let published = retry_until_ok("Routed records not acknowledged", || {
                publisher.publish_all(&records)
            });
            tokio::join!(saved, published);
        }))
    }

    async fn dead_letter(&self, record: &ConsumedRecord, reason: &str) -> Result<(), HandlerError> {
        let letter = record.dead_letter("/omnigate/router", reason);
        metrics::counter!(omnigate_core::telemetry::metric::ROUTER_EVENTS_TOTAL, "outcome" => "dead_lettered")
            .increment(1);
        self.publisher
            .publish(Topic::Deadletter, Outgoing::DeadLetter(Box::new(letter)))
            .await
            .map_err(|e| HandlerError::Retriable(e.to_string()))?;
        Ok(())
    }
}

/// Runs `attempt` until it succeeds, backing off from 100 ms to 10 s between tries.
async fn retry_until_ok<T, E, F>(what: &str, mut attempt: impl FnMut() -> F)
where
    E: std::fmt::Display,
    F: Future<Output = Result<T, E>>,
{
    let mut backoff = omnigate_core::retry::Backoff::new(
        std::time::Duration::from_millis(100),
        std::time::Duration::from_secs(10),
    );
    while let Err(err) = attempt().await {
        tracing::warn!(error = %err, "{what}; retrying");
        backoff.sleep().await;
    }
}

/// The routed form of `event`, consumed as `record`. When the record holds the event's
/// JSON, routing is appended to those bytes rather than encoding the whole event again.
fn routed(mut event: pb::Event, record: &ConsumedRecord, assignment: &Assignment) -> Outgoing {
    let routing = routing_of(assignment);
    let is_json = record.header("content-type") != Some(omnigate_core::consume::PROTOBUF);
    let json = (is_json && event.routing.is_none())
        .then(|| omnigate_model::with_routing_json(&record.value, &routing))
        .flatten();
    event.routing = Some(routing);
    match json {
        Some(json) => Outgoing::EventJson {
            event: Box::new(event),
            json,
        },
        None => Outgoing::Event(Box::new(event)),
    }
}

fn routing_of(assignment: &Assignment) -> pb::Routing {
    pb::Routing {
        conversation_id: assignment.conversation_id.clone(),
        contact_id: assignment.contact_id.clone(),
        inbox: assignment.inbox.clone(),
    }
}

fn channel_of(event: &pb::Event) -> (pb::ChannelKind, String) {
    event
        .channel()
        .map(|c| {
            (
                pb::ChannelKind::try_from(c.kind).unwrap_or_default(),
                c.channel_id.clone(),
            )
        })
        .unwrap_or_default()
}

/// An event the router emits about `event`'s conversation, with its deterministic id.
fn router_event(
    event: &pb::Event,
    kind: EventType,
    provider_id: &str,
    at: DateTime<Utc>,
    payload: pb::event::Payload,
    routing: Option<pb::Routing>,
) -> Outgoing {
    let (channel_kind, channel_id) = channel_of(event);
    let mut made = EventBuilder::component("router", channel_kind, &channel_id, &event.tenant)
        .event(
            kind,
            provider_id,
            event.conversation_key.clone(),
            at,
            payload,
        );
    made.routing = routing;
    Outgoing::Event(Box::new(made))
}

fn assignment_event(
    event: &pb::Event,
    a: &Assignment,
    kind: EventType,
    previous: &str,
    at: DateTime<Utc>,
) -> Outgoing {
    let payload = pb::event::Payload::Assignment(pb::ConversationAssignment {
        conversation_id: a.conversation_id.clone(),
        conversation_key: a.conversation_key.clone(),
        inbox: a.inbox.clone(),
        previous_inbox: previous.to_string(),
        contact_id: a.contact_id.clone(),
        rule: a.rule.clone(),
        channel_kind: channel_of(event).0 as i32,
        linked_conversation_ids: a.linked.clone(),
    });
    let routing = routing_of(a);
    let provider_id = format!("{}:{}", a.conversation_id, event.id);
    router_event(event, kind, &provider_id, at, payload, Some(routing))
}

fn linked_event(event: &pb::Event, merge: &crate::contacts::Merge, at: DateTime<Utc>) -> Outgoing {
    let payload = pb::event::Payload::ContactLinked(pb::ContactLinked {
        contact_id: merge.kept.clone(),
        merged_contact_id: merge.merged.clone(),
        shared_identifier: merge.identifier.clone(),
    });
    let provider_id = format!("{}:{}", merge.kept, merge.merged);
    router_event(
        event,
        EventType::ContactLinked,
        &provider_id,
        at,
        payload,
        None,
    )
}

/// Exactly-once mode: before a batch the router remembers the state of the batch's
/// conversation keys, and puts it back if the batch's transaction aborts.
impl omnigate_core::consume::Transactional for Router {
    type Checkpoint = Vec<(String, Option<Arc<Assignment>>)>;

    fn checkpoint(&self, batch: &[ConsumedRecord]) -> Self::Checkpoint {
        let Ok(state) = self.state.lock() else {
            return Vec::new();
        };
        let mut keys: Vec<String> = batch
            .iter()
            .filter_map(|r| r.key.as_deref())
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        keys.sort_unstable();
        keys.dedup();
        keys.into_iter()
            .map(|key| {
                let saved = state.get(&key).map(Arc::clone);
                (key, saved)
            })
            .collect()
    }

    async fn handle(&self, record: &ConsumedRecord) -> Result<Completion, HandlerError> {
        Router::handle(self, record).await
    }

    fn rollback(&self, checkpoint: Self::Checkpoint) {
        if let Ok(mut state) = self.state.lock() {
            for (key, saved) in checkpoint {
                match saved {
                    Some(assignment) => state.insert(key, assignment),
                    None => state.remove(&key),
                };
            }
        }
    }
}
