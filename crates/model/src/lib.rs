//! The Omnigate event contract.
//!
//! [`pb`] holds the types generated from `proto/omnigate/v1`; their serde impls follow
//! the proto3 canonical JSON mapping, which is what goes on Kafka. The rest of this crate
//! is pure helpers every connector shares: event types, deterministic event ids,
//! conversation keys and phone-number canonicalisation.

pub mod builder;
pub mod ids;
pub mod phone;

pub use builder::EventBuilder;
pub use ids::{EventType, conversation_key, event_id};

/// Types generated from the proto files (no hand-kept copy).
#[allow(
    missing_docs,
    clippy::all,
    unused_qualifications,
    rust_2018_idioms,
    clippy::unwrap_used
)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/omnigate.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/omnigate.v1.serde.rs"));
}

pub use pbjson_types::{ListValue, Struct, Timestamp, Value};

/// Converts a wall-clock time into a protobuf timestamp.
pub fn timestamp(at: chrono::DateTime<chrono::Utc>) -> Timestamp {
    Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    }
}

/// Converts a protobuf timestamp back into wall-clock time; `None` when out of range.
pub fn datetime(ts: &Timestamp) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp(ts.seconds, u32::try_from(ts.nanos).ok()?)
}

/// Converts a provider's raw JSON into the protobuf `Value` used for raw provider parts.
pub fn json_to_value(json: &serde_json::value::RawValue) -> Value {
    // Read straight from the text: no intermediate `serde_json::Value` tree to build
    // and drop. `Value` takes any JSON, and `json` is valid JSON by construction.
    serde_json::from_str(json.get()).unwrap_or_default()
}

/// Encodes an event as the canonical JSON that goes on Kafka.
pub fn to_json(event: &pb::Event) -> Vec<u8> {
    // Serialising generated types into a Vec cannot fail: no maps with non-string keys.
    serde_json::to_vec(event).unwrap_or_default()
}

/// The JSON of an event with `routing`, made from the JSON of the same event without
/// routing by appending the `routing` field before the closing brace, instead of
/// encoding the whole event again. It decodes to the same event as [`to_json`] of the
/// routed event and holds the same fields; only their order differs (`to_json` puts
/// `routing` before the payload), which JSON readers ignore. `None` when `json` is not
/// an object.
pub fn with_routing_json(json: &[u8], routing: &pb::Routing) -> Option<Vec<u8>> {
    const FIELD: &[u8] = b",\"routing\":";
    let body = json.trim_ascii_end().strip_suffix(b"}")?;
    let routing = serde_json::to_vec(routing).ok()?;
    let mut routed = Vec::with_capacity(body.len() + FIELD.len() + routing.len() + 1);
    routed.extend_from_slice(body);
    // No comma after the opening brace of an empty object.
    let field = if body.trim_ascii_end().last() == Some(&b'{') {
        &FIELD[1..]
    } else {
        FIELD
    };
    routed.extend_from_slice(field);
    routed.extend_from_slice(&routing);
    routed.push(b'}');
    Some(routed)
}

/// Decodes an event from canonical JSON; unknown fields from newer producers are ignored.
pub fn from_json(bytes: &[u8]) -> Result<pb::Event, serde_json::Error> {
    serde_json::from_slice(bytes)
}

impl pb::ChannelKind {
    /// The short lowercase name used in conversation keys, sources and config.
    pub fn short_name(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::Email => "email",
            Self::Whatsapp => "whatsapp",
            Self::Livechat => "livechat",
            Self::Voice => "voice",
        }
    }
}

impl pb::Event {
    /// The channel the event happened on, if its payload names one.
    pub fn channel(&self) -> Option<&pb::Channel> {
        use pb::event::Payload;
        match &self.payload {
            Some(Payload::Message(m)) => m.channel.as_ref(),
            Some(Payload::Status(s)) => s.channel.as_ref(),
            Some(Payload::Sent(s)) => s.channel.as_ref(),
            Some(Payload::Call(c)) => c.channel.as_ref(),
            Some(Payload::MediaUpdated(u)) => u.channel.as_ref(),
            _ => None,
        }
    }
}
