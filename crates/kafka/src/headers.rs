//! CloudEvents 1.0 Kafka binding, binary mode: the value is the data, every attribute
//! is a `ce_*` header, and `content-type` is the data content type.

use omnigate_model::{EventType, pb};
use rdkafka::message::{Header, OwnedHeaders};
use std::borrow::Cow;

pub use omnigate_core::consume::{JSON, PROTOBUF};

/// The attributes of one record, before they become headers. Borrowed from the
/// record where it can be: every produced record builds one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudEvent<'a> {
    /// `ce_id`
    pub id: Cow<'a, str>,
    /// `ce_source`
    pub source: Cow<'a, str>,
    /// `ce_type`
    pub ce_type: Cow<'a, str>,
    /// `ce_time`, RFC 3339
    pub time: String,
    /// `ce_subject`: the conversation key (empty: no header)
    pub subject: Cow<'a, str>,
    /// `ce_tenant` (extension)
    pub tenant: Cow<'a, str>,
    /// `content-type`
    pub content_type: &'static str,
}

impl<'a> CloudEvent<'a> {
    /// The attributes of an event envelope.
    pub fn of_event(event: &'a pb::Event, content_type: &'static str) -> Self {
        let ce_type = match EventType::parse(&event.r#type) {
            Some(known) => Cow::Borrowed(known.ce_type()),
            // An event type newer than this build: keep it visible rather than guess.
            None => Cow::Owned(format!("io.omnigate.{}.v1", event.r#type)),
        };
        Self {
            id: Cow::Borrowed(&event.id),
            source: Cow::Borrowed(&event.source),
            ce_type,
            time: rfc3339(event.time.as_ref()),
            subject: Cow::Borrowed(&event.conversation_key),
            tenant: Cow::Borrowed(&event.tenant),
            content_type,
        }
    }

    /// The headers, in binary mode.
    pub fn to_headers(&self) -> OwnedHeaders {
        let mut pairs = vec![
            ("ce_specversion", "1.0"),
            ("ce_id", &*self.id),
            ("ce_source", &*self.source),
            ("ce_type", &*self.ce_type),
            ("ce_time", self.time.as_str()),
        ];
        if !self.subject.is_empty() {
            pairs.push(("ce_subject", &*self.subject));
        }
        pairs.push(("ce_tenant", &*self.tenant));
        pairs.push(("content-type", self.content_type));
        pairs.into_iter().fold(
            OwnedHeaders::new_with_capacity(8),
            |headers, (key, value)| {
                headers.insert(Header {
                    key,
                    value: Some(value),
                })
            },
        )
    }
}

/// Formats a protobuf timestamp as RFC 3339 UTC; the Unix epoch when absent.
pub fn rfc3339(ts: Option<&omnigate_model::Timestamp>) -> String {
    ts.and_then(omnigate_model::datetime)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// The current time, RFC 3339 UTC.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}
