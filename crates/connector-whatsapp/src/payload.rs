//! The webhook payload as Meta sends it. Every non-core field is optional and unknown
//! fields are ignored, because Meta adds fields without notice.

use serde::{Deserialize, Deserializer};
use serde_json::{Value, value::RawValue};

/// The POST body.
#[derive(Debug, Deserialize)]
pub struct Envelope {
    /// Always `whatsapp_business_account` for this webhook.
    pub object: String,
    /// One entry per WhatsApp Business Account.
    #[serde(default)]
    pub entry: Vec<Entry>,
}

/// One WABA's changes.
#[derive(Debug, Deserialize)]
pub struct Entry {
    /// The WABA id.
    #[serde(default, deserialize_with = "lenient_string")]
    pub id: String,
    /// The changes.
    #[serde(default)]
    pub changes: Vec<Change>,
}

/// One change: `field` says what kind.
#[derive(Debug, Deserialize)]
pub struct Change {
    /// `messages`, or account and template notifications Omnigate does not turn into events.
    #[serde(default)]
    pub field: String,
    /// The change's content.
    pub value: Option<ChangeValue>,
}

/// The content of a `messages` change.
#[derive(Debug, Deserialize)]
pub struct ChangeValue {
    /// The business number that received or sent.
    pub metadata: Option<Metadata>,
    /// Profiles of the senders of `messages`.
    #[serde(default)]
    pub contacts: Vec<WaContact>,
    /// Inbound messages, kept as their JSON text so each can be parsed (and kept) on
    /// its own without building a JSON tree first.
    #[serde(default)]
    pub messages: Vec<Box<RawValue>>,
    /// Receipts for messages we sent, kept raw for the same reason.
    #[serde(default)]
    pub statuses: Vec<Box<RawValue>>,
}

/// The business number.
#[derive(Debug, Deserialize)]
pub struct Metadata {
    /// E.g. `15550783881`.
    #[serde(default, deserialize_with = "lenient_string")]
    pub display_phone_number: String,
    /// The id sends go to.
    #[serde(deserialize_with = "lenient_string")]
    pub phone_number_id: String,
}

/// A sender's profile.
#[derive(Debug, Deserialize)]
pub struct WaContact {
    /// Display name.
    pub profile: Option<Profile>,
    /// WhatsApp id (digits). Optional in newer payloads.
    #[serde(default, deserialize_with = "lenient_opt_string")]
    pub wa_id: Option<String>,
}

/// A profile.
#[derive(Debug, Deserialize)]
pub struct Profile {
    /// Display name.
    #[serde(default)]
    pub name: String,
}

/// One inbound message.
#[derive(Debug, Deserialize)]
pub struct WaMessage {
    /// The wamid.
    pub id: String,
    /// Sender's WhatsApp id.
    #[serde(deserialize_with = "lenient_string")]
    pub from: String,
    /// Unix seconds, as a string.
    #[serde(deserialize_with = "lenient_i64")]
    pub timestamp: i64,
    /// The message type.
    #[serde(rename = "type", default)]
    pub kind: String,
    pub text: Option<Text>,
    pub image: Option<Media>,
    pub video: Option<Media>,
    pub audio: Option<Media>,
    pub document: Option<Media>,
    pub sticker: Option<Media>,
    pub location: Option<WaLocation>,
    pub contacts: Option<Vec<ContactCard>>,
    pub interactive: Option<Interactive>,
    pub button: Option<Button>,
    pub reaction: Option<Reaction>,
    pub order: Option<Order>,
    pub system: Option<System>,
    pub context: Option<Context>,
    pub referral: Option<Referral>,
    #[serde(default)]
    pub errors: Vec<WaError>,
}

#[derive(Debug, Deserialize)]
pub struct Text {
    #[serde(default)]
    pub body: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct Media {
    #[serde(deserialize_with = "lenient_string")]
    pub id: String,
    pub mime_type: String,
    pub sha256: String,
    pub caption: String,
    pub filename: String,
    pub voice: bool,
    pub animated: bool,
    pub url: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct WaLocation {
    #[serde(deserialize_with = "lenient_f64")]
    pub latitude: f64,
    #[serde(deserialize_with = "lenient_f64")]
    pub longitude: f64,
    pub name: String,
    pub address: String,
    pub url: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct ContactCard {
    pub name: CardName,
    pub phones: Vec<CardPhone>,
    pub emails: Vec<CardEmail>,
    pub urls: Vec<CardUrl>,
    pub addresses: Vec<CardAddress>,
    pub org: CardOrg,
    pub birthday: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct CardName {
    pub formatted_name: String,
    pub first_name: String,
    pub last_name: String,
    pub middle_name: String,
    pub prefix: String,
    pub suffix: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct CardPhone {
    pub phone: String,
    pub wa_id: String,
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct CardEmail {
    pub email: String,
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct CardUrl {
    pub url: String,
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct CardAddress {
    pub street: String,
    pub city: String,
    pub state: String,
    pub zip: String,
    pub country: String,
    pub country_code: String,
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct CardOrg {
    pub company: String,
    pub department: String,
    pub title: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct Interactive {
    #[serde(rename = "type")]
    pub kind: String,
    pub button_reply: Option<Choice>,
    pub list_reply: Option<Choice>,
    pub nfm_reply: Option<FlowReply>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct Choice {
    pub id: String,
    pub title: String,
    pub description: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct FlowReply {
    pub response_json: String,
    pub body: String,
    pub name: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct Button {
    pub text: String,
    pub payload: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct Reaction {
    pub message_id: String,
    pub emoji: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct Order {
    #[serde(deserialize_with = "lenient_string")]
    pub catalog_id: String,
    pub text: String,
    pub product_items: Vec<OrderItem>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct OrderItem {
    pub product_retailer_id: String,
    #[serde(deserialize_with = "lenient_f64")]
    pub quantity: f64,
    #[serde(deserialize_with = "lenient_f64")]
    pub item_price: f64,
    pub currency: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct System {
    pub body: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub wa_id: String,
    pub new_wa_id: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct Context {
    #[serde(deserialize_with = "lenient_string")]
    pub from: String,
    pub id: String,
    pub forwarded: bool,
    pub frequently_forwarded: bool,
    pub referred_product: Option<ReferredProduct>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct ReferredProduct {
    #[serde(deserialize_with = "lenient_string")]
    pub catalog_id: String,
    pub product_retailer_id: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct Referral {
    pub source_url: String,
    #[serde(deserialize_with = "lenient_string")]
    pub source_id: String,
    pub source_type: String,
    pub headline: String,
    pub body: String,
    pub media_type: String,
    pub image_url: String,
    pub video_url: String,
    pub thumbnail_url: String,
    pub ctwa_clid: String,
}

/// An error as Meta reports it on messages and statuses.
#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct WaError {
    #[serde(deserialize_with = "lenient_string")]
    pub code: String,
    pub title: String,
    pub message: String,
    pub error_data: Option<ErrorData>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct ErrorData {
    pub details: String,
}

/// A receipt for a message we sent.
#[derive(Debug, Deserialize)]
pub struct WaStatus {
    pub id: String,
    pub status: String,
    #[serde(default, deserialize_with = "lenient_i64")]
    pub timestamp: i64,
    #[serde(default, deserialize_with = "lenient_string")]
    pub recipient_id: String,
    pub conversation: Option<StatusConversation>,
    pub pricing: Option<StatusPricing>,
    #[serde(default)]
    pub errors: Vec<WaError>,
    #[serde(default)]
    pub biz_opaque_callback_data: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct StatusConversation {
    pub id: String,
    pub origin: Option<Origin>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct Origin {
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct StatusPricing {
    pub billable: bool,
    pub pricing_model: String,
    pub category: String,
    #[serde(rename = "type")]
    pub kind: String,
}

/// Accepts a string or a number (ids and codes arrive both ways).
fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) => s,
        Value::Null => String::new(),
        other => other.to_string(),
    })
}

fn lenient_opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Some(lenient_string(d)?).filter(|s| !s.is_empty()))
}

fn lenient_i64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let value = Value::deserialize(d)?;
    match &value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .ok_or_else(|| serde::de::Error::custom(format!("expected a Unix time, got {value}")))
}

fn lenient_f64<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let value = Value::deserialize(d)?;
    match &value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .ok_or_else(|| serde::de::Error::custom(format!("expected a number, got {value}")))
}
