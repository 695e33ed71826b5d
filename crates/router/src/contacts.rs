//! Contacts shared by every router instance: a SQL table of identifiers with a unique
//! constraint, so two instances that see one person's email and phone agree on one
//! contact. A read-through cache keeps SQL off the hot path.

use crate::policy::{Assignment, OpenConversation};
use omnigate_core::db::{OnConflict, SqlValue, insert_rows, linger_for_batch};
use sqlx::{AnyPool, Row};
use std::{collections::HashMap, sync::Mutex};
use tokio::sync::{mpsc, oneshot};

/// A contact-store failure (retriable: the database may come back).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A statement failed.
    #[error("contact store: {0}")]
    Sql(#[from] sqlx::Error),
    /// The batched write that carried this conversation failed.
    #[error("contact store: conversation write failed: {0}")]
    Batch(String),
    /// The conversation writer task is gone (the process is shutting down).
    #[error("contact store: the conversation writer stopped")]
    WriterStopped,
}

/// Two contacts found to be one person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merge {
    /// The contact that remains.
    pub kept: String,
    /// The contact merged into it.
    pub merged: String,
    /// The identifier they share.
    pub identifier: String,
}

/// The contact of an event, and any merges its identifiers caused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// The contact id.
    pub contact_id: String,
    /// Merges, for `contact.linked` events.
    pub merges: Vec<Merge>,
    /// Every identifier was unknown until now: the contact has no other conversation.
    pub new_contact: bool,
}

/// A conversation as `GET /v1/conversations/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConversationView {
    /// Id.
    pub conversation_id: String,
    /// Tenant.
    pub tenant: String,
    /// Its key.
    pub conversation_key: String,
    /// Inbox.
    pub inbox: String,
    /// Contact.
    pub contact_id: String,
    /// Channel kind.
    pub channel_kind: String,
    /// The contact's other conversations (other channels), newest first.
    pub linked_conversation_ids: Vec<String>,
}

/// The shared contact store.
#[derive(Debug)]
pub struct ContactStore {
    pool: AnyPool,
    cache: Mutex<HashMap<String, String>>,
    /// Conversation rows for [`write_conversations`], which batches them.
    saves: mpsc::UnboundedSender<PendingSave>,
    /// Checkpoints the SQLite log beside its writer.
    _checkpointer: omnigate_core::db::Checkpointer,
}

/// One `router_conversations` row: id, tenant, key, contact, inbox, channel kind, last
/// event time.
#[derive(Debug)]
struct ConversationRow(String, String, String, String, String, String, i64);

impl ConversationRow {
    fn values(&self) -> Vec<SqlValue<'_>> {
        vec![
            (&self.0).into(),
            (&self.1).into(),
            (&self.2).into(),
            (&self.3).into(),
            (&self.4).into(),
            (&self.5).into(),
            self.6.into(),
        ]
    }
}

/// A row waiting for the next batched write, and who to tell when it is stored.
#[derive(Debug)]
struct PendingSave {
    row: ConversationRow,
    done: oneshot::Sender<Result<(), String>>,
}

/// The most rows one conversation write carries.
const MAX_SAVE_BATCH: usize = 1_000;

/// How long the conversation writer waits for more rows after the first of a batch.
const SAVE_LINGER: std::time::Duration = std::time::Duration::from_millis(5);

/// Writes queued conversation rows, all that are waiting, in one statement: one
/// statement per conversation would cost a transaction and two thread hand-offs to
/// sqlx's SQLite worker each.
async fn write_conversations(pool: AnyPool, mut queue: mpsc::UnboundedReceiver<PendingSave>) {
    let mut batch = Vec::with_capacity(MAX_SAVE_BATCH);
    while queue.recv_many(&mut batch, MAX_SAVE_BATCH).await > 0 {
        // The save runs beside the publish of the same records (7-11 ms on average to be
        // acknowledged in `make bench`), so the pause seldom delays an offset.
        linger_for_batch(&mut batch, MAX_SAVE_BATCH, SAVE_LINGER, || {
            queue.try_recv().ok()
        })
        .await;
        // A statement may not touch a row twice (PostgreSQL refuses): keep the latest
        // row of each conversation.
        let mut latest: HashMap<&str, &ConversationRow> = HashMap::with_capacity(batch.len());
        for PendingSave { row, .. } in &batch {
            let newest = latest
                .get(row.0.as_str())
                .is_none_or(|seen| seen.6 <= row.6);
            if newest {
                latest.insert(&row.0, row);
            }
        }
        let rows: Vec<Vec<SqlValue<'_>>> =
            latest.into_values().map(ConversationRow::values).collect();
        metrics::histogram!(omnigate_core::telemetry::metric::ROUTER_CONVERSATION_WRITE_BATCH_SIZE)
            .record(rows.len() as f64);
        let result = save_rows(&pool, &rows).await.map_err(|e| e.to_string());
        for pending in batch.drain(..) {
            // The caller may have given up (shutdown); nothing to tell then.
            let _ = pending.done.send(result.clone());
        }
    }
}

/// Upserts conversation rows in one transaction.
async fn save_rows(pool: &AnyPool, rows: &[Vec<SqlValue<'_>>]) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    insert_rows(
        &mut tx,
        "router_conversations (conversation_id, tenant, conversation_key, contact_id, inbox,
         channel_kind, last_event_at)",
        OnConflict::Clause(
            "(conversation_id) DO UPDATE SET contact_id = excluded.contact_id,
             inbox = excluded.inbox, last_event_at = excluded.last_event_at",
        ),
        rows,
    )
    .await?;
    tx.commit().await
}

const SCHEMA: [&str; 3] = [
    "CREATE TABLE IF NOT EXISTS router_contact_identifiers (
        identifier TEXT PRIMARY KEY,
        contact_id TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS router_conversations (
        conversation_id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        conversation_key TEXT NOT NULL,
        contact_id TEXT NOT NULL,
        inbox TEXT NOT NULL,
        channel_kind TEXT NOT NULL,
        last_event_at BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS router_conversations_contact ON router_conversations (contact_id, last_event_at)",
];

/// A deterministic contact id for an identifier, so racing instances pick the same one.
fn contact_id_for(identifier: &str) -> String {
    const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6f6d_6e69_6761_5e00_8000_0000_0000_0003);
    uuid::Uuid::new_v5(&NAMESPACE, identifier.as_bytes()).to_string()
}

impl ContactStore {
    /// Connects (`sqlite://path?mode=rwc` or `postgres://…`) and creates the tables.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let (pool, checkpointer) = omnigate_core::db::open(url, &SCHEMA).await?;
        let (saves, queue) = mpsc::unbounded_channel();
        tokio::spawn(write_conversations(pool.clone(), queue));
        Ok(Self {
            pool,
            cache: Mutex::default(),
            saves,
            _checkpointer: checkpointer,
        })
    }

    fn cached(&self, identifier: &str) -> Option<String> {
        self.cache.lock().ok()?.get(identifier).cloned()
    }

    fn remember(&self, identifier: &str, contact_id: &str) {
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() > 500_000 {
                cache.clear();
            }
            cache.insert(identifier.to_string(), contact_id.to_string());
        }
    }

    /// Finds or creates the contact of `identifiers`, merging contacts they join.
    /// `fallback` names the contact when there is no identifier (e.g. a status event).
    pub async fn resolve(
        &self,
        identifiers: &[String],
        fallback: &str,
    ) -> Result<Resolution, StoreError> {
        if identifiers.is_empty() {
            return Ok(Resolution {
                contact_id: contact_id_for(fallback),
                merges: Vec::new(),
                new_contact: false,
            });
        }
        let cached: Vec<Option<String>> = identifiers.iter().map(|i| self.cached(i)).collect();
        if let Some(Some(first)) = cached.first()
            && cached.iter().all(|c| c.as_ref() == Some(first))
        {
            return Ok(Resolution {
                contact_id: first.clone(),
                merges: Vec::new(),
                new_contact: false,
            });
        }
        // Claim each identifier for the contact its own id names; existing rows win.
        let mut owners = Vec::with_capacity(identifiers.len());
        for identifier in identifiers {
            // RETURNING yields a row only when this call inserted it: one round trip
            // for a new identifier, a second read only for a known one.
            let own = contact_id_for(identifier);
            let inserted = sqlx::query(
                "INSERT INTO router_contact_identifiers (identifier, contact_id) VALUES ($1, $2)
                 ON CONFLICT (identifier) DO NOTHING RETURNING contact_id",
            )
            .bind(identifier)
            .bind(&own)
            .fetch_optional(&self.pool)
            .await?
            .is_some();
            let owner = if inserted {
                own
            } else {
                sqlx::query(
                    "SELECT contact_id FROM router_contact_identifiers WHERE identifier = $1",
                )
                .bind(identifier)
                .fetch_one(&self.pool)
                .await?
                .try_get::<String, _>(0)?
            };
            owners.push((identifier.clone(), owner, inserted));
        }
        // Contacts that existed before this event; the smallest id survives, so every
        // instance merges the same way. New identifiers just join it.
        let existing: Vec<&String> = owners
            .iter()
            .filter(|(_, _, new)| !new)
            .map(|(_, c, _)| c)
            .collect();
        let kept = existing
            .iter()
            .copied()
            .min()
            .or_else(|| owners.iter().map(|(_, c, _)| c).min())
            .cloned()
            .unwrap_or_default();
        let mut merges = Vec::new();
        for (identifier, owner, new) in &owners {
            if *owner == kept || merges.iter().any(|m: &Merge| m.merged == *owner) {
                continue;
            }
            sqlx::query(
                "UPDATE router_contact_identifiers SET contact_id = $1 WHERE contact_id = $2",
            )
            .bind(&kept)
            .bind(owner)
            .execute(&self.pool)
            .await?;
            if *new {
                continue;
            }
            sqlx::query("UPDATE router_conversations SET contact_id = $1 WHERE contact_id = $2")
                .bind(&kept)
                .bind(owner)
                .execute(&self.pool)
                .await?;
            merges.push(Merge {
                kept: kept.clone(),
                merged: owner.clone(),
                identifier: identifier.clone(),
            });
        }
        if !merges.is_empty() {
            // Other identifiers of merged contacts may be cached with the old id.
            if let Ok(mut cache) = self.cache.lock() {
                cache.retain(|_, c| !merges.iter().any(|m| m.merged == *c));
            }
        }
        for identifier in identifiers {
            self.remember(identifier, &kept);
        }
        Ok(Resolution {
            contact_id: kept,
            merges,
            new_contact: existing.is_empty(),
        })
    }

    /// The contact's most recent conversation on another key.
    pub async fn open_elsewhere(
        &self,
        contact_id: &str,
        conversation_key: &str,
    ) -> Result<Option<OpenConversation>, StoreError> {
        let row = sqlx::query(
            "SELECT conversation_id, inbox, last_event_at FROM router_conversations
             WHERE contact_id = $1 AND conversation_key <> $2 ORDER BY last_event_at DESC LIMIT 1",
        )
        .bind(contact_id)
        .bind(conversation_key)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(OpenConversation {
                conversation_id: row.try_get(0)?,
                inbox: row.try_get(1)?,
                last_event_at: row.try_get(2)?,
            })
        })
        .transpose()
    }

    /// Records a conversation's inbox, contact and latest activity; resolves once the
    /// batched write that carries it is committed.
    pub async fn save(&self, tenant: &str, assignment: &Assignment) -> Result<(), StoreError> {
        let (done, saved) = oneshot::channel();
        let row = ConversationRow(
            assignment.conversation_id.clone(),
            tenant.to_string(),
            assignment.conversation_key.clone(),
            assignment.contact_id.clone(),
            assignment.inbox.clone(),
            assignment.channel_kind.clone(),
            assignment.last_event_at,
        );
        self.saves
            .send(PendingSave { row, done })
            .map_err(|_| StoreError::WriterStopped)?;
        saved
            .await
            .map_err(|_| StoreError::WriterStopped)?
            .map_err(StoreError::Batch)
    }

    /// A conversation and its contact's other conversations, for the API.
    pub async fn conversation(
        &self,
        tenant: &str,
        conversation_id: &str,
    ) -> Result<Option<ConversationView>, StoreError> {
        let Some(row) = sqlx::query(
            "SELECT conversation_key, contact_id, inbox, channel_kind FROM router_conversations WHERE conversation_id = $1 AND tenant = $2",
        )
        .bind(conversation_id)
        .bind(tenant)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let contact_id: String = row.try_get(1)?;
        let linked = sqlx::query(
            "SELECT conversation_id FROM router_conversations WHERE contact_id = $1 AND conversation_id <> $2 ORDER BY last_event_at DESC",
        )
        .bind(&contact_id)
        .bind(conversation_id)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|r| r.try_get::<String, _>(0))
        .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(ConversationView {
            conversation_id: conversation_id.to_string(),
            tenant: tenant.to_string(),
            conversation_key: row.try_get(0)?,
            inbox: row.try_get(2)?,
            contact_id,
            channel_kind: row.try_get(3)?,
            linked_conversation_ids: linked,
        }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn assignment(conversation: &str, inbox: &str, last_event_at: i64) -> Assignment {
        Assignment {
            conversation_id: conversation.into(),
            conversation_key: format!("key-{conversation}"),
            inbox: inbox.into(),
            contact_id: "contact".into(),
            channel_kind: "email".into(),
            rule: "default".into(),
            opened_at: 0,
            last_event_at,
            linked: Vec::new(),
            recent_events: Vec::new(),
            stored_last_event_at: 0,
        }
    }

    /// Saves issued together share one batched statement; each resolves only once stored,
    /// and when a batch holds one conversation twice, its newest row wins.
    #[tokio::test]
    async fn concurrent_saves_are_batched_and_the_newest_row_wins() {
        let store = ContactStore::connect("sqlite::memory:").await.unwrap();
        let saves: Vec<_> = (0..300)
            .map(|i| assignment(&format!("c{i}"), "sales", 100))
            .chain([
                assignment("c7", "billing", 300),
                assignment("c7", "vip", 200),
            ])
            .collect();
        // Every save is started before any is awaited, so they queue together.
        let results = futures::future::join_all(saves.iter().map(|a| store.save("acme", a))).await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");

        let count: i64 = sqlx::query("SELECT COUNT(*) FROM router_conversations")
            .fetch_one(&store.pool)
            .await
            .unwrap()
            .try_get(0)
            .unwrap();
        assert_eq!(count, 300);
        let view = store.conversation("acme", "c7").await.unwrap().unwrap();
        assert_eq!(view.inbox, "billing");
        let row = sqlx::query(
            "SELECT last_event_at FROM router_conversations WHERE conversation_id = 'c7'",
        )
        .fetch_one(&store.pool)
        .await
        .unwrap();
        assert_eq!(row.try_get::<i64, _>(0).unwrap(), 300);
    }
}
