//! The routing decision: rules combined with the conversation's state.
//!
//! Time is the event's own time, not the wall clock, so replaying a stream (after a
//! crash, or on another instance) yields the same decisions.

use crate::{facts::Facts, rules::Rules};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

/// How many recent events a conversation remembers, to drop redeliveries.
pub const RECENT_EVENTS: usize = 32;

/// A compact, stable fingerprint of an event id (FNV-1a, 64 bits): the state record
/// carries these instead of full ids to stay small.
pub fn fingerprint(event_id: &str) -> u64 {
    event_id.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The router's state for one conversation key: the value on the compacted
/// `omnigate.router.assignments.v1` topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// Stable id of the conversation.
    pub conversation_id: String,
    /// The conversation key it belongs to.
    pub conversation_key: String,
    /// The inbox it is in.
    pub inbox: String,
    /// The contact.
    pub contact_id: String,
    /// Channel kind of the key.
    pub channel_kind: String,
    /// Why this inbox: a rule name, `sticky`, `continuity` or `default`.
    pub rule: String,
    /// When the conversation opened (Unix seconds, event time).
    pub opened_at: i64,
    /// Time of its latest event (Unix seconds, event time).
    pub last_event_at: i64,
    /// Conversations of the same contact on other channels, linked at open.
    #[serde(default)]
    pub linked: Vec<String>,
    /// Fingerprints of the latest events routed into it, newest last (provider
    /// redeliveries carry the same id).
    #[serde(default)]
    pub recent_events: Vec<u64>,
    /// `last_event_at` as last written to the state topic (not itself written): the
    /// router writes again once the conversation has moved on by more than 10 minutes.
    #[serde(skip)]
    pub stored_last_event_at: i64,
}

/// Another open conversation of the same contact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenConversation {
    /// Its id.
    pub conversation_id: String,
    /// Its inbox.
    pub inbox: String,
    /// Its latest event (Unix seconds).
    pub last_event_at: i64,
}

/// What happened to the conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The event id was already routed: drop it.
    Duplicate,
    /// A new conversation was opened (`conversation.assigned`).
    Opened,
    /// A follow-up in an open conversation, same inbox.
    Continued,
    /// The conversation moved (`conversation.reassigned`) from this inbox.
    Reassigned {
        /// The inbox it left.
        previous_inbox: String,
    },
}

/// The decision for one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// What happened.
    pub outcome: Outcome,
    /// The conversation's new state (unchanged for duplicates).
    pub assignment: Assignment,
}

/// Router settings the policy needs.
#[derive(Debug, Clone, Copy)]
pub struct PolicySettings {
    /// A conversation with no event for this long is closed; the next event opens a new one.
    pub reopen_after: Duration,
    /// Put a new conversation in the inbox of the contact's open conversation elsewhere.
    pub continuity: bool,
}

/// Inputs of one decision.
#[derive(Debug)]
pub struct Input<'a> {
    /// The event's id.
    pub event_id: &'a str,
    /// The event's conversation key.
    pub conversation_key: &'a str,
    /// The event's time.
    pub at: DateTime<Utc>,
    /// Its facts.
    pub facts: &'a Facts,
    /// The contact it belongs to.
    pub contact_id: &'a str,
    /// The current state of its key.
    pub existing: Option<&'a Assignment>,
    /// The contact's most recent conversation on another key.
    pub open_elsewhere: Option<&'a OpenConversation>,
}

/// Decides where an event goes.
pub fn decide(input: &Input<'_>, rules: &Rules, settings: PolicySettings) -> Decision {
    let at = input.at.timestamp();
    if let Some(existing) = input.existing {
        if existing
            .recent_events
            .contains(&fingerprint(input.event_id))
        {
            return Decision {
                outcome: Outcome::Duplicate,
                assignment: existing.clone(),
            };
        }
        if at - existing.last_event_at <= settings.reopen_after.num_seconds() {
            let mut next = existing.clone();
            next.last_event_at = next.last_event_at.max(at);
            next.contact_id = input.contact_id.to_string();
            remember(&mut next, input.event_id);
            if rules.has_inbox(&existing.inbox) {
                // The event that opened this conversation, consumed again: the process
                // died after the state record was acknowledged but perhaps before
                // `conversation.assigned` was. Open it again, so that event (same id) is
                // published again too.
                // (The time check spares hashing the id for every follow-up.)
                let opened_it = existing.opened_at == at
                    && existing.conversation_id
                        == conversation_id(input.conversation_key, input.event_id);
                return Decision {
                    outcome: if opened_it {
                        Outcome::Opened
                    } else {
                        Outcome::Continued
                    },
                    assignment: next,
                };
            }
            // Its inbox was removed from the rules: move it.
            let choice = rules.choose(input.facts, input.at);
            next.inbox = choice.inbox;
            next.rule = choice.rule;
            return Decision {
                outcome: Outcome::Reassigned {
                    previous_inbox: existing.inbox.clone(),
                },
                assignment: next,
            };
        }
    }
    let window = settings.reopen_after.num_seconds();
    let continued = input.open_elsewhere.filter(|other| {
        settings.continuity && at - other.last_event_at <= window && rules.has_inbox(&other.inbox)
    });
    let (inbox, rule, linked) = match continued {
        Some(other) => (
            other.inbox.clone(),
            "continuity".to_string(),
            vec![other.conversation_id.clone()],
        ),
        None => {
            let choice = rules.choose(input.facts, input.at);
            (choice.inbox, choice.rule, Vec::new())
        }
    };
    let mut assignment = Assignment {
        conversation_id: conversation_id(input.conversation_key, input.event_id),
        conversation_key: input.conversation_key.to_string(),
        inbox,
        contact_id: input.contact_id.to_string(),
        channel_kind: input.facts.channel_kind.clone(),
        rule,
        opened_at: at,
        last_event_at: at,
        linked,
        recent_events: Vec::new(),
        stored_last_event_at: 0,
    };
    remember(&mut assignment, input.event_id);
    Decision {
        outcome: Outcome::Opened,
        assignment,
    }
}

fn remember(assignment: &mut Assignment, event_id: &str) {
    assignment.recent_events.push(fingerprint(event_id));
    let excess = assignment.recent_events.len().saturating_sub(RECENT_EVENTS);
    assignment.recent_events.drain(..excess);
}

/// A conversation's id: deterministic from its key and opening event, so two router
/// instances (or a replay) name it the same.
pub fn conversation_id(conversation_key: &str, opening_event_id: &str) -> String {
    const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6f6d_6e69_6761_5e00_8000_0000_0000_0002);
    uuid::Uuid::new_v5(
        &NAMESPACE,
        format!("{conversation_key}\u{1f}{opening_event_id}").as_bytes(),
    )
    .to_string()
}
