//! Pure normalization of a verified webhook body into events. No I/O, no clock: the
//! receive time comes in through [`NormalizeCtx`], so fixtures and fuzzers drive it.

use crate::payload::{ChangeValue, Envelope, Media, WaContact, WaError, WaMessage, WaStatus};
use base64::Engine as _;
use chrono::{DateTime, Duration, Utc};
use omnigate_model::{
    EventBuilder, EventType, conversation_key, json_to_value,
    pb::{self, content_part::Part},
    phone::to_e164,
    timestamp,
};
use serde_json::value::RawValue;

/// How long a customer's message keeps the free-form service window open.
pub const SERVICE_WINDOW: Duration = Duration::hours(24);

/// What the normalizer needs besides the body.
#[derive(Debug, Clone)]
pub struct NormalizeCtx<'a> {
    /// The channel's name in config.
    pub channel_id: &'a str,
    /// The channel's tenant.
    pub tenant: &'a str,
    /// When Omnigate received the POST.
    pub received_at: DateTime<Utc>,
}

/// The events of one POST, plus the parts that could not be turned into events.
#[derive(Debug, Default)]
pub struct Normalized {
    /// One event per message and status, in payload order.
    pub events: Vec<pb::Event>,
    /// Why some messages or statuses were left out; the body goes to the dead-letter topic.
    pub rejected: Vec<String>,
    /// Changes with a `field` other than `messages` (account and template notices).
    pub ignored_changes: usize,
}

/// The body is not a WhatsApp webhook at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a WhatsApp Business Account webhook: {0}")]
pub struct NormalizeError(pub String);

/// Turns a verified POST body into events.
pub fn normalize(body: &[u8], cx: &NormalizeCtx<'_>) -> Result<Normalized, NormalizeError> {
    let envelope: Envelope =
        serde_json::from_slice(body).map_err(|e| NormalizeError(e.to_string()))?;
    if envelope.object != "whatsapp_business_account" {
        return Err(NormalizeError(format!(
            "unexpected object `{}`",
            envelope.object
        )));
    }
    let mut out = Normalized::default();
    for entry in &envelope.entry {
        for change in &entry.changes {
            match (&change.value, change.field.as_str()) {
                (Some(value), "messages") => normalize_change(value, &entry.id, cx, &mut out),
                _ => out.ignored_changes += 1,
            }
        }
    }
    Ok(out)
}

fn normalize_change(
    value: &ChangeValue,
    waba_id: &str,
    cx: &NormalizeCtx<'_>,
    out: &mut Normalized,
) {
    let Some(metadata) = &value.metadata else {
        if !value.messages.is_empty() || !value.statuses.is_empty() {
            out.rejected
                .push("a messages change without metadata.phone_number_id".into());
        }
        return;
    };
    let channel = pb::Channel {
        kind: pb::ChannelKind::Whatsapp as i32,
        channel_id: cx.channel_id.to_string(),
        address: metadata.phone_number_id.clone(),
    };
    let business = Business {
        channel,
        waba_id,
        display_phone_number: &metadata.display_phone_number,
    };
    for raw in &value.messages {
        match serde_json::from_str::<WaMessage>(raw.get()) {
            Ok(message) => {
                out.events
                    .push(message_event(&message, raw, &value.contacts, &business, cx))
            }
            Err(err) => out.rejected.push(format!("message: {}", reason(&err))),
        }
    }
    for raw in &value.statuses {
        match serde_json::from_str::<WaStatus>(raw.get()) {
            Ok(status) => out.events.push(status_event(&status, &business, cx)),
            Err(err) => out.rejected.push(format!("status: {}", reason(&err))),
        }
    }
}

/// Why one message or status was refused, without the position inside that item's
/// own text, which would point nowhere useful in the webhook body.
fn reason(err: &serde_json::Error) -> String {
    let text = err.to_string();
    let position = format!(" at line {} column {}", err.line(), err.column());
    text.strip_suffix(&position).unwrap_or(&text).to_owned()
}

struct Business<'a> {
    channel: pb::Channel,
    waba_id: &'a str,
    display_phone_number: &'a str,
}

/// Wraps a payload of this connector in the event envelope with its deterministic id.
pub(crate) fn envelope(
    kind: EventType,
    provider_event_id: &str,
    key: String,
    cx: &NormalizeCtx<'_>,
    payload: pb::event::Payload,
) -> pb::Event {
    EventBuilder::channel(pb::ChannelKind::Whatsapp, cx.channel_id, cx.tenant).event(
        kind,
        provider_event_id,
        key,
        cx.received_at,
        payload,
    )
}

/// A provider timestamp (Unix seconds), or None when it is not one a consumer can
/// read back: RFC 3339 ends at 9999-12-31, and the service window adds a day to it.
/// (A timestamp in milliseconds, as some test tools send, would otherwise produce
/// event JSON no proto3 parser accepts; the fuzzer found it.)
fn unix(seconds: i64) -> Option<DateTime<Utc>> {
    const LAST: i64 = 253_402_300_799 - 86_400;
    (0..=LAST)
        .contains(&seconds)
        .then(|| DateTime::from_timestamp(seconds, 0))
        .flatten()
}

fn message_event(
    message: &WaMessage,
    raw: &RawValue,
    contacts: &[WaContact],
    business: &Business<'_>,
    cx: &NormalizeCtx<'_>,
) -> pb::Event {
    let profile_name = contacts
        .iter()
        .find(|c| c.wa_id.as_deref() == Some(message.from.as_str()))
        .or(contacts.first())
        .and_then(|c| c.profile.as_ref())
        .map(|p| p.name.clone())
        .unwrap_or_default();
    let sent_at = unix(message.timestamp);
    let context = message.context.as_ref();
    let metadata = pb::WhatsappMetadata {
        window_expires_at: sent_at.map(|t| timestamp(t + SERVICE_WINDOW)),
        forwarded: context.is_some_and(|c| c.forwarded),
        frequently_forwarded: context.is_some_and(|c| c.frequently_forwarded),
        context_from: context.map(|c| c.from.clone()).unwrap_or_default(),
        referral: message.referral.as_ref().map(|r| pb::Referral {
            source_url: r.source_url.clone(),
            source_id: r.source_id.clone(),
            source_type: r.source_type.clone(),
            headline: r.headline.clone(),
            body: r.body.clone(),
            media_type: r.media_type.clone(),
            image_url: r.image_url.clone(),
            video_url: r.video_url.clone(),
            thumbnail_url: r.thumbnail_url.clone(),
            ctwa_clid: r.ctwa_clid.clone(),
        }),
        referred_product: context.and_then(|c| c.referred_product.as_ref()).map(|p| {
            pb::ReferredProduct {
                catalog_id: p.catalog_id.clone(),
                product_retailer_id: p.product_retailer_id.clone(),
            }
        }),
        display_phone_number: business.display_phone_number.to_string(),
        waba_id: business.waba_id.to_string(),
        provider_type: message.kind.clone(),
    };
    let body = pb::Message {
        channel: Some(business.channel.clone()),
        contact: Some(pb::Contact {
            display_name: profile_name,
            phone_e164: to_e164(&message.from).unwrap_or_default(),
            provider_id: message.from.clone(),
            ..Default::default()
        }),
        direction: pb::Direction::Inbound as i32,
        provider_message_id: message.id.clone(),
        reply_to_provider_id: context.map(|c| c.id.clone()).unwrap_or_default(),
        sent_at: sent_at.map(timestamp),
        received_at: Some(timestamp(cx.received_at)),
        parts: parts(message, raw)
            .into_iter()
            .map(|part| pb::ContentPart { part: Some(part) })
            .collect(),
        metadata: Some(pb::message::Metadata::Whatsapp(metadata)),
        raw: Some(pb::RawPayload {
            location: Some(pb::raw_payload::Location::Json(json_to_value(raw))),
        }),
    };
    envelope(
        EventType::MessageReceived,
        &message.id,
        conversation_key::whatsapp(&business.channel.address, &message.from),
        cx,
        pb::event::Payload::Message(body),
    )
}

fn provider_errors(errors: &[WaError]) -> Vec<pb::ProviderError> {
    errors
        .iter()
        .map(|e| pb::ProviderError {
            code: e.code.clone(),
            title: e.title.clone(),
            details: e
                .error_data
                .as_ref()
                .map(|d| d.details.clone())
                .filter(|d| !d.is_empty())
                .unwrap_or_else(|| e.message.clone()),
        })
        .collect()
}

/// The content parts of one message. Unknown types keep their raw JSON.
fn parts(message: &WaMessage, raw: &RawValue) -> Vec<Part> {
    let unsupported = || {
        vec![Part::Unsupported(pb::Unsupported {
            provider_type: message.kind.clone(),
            errors: provider_errors(&message.errors),
            raw: Some(json_to_value(raw)),
        })]
    };
    let media = |kind: &str, media: &Option<Media>| match media {
        Some(media) => vec![Part::Attachment(attachment(kind, media))],
        None => unsupported(),
    };
    match message.kind.as_str() {
        "text" => match &message.text {
            Some(text) => vec![Part::Text(text.body.clone())],
            None => unsupported(),
        },
        "image" => media("image", &message.image),
        "video" => media("video", &message.video),
        "audio" => media("audio", &message.audio),
        "document" => media("document", &message.document),
        "sticker" => media("sticker", &message.sticker),
        "location" => match &message.location {
            Some(l) => vec![Part::Location(pb::Location {
                latitude: l.latitude,
                longitude: l.longitude,
                name: l.name.clone(),
                address: l.address.clone(),
                url: l.url.clone(),
            })],
            None => unsupported(),
        },
        "contacts" => match &message.contacts {
            Some(cards) => cards
                .iter()
                .map(|c| Part::ContactCard(contact_card(c)))
                .collect(),
            None => unsupported(),
        },
        "interactive" => match &message.interactive {
            Some(i) => {
                let reply = match (
                    i.kind.as_str(),
                    &i.button_reply,
                    &i.list_reply,
                    &i.nfm_reply,
                ) {
                    ("button_reply", Some(c), _, _) => Some(choice("button_reply", c)),
                    ("list_reply", _, Some(c), _) => Some(choice("list_reply", c)),
                    ("nfm_reply", _, _, Some(f)) => Some(pb::InteractiveReply {
                        kind: "flow_reply".into(),
                        id: f.name.clone(),
                        title: f.body.clone(),
                        payload: f.response_json.clone(),
                        ..Default::default()
                    }),
                    _ => None,
                };
                reply
                    .map(|r| vec![Part::InteractiveReply(r)])
                    .unwrap_or_else(unsupported)
            }
            None => unsupported(),
        },
        "button" => match &message.button {
            Some(b) => vec![Part::InteractiveReply(pb::InteractiveReply {
                kind: "template_button".into(),
                title: b.text.clone(),
                payload: b.payload.clone(),
                ..Default::default()
            })],
            None => unsupported(),
        },
        "reaction" => match &message.reaction {
            Some(r) => vec![Part::Reaction(pb::Reaction {
                target_provider_message_id: r.message_id.clone(),
                emoji: r.emoji.clone(),
            })],
            None => unsupported(),
        },
        "order" => match &message.order {
            Some(o) => vec![Part::Order(pb::Order {
                catalog_id: o.catalog_id.clone(),
                text: o.text.clone(),
                items: o
                    .product_items
                    .iter()
                    .map(|i| pb::OrderItem {
                        product_retailer_id: i.product_retailer_id.clone(),
                        quantity: i.quantity,
                        item_price: i.item_price,
                        currency: i.currency.clone(),
                    })
                    .collect(),
            })],
            None => unsupported(),
        },
        "system" => match &message.system {
            Some(s) => vec![Part::System(pb::SystemNotice {
                kind: s.kind.clone(),
                body: s.body.clone(),
                new_provider_id: if s.new_wa_id.is_empty() {
                    s.wa_id.clone()
                } else {
                    s.new_wa_id.clone()
                },
            })],
            None => unsupported(),
        },
        "request_welcome" => vec![Part::System(pb::SystemNotice {
            kind: "request_welcome".into(),
            ..Default::default()
        })],
        _ => unsupported(),
    }
}

fn choice(kind: &str, c: &crate::payload::Choice) -> pb::InteractiveReply {
    pb::InteractiveReply {
        kind: kind.into(),
        id: c.id.clone(),
        title: c.title.clone(),
        description: c.description.clone(),
        payload: String::new(),
    }
}

fn attachment(kind: &str, media: &Media) -> pb::Attachment {
    pb::Attachment {
        kind: kind.into(),
        mime_type: media.mime_type.clone(),
        sha256: sha256_hex(&media.sha256),
        filename: media.filename.clone(),
        caption: media.caption.clone(),
        state: pb::MediaState::Pending as i32,
        provider_media_id: media.id.clone(),
        voice: media.voice,
        animated: media.animated,
        ..Default::default()
    }
}

/// Meta sends media hashes as hex in some payloads and base64 in others.
pub fn sha256_hex(value: &str) -> String {
    let value = value.trim();
    if value.len() == 64 && value.chars().all(|c| c.is_ascii_hexdigit()) {
        return value.to_ascii_lowercase();
    }
    match base64::engine::general_purpose::STANDARD.decode(value) {
        Ok(bytes) if bytes.len() == 32 => hex::encode(bytes),
        _ => String::new(),
    }
}

fn contact_card(c: &crate::payload::ContactCard) -> pb::ContactCard {
    let typed = |value: &str, kind: &str, wa_id: &str| pb::TypedValue {
        value: value.into(),
        r#type: kind.into(),
        wa_id: wa_id.into(),
    };
    pb::ContactCard {
        formatted_name: c.name.formatted_name.clone(),
        first_name: c.name.first_name.clone(),
        last_name: c.name.last_name.clone(),
        middle_name: c.name.middle_name.clone(),
        prefix: c.name.prefix.clone(),
        suffix: c.name.suffix.clone(),
        phones: c
            .phones
            .iter()
            .map(|p| typed(&p.phone, &p.kind, &p.wa_id))
            .collect(),
        emails: c
            .emails
            .iter()
            .map(|e| typed(&e.email, &e.kind, ""))
            .collect(),
        urls: c.urls.iter().map(|u| typed(&u.url, &u.kind, "")).collect(),
        addresses: c
            .addresses
            .iter()
            .map(|a| pb::PostalAddress {
                street: a.street.clone(),
                city: a.city.clone(),
                state: a.state.clone(),
                zip: a.zip.clone(),
                country: a.country.clone(),
                country_code: a.country_code.clone(),
                r#type: a.kind.clone(),
            })
            .collect(),
        company: c.org.company.clone(),
        department: c.org.department.clone(),
        title: c.org.title.clone(),
        birthday: c.birthday.clone(),
    }
}

/// The contract's status for Meta's status name.
pub fn delivery_status(name: &str) -> pb::DeliveryStatus {
    match name {
        "sent" => pb::DeliveryStatus::Sent,
        "delivered" => pb::DeliveryStatus::Delivered,
        "read" => pb::DeliveryStatus::Read,
        "failed" => pb::DeliveryStatus::Failed,
        "deleted" => pb::DeliveryStatus::Deleted,
        "warning" => pb::DeliveryStatus::Warning,
        _ => pb::DeliveryStatus::Unspecified,
    }
}

fn status_event(status: &WaStatus, business: &Business<'_>, cx: &NormalizeCtx<'_>) -> pb::Event {
    let conversation = status.conversation.as_ref();
    let body = pb::MessageStatus {
        channel: Some(business.channel.clone()),
        provider_message_id: status.id.clone(),
        status: delivery_status(&status.status) as i32,
        recipient: status.recipient_id.clone(),
        at: unix(status.timestamp).map(timestamp),
        errors: provider_errors(&status.errors),
        pricing: status.pricing.as_ref().map(|p| pb::Pricing {
            billable: p.billable,
            model: p.pricing_model.clone(),
            category: p.category.clone(),
            r#type: p.kind.clone(),
        }),
        command_id: String::new(),
        callback_data: status.biz_opaque_callback_data.clone(),
        provider_conversation_id: conversation.map(|c| c.id.clone()).unwrap_or_default(),
        provider_conversation_origin: conversation
            .and_then(|c| c.origin.as_ref())
            .map(|o| o.kind.clone())
            .unwrap_or_default(),
    };
    envelope(
        EventType::MessageStatus,
        // A wamid moves sent -> delivered -> read: each step is its own event.
        &format!("{}:{}", status.id, status.status),
        conversation_key::whatsapp(&business.channel.address, &status.recipient_id),
        cx,
        pb::event::Payload::Status(body),
    )
}
