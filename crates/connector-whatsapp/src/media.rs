//! Media download: Graph API lookup, authenticated download, size and hash checks,
//! then the blob store and a `message.media_updated` event.
//!
//! This runs from a consumer of `omnigate.jobs.v1` (where the webhook puts a copy of
//! each event with pending media) rather than inside the webhook, so the webhook
//! answers fast and a crash mid-download only means the record is read again.

use crate::{
    NormalizeCtx, Whatsapp, WorkError,
    graph::GraphError,
    normalize::{envelope, sha256_hex},
};
use omnigate_core::blob::content_key;
use omnigate_core::retry::{Schedule, pause};
use omnigate_model::{EventType, pb};
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};

impl Whatsapp {
    /// Stores every pending attachment of `event` and publishes one update per attachment.
    /// Events of other kinds or channels are ignored.
    pub async fn fetch_media(&self, event: &pb::Event) -> Result<(), WorkError> {
        let Some(pb::event::Payload::Message(message)) = &event.payload else {
            return Ok(());
        };
        let Some(channel) = message.channel.as_ref() else {
            return Ok(());
        };
        let Some(config) = self.inner.config.channels.get(&channel.channel_id) else {
            return Ok(());
        };
        if channel.kind != pb::ChannelKind::Whatsapp as i32 {
            return Ok(());
        }
        for (index, part) in message.parts.iter().enumerate() {
            let Some(pb::content_part::Part::Attachment(attachment)) = &part.part else {
                continue;
            };
            if attachment.state != pb::MediaState::Pending as i32 {
                continue;
            }
            let mut updated = attachment.clone();
            match self
                .download_with_retries(
                    attachment,
                    &channel.address,
                    config.access_token.expose_secret(),
                )
                .await
            {
                Ok(blob) => {
                    updated.state = pb::MediaState::Stored as i32;
                    updated.size = blob.size;
                    updated.sha256 = blob.sha256.clone();
                    if updated.mime_type.is_empty() {
                        updated.mime_type = blob.mime_type.clone();
                    }
                    updated.blob = Some(blob);
                    crate::webhook::METRICS.media(&channel.channel_id, "stored");
                }
                Err(err) => {
                    tracing::warn!(channel = %channel.channel_id, media_id = %attachment.provider_media_id, error = %err, "Media failed for good");
                    updated.state = pb::MediaState::Failed as i32;
                    updated.error = Some(pb::ProviderError {
                        code: err.code.clone(),
                        title: err.title.clone(),
                        details: String::new(),
                    });
                    crate::webhook::METRICS.media(&channel.channel_id, "failed");
                }
            }
            let cx = NormalizeCtx {
                channel_id: &channel.channel_id,
                tenant: &event.tenant,
                received_at: chrono::Utc::now(),
            };
            let update = envelope(
                EventType::MessageMediaUpdated,
                &format!("{}:{index}", message.provider_message_id),
                event.conversation_key.clone(),
                &cx,
                pb::event::Payload::MediaUpdated(pb::MediaUpdated {
                    channel: Some(channel.clone()),
                    provider_message_id: message.provider_message_id.clone(),
                    part_index: index as u32,
                    attachment: Some(updated),
                }),
            );
            self.publish_inbound(update).await?;
        }
        Ok(())
    }

    async fn download_with_retries(
        &self,
        attachment: &pb::Attachment,
        phone_number_id: &str,
        token: &str,
    ) -> Result<pb::BlobRef, GraphError> {
        let mut schedule = Schedule::millis(&self.inner.config.media_retry_delays_ms);
        loop {
            let err = match self.download_once(attachment, phone_number_id, token).await {
                Ok(blob) => return Ok(blob),
                Err(err) => err,
            };
            let Some(delay) = schedule.next_delay().filter(|_| err.is_retriable()) else {
                return Err(err);
            };
            tracing::info!(media_id = %attachment.provider_media_id, error = %err, attempt = schedule.attempts(), "Media download failed; retrying");
            if !pause(delay, &self.inner.ctx.shutdown).await {
                return Err(err);
            }
        }
    }

    async fn download_once(
        &self,
        attachment: &pb::Attachment,
        phone_number_id: &str,
        token: &str,
    ) -> Result<pb::BlobRef, GraphError> {
        let graph = &self.inner.graph;
        let info = graph
            .media_info(&attachment.provider_media_id, phone_number_id, token)
            .await?;
        let bytes = graph
            .download(&info.url, token, self.inner.config.media_max_bytes)
            .await?;
        let actual = hex::encode(Sha256::digest(&bytes));
        // Compare with whichever hash Meta gave us (webhook or lookup), in either encoding.
        for expected in [sha256_hex(&info.sha256), attachment.sha256.clone()] {
            if !expected.is_empty() && expected != actual {
                return Err(GraphError {
                    status: 200,
                    code: "sha256_mismatch".into(),
                    title: format!("downloaded bytes hash to {actual}, expected {expected}"),
                });
            }
        }
        let mime = if info.mime_type.is_empty() {
            attachment.mime_type.clone()
        } else {
            info.mime_type
        };
        let key = content_key("media/whatsapp", &actual, extension(&mime));
        self.inner
            .ctx
            .blobs
            .put(&key, &mime, bytes)
            .await
            .map_err(|e| GraphError {
                // The store may come back: retriable like a network error.
                status: 0,
                code: "blob_store".into(),
                title: e.to_string(),
            })
    }
}

/// A file extension for common WhatsApp media types, so stored files open on a desktop.
fn extension(mime: &str) -> &'static str {
    match mime.split(';').next().unwrap_or("").trim() {
        "image/jpeg" => ".jpg",
        "image/png" => ".png",
        "image/webp" => ".webp",
        "audio/ogg" => ".ogg",
        "audio/mpeg" => ".mp3",
        "audio/mp4" | "audio/aac" => ".m4a",
        "video/mp4" => ".mp4",
        "video/3gpp" => ".3gp",
        "application/pdf" => ".pdf",
        _ => "",
    }
}

/// Whether `event` has an attachment still to download: such events also go to
/// `jobs.v1`, where [`Whatsapp::fetch_media`] picks them up.
pub(crate) fn pending_media(event: &pb::Event) -> bool {
    let Some(pb::event::Payload::Message(message)) = &event.payload else {
        return false;
    };
    message.parts.iter().any(|part| {
        matches!(&part.part, Some(pb::content_part::Part::Attachment(attachment))
            if attachment.state == pb::MediaState::Pending as i32)
    })
}

/// A cheap pre-filter of `jobs.v1` records (which hold other connectors' jobs too):
/// only `message.received` events naming a pending attachment.
pub(crate) fn has_pending_media(record: &omnigate_core::consume::ConsumedRecord) -> bool {
    use omnigate_core::consume::PROTOBUF;
    const PENDING_JSON: &[u8] = b"MEDIA_STATE_PENDING";
    let received = record.header("ce_type") == Some("io.omnigate.message.received.v1");
    let json = record.header("content-type") != Some(PROTOBUF);
    // Protobuf values are not searched; they are decoded and checked in full.
    received && (!json || memchr::memmem::find(&record.value, PENDING_JSON).is_some())
}
