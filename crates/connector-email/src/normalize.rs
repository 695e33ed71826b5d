//! From a raw RFC 5322 message to a `message.received` event. Pure: no I/O, no clock
//! (the time of receipt is passed in), so it is tested on golden fixtures and fuzzed.
//!
//! What it decides:
//! - the event id, from the Message-ID (from the raw bytes' SHA-256 when there is
//!   none): re-reading a mailbox, even after a UIDVALIDITY change, gives the same id;
//! - the conversation key `email:{channel}:{root}`, the root being the first of
//!   `References`, else `In-Reply-To`, else the mail's own Message-ID (the caller can
//!   move the key to a root it knows better, see [`Normalized::rekey`]);
//! - content parts: the plain text (derived from the HTML when there is no text
//!   part), the HTML sanitized, every attachment and inline image as a blob
//!   reference whose bytes the caller stores;
//! - flags the helpdesk decides on: auto-reply, mailing list, bounce (with the
//!   report's recipient, status and the Message-ID that bounced).

use crate::quoted;
use chrono::{DateTime, Utc};
use mail_parser::{Address, HeaderValue, Message, MessageParser, MimeHeaders, PartType};
use omnigate_core::blob::content_key;
use omnigate_model::{EventBuilder, EventType, pb, timestamp};
use sha2::{Digest, Sha256};
use std::borrow::Cow;

/// The mailbox a mail was read from.
#[derive(Debug, Clone, Copy)]
pub struct Mailbox<'a> {
    /// The channel id.
    pub channel_id: &'a str,
    /// The tenant of the channel.
    pub tenant: &'a str,
    /// Our address (the channel's `address`).
    pub address: &'a str,
    /// The folder it was read from.
    pub folder: &'a str,
}

/// Bytes the event refers to, to be stored in the blob store under `blob.key` before
/// the event is published.
#[derive(Debug, Clone)]
pub struct BlobToStore {
    /// The reference the event carries.
    pub blob: pb::BlobRef,
    /// The bytes.
    pub bytes: Vec<u8>,
}

/// A normalized mail.
#[derive(Debug, Clone)]
pub struct Normalized {
    /// The `message.received` event.
    pub event: pb::Event,
    /// The raw message and every attachment, to store first.
    pub blobs: Vec<BlobToStore>,
    /// The Message-ID (without angle brackets), or `sha256:<hex>` of the raw bytes.
    pub message_id: String,
    /// The parent of this mail (`In-Reply-To`, else the last of `References`).
    pub parent: Option<String>,
    /// The thread root the conversation key names.
    pub root: String,
    /// True for mail sent from our own address: never ingested as a customer message.
    pub from_us: bool,
}

/// Why a mail could not be normalized; it is dead-lettered with its raw bytes.
#[derive(Debug, thiserror::Error)]
pub enum NormalizeError {
    /// Not a message at all (empty, or no header could be read).
    #[error("not an RFC 5322 message: {0}")]
    Unparseable(&'static str),
}

/// The MIME type of the raw message blob.
pub const RAW_MIME: &str = "message/rfc822";

/// Normalizes `raw`, read from `mailbox` at `received_at`.
pub fn normalize(
    raw: &[u8],
    mailbox: Mailbox<'_>,
    received_at: DateTime<Utc>,
) -> Result<Normalized, NormalizeError> {
    if raw.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(NormalizeError::Unparseable("the message is empty"));
    }
    let message = MessageParser::default()
        .parse(raw)
        .ok_or(NormalizeError::Unparseable("no header could be read"))?;
    if message.headers().is_empty() {
        return Err(NormalizeError::Unparseable("no header could be read"));
    }
    let raw_sha = hex::encode(Sha256::digest(raw));
    let message_id = message
        .message_id()
        .map(clean_id)
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| format!("sha256:{raw_sha}"));
    let references = id_list(message.references());
    let in_reply_to = id_list(message.in_reply_to());
    let parent = in_reply_to
        .first()
        .or(references.last())
        .cloned()
        .filter(|p| *p != message_id);
    let root = references
        .first()
        .or(in_reply_to.first())
        .cloned()
        .filter(|r| *r != message_id)
        .unwrap_or_else(|| message_id.clone());

    let from = first_addr(message.from());
    let sender_address = from.as_ref().map(|a| a.0.clone()).unwrap_or_default();
    let from_us = sender_address.eq_ignore_ascii_case(mailbox.address);
    let mut blobs = vec![BlobToStore {
        blob: pb::BlobRef {
            key: content_key("email/raw", &raw_sha, ".eml"),
            size: raw.len() as u64,
            sha256: raw_sha,
            mime_type: RAW_MIME.into(),
        },
        bytes: raw.to_vec(),
    }];
    let raw_blob = blobs[0].blob.clone();

    let (parts, text) = content(&message, &mut blobs);
    let flags = Flags::of(&message);
    let bounce = flags.bounce.then(|| bounce_report(&message)).flatten();
    let metadata = pb::EmailMetadata {
        subject: message.subject().unwrap_or_default().trim().to_string(),
        message_id: message_id.clone(),
        in_reply_to: in_reply_to.first().cloned().unwrap_or_default(),
        references,
        auto_reply: flags.auto_reply,
        bounce: flags.bounce,
        from: sender_address.clone(),
        to: addresses(message.to()),
        cc: addresses(message.cc()),
        mailing_list: flags.list_id.is_some() || flags.mailing_list,
        list_id: flags.list_id.unwrap_or_default(),
        reply_to: first_addr(message.reply_to())
            .map(|a| a.0)
            .unwrap_or_default(),
        new_text: text.as_deref().map(quoted::new_text).unwrap_or_default(),
        bounced_message_id: bounce
            .as_ref()
            .map(|b| b.message_id.clone())
            .unwrap_or_default(),
        bounced_recipient: bounce
            .as_ref()
            .map(|b| b.recipient.clone())
            .unwrap_or_default(),
        bounce_status: bounce
            .as_ref()
            .map(|b| b.status.clone())
            .unwrap_or_default(),
        bounce_diagnostic: bounce.map(|b| b.diagnostic).unwrap_or_default(),
        folder: mailbox.folder.to_string(),
    };
    let sent_at = message
        .date()
        .and_then(|d| DateTime::from_timestamp(d.to_timestamp(), 0))
        .map(timestamp);
    let payload = pb::event::Payload::Message(pb::Message {
        channel: Some(pb::Channel {
            kind: pb::ChannelKind::Email as i32,
            channel_id: mailbox.channel_id.to_string(),
            address: mailbox.address.to_string(),
        }),
        contact: Some(pb::Contact {
            display_name: from.map(|a| a.1).unwrap_or_default(),
            email: sender_address,
            ..Default::default()
        }),
        direction: pb::Direction::Inbound as i32,
        provider_message_id: message_id.clone(),
        reply_to_provider_id: parent.clone().unwrap_or_default(),
        sent_at,
        received_at: Some(timestamp(received_at)),
        parts,
        metadata: Some(pb::message::Metadata::Email(metadata)),
        raw: Some(pb::RawPayload {
            location: Some(pb::raw_payload::Location::Blob(raw_blob)),
        }),
    });
    let event = EventBuilder::channel(pb::ChannelKind::Email, mailbox.channel_id, mailbox.tenant)
        .event(
            EventType::MessageReceived,
            &message_id,
            conversation_key(mailbox.channel_id, &root),
            received_at,
            payload,
        );
    Ok(Normalized {
        event,
        blobs,
        message_id,
        parent,
        root,
        from_us,
    })
}

impl Normalized {
    /// Moves the mail into the thread rooted at `root` (found from the Message-ID of a
    /// mail it answers, when its client dropped `References`). The event id stays.
    pub fn rekey(&mut self, channel_id: &str, root: &str) {
        self.root = root.to_string();
        self.event.conversation_key = conversation_key(channel_id, root);
    }
}

/// The short token of a thread, carried in the subject (`[#og-<token>]`) and the
/// Reply-To plus-address (`support+<token>@`) of the mail we send, for clients that
/// drop every threading header.
pub fn thread_token(channel_id: &str, root: &str) -> String {
    let digest = Sha256::digest(format!("{channel_id}:{root}").as_bytes());
    hex::encode(&digest[..6])
}

/// A thread token a mail carries: in a plus-address of ours among its recipients, or
/// in its subject.
pub fn token_hint(meta: &pb::EmailMetadata, our_address: &str) -> Option<String> {
    let (local, domain) = our_address
        .to_lowercase()
        .split_once('@')
        .map(|(l, d)| (l.to_string(), d.to_string()))?;
    let from_address = meta.to.iter().chain(&meta.cc).find_map(|address| {
        let (their_local, their_domain) = address.split_once('@')?;
        let token = their_local.strip_prefix(&format!("{local}+"))?;
        (their_domain == domain).then(|| token.to_string())
    });
    let from_subject = || {
        let start = meta.subject.find("[#og-")? + "[#og-".len();
        let end = meta.subject[start..].find(']')? + start;
        Some(meta.subject[start..end].to_string())
    };
    from_address
        .or_else(from_subject)
        .filter(|t| t.len() == 12 && t.chars().all(|c| c.is_ascii_hexdigit()))
}

/// `email:{channel}:{root Message-ID}`.
pub fn conversation_key(channel_id: &str, root: &str) -> String {
    format!("email:{channel_id}:{root}")
}

/// A Message-ID without angle brackets or surrounding space.
pub fn clean_id(id: &str) -> String {
    id.trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .trim()
        .to_string()
}

/// The ids of a `References` or `In-Reply-To` header, in order.
fn id_list(value: &HeaderValue<'_>) -> Vec<String> {
    let ids: Vec<String> = match value {
        HeaderValue::Text(id) => id
            .split_whitespace()
            .map(clean_id)
            .filter(|id| !id.is_empty())
            .collect(),
        HeaderValue::TextList(ids) => ids.iter().map(|id| clean_id(id)).collect(),
        _ => Vec::new(),
    };
    ids.into_iter().filter(|id| !id.is_empty()).collect()
}

/// The first address of a header as (lowercased address, display name).
fn first_addr(address: Option<&Address<'_>>) -> Option<(String, String)> {
    let addr = address?.first()?;
    let email = addr.address()?.trim().to_lowercase();
    if email.is_empty() {
        return None;
    }
    Some((email, addr.name().unwrap_or_default().trim().to_string()))
}

/// Every address of a header, lowercased.
fn addresses(address: Option<&Address<'_>>) -> Vec<String> {
    address
        .map(|a| {
            a.iter()
                .filter_map(|addr| addr.address())
                .map(|s| s.trim().to_lowercase())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// The content parts, and the plain text the new-text extraction reads.
fn content(
    message: &Message<'_>,
    blobs: &mut Vec<BlobToStore>,
) -> (Vec<pb::ContentPart>, Option<String>) {
    use pb::content_part::Part;
    let mut parts = Vec::new();
    let html = message
        .html_part(0)
        .filter(|p| p.is_text_html())
        .map(|p| p.text_contents().unwrap_or_default().to_string());
    let text = message
        .text_part(0)
        .filter(|p| !p.is_text_html())
        .and_then(|p| p.text_contents().map(str::to_string))
        .or_else(|| html.as_deref().map(html_to_text))
        .map(|t| t.replace("\r\n", "\n"))
        .filter(|t| !t.trim().is_empty());
    if let Some(text) = &text {
        parts.push(pb::ContentPart {
            part: Some(Part::Text(text.clone())),
        });
    }
    if let Some(html) = &html {
        parts.push(pb::ContentPart {
            part: Some(Part::Html(sanitize_html(html))),
        });
    }
    for part in message.attachments() {
        let bytes: Cow<'_, [u8]> = match &part.body {
            PartType::Message(inner) => Cow::Borrowed(inner.raw_message()),
            _ => Cow::Borrowed(part.contents()),
        };
        let mime_type = part
            .content_type()
            .map(|ct| match ct.subtype() {
                Some(sub) => format!("{}/{}", ct.ctype(), sub),
                None => ct.ctype().to_string(),
            })
            .unwrap_or_else(|| match part.body {
                PartType::Message(_) => RAW_MIME.to_string(),
                _ => "application/octet-stream".to_string(),
            })
            .to_lowercase();
        let sha = hex::encode(Sha256::digest(&bytes));
        let blob = pb::BlobRef {
            key: content_key("email/parts", &sha, ""),
            size: bytes.len() as u64,
            sha256: sha.clone(),
            mime_type: mime_type.clone(),
        };
        let kind = match mime_type.split('/').next().unwrap_or_default() {
            "image" => "image",
            "audio" => "audio",
            "video" => "video",
            _ => "document",
        };
        parts.push(pb::ContentPart {
            part: Some(Part::Attachment(pb::Attachment {
                kind: kind.into(),
                mime_type,
                size: blob.size,
                sha256: sha,
                filename: part.attachment_name().unwrap_or_default().to_string(),
                state: pb::MediaState::Stored as i32,
                blob: Some(blob.clone()),
                content_id: part.content_id().map(clean_id).unwrap_or_default(),
                ..Default::default()
            })),
        });
        blobs.push(BlobToStore {
            blob,
            bytes: bytes.into_owned(),
        });
    }
    (parts, text)
}

/// HTML a helpdesk can show: no scripts, styles, event handlers, forms or remote
/// loads. Images keep only `cid:` (inline parts, listed as attachments with their
/// content id) and `data:` sources; links keep http, https and mailto.
pub fn sanitize_html(html: &str) -> String {
    ammonia::Builder::default()
        .add_url_schemes(["cid", "data"])
        .attribute_filter(|element, attribute, value| {
            let remote_load = element == "img"
                && attribute == "src"
                && !(value.starts_with("cid:") || value.starts_with("data:image/"));
            if remote_load {
                None
            } else {
                Some(value.into())
            }
        })
        .clean(html)
        .to_string()
}

/// Plain text from HTML, for mail that has no text part: tags dropped, block ends as
/// line breaks, entities decoded by the sanitizer's parser.
fn html_to_text(html: &str) -> String {
    let cleaned = ammonia::Builder::empty()
        .clean(
            &html
                .replace("<br", "\n<br")
                .replace("</p>", "</p>\n")
                .replace("</div>", "</div>\n"),
        )
        .to_string();
    let decoded = cleaned
        .replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&");
    let lines: Vec<&str> = decoded.lines().map(str::trim_end).collect();
    lines.join("\n").trim().to_string()
}

/// Header facts the helpdesk decides on.
#[derive(Debug, Default)]
struct Flags {
    auto_reply: bool,
    mailing_list: bool,
    list_id: Option<String>,
    bounce: bool,
}

impl Flags {
    fn of(message: &Message<'_>) -> Self {
        let header = |name: &str| -> Option<String> {
            message
                .header_raw(name)
                .map(|v| v.trim().to_ascii_lowercase())
        };
        let precedence = header("Precedence").unwrap_or_default();
        let auto_submitted = header("Auto-Submitted").is_some_and(|v| !v.starts_with("no"));
        let auto_reply = auto_submitted
            || header("X-Autoreply").is_some()
            || header("X-Autorespond").is_some()
            || header("X-Auto-Response-Suppress")
                .is_some_and(|v| v.contains("all") || v.contains("oof") || v.contains("autoreply"))
            || matches!(precedence.as_str(), "bulk" | "junk" | "auto_reply");
        let list_id = message
            .header_raw("List-Id")
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty());
        let mailing_list = list_id.is_some()
            || message.header_raw("List-Unsubscribe").is_some()
            || precedence == "list";
        let null_return_path = message
            .header_raw("Return-Path")
            .is_some_and(|v| v.trim() == "<>");
        let report = message.content_type().is_some_and(|ct| {
            ct.ctype().eq_ignore_ascii_case("multipart")
                && ct
                    .subtype()
                    .is_some_and(|s| s.eq_ignore_ascii_case("report"))
                && ct
                    .attribute("report-type")
                    .is_some_and(|t| t.eq_ignore_ascii_case("delivery-status"))
        });
        // Auto-replies also use a null Return-Path (RFC 3834), so without a report it
        // takes a mailer daemon's address to call a mail a bounce.
        let from_daemon = message
            .from()
            .and_then(|a| a.first())
            .and_then(|a| a.address())
            .and_then(|a| a.split('@').next())
            .is_some_and(|local| {
                let local = local.to_ascii_lowercase();
                local == "mailer-daemon" || local == "postmaster"
            });
        Self {
            auto_reply,
            mailing_list,
            list_id,
            bounce: report || (null_return_path && from_daemon),
        }
    }
}

/// What a delivery status notification says.
#[derive(Debug, Default)]
struct Bounce {
    message_id: String,
    recipient: String,
    status: String,
    diagnostic: String,
}

/// Reads the `message/delivery-status` part and the quoted original's Message-ID.
fn bounce_report(message: &Message<'_>) -> Option<Bounce> {
    let mut bounce = Bounce::default();
    for part in &message.parts {
        let Some(ct) = part.content_type() else {
            continue;
        };
        let kind = format!(
            "{}/{}",
            ct.ctype().to_ascii_lowercase(),
            ct.subtype().unwrap_or_default().to_ascii_lowercase()
        );
        match kind.as_str() {
            "message/delivery-status" | "message/global-delivery-status" => {
                let text = String::from_utf8_lossy(part.contents());
                for line in text.lines() {
                    let Some((name, value)) = line.split_once(':') else {
                        continue;
                    };
                    let value = value.trim();
                    match name.trim().to_ascii_lowercase().as_str() {
                        "final-recipient" | "original-recipient" if bounce.recipient.is_empty() => {
                            let address = value.rsplit(';').next().unwrap_or(value);
                            bounce.recipient = address.trim().to_lowercase();
                        }
                        "status" if bounce.status.is_empty() => bounce.status = value.into(),
                        "diagnostic-code" if bounce.diagnostic.is_empty() => {
                            let text = value.split_once(';').map_or(value, |(_, t)| t);
                            bounce.diagnostic = text.trim().into();
                        }
                        _ => {}
                    }
                }
            }
            "text/rfc822-headers" | "message/rfc822" | "message/rfc822-headers" => {
                let quoted = match &part.body {
                    PartType::Message(inner) => inner.message_id().map(clean_id),
                    _ => String::from_utf8_lossy(part.contents())
                        .lines()
                        .find_map(|line| {
                            let (name, value) = line.split_once(':')?;
                            name.trim()
                                .eq_ignore_ascii_case("message-id")
                                .then(|| clean_id(value))
                        }),
                };
                if let Some(id) = quoted.filter(|id| !id.is_empty()) {
                    bounce.message_id = id;
                }
            }
            _ => {}
        }
    }
    Some(bounce)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sanitizing_drops_scripts_handlers_and_remote_images_but_keeps_inline_ones() {
        let html = r#"<p onclick="x()">Hi <script>alert(1)</script><img src="https://t.example/p.gif"><img src="cid:logo@x"><a href="javascript:alert(1)">j</a><a href="https://ok.example/">ok</a></p>"#;
        let clean = sanitize_html(html);
        assert!(!clean.contains("script"), "{clean}");
        assert!(!clean.contains("onclick"), "{clean}");
        assert!(!clean.contains("t.example"), "{clean}");
        assert!(!clean.contains("javascript"), "{clean}");
        assert!(clean.contains("cid:logo@x"), "{clean}");
        assert!(clean.contains("https://ok.example/"), "{clean}");
    }

    #[test]
    fn thread_tokens_are_read_from_our_plus_address_or_the_subject_only() {
        let token = thread_token("support", "root@x");
        assert_eq!(token.len(), 12);
        let meta = |to: &str, subject: &str| pb::EmailMetadata {
            to: vec![to.into()],
            subject: subject.into(),
            ..Default::default()
        };
        let ours = format!("support+{token}@omnigate.test");
        assert_eq!(
            token_hint(&meta(&ours, "hi"), "support@omnigate.test"),
            Some(token.clone())
        );
        let tagged = format!("Re: order [#og-{token}]");
        assert_eq!(
            token_hint(&meta("x@y.test", &tagged), "support@omnigate.test"),
            Some(token.clone())
        );
        let elsewhere = format!("support+{token}@other.test");
        assert_eq!(
            token_hint(&meta(&elsewhere, "hi"), "support@omnigate.test"),
            None
        );
        assert_eq!(
            token_hint(
                &meta("support@omnigate.test", "[#og-zz]"),
                "support@omnigate.test"
            ),
            None
        );
    }

    #[test]
    fn an_empty_message_is_refused() {
        let mailbox = Mailbox {
            channel_id: "c",
            tenant: "t",
            address: "support@omnigate.test",
            folder: "INBOX",
        };
        assert!(normalize(b"  \r\n", mailbox, Utc::now()).is_err());
    }
}
