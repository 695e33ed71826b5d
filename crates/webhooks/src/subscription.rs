//! Which events an endpoint receives: event-type patterns and filters. Pure.

use omnigate_model::{EventType, pb};
use serde::{Deserialize, Serialize};

/// Narrows an endpoint to some channels and inboxes; an empty list matches anything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Filters {
    /// Channel kinds, e.g. `whatsapp`, `email`, `livechat`, `voice`.
    pub channel_kinds: Vec<String>,
    /// Channel ids (the names in the config), e.g. `support-wa`.
    pub channel_ids: Vec<String>,
    /// Inboxes the router chose, e.g. `billing`.
    pub inboxes: Vec<String>,
}

/// What the matcher needs to know of one event, borrowed from it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFacts<'a> {
    /// Short type, e.g. `message.received`.
    pub event_type: &'a str,
    /// Channel kind short name, or empty.
    pub channel_kind: &'a str,
    /// Channel id, or empty.
    pub channel_id: &'a str,
    /// The routed inbox, or empty.
    pub inbox: &'a str,
}

impl<'a> EventFacts<'a> {
    /// The facts of a routed event.
    pub fn of(event: &'a pb::Event) -> Self {
        let (channel_kind, channel_id) = event
            .channel()
            .map(|c| {
                let kind = pb::ChannelKind::try_from(c.kind).unwrap_or_default();
                (kind.short_name(), c.channel_id.as_str())
            })
            .unwrap_or_default();
        Self {
            event_type: &event.r#type,
            channel_kind,
            channel_id,
            inbox: event.routing.as_ref().map_or("", |r| r.inbox.as_str()),
        }
    }
}

/// True if `pattern` (`*`, `message.*` or an exact type) covers `event_type`.
pub fn type_matches(pattern: &str, event_type: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => event_type.starts_with(prefix),
        None => pattern == event_type,
    }
}

/// True if an endpoint with these `events` and `filters` receives the event.
pub fn matches(events: &[String], filters: &Filters, facts: &EventFacts<'_>) -> bool {
    fn allowed(list: &[String], value: &str) -> bool {
        list.is_empty() || list.iter().any(|v| v == value)
    }
    events.iter().any(|p| type_matches(p, facts.event_type))
        && allowed(&filters.channel_kinds, facts.channel_kind)
        && allowed(&filters.channel_ids, facts.channel_id)
        && allowed(&filters.inboxes, facts.inbox)
}

/// Why an event-type pattern is invalid, or None: it must be `*`, a known type, or a
/// known type's prefix ending in `.*`, so a typo does not subscribe to nothing.
pub fn pattern_problem(pattern: &str) -> Option<String> {
    let well_formed = pattern == "*"
        || pattern
            .strip_suffix(".*")
            .unwrap_or(pattern)
            .split('.')
            .all(|segment| {
                !segment.is_empty()
                    && segment
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            });
    if !well_formed {
        return Some("must be `*`, an event type like `message.received`, or `message.*`".into());
    }
    if EventType::ALL
        .iter()
        .any(|t| type_matches(pattern, t.as_str()))
    {
        None
    } else {
        let known: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
        Some(format!(
            "matches no event type; known types: {}",
            known.join(", ")
        ))
    }
}

/// Channel kinds a filter may name.
pub const CHANNEL_KINDS: [&str; 4] = ["whatsapp", "email", "livechat", "voice"];

#[cfg(test)]
mod tests {
    use super::*;

    fn facts<'a>(
        event_type: &'a str,
        kind: &'a str,
        channel: &'a str,
        inbox: &'a str,
    ) -> EventFacts<'a> {
        EventFacts {
            event_type,
            channel_kind: kind,
            channel_id: channel,
            inbox,
        }
    }

    #[test]
    fn patterns_and_filters() {
        let all = Filters::default();
        let received = facts("message.received", "whatsapp", "support-wa", "billing");
        let cases: Vec<(Vec<&str>, Filters, bool)> = vec![
            (vec!["*"], all.clone(), true),
            (vec!["message.*"], all.clone(), true),
            (vec!["message.received"], all.clone(), true),
            (vec!["message.status"], all.clone(), false),
            (vec!["call.*"], all.clone(), false),
            (vec!["call.*", "message.received"], all.clone(), true),
            (vec!["message"], all.clone(), false),
            (
                vec!["*"],
                Filters {
                    channel_kinds: vec!["email".into()],
                    ..Filters::default()
                },
                false,
            ),
            (
                vec!["*"],
                Filters {
                    channel_kinds: vec!["email".into(), "whatsapp".into()],
                    channel_ids: vec!["support-wa".into()],
                    inboxes: vec!["billing".into()],
                },
                true,
            ),
            (
                vec!["*"],
                Filters {
                    inboxes: vec!["sales".into()],
                    ..Filters::default()
                },
                false,
            ),
            (
                vec!["*"],
                Filters {
                    channel_ids: vec!["other".into()],
                    ..Filters::default()
                },
                false,
            ),
        ];
        for (events, filters, expected) in cases {
            let events: Vec<String> = events.into_iter().map(String::from).collect();
            assert_eq!(
                matches(&events, &filters, &received),
                expected,
                "{events:?} {filters:?}"
            );
        }
    }

    #[test]
    fn pattern_validation_names_the_problem() {
        for ok in [
            "*",
            "message.*",
            "message.received",
            "webhook.endpoint_disabled",
            "call.*",
        ] {
            assert_eq!(pattern_problem(ok), None, "{ok}");
        }
        for bad in [
            "",
            "Message.Received",
            "message..x",
            "message.*.x",
            "mesage.*",
            "message.recieved",
        ] {
            assert!(pattern_problem(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn facts_come_from_the_payload_and_routing() {
        let event = pb::Event {
            r#type: "message.received".into(),
            payload: Some(pb::event::Payload::Message(pb::Message {
                channel: Some(pb::Channel {
                    kind: pb::ChannelKind::Whatsapp as i32,
                    channel_id: "support-wa".into(),
                    ..Default::default()
                }),
                ..Default::default()
            })),
            routing: Some(pb::Routing {
                inbox: "billing".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            EventFacts::of(&event),
            facts("message.received", "whatsapp", "support-wa", "billing")
        );
    }
}
