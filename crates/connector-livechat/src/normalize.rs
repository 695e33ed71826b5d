//! Live chat events, built from what the visitor sent. Pure: the time is passed in.

use crate::protocol::{self, Identity, Page};
use chrono::{DateTime, Utc};
use omnigate_model::{EventBuilder, EventType, pb, timestamp};

/// Who is chatting, as far as the server knows.
#[derive(Debug, Clone)]
pub struct Visitor<'a> {
    /// The channel id.
    pub channel_id: &'a str,
    /// The channel's tenant.
    pub tenant: &'a str,
    /// The visitor id (the conversation's).
    pub visitor: &'a str,
    /// The identity the page gave, and whether its hash verified it.
    pub identity: Option<&'a Identity>,
    /// Whether `identity` was verified.
    pub verified: bool,
    /// Where they are.
    pub page: Option<&'a Page>,
    /// Their browser's `User-Agent`.
    pub user_agent: &'a str,
}

/// The `message.received` event of a visitor message. Its id derives from the visitor
/// and the client's id, so a message sent again after a reconnect has the same id.
pub fn message_event(
    visitor: &Visitor<'_>,
    client_id: &str,
    text: &str,
    attachments: Vec<pb::Attachment>,
    received_at: DateTime<Utc>,
) -> pb::Event {
    let identity = visitor.identity.cloned().unwrap_or_default();
    let verified = |value: &Option<String>| {
        if visitor.verified {
            value.clone().unwrap_or_default()
        } else {
            String::new()
        }
    };
    let claimed = |value: &Option<String>| {
        if visitor.verified {
            String::new()
        } else {
            value.clone().unwrap_or_default()
        }
    };
    let page = visitor.page.cloned().unwrap_or_default();
    let payload = pb::event::Payload::Message(pb::Message {
        channel: Some(pb::Channel {
            kind: pb::ChannelKind::Livechat as i32,
            channel_id: visitor.channel_id.to_string(),
            address: visitor.channel_id.to_string(),
        }),
        contact: Some(pb::Contact {
            // Only a verified identity names the contact: a claimed email would let
            // anyone join someone else's conversations through contact linking.
            display_name: identity.name.clone().unwrap_or_default(),
            email: verified(&identity.email),
            provider_id: visitor.visitor.to_string(),
            verified: visitor.verified,
            ..Default::default()
        }),
        direction: pb::Direction::Inbound as i32,
        provider_message_id: client_id.to_string(),
        received_at: Some(timestamp(received_at)),
        sent_at: Some(timestamp(received_at)),
        parts: (!text.is_empty())
            .then(|| pb::content_part::Part::Text(text.to_string()))
            .into_iter()
            .chain(
                attachments
                    .into_iter()
                    .map(pb::content_part::Part::Attachment),
            )
            .map(|part| pb::ContentPart { part: Some(part) })
            .collect(),
        metadata: Some(pb::message::Metadata::Livechat(pb::LivechatMetadata {
            page_url: page.url.unwrap_or_default(),
            user_agent: visitor.user_agent.to_string(),
            client_message_id: client_id.to_string(),
            referrer: page.referrer.unwrap_or_default(),
            language: page.language.unwrap_or_default(),
            external_id: verified(&identity.id),
            claimed_email: claimed(&identity.email),
            claimed_name: claimed(&identity.name),
        })),
        ..Default::default()
    });
    EventBuilder::channel(
        pb::ChannelKind::Livechat,
        visitor.channel_id,
        visitor.tenant,
    )
    .event(
        EventType::MessageReceived,
        &format!("{}:{client_id}", visitor.visitor),
        protocol::conversation_key(visitor.channel_id, visitor.visitor),
        received_at,
        payload,
    )
}

/// A `message.status` (delivered or read) of an agent reply.
pub fn reply_status(
    channel_id: &str,
    tenant: &str,
    visitor: &str,
    reply_event_id: &str,
    status: pb::DeliveryStatus,
    at: DateTime<Utc>,
) -> pb::Event {
    let name = if status == pb::DeliveryStatus::Read {
        "read"
    } else {
        "delivered"
    };
    EventBuilder::channel(pb::ChannelKind::Livechat, channel_id, tenant).event(
        EventType::MessageStatus,
        &format!("{reply_event_id}:{name}"),
        protocol::conversation_key(channel_id, visitor),
        at,
        pb::event::Payload::Status(pb::MessageStatus {
            channel: Some(pb::Channel {
                kind: pb::ChannelKind::Livechat as i32,
                channel_id: channel_id.to_string(),
                address: channel_id.to_string(),
            }),
            provider_message_id: reply_event_id.to_string(),
            status: status as i32,
            recipient: visitor.to_string(),
            at: Some(timestamp(at)),
            ..Default::default()
        }),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn visitor<'a>(identity: &'a Identity, verified: bool) -> Visitor<'a> {
        Visitor {
            channel_id: "shop",
            tenant: "acme",
            visitor: "v1",
            identity: Some(identity),
            verified,
            page: None,
            user_agent: "UA",
        }
    }

    #[test]
    fn a_claimed_email_is_kept_apart_and_a_resent_message_keeps_its_id() {
        let identity = Identity {
            email: Some("jo@example.com".into()),
            ..Default::default()
        };
        let at = DateTime::from_timestamp(1_796_000_000, 0).unwrap();
        let claimed = message_event(&visitor(&identity, false), "c1", "hi", vec![], at);
        let pb::event::Payload::Message(message) = claimed.payload.clone().unwrap() else {
            panic!()
        };
        assert_eq!(message.contact.unwrap().email, "", "never linked");
        let Some(pb::message::Metadata::Livechat(meta)) = message.metadata else {
            panic!()
        };
        assert_eq!(meta.claimed_email, "jo@example.com");
        let later = DateTime::from_timestamp(1_796_000_100, 0).unwrap();
        assert_eq!(
            message_event(&visitor(&identity, false), "c1", "hi", vec![], later).id,
            claimed.id
        );
        let verified = message_event(&visitor(&identity, true), "c1", "hi", vec![], at);
        let pb::event::Payload::Message(message) = verified.payload.unwrap() else {
            panic!()
        };
        assert_eq!(message.contact.unwrap().email, "jo@example.com");
        assert_eq!(claimed.conversation_key, "livechat:shop:v1");
    }
}
