//! How a push connector hands a provider's request to Kafka, the same way for every
//! channel: the events are published and acknowledged before the provider hears 2xx;
//! what Kafka refuses for good (a record too large, say) is dead-lettered with the
//! request's raw bytes, so the provider stops retrying something that can never
//! succeed and nothing is lost; when Kafka is away, the provider is told to retry.

use crate::{
    blob::{BlobStore, content_key},
    publish::{ErrorKind, Outgoing, PublishError, Publisher, Topic},
};
use bytes::Bytes;
use omnigate_model::pb;
use sha2::{Digest, Sha256};

/// What became of a provider's request that was answered 2xx.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingested {
    /// Every event is on Kafka.
    Published,
    /// Kafka refused the events for good; the raw request is on the dead-letter topic
    /// (its bytes, or a blob reference when the bytes themselves were refused).
    DeadLettered,
}

/// Publishes `records`; on a permanent refusal, dead-letters what `letter` makes (the
/// request's raw bytes and where they came from; made only then, off the common path)
/// with the broker's reason. Fails only when the request must be retried by the
/// provider (answer 503): Kafka unreachable, or even the dead letter could not be
/// stored.
pub async fn publish_or_dead_letter(
    publisher: &Publisher,
    blobs: &BlobStore,
    records: &[(Topic, Outgoing)],
    letter: impl FnOnce() -> pb::DeadLetter,
) -> Result<Ingested, PublishError> {
    let refused = match publisher.publish_all(records).await {
        Ok(_) => return Ok(Ingested::Published),
        Err(err) if err.kind == ErrorKind::Permanent => err,
        Err(err) => return Err(err),
    };
    let letter = letter();
    tracing::warn!(source = %letter.source, error = %refused, "Kafka refused the events for good; dead-lettering the request");
    dead_letter(
        publisher,
        blobs,
        pb::DeadLetter {
            reason: format!("Kafka refused the events: {}", refused.message),
            ..letter
        },
    )
    .await?;
    Ok(Ingested::DeadLettered)
}

/// A dead letter carrying a provider request's exact bytes. Its id derives from their
/// hash, so a redelivered request gives the same id.
pub fn raw_dead_letter(
    kind: pb::ChannelKind,
    channel_id: &str,
    tenant: &str,
    content_type: &str,
    body: &[u8],
    reason: &str,
    received_at: chrono::DateTime<chrono::Utc>,
) -> pb::DeadLetter {
    let digest = hex::encode(Sha256::digest(body));
    pb::DeadLetter {
        id: omnigate_model::event_id(kind, channel_id, &digest, "deadletter").to_string(),
        source: format!("/omnigate/{}/{channel_id}", kind.short_name()),
        tenant: tenant.to_string(),
        channel_kind: kind as i32,
        channel_id: channel_id.to_string(),
        reason: reason.to_string(),
        raw: body.to_vec(),
        content_type: content_type.to_string(),
        time: Some(omnigate_model::timestamp(received_at)),
    }
}

/// Publishes a dead letter. When Kafka refuses it for good too (its raw bytes are
/// what is too large), the bytes go to the blob store and the letter carries their
/// key instead.
pub async fn dead_letter(
    publisher: &Publisher,
    blobs: &BlobStore,
    letter: pb::DeadLetter,
) -> Result<(), PublishError> {
    let attempt = publisher
        .publish(
            Topic::Deadletter,
            Outgoing::DeadLetter(Box::new(letter.clone())),
        )
        .await;
    let refused = match attempt {
        Ok(_) => return Ok(()),
        Err(err) if err.kind == ErrorKind::Permanent && !letter.raw.is_empty() => err,
        Err(err) => return Err(err),
    };
    let digest = hex::encode(Sha256::digest(&letter.raw));
    let key = content_key("deadletter", &digest, "");
    let stored = blobs
        .put(&key, &letter.content_type, Bytes::from(letter.raw.clone()))
        .await
        .map_err(|err| PublishError {
            kind: ErrorKind::Retriable,
            topic: refused.topic.clone(),
            message: format!(
                "the dead letter was refused ({refused}) and its bytes could not be stored: {err}"
            ),
        })?;
    let reference = pb::DeadLetter {
        reason: format!(
            "{}; raw bytes ({} bytes, sha256 {}) in the blob store under {}",
            letter.reason, stored.size, stored.sha256, stored.key
        ),
        raw: Vec::new(),
        ..letter
    };
    publisher
        .publish(Topic::Deadletter, Outgoing::DeadLetter(Box::new(reference)))
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::publish::{Delivered, Publish};
    use std::sync::{Arc, Mutex};

    /// Refuses records bigger than `max` bytes of raw payload for good.
    struct Refusing {
        max: usize,
        dead: Arc<Mutex<Vec<pb::DeadLetter>>>,
    }

    #[async_trait::async_trait]
    impl Publish for Refusing {
        async fn publish(
            &self,
            topic: Topic,
            record: &Outgoing,
        ) -> Result<Delivered, PublishError> {
            let size = match record {
                Outgoing::DeadLetter(letter) => letter.raw.len(),
                _ => usize::MAX,
            };
            if size > self.max {
                return Err(PublishError {
                    kind: ErrorKind::Permanent,
                    topic: topic.suffix().into(),
                    message: "message too large".into(),
                });
            }
            if let Outgoing::DeadLetter(letter) = record {
                self.dead.lock().unwrap().push((**letter).clone());
            }
            Ok(Delivered {
                partition: 0,
                offset: 0,
            })
        }
    }

    fn letter(raw: &[u8]) -> pb::DeadLetter {
        pb::DeadLetter {
            source: "/omnigate/test/x".into(),
            raw: raw.to_vec(),
            content_type: "application/json".into(),
            ..Default::default()
        }
    }

    async fn run(max: usize, raw: &[u8]) -> (Ingested, Vec<pb::DeadLetter>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let config: crate::config::BlobConfig = serde_json::from_value(
            serde_json::json!({"url": format!("file:{}", dir.path().display())}),
        )
        .unwrap();
        let blobs = BlobStore::open(&config).unwrap();
        let dead = Arc::default();
        let publisher = Publisher::new(Refusing {
            max,
            dead: Arc::clone(&dead),
        });
        let event = (Topic::Inbound, Outgoing::Event(Box::default()));
        let outcome = publish_or_dead_letter(&publisher, &blobs, &[event], || letter(raw))
            .await
            .unwrap();
        let letters = dead.lock().unwrap().clone();
        (outcome, letters, dir)
    }

    #[tokio::test]
    async fn a_refused_event_is_dead_lettered_with_its_bytes() {
        let (outcome, letters, _dir) = run(1024, b"{\"big\":true}").await;
        assert_eq!(outcome, Ingested::DeadLettered);
        assert_eq!(letters.len(), 1);
        assert_eq!(letters[0].raw, b"{\"big\":true}");
        assert!(
            letters[0].reason.contains("message too large"),
            "{:?}",
            letters[0].reason
        );
    }

    #[tokio::test]
    async fn bytes_too_large_for_kafka_go_to_the_blob_store() {
        let raw = vec![b'x'; 4096];
        let (outcome, letters, dir) = run(1024, &raw).await;
        assert_eq!(outcome, Ingested::DeadLettered);
        assert_eq!(letters.len(), 1);
        assert!(letters[0].raw.is_empty());
        let digest = hex::encode(Sha256::digest(&raw));
        assert!(letters[0].reason.contains(&digest), "{}", letters[0].reason);
        let stored =
            std::fs::read(dir.path().join(content_key("deadletter", &digest, ""))).unwrap();
        assert_eq!(stored, raw, "the exact bytes are kept");
    }
}
