//! What the email connector keeps in the shared SQL database:
//! - a cursor per (channel, folder): UIDVALIDITY and the highest UID below which
//!   every mail is on Kafka;
//! - a thread index of the mails it read and sent (Message-ID → thread root,
//!   subject, references, the customer's address), so a reply gets its threading
//!   headers and a customer's answer whose client dropped `References` still joins
//!   its thread;
//! - the commands it sent, so a command is sent once even across restarts.

use sqlx::{AnyPool, Row};

/// A failed database call (retried by the caller).
#[derive(Debug, thiserror::Error)]
#[error("email store: {0}")]
pub struct StoreError(#[from] sqlx::Error);

/// Where a folder's reading stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// The folder's UIDVALIDITY when the cursor was written.
    pub uid_validity: u32,
    /// Every mail with a UID up to this one is on Kafka.
    pub last_uid: u32,
}

/// A mail of a thread, as a reply needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadEntry {
    /// The thread root's Message-ID.
    pub root: String,
    /// The mail's subject.
    pub subject: String,
    /// Its `References`, oldest first.
    pub references: Vec<String>,
    /// The customer's address in this thread.
    pub contact: String,
}

const SCHEMA: [&str; 5] = [
    "CREATE TABLE IF NOT EXISTS email_thread_tokens (
        channel TEXT NOT NULL,
        token TEXT NOT NULL,
        root TEXT NOT NULL,
        contact TEXT NOT NULL,
        PRIMARY KEY (channel, token))",
    "CREATE TABLE IF NOT EXISTS email_cursors (
        channel TEXT NOT NULL,
        folder TEXT NOT NULL,
        uid_validity BIGINT NOT NULL,
        last_uid BIGINT NOT NULL,
        PRIMARY KEY (channel, folder))",
    "CREATE TABLE IF NOT EXISTS email_messages (
        channel TEXT NOT NULL,
        message_id TEXT NOT NULL,
        root TEXT NOT NULL,
        subject TEXT NOT NULL,
        refs TEXT NOT NULL,
        contact TEXT NOT NULL,
        PRIMARY KEY (channel, message_id))",
    "CREATE TABLE IF NOT EXISTS email_sent (
        channel TEXT NOT NULL,
        command_key TEXT NOT NULL,
        message_id TEXT NOT NULL,
        command_id TEXT NOT NULL,
        PRIMARY KEY (channel, command_key))",
    "CREATE INDEX IF NOT EXISTS email_sent_message ON email_sent (channel, message_id)",
];

/// The email connector's tables.
#[derive(Debug, Clone)]
pub struct EmailStore {
    pool: AnyPool,
    _checkpointer: omnigate_core::db::Checkpointer,
}

impl EmailStore {
    /// Connects (`sqlite://…` or `postgres://…`) and creates the tables.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let (pool, checkpointer) = omnigate_core::db::open(url, &SCHEMA).await?;
        Ok(Self {
            pool,
            _checkpointer: checkpointer,
        })
    }

    /// The pool, for the lease tables beside these.
    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The folder's cursor, if it was ever read.
    pub async fn cursor(&self, channel: &str, folder: &str) -> Result<Option<Cursor>, StoreError> {
        let row = sqlx::query(
            "SELECT uid_validity, last_uid FROM email_cursors WHERE channel = $1 AND folder = $2",
        )
        .bind(channel)
        .bind(folder)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|row| Cursor {
            uid_validity: row.get::<i64, _>(0) as u32,
            last_uid: row.get::<i64, _>(1) as u32,
        }))
    }

    /// Stores the folder's cursor.
    pub async fn save_cursor(
        &self,
        channel: &str,
        folder: &str,
        cursor: Cursor,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO email_cursors (channel, folder, uid_validity, last_uid) VALUES ($1, $2, $3, $4)
             ON CONFLICT (channel, folder) DO UPDATE SET uid_validity = excluded.uid_validity,
             last_uid = excluded.last_uid",
        )
        .bind(channel)
        .bind(folder)
        .bind(i64::from(cursor.uid_validity))
        .bind(i64::from(cursor.last_uid))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Remembers a mail of a thread (read or sent).
    pub async fn remember(
        &self,
        channel: &str,
        message_id: &str,
        entry: &ThreadEntry,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO email_messages (channel, message_id, root, subject, refs, contact)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (channel, message_id) DO NOTHING",
        )
        .bind(channel)
        .bind(message_id)
        .bind(&entry.root)
        .bind(&entry.subject)
        .bind(entry.references.join(" "))
        .bind(&entry.contact)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A mail of a thread by its Message-ID.
    pub async fn thread_entry(
        &self,
        channel: &str,
        message_id: &str,
    ) -> Result<Option<ThreadEntry>, StoreError> {
        let row = sqlx::query(
            "SELECT root, subject, refs, contact FROM email_messages WHERE channel = $1 AND message_id = $2",
        )
        .bind(channel)
        .bind(message_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|row| ThreadEntry {
            root: row.get(0),
            subject: row.get(1),
            references: row
                .get::<String, _>(2)
                .split_whitespace()
                .map(str::to_string)
                .collect(),
            contact: row.get(3),
        }))
    }

    /// The Message-ID a command was sent with, if it was sent.
    pub async fn sent(
        &self,
        channel: &str,
        command_key: &str,
    ) -> Result<Option<String>, StoreError> {
        let row = sqlx::query(
            "SELECT message_id FROM email_sent WHERE channel = $1 AND command_key = $2",
        )
        .bind(channel)
        .bind(command_key)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|row| row.get(0)))
    }

    /// Records that command `command_id` was sent as `message_id`.
    pub async fn mark_sent(
        &self,
        channel: &str,
        command_key: &str,
        message_id: &str,
        command_id: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO email_sent (channel, command_key, message_id, command_id) VALUES ($1, $2, $3, $4)
             ON CONFLICT (channel, command_key) DO NOTHING",
        )
        .bind(channel)
        .bind(command_key)
        .bind(message_id)
        .bind(command_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Remembers the token of a thread we wrote into, with its customer.
    pub async fn remember_token(
        &self,
        channel: &str,
        token: &str,
        root: &str,
        contact: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO email_thread_tokens (channel, token, root, contact) VALUES ($1, $2, $3, $4)
             ON CONFLICT (channel, token) DO NOTHING",
        )
        .bind(channel)
        .bind(token)
        .bind(root)
        .bind(contact)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The thread root and customer of a thread token.
    pub async fn token_thread(
        &self,
        channel: &str,
        token: &str,
    ) -> Result<Option<(String, String)>, StoreError> {
        let row = sqlx::query(
            "SELECT root, contact FROM email_thread_tokens WHERE channel = $1 AND token = $2",
        )
        .bind(channel)
        .bind(token)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|row| (row.get(0), row.get(1))))
    }

    /// The command a mail we sent came from, by its Message-ID (for bounces).
    pub async fn sent_command(
        &self,
        channel: &str,
        message_id: &str,
    ) -> Result<Option<String>, StoreError> {
        let row =
            sqlx::query("SELECT command_id FROM email_sent WHERE channel = $1 AND message_id = $2")
                .bind(channel)
                .bind(message_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|row| row.get(0)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn cursors_threads_and_sends_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("e.db").display());
        let store = EmailStore::connect(&url).await.unwrap();
        assert_eq!(store.cursor("c", "INBOX").await.unwrap(), None);
        let cursor = Cursor {
            uid_validity: 7,
            last_uid: 42,
        };
        store.save_cursor("c", "INBOX", cursor).await.unwrap();
        store
            .save_cursor(
                "c",
                "INBOX",
                Cursor {
                    last_uid: 43,
                    ..cursor
                },
            )
            .await
            .unwrap();
        assert_eq!(
            store.cursor("c", "INBOX").await.unwrap().unwrap().last_uid,
            43
        );
        let entry = ThreadEntry {
            root: "r@x".into(),
            subject: "Order".into(),
            references: vec!["r@x".into(), "m1@x".into()],
            contact: "ann@example.com".into(),
        };
        store.remember("c", "m2@x", &entry).await.unwrap();
        assert_eq!(store.thread_entry("c", "m2@x").await.unwrap(), Some(entry));
        assert_eq!(store.thread_entry("other", "m2@x").await.unwrap(), None);
        assert_eq!(store.sent("c", "k").await.unwrap(), None);
        store.mark_sent("c", "k", "og.1@x", "cmd-1").await.unwrap();
        assert_eq!(
            store.sent("c", "k").await.unwrap().as_deref(),
            Some("og.1@x")
        );
        assert_eq!(
            store.sent_command("c", "og.1@x").await.unwrap().as_deref(),
            Some("cmd-1")
        );
    }
}
