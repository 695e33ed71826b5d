//! Send commands: the 24-hour window check, the Graph API call with retries, and the
//! `message.sent` or failed `message.status` event that reports the result.

use crate::{
    NormalizeCtx, Whatsapp, WorkError,
    graph::GraphError,
    normalize::{SERVICE_WINDOW, envelope},
};
use chrono::{DateTime, Utc};
use omnigate_core::retry::Schedule;
use omnigate_model::{
    EventType,
    builder::{send_failed_payload, sent_payload},
    conversation_key, datetime, pb,
};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

/// When each customer last wrote, per (phone number id, wa_id): the service window.
///
/// Fed by the webhook of this process. A customer this process has not seen is
/// "unknown" and the send goes ahead; Meta then refuses it with 131047 if the window
/// is closed, which becomes the same failed status.
#[derive(Debug, Default)]
pub(crate) struct ServiceWindows {
    last_inbound: Mutex<HashMap<(String, String), DateTime<Utc>>>,
}

impl ServiceWindows {
    pub(crate) fn observe(&self, event: &pb::Event) {
        let Some(pb::event::Payload::Message(message)) = &event.payload else {
            return;
        };
        let (Some(channel), Some(contact), Some(sent_at)) = (
            message.channel.as_ref(),
            message.contact.as_ref(),
            message.sent_at.as_ref().and_then(datetime),
        ) else {
            return;
        };
        let key = (channel.address.clone(), contact.provider_id.clone());
        if let Ok(mut map) = self.last_inbound.lock() {
            let entry = map.entry(key).or_insert(sent_at);
            *entry = (*entry).max(sent_at);
        }
    }

    /// `Some(true)` open, `Some(false)` closed, `None` unknown.
    fn is_open(&self, phone_number_id: &str, wa_id: &str, now: DateTime<Utc>) -> Option<bool> {
        let map = self.last_inbound.lock().ok()?;
        map.get(&(phone_number_id.to_string(), wa_id.to_string()))
            .map(|last| now < *last + SERVICE_WINDOW)
    }
}

/// Idempotency keys of commands already sent, so a repeated command sends once.
#[derive(Debug, Default)]
pub(crate) struct SentCommands {
    seen: Mutex<HashMap<String, Instant>>,
}

const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);

impl SentCommands {
    fn contains(&self, key: &str) -> bool {
        self.seen
            .lock()
            .map(|m| m.contains_key(key))
            .unwrap_or(false)
    }

    fn insert(&self, key: String) {
        if let Ok(mut map) = self.seen.lock() {
            if map.len() > 100_000 {
                map.retain(|_, at| at.elapsed() < IDEMPOTENCY_TTL);
            }
            map.insert(key, Instant::now());
        }
    }
}

/// Why a command was not sent, as reported in the failed status.
struct Refusal {
    code: String,
    title: String,
}

impl From<GraphError> for Refusal {
    fn from(err: GraphError) -> Self {
        Self {
            code: err.code,
            title: err.title,
        }
    }
}

impl Whatsapp {
    /// Executes one send command for a WhatsApp channel of this connector and publishes
    /// the result (`message.sent` or a failed `message.status`) on `omnigate.inbound.v1`.
    /// Commands for other channels are ignored. Fails only when the result could not be
    /// published, so the command is retried.
    pub async fn send(&self, command: &pb::SendCommand) -> Result<(), WorkError> {
        let Some(channel_id) = command.channel.as_ref().map(|c| c.channel_id.as_str()) else {
            return Ok(());
        };
        let Some(config) = self.inner.config.channels.get(channel_id) else {
            return Ok(());
        };
        let idempotency = format!(
            "{}:{channel_id}:{}",
            command.tenant,
            if command.idempotency_key.is_empty() {
                &command.command_id
            } else {
                &command.idempotency_key
            }
        );
        if self.inner.sent.contains(&idempotency) {
            tracing::info!(command_id = %command.command_id, "Command already sent; skipping");
            return Ok(());
        }
        let channel = pb::Channel {
            kind: pb::ChannelKind::Whatsapp as i32,
            channel_id: channel_id.to_string(),
            address: config.phone_number_id.clone(),
        };
        let started = Instant::now();
        let outcome = self
            .execute(
                command,
                &config.phone_number_id,
                config.access_token.expose_secret(),
            )
            .await;
        let now = Utc::now();
        let key = conversation_key::whatsapp(&config.phone_number_id, &command.to);
        let (kind, provider_event, payload) = match outcome {
            Ok(wamid) => {
                crate::webhook::METRICS.send(channel_id, "sent", started.elapsed().as_secs_f64());
                (
                    EventType::MessageSent,
                    command.command_id.clone(),
                    sent_payload(command, channel, wamid, now),
                )
            }
            Err(refusal) => {
                crate::webhook::METRICS.send(channel_id, "failed", started.elapsed().as_secs_f64());
                tracing::warn!(command_id = %command.command_id, code = %refusal.code, reason = %refusal.title, "Send failed");
                (
                    EventType::MessageStatus,
                    format!("{}:failed", command.command_id),
                    send_failed_payload(command, channel, refusal.code, refusal.title, now),
                )
            }
        };
        let cx = NormalizeCtx {
            channel_id,
            tenant: &command.tenant,
            received_at: now,
        };
        self.publish_inbound(envelope(kind, &provider_event, key, &cx, payload))
            .await?;
        self.inner.sent.insert(idempotency);
        Ok(())
    }

    /// Checks the window, builds the Graph body and posts it with retries.
    async fn execute(
        &self,
        command: &pb::SendCommand,
        phone_number_id: &str,
        token: &str,
    ) -> Result<String, Refusal> {
        use pb::send_command::Content;
        let content = command.content.as_ref().ok_or_else(|| Refusal {
            code: "omnigate.invalid_command".into(),
            title: "the command has no content".into(),
        })?;
        let free_form = !matches!(content, Content::Template(_) | Content::MarkRead(_));
        if free_form
            && self
                .inner
                .windows
                .is_open(phone_number_id, &command.to, Utc::now())
                == Some(false)
        {
            return Err(Refusal {
                code: "omnigate.window_closed".into(),
                title: "outside the 24-hour customer service window: only templates may be sent"
                    .into(),
            });
        }
        let body = self
            .graph_body(command, content, phone_number_id, token)
            .await?;
        let mut schedule = Schedule::millis(&self.inner.config.send_retry_delays_ms);
        loop {
            let err = match self.inner.graph.send(phone_number_id, token, &body).await {
                Ok(wamid) if wamid.is_empty() => return Ok(command.reply_to_provider_id.clone()),
                Ok(wamid) => return Ok(wamid),
                Err(err) => err,
            };
            let Some(delay) = schedule.next_delay().filter(|_| err.is_retriable()) else {
                return Err(err.into());
            };
            tracing::info!(command_id = %command.command_id, error = %err, attempt = schedule.attempts(), "Send failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    async fn graph_body(
        &self,
        command: &pb::SendCommand,
        content: &pb::send_command::Content,
        phone_number_id: &str,
        token: &str,
    ) -> Result<Value, Refusal> {
        use pb::send_command::Content;
        let mut body = match content {
            Content::Typing(_) => {
                return Err(Refusal {
                    code: "omnigate.invalid_command".into(),
                    title: "typing indicators are for live chat channels".into(),
                });
            }
            Content::MarkRead(wamid) => {
                return Ok(
                    json!({"messaging_product": "whatsapp", "status": "read", "message_id": wamid}),
                );
            }
            Content::Text(text) => {
                json!({"type": "text", "text": {"body": text, "preview_url": false}})
            }
            Content::Template(template) => json!({
                "type": "template",
                "template": {
                    "name": template.name,
                    "language": {"code": template.language},
                    "components": template.components.as_ref().map(|c| serde_json::to_value(c).unwrap_or_default()).unwrap_or(json!([])),
                }
            }),
            Content::Media(media) => {
                let mut object = match &media.source {
                    Some(pb::outbound_media::Source::Link(link)) => json!({"link": link}),
                    Some(pb::outbound_media::Source::Blob(blob)) => {
                        let bytes =
                            self.inner
                                .ctx
                                .blobs
                                .get(&blob.key)
                                .await
                                .map_err(|e| Refusal {
                                    code: "omnigate.blob_missing".into(),
                                    title: e.to_string(),
                                })?;
                        let id = self
                            .inner
                            .graph
                            .upload(
                                phone_number_id,
                                token,
                                bytes,
                                &blob.mime_type,
                                &media.filename,
                            )
                            .await?;
                        json!({"id": id})
                    }
                    None => {
                        return Err(Refusal {
                            code: "omnigate.invalid_command".into(),
                            title: "media needs a blob or a link".into(),
                        });
                    }
                };
                // WhatsApp allows captions on image, video and document only.
                if !media.caption.is_empty()
                    && matches!(media.kind.as_str(), "image" | "video" | "document")
                {
                    object["caption"] = json!(media.caption);
                }
                if !media.filename.is_empty() && media.kind == "document" {
                    object["filename"] = json!(media.filename);
                }
                json!({"type": media.kind, media.kind.clone(): object})
            }
        };
        body["messaging_product"] = json!("whatsapp");
        body["recipient_type"] = json!("individual");
        body["to"] = json!(command.to);
        if !command.reply_to_provider_id.is_empty() {
            body["context"] = json!({"message_id": command.reply_to_provider_id});
        }
        if !command.callback_data.is_empty() {
            body["biz_opaque_callback_data"] = json!(command.callback_data);
        }
        Ok(body)
    }
}
