//! What live chat keeps in the shared SQL database: the visitors' acknowledged messages
//! (so a re-sent client id is answered from here, and a new device sees its history)
//! and the agents' replies with their per-conversation sequence numbers (so a visitor
//! who was offline gets them on the next `hello`, from any replica).

use crate::protocol::{Agent, HistoryItem, ServerFrame};
use omnigate_core::db::{OnConflict, SqlValue, insert_rows};
use omnigate_model::pb;
use sqlx::{AnyPool, Row as _};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// A failed database call.
#[derive(Debug, thiserror::Error)]
#[error("live chat store: {0}")]
pub struct StoreError(#[from] sqlx::Error);

const SCHEMA: [&str; 7] = [
    "CREATE TABLE IF NOT EXISTS livechat_uploads (
        channel TEXT NOT NULL,
        visitor TEXT NOT NULL,
        upload_id TEXT NOT NULL,
        attachment TEXT NOT NULL,
        PRIMARY KEY (channel, visitor, upload_id))",
    "CREATE TABLE IF NOT EXISTS livechat_messages (
        channel TEXT NOT NULL,
        visitor TEXT NOT NULL,
        client_id TEXT NOT NULL,
        event_id TEXT NOT NULL,
        text TEXT NOT NULL,
        created_ms BIGINT NOT NULL,
        PRIMARY KEY (channel, visitor, client_id))",
    "CREATE TABLE IF NOT EXISTS livechat_replies (
        channel TEXT NOT NULL,
        visitor TEXT NOT NULL,
        seq BIGINT NOT NULL,
        event_id TEXT NOT NULL,
        text TEXT NOT NULL,
        agent TEXT NOT NULL,
        command_key TEXT NOT NULL,
        created_ms BIGINT NOT NULL,
        PRIMARY KEY (channel, visitor, seq),
        UNIQUE (channel, command_key))",
    "CREATE INDEX IF NOT EXISTS livechat_replies_created ON livechat_replies (created_ms)",
    // The history reads a visitor's rows through the primary key and sorts them: a
    // second index on the same visitor would be written on every message for a read
    // made once per `hello`. Dropped where an earlier version made it.
    "DROP INDEX IF EXISTS livechat_messages_created",
    // One row per conversation, overwritten: the agent's latest typing state, there
    // only so every replica's pusher sees it (typing is never history).
    "CREATE TABLE IF NOT EXISTS livechat_typing (
        channel TEXT NOT NULL,
        visitor TEXT NOT NULL,
        typing BIGINT NOT NULL,
        agent TEXT NOT NULL,
        updated_ms BIGINT NOT NULL,
        PRIMARY KEY (channel, visitor))",
    "CREATE INDEX IF NOT EXISTS livechat_typing_updated ON livechat_typing (updated_ms)",
];

/// How long a typing row is kept: longer than any pusher's look-back.
const TYPING_KEEP_MS: i64 = 60_000;

/// An agent's typing state for a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentTyping {
    /// The channel.
    pub channel: String,
    /// The visitor.
    pub visitor: String,
    /// Typing or stopped.
    pub on: bool,
    /// The agent's name.
    pub agent: String,
    /// When it was set, in ms since the epoch: a socket skips what is not newer than
    /// what it sent.
    pub updated_ms: i64,
}

impl AgentTyping {
    /// The frame a visitor's client gets.
    pub fn frame(&self) -> ServerFrame {
        ServerFrame::Typing {
            on: self.on,
            agent: Agent {
                name: self.agent.clone(),
            },
        }
    }
}

/// A stored agent reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredReply {
    /// The channel.
    pub channel: String,
    /// The visitor.
    pub visitor: String,
    /// Its sequence in the conversation.
    pub seq: u64,
    /// Its event id.
    pub event_id: String,
    /// The text.
    pub text: String,
    /// The agent's name.
    pub agent: String,
    /// When it was stored, in ms since the epoch.
    pub created_ms: i64,
}

impl StoredReply {
    /// The frame a visitor's client gets.
    pub fn frame(&self) -> ServerFrame {
        ServerFrame::Reply {
            seq: self.seq,
            event_id: self.event_id.clone(),
            text: self.text.clone(),
            attachments: Vec::new(),
            agent: Agent {
                name: self.agent.clone(),
            },
        }
    }
}

fn reply(row: &sqlx::any::AnyRow) -> StoredReply {
    StoredReply {
        channel: row.get(0),
        visitor: row.get(1),
        seq: row.get::<i64, _>(2) as u64,
        event_id: row.get(3),
        text: row.get(4),
        agent: row.get(5),
        created_ms: row.get(6),
    }
}

const REPLY_COLUMNS: &str = "channel, visitor, seq, event_id, text, agent, created_ms";

/// An agent reply to store.
#[derive(Debug, Clone, Copy)]
pub struct NewReply<'a> {
    /// The channel.
    pub channel: &'a str,
    /// The visitor.
    pub visitor: &'a str,
    /// Tenant and idempotency key (or command id) of the send command.
    pub command_key: &'a str,
    /// The reply's event id.
    pub event_id: &'a str,
    /// The text.
    pub text: &'a str,
    /// The agent's name.
    pub agent: &'a str,
    /// Now, in ms since the epoch.
    pub now_ms: i64,
}

/// The live chat tables.
#[derive(Debug, Clone)]
pub struct LivechatStore {
    pool: AnyPool,
    _checkpointer: omnigate_core::db::Checkpointer,
}

impl LivechatStore {
    /// Connects and creates the tables.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let (pool, checkpointer) = omnigate_core::db::open(url, &SCHEMA).await?;
        Ok(Self {
            pool,
            _checkpointer: checkpointer,
        })
    }

    /// Sets the agent's typing state of a conversation, and forgets states older than a
    /// minute.
    pub async fn set_typing(&self, typing: &AgentTyping) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO livechat_typing (channel, visitor, typing, agent, updated_ms) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (channel, visitor) DO UPDATE SET typing = excluded.typing, agent = excluded.agent, updated_ms = excluded.updated_ms",
        )
        .bind(&typing.channel)
        .bind(&typing.visitor)
        .bind(i64::from(typing.on))
        .bind(&typing.agent)
        .bind(typing.updated_ms)
        .execute(&self.pool)
        .await?;
        sqlx::query("DELETE FROM livechat_typing WHERE updated_ms < $1")
            .bind(typing.updated_ms - TYPING_KEEP_MS)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Typing states set at or after `since_ms`, by any replica.
    pub async fn typing_since(&self, since_ms: i64) -> Result<Vec<AgentTyping>, StoreError> {
        let rows = sqlx::query(
            "SELECT channel, visitor, typing, agent, updated_ms FROM livechat_typing WHERE updated_ms >= $1 LIMIT 10000",
        )
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|row| AgentTyping {
                channel: row.get(0),
                visitor: row.get(1),
                on: row.get::<i64, _>(2) != 0,
                agent: row.get(3),
                updated_ms: row.get(4),
            })
            .collect())
    }

    /// Records acknowledged visitor messages (a repeated client id is kept once).
    pub async fn save_messages(&self, rows: &[HistoryRow]) -> Result<(), StoreError> {
        // In key order, each insert lands beside the one before: the batch walks the
        // primary key's pages once instead of jumping between visitors.
        let mut sorted: Vec<&HistoryRow> = rows.iter().collect();
        // Stable: of a client id sent twice within one batch, the first is kept.
        sorted.sort_by(|a, b| {
            (&a.channel, &a.visitor, &a.client_id).cmp(&(&b.channel, &b.visitor, &b.client_id))
        });
        let values: Vec<Vec<SqlValue<'_>>> = sorted
            .into_iter()
            .map(|row| {
                vec![
                    row.channel.as_str().into(),
                    row.visitor.as_str().into(),
                    row.client_id.as_str().into(),
                    row.event_id.as_str().into(),
                    row.text.as_str().into(),
                    SqlValue::Int(row.created_ms),
                ]
            })
            .collect();
        // One transaction, so a batch larger than one statement still commits once.
        let mut tx = self.pool.begin().await?;
        insert_rows(
            &mut tx,
            "livechat_messages (channel, visitor, client_id, event_id, text, created_ms)",
            OnConflict::Ignore("(channel, visitor, client_id)"),
            &values,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records a visitor's upload.
    pub async fn save_upload(
        &self,
        channel: &str,
        visitor: &str,
        upload_id: &str,
        attachment: &pb::Attachment,
    ) -> Result<(), StoreError> {
        let json =
            serde_json::to_string(attachment).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        sqlx::query(
            "INSERT INTO livechat_uploads (channel, visitor, upload_id, attachment) VALUES ($1, $2, $3, $4)",
        )
        .bind(channel)
        .bind(visitor)
        .bind(upload_id)
        .bind(json)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The attachment of each of a visitor's uploads, in order; None when an id is not
    /// theirs.
    pub async fn uploads(
        &self,
        channel: &str,
        visitor: &str,
        upload_ids: &[String],
    ) -> Result<Vec<Option<pb::Attachment>>, StoreError> {
        let mut found = Vec::with_capacity(upload_ids.len());
        for upload_id in upload_ids {
            let row = sqlx::query(
                "SELECT attachment FROM livechat_uploads WHERE channel = $1 AND visitor = $2 AND upload_id = $3",
            )
            .bind(channel)
            .bind(visitor)
            .bind(upload_id)
            .fetch_optional(&self.pool)
            .await?;
            found.push(row.and_then(|r| serde_json::from_str(&r.get::<String, _>(0)).ok()));
        }
        Ok(found)
    }

    /// The visitor's last `limit` acknowledged messages, oldest first.
    pub async fn history(
        &self,
        channel: &str,
        visitor: &str,
        limit: i64,
    ) -> Result<Vec<HistoryItem>, StoreError> {
        let rows = sqlx::query(
            "SELECT m.client_id, m.text, m.event_id,
               (SELECT COALESCE(MAX(r.seq), 0) FROM livechat_replies r
                WHERE r.channel = m.channel AND r.visitor = m.visitor AND r.created_ms <= m.created_ms)
             FROM livechat_messages m
             WHERE m.channel = $1 AND m.visitor = $2 ORDER BY m.created_ms DESC LIMIT $3",
        )
        .bind(channel)
        .bind(visitor)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut items: Vec<HistoryItem> = rows
            .iter()
            .map(|r| HistoryItem {
                client_id: r.get(0),
                text: r.get(1),
                event_id: r.get(2),
                after_seq: r.get::<i64, _>(3) as u64,
            })
            .collect();
        items.reverse();
        Ok(items)
    }

    /// Stores a reply under the next sequence number, once per command; returns it.
    pub async fn add_reply(&self, new: &NewReply<'_>) -> Result<StoredReply, StoreError> {
        let NewReply {
            channel,
            visitor,
            command_key,
            event_id,
            text,
            agent,
            now_ms,
        } = *new;
        sqlx::query(
            "INSERT INTO livechat_replies (channel, visitor, seq, event_id, text, agent, command_key, created_ms)
             SELECT $1, $2, COALESCE(MAX(seq), 0) + 1, $3, $4, $5, $6, $7 FROM livechat_replies
             WHERE channel = $1 AND visitor = $2
             ON CONFLICT (channel, command_key) DO NOTHING",
        )
        .bind(channel)
        .bind(visitor)
        .bind(event_id)
        .bind(text)
        .bind(agent)
        .bind(command_key)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        let row = sqlx::query(&format!(
            "SELECT {REPLY_COLUMNS} FROM livechat_replies WHERE channel = $1 AND command_key = $2"
        ))
        .bind(channel)
        .bind(command_key)
        .fetch_one(&self.pool)
        .await?;
        Ok(reply(&row))
    }

    /// The conversation's replies with a sequence in `(after, up_to]`, in order.
    pub async fn replies(
        &self,
        channel: &str,
        visitor: &str,
        after: u64,
        up_to: u64,
    ) -> Result<Vec<StoredReply>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {REPLY_COLUMNS} FROM livechat_replies
             WHERE channel = $1 AND visitor = $2 AND seq > $3 AND seq <= $4 ORDER BY seq"
        ))
        .bind(channel)
        .bind(visitor)
        .bind(after as i64)
        .bind(up_to.min(i64::MAX as u64) as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(reply).collect())
    }

    /// Replies stored since `since_ms` (any conversation), oldest first: what a
    /// replica pushes to the sockets it holds.
    pub async fn replies_since(&self, since_ms: i64) -> Result<Vec<StoredReply>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {REPLY_COLUMNS} FROM livechat_replies WHERE created_ms >= $1 ORDER BY created_ms, seq LIMIT 10000"
        ))
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(reply).collect())
    }
}

/// An acknowledged visitor message, for the history.
#[derive(Debug, Clone)]
pub struct HistoryRow {
    /// The channel.
    pub channel: String,
    /// The visitor.
    pub visitor: String,
    /// The client's id.
    pub client_id: String,
    /// Its event id.
    pub event_id: String,
    /// The text.
    pub text: String,
    /// When it was acknowledged, in ms since the epoch.
    pub created_ms: i64,
}

/// Most history rows written in one batch.
const HISTORY_BATCH_ROWS: usize = 10_000;
/// How long a batch waits for more rows after its first. A `hello` on the replica that
/// acknowledged a message has the batch written first; another replica's `hello` sees
/// the message at most this much (plus the write) after its ack.
const HISTORY_BATCH_WINDOW: std::time::Duration = std::time::Duration::from_millis(250);

/// What the history writer is handed.
#[derive(Debug)]
enum Queued {
    /// A row to write.
    Row(HistoryRow),
    /// A `hello` about to read the visitor's history: answered once every row of that
    /// visitor queued before it is written (or given up at shutdown).
    Flush {
        channel: String,
        visitor: String,
        written: oneshot::Sender<()>,
    },
}

/// Writes history rows in batches, beside the sockets: an ack never waits for SQL.
#[derive(Debug, Clone)]
pub struct HistoryWriter {
    queue: mpsc::UnboundedSender<Queued>,
}

/// A batch being gathered: its rows, and the `hello`s waiting for it.
#[derive(Default)]
struct Batch {
    rows: Vec<HistoryRow>,
    waiting: Vec<oneshot::Sender<()>>,
}

impl Batch {
    /// Takes in what was queued; true when a `hello` waits for a row of the batch, so
    /// the batch should be written now.
    fn take(&mut self, queued: &mut Vec<Queued>) -> bool {
        let mut urgent = false;
        for item in queued.drain(..) {
            match item {
                Queued::Row(row) => self.rows.push(row),
                Queued::Flush {
                    channel,
                    visitor,
                    written,
                } => {
                    if self
                        .rows
                        .iter()
                        .any(|row| row.visitor == visitor && row.channel == channel)
                    {
                        self.waiting.push(written);
                        urgent = true;
                    } else {
                        let _ = written.send(());
                    }
                }
            }
        }
        urgent
    }
}

impl HistoryWriter {
    /// Starts the writer on `store`; it drains what is queued when `shutdown` fires.
    pub fn start(
        store: LivechatStore,
        shutdown: CancellationToken,
    ) -> (Self, impl Future<Output = ()>) {
        let (queue, mut queued) = mpsc::unbounded_channel::<Queued>();
        let writing = async move {
            let mut incoming = Vec::new();
            let mut batch = Batch::default();
            loop {
                let mut open = tokio::select! {
                    n = queued.recv_many(&mut incoming, HISTORY_BATCH_ROWS) => n > 0,
                    () = shutdown.cancelled() => {
                        while let Ok(item) = queued.try_recv() {
                            incoming.push(item);
                        }
                        false
                    }
                };
                let mut urgent = batch.take(&mut incoming);
                if batch.rows.is_empty() && open {
                    continue;
                }
                // Rows that come within the window join the batch: a commit writes each
                // page it touched once, so a few large commits write far fewer pages
                // than many small ones. The history is not on the ack's path.
                let window = tokio::time::Instant::now() + HISTORY_BATCH_WINDOW;
                while open && !urgent && batch.rows.len() < HISTORY_BATCH_ROWS {
                    let room = HISTORY_BATCH_ROWS - batch.rows.len();
                    let received = tokio::select! {
                        received = tokio::time::timeout_at(window, queued.recv_many(&mut incoming, room)) => received,
                        // Written now; the loop's start drains the rest.
                        () = shutdown.cancelled() => break,
                    };
                    match received {
                        Ok(0) => open = false,
                        Ok(_) => urgent = batch.take(&mut incoming),
                        Err(_) => break,
                    }
                }
                while !batch.rows.is_empty() {
                    match store.save_messages(&batch.rows).await {
                        Ok(()) => batch.rows.clear(),
                        Err(err) if open => {
                            tracing::warn!(error = %err, rows = batch.rows.len(), "Live chat history not written; retrying");
                            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        }
                        Err(err) => {
                            tracing::warn!(error = %err, rows = batch.rows.len(), "Live chat history lost at shutdown");
                            batch.rows.clear();
                        }
                    }
                }
                for written in batch.waiting.drain(..) {
                    let _ = written.send(());
                }
                if !open {
                    return;
                }
            }
        };
        (Self { queue }, writing)
    }

    /// Waits until every row of the visitor queued so far is written (or given up at
    /// shutdown, or the writer is gone), so a `hello` right after an ack finds the
    /// message in the history. It also waits out a write already under way.
    pub async fn flush(&self, channel: &str, visitor: &str) {
        let (written, done) = oneshot::channel();
        let flush = Queued::Flush {
            channel: channel.to_string(),
            visitor: visitor.to_string(),
            written,
        };
        if self.queue.send(flush).is_ok() {
            let _ = done.await;
        }
    }

    /// Queues a row.
    pub fn record(&self, row: HistoryRow) {
        let _ = self.queue.send(Queued::Row(row));
    }
}
