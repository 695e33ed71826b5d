//! Voicemail recordings copied from Twilio into the blob store, announced by a
//! `message.media_updated` event for the call.
//!
//! This runs from a consumer of `omnigate.jobs.v1` (where the callback puts a copy of
//! each voicemail with a recording to copy) rather than inside the recording callback,
//! so the callback answers fast and a crash mid-copy only means the record is read
//! again.

use crate::{Voice, config::Provider};
use omnigate_core::{
    blob::content_key,
    consume::ConsumedRecord,
    publish::{Outgoing, Topic},
};
use omnigate_model::{EventBuilder, EventType, pb};
use secrecy::ExposeSecret as _;

/// Why a recording was not copied.
#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    /// Worth trying again: the network, Twilio's 5xx, the blob store, Kafka.
    #[error("retriable: {0}")]
    Retriable(String),
    /// Never going to work: a URL outside the API base, a 4xx, a recording too large.
    #[error("permanent: {0}")]
    Permanent(String),
}

/// Whether `event` is a voicemail of a Twilio channel whose recording is still at
/// Twilio: such events also go to `jobs.v1`, where [`Voice::copy_recording`] picks
/// them up.
pub(crate) fn recording_to_copy(event: &pb::Event, provider: Provider) -> bool {
    matches!(&event.payload, Some(pb::event::Payload::Call(call))
        if provider == Provider::Twilio && !call.recording_url.is_empty() && call.recording.is_none())
}

/// Whether `record` is a `call.voicemail` event, read from its headers only (the jobs
/// topic holds other connectors' jobs too).
pub(crate) fn is_voicemail(record: &ConsumedRecord) -> bool {
    record.header("ce_type") == Some("io.omnigate.call.voicemail.v1")
}

impl Voice {
    /// Copies the recording of a `call.voicemail` event of a Twilio channel into the
    /// blob store and publishes where it is.
    pub(crate) async fn copy_recording(&self, event: &pb::Event) -> Result<(), RecordingError> {
        let Some(pb::event::Payload::Call(call)) = &event.payload else {
            return Ok(());
        };
        let Some(channel) = call.channel.as_ref() else {
            return Ok(());
        };
        let config = &self.inner.config;
        let Some(line) = config
            .channels
            .get(&channel.channel_id)
            .filter(|line| line.provider == Provider::Twilio)
        else {
            return Ok(());
        };
        if call.recording_url.is_empty() || call.recording.is_some() {
            return Ok(());
        }
        let base = config.twilio_api_base.as_str().trim_end_matches('/');
        if !call.recording_url.starts_with(&format!("{base}/")) {
            return Err(RecordingError::Permanent(format!(
                "the recording URL is not under voice.twilio_api_base ({base})"
            )));
        }
        // Without an extension Twilio serves WAV; asking for it names the format.
        let url = format!("{}.wav", call.recording_url);
        let response = self
            .inner
            .http
            .get(&url)
            .basic_auth(
                line.account_sid.as_deref().unwrap_or_default(),
                line.auth_token.as_ref().map(|t| t.expose_secret()),
            )
            .send()
            .await
            .map_err(|e| RecordingError::Retriable(format!("download: {e}")))?;
        let status = response.status();
        if status.is_server_error() || status.as_u16() == 429 {
            return Err(RecordingError::Retriable(format!(
                "Twilio answered {status}"
            )));
        }
        if !status.is_success() {
            return Err(RecordingError::Permanent(format!(
                "Twilio answered {status}"
            )));
        }
        let too_large = |size: u64| {
            RecordingError::Permanent(format!(
                "the recording has {size} bytes, over voice.recording_max_bytes ({})",
                config.recording_max_bytes
            ))
        };
        if let Some(size) = response
            .content_length()
            .filter(|&s| s > config.recording_max_bytes)
        {
            return Err(too_large(size));
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| RecordingError::Retriable(format!("download: {e}")))?;
        if bytes.len() as u64 > config.recording_max_bytes {
            return Err(too_large(bytes.len() as u64));
        }
        let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
        let blob = self
            .inner
            .ctx
            .blobs
            .put(
                &content_key("recordings", &sha256, ".wav"),
                "audio/wav",
                bytes,
            )
            .await
            .map_err(|e| RecordingError::Retriable(format!("blob store: {e}")))?;
        let attachment = pb::Attachment {
            kind: "audio".into(),
            mime_type: "audio/wav".into(),
            size: blob.size,
            sha256: blob.sha256.clone(),
            state: pb::MediaState::Stored as i32,
            blob: Some(blob),
            voice: true,
            ..Default::default()
        };
        let update =
            EventBuilder::channel(pb::ChannelKind::Voice, &channel.channel_id, &event.tenant)
                .event(
                    EventType::MessageMediaUpdated,
                    &format!("{}:recording", call.call_id),
                    event.conversation_key.clone(),
                    chrono::Utc::now(),
                    pb::event::Payload::MediaUpdated(pb::MediaUpdated {
                        channel: Some(channel.clone()),
                        provider_message_id: call.call_id.clone(),
                        part_index: 0,
                        attachment: Some(attachment),
                    }),
                );
        self.inner
            .ctx
            .publisher
            .publish(Topic::Inbound, Outgoing::Event(Box::new(update)))
            .await
            .map_err(|e| RecordingError::Retriable(e.to_string()))?;
        crate::webhook::METRICS.media(&channel.channel_id, "stored");
        Ok(())
    }
}
