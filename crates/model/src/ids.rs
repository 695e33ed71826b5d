//! Event types, deterministic event ids and conversation keys.

use crate::pb::ChannelKind;
use uuid::Uuid;

/// Every event type of the contract. `as_str` is the short name used in the JSON
/// envelope and in webhook subscriptions; `ce_type` is the CloudEvents `type` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// An inbound message.
    MessageReceived,
    /// A delivery receipt or send failure for an outbound message.
    MessageStatus,
    /// The provider accepted an outbound message.
    MessageSent,
    /// A pending attachment was stored or failed for good.
    MessageMediaUpdated,
    /// A call is ringing.
    CallRinging,
    /// A call was answered.
    CallAnswered,
    /// A call ended after being answered.
    CallEnded,
    /// A call ended without being answered.
    CallMissed,
    /// The caller left a voicemail.
    CallVoicemail,
    /// The router opened a conversation in an inbox.
    ConversationAssigned,
    /// The router moved a conversation to another inbox.
    ConversationReassigned,
    /// Two contacts were found to be one person.
    ContactLinked,
    /// The webhook dispatcher disabled an endpoint (410, or failing too long).
    WebhookEndpointDisabled,
    /// A test delivery asked for through the API.
    WebhookTest,
}

impl EventType {
    /// All event types, in contract order.
    pub const ALL: [EventType; 14] = [
        Self::MessageReceived,
        Self::MessageStatus,
        Self::MessageSent,
        Self::MessageMediaUpdated,
        Self::CallRinging,
        Self::CallAnswered,
        Self::CallEnded,
        Self::CallMissed,
        Self::CallVoicemail,
        Self::ConversationAssigned,
        Self::ConversationReassigned,
        Self::ContactLinked,
        Self::WebhookEndpointDisabled,
        Self::WebhookTest,
    ];

    /// The short name, e.g. `message.received`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MessageReceived => "message.received",
            Self::MessageStatus => "message.status",
            Self::MessageSent => "message.sent",
            Self::MessageMediaUpdated => "message.media_updated",
            Self::CallRinging => "call.ringing",
            Self::CallAnswered => "call.answered",
            Self::CallEnded => "call.ended",
            Self::CallMissed => "call.missed",
            Self::CallVoicemail => "call.voicemail",
            Self::ConversationAssigned => "conversation.assigned",
            Self::ConversationReassigned => "conversation.reassigned",
            Self::ContactLinked => "contact.linked",
            Self::WebhookEndpointDisabled => "webhook.endpoint_disabled",
            Self::WebhookTest => "webhook.test",
        }
    }

    /// The CloudEvents type: reverse-DNS and versioned, e.g. `io.omnigate.message.received.v1`.
    pub fn ce_type(self) -> &'static str {
        // Built once: every record the gateway produces carries one in its headers.
        static TYPES: std::sync::LazyLock<[String; EventType::ALL.len()]> =
            std::sync::LazyLock::new(|| {
                std::array::from_fn(|i| format!("io.omnigate.{}.v1", EventType::ALL[i].as_str()))
            });
        // `ALL` lists the variants in declaration order.
        &TYPES[self as usize]
    }

    /// Parses a short name such as `message.received`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The UUIDv5 namespace of Omnigate event ids. Never change it: ids would change with it.
const EVENT_NAMESPACE: Uuid = Uuid::from_u128(0x6f6d_6e69_6761_5e00_8000_0000_0000_0001);

/// The deterministic event id: UUIDv5 over (channel kind, channel id, provider event id,
/// event kind). A redelivered webhook or a re-read mail yields the same id.
pub fn event_id(
    kind: ChannelKind,
    channel_id: &str,
    provider_event_id: &str,
    event_kind: &str,
) -> Uuid {
    // Unit separators keep ("a", "bc") and ("ab", "c") apart.
    let name = [kind.short_name(), channel_id, provider_event_id, event_kind].join("\u{1f}");
    Uuid::new_v5(&EVENT_NAMESPACE, name.as_bytes())
}

/// Conversation keys, one per channel, as DESIGN.md fixes them.
pub mod conversation_key {
    /// `whatsapp:{phone_number_id}:{wa_id}`
    pub fn whatsapp(phone_number_id: &str, wa_id: &str) -> String {
        format!("whatsapp:{phone_number_id}:{wa_id}")
    }

    /// `email:{channel}:{thread root Message-ID}`
    pub fn email(channel: &str, thread_root_message_id: &str) -> String {
        format!("email:{channel}:{thread_root_message_id}")
    }

    /// `livechat:{channel}:{visitor id}`
    pub fn livechat(channel: &str, visitor_id: &str) -> String {
        format!("livechat:{channel}:{visitor_id}")
    }

    /// `voice:{channel}:{caller E.164}`
    pub fn voice(channel: &str, caller_e164: &str) -> String {
        format!("voice:{channel}:{caller_e164}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_deterministic_and_distinct() {
        let a = event_id(ChannelKind::Whatsapp, "wa", "wamid.1", "message.received");
        assert_eq!(
            a,
            event_id(ChannelKind::Whatsapp, "wa", "wamid.1", "message.received")
        );
        assert_eq!(a.get_version_num(), 5);
        assert_ne!(
            a,
            event_id(ChannelKind::Whatsapp, "wa", "wamid.1", "message.status")
        );
        assert_ne!(
            event_id(ChannelKind::Email, "ab", "c", "x"),
            event_id(ChannelKind::Email, "a", "bc", "x")
        );
    }

    #[test]
    fn event_types_parse_back() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
            assert_eq!(t.ce_type(), format!("io.omnigate.{}.v1", t.as_str()));
        }
        assert_eq!(EventType::parse("message.bogus"), None);
    }
}
