//! The one way every producer builds an event envelope: connectors, the router and
//! the webhook dispatcher alike, so ids, sources and times are made the same way.

use crate::{EventType, event_id, pb, timestamp};
use chrono::{DateTime, Utc};

/// Who makes events, and from which channel their ids derive.
#[derive(Debug, Clone)]
pub struct EventBuilder {
    /// The channel kind the ids derive from.
    kind: pb::ChannelKind,
    /// The channel id the ids derive from.
    channel_id: String,
    /// `source`: `/omnigate/{kind}/{channel}` for a connector, `/omnigate/{component}`
    /// for a component.
    source: String,
    tenant: String,
}

impl EventBuilder {
    /// Events a connector makes for one of its channels.
    pub fn channel(kind: pb::ChannelKind, channel_id: &str, tenant: &str) -> Self {
        Self {
            kind,
            channel_id: channel_id.to_string(),
            source: format!("/omnigate/{}/{channel_id}", kind.short_name()),
            tenant: tenant.to_string(),
        }
    }

    /// Events a component (`router`, `webhooks`) makes about a channel's conversation:
    /// the ids still derive from that channel, the source names the component.
    pub fn component(
        component: &str,
        kind: pb::ChannelKind,
        channel_id: &str,
        tenant: &str,
    ) -> Self {
        Self {
            kind,
            channel_id: channel_id.to_string(),
            source: format!("/omnigate/{component}"),
            tenant: tenant.to_string(),
        }
    }

    /// The event of type `kind` for `provider_event_id` (a provider message id, a
    /// call id and state, ...): its id is the UUIDv5 of the channel, that id and the
    /// type, so the same input always gives the same event id.
    pub fn event(
        &self,
        kind: EventType,
        provider_event_id: &str,
        conversation_key: String,
        at: DateTime<Utc>,
        payload: pb::event::Payload,
    ) -> pb::Event {
        pb::Event {
            id: event_id(
                self.kind,
                &self.channel_id,
                provider_event_id,
                kind.as_str(),
            )
            .to_string(),
            r#type: kind.as_str().to_string(),
            source: self.source.clone(),
            time: Some(timestamp(at)),
            tenant: self.tenant.clone(),
            conversation_key,
            payload: Some(payload),
            routing: None,
        }
    }
}

/// What makes a send command the same command again: its tenant and idempotency key
/// (its command id without one). A connector sends each key once.
pub fn send_once_key(command: &pb::SendCommand) -> String {
    let key = if command.idempotency_key.is_empty() {
        &command.command_id
    } else {
        &command.idempotency_key
    };
    format!("{}:{key}", command.tenant)
}

/// The `message.sent` payload of a send command a provider accepted as
/// `provider_message_id`: the same shape for every channel.
pub fn sent_payload(
    command: &pb::SendCommand,
    channel: pb::Channel,
    provider_message_id: String,
    at: DateTime<Utc>,
) -> pb::event::Payload {
    pb::event::Payload::Sent(pb::MessageSent {
        channel: Some(channel),
        command_id: command.command_id.clone(),
        provider_message_id,
        recipient: command.to.clone(),
        at: Some(timestamp(at)),
    })
}

/// The failed `message.status` payload of a send command, with the provider's (or
/// Omnigate's) code and reason: the same shape for every channel.
pub fn send_failed_payload(
    command: &pb::SendCommand,
    channel: pb::Channel,
    code: String,
    title: String,
    at: DateTime<Utc>,
) -> pb::event::Payload {
    pb::event::Payload::Status(pb::MessageStatus {
        channel: Some(channel),
        status: pb::DeliveryStatus::Failed as i32,
        recipient: command.to.clone(),
        at: Some(timestamp(at)),
        errors: vec![pb::ProviderError {
            code,
            title,
            details: String::new(),
        }],
        command_id: command.command_id.clone(),
        callback_data: command.callback_data.clone(),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ids_sources_and_times_are_made_one_way() {
        let at = DateTime::from_timestamp(1_749_416_383, 0).unwrap();
        let payload = || pb::event::Payload::Message(pb::Message::default());
        let channel = EventBuilder::channel(pb::ChannelKind::Whatsapp, "demo", "acme");
        let event = channel.event(
            EventType::MessageReceived,
            "wamid.1",
            "k".into(),
            at,
            payload(),
        );
        assert_eq!(event.source, "/omnigate/whatsapp/demo");
        assert_eq!(event.r#type, "message.received");
        assert_eq!(event.tenant, "acme");
        assert_eq!(
            event.id,
            event_id(
                pb::ChannelKind::Whatsapp,
                "demo",
                "wamid.1",
                "message.received"
            )
            .to_string()
        );
        assert_eq!(event.time.unwrap().seconds, 1_749_416_383);
        let again = channel.event(
            EventType::MessageReceived,
            "wamid.1",
            "k".into(),
            at,
            payload(),
        );
        assert_eq!(again.id, event.id, "deterministic");
        let router = EventBuilder::component("router", pb::ChannelKind::Whatsapp, "demo", "acme");
        let routed = router.event(
            EventType::MessageReceived,
            "wamid.1",
            "k".into(),
            at,
            payload(),
        );
        assert_eq!(routed.source, "/omnigate/router");
        assert_eq!(
            routed.id, event.id,
            "the id derives from the channel, not the maker"
        );
    }
}
