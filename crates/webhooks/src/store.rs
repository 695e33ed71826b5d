//! Endpoints, deliveries and attempts in SQL (SQLite or PostgreSQL through sqlx's Any
//! driver, one set of migrations). Times are Unix milliseconds.

use crate::subscription::Filters;
use omnigate_core::db::{OnConflict, SqlValue, insert_rows};
use serde::Serialize;
use sqlx::{AnyPool, Row, any::AnyRow};
use std::collections::BTreeMap;

/// A store failure: the database is unreachable or refused a statement.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A query failed (retriable: the database may come back).
    #[error("webhook store: {0}")]
    Sql(#[from] sqlx::Error),
    /// The schema could not be brought up to date.
    #[error("webhook store migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored JSON column did not parse (someone edited the table by hand).
    #[error("webhook store: column {column} holds invalid JSON: {source}")]
    Corrupt {
        /// The column.
        column: &'static str,
        /// The parse error.
        source: serde_json::Error,
    },
}

/// Delivery states.
pub mod status {
    /// Waiting for its next attempt (or in flight).
    pub const PENDING: &str = "pending";
    /// A 2xx arrived.
    pub const SUCCEEDED: &str = "succeeded";
    /// Given up: a 4xx, a refused address, a redirect, or the schedule ran out.
    pub const FAILED: &str = "failed";
    /// Every state, for validation.
    pub const ALL: [&str; 3] = [PENDING, SUCCEEDED, FAILED];
}

/// A registered endpoint, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// `ep_…`.
    pub id: String,
    /// Owner.
    pub tenant: String,
    /// Where deliveries are POSTed.
    pub url: String,
    /// Free text.
    pub description: String,
    /// Event-type patterns.
    pub events: Vec<String>,
    /// Channel and inbox filters.
    pub filters: Filters,
    /// Extra request headers.
    pub headers: BTreeMap<String, String>,
    /// Deliveries per second at most, or 0 for no limit.
    pub rate_limit: u32,
    /// Deliveries of one conversation arrive in order.
    pub ordered: bool,
    /// False once disabled (by the API, a 410, or failing too long).
    pub enabled: bool,
    /// Why it was disabled.
    pub disabled_reason: String,
    /// The current `whsec_…` secret.
    pub secret: String,
    /// The secret before the last rotation, still signing until `previous_secret_until`.
    pub previous_secret: String,
    /// When the previous secret stops signing.
    pub previous_secret_until: i64,
    /// When the current run of failures began, or 0.
    pub failing_since: i64,
    /// Created.
    pub created_at: i64,
    /// Last changed.
    pub updated_at: i64,
}

/// Fields of an endpoint that the API sets.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointFields {
    /// Where deliveries are POSTed.
    pub url: String,
    /// Free text.
    pub description: String,
    /// Event-type patterns.
    pub events: Vec<String>,
    /// Filters.
    pub filters: Filters,
    /// Extra request headers.
    pub headers: BTreeMap<String, String>,
    /// Deliveries per second at most, 0 for none.
    pub rate_limit: u32,
    /// In-order delivery per conversation.
    pub ordered: bool,
}

/// One event for one endpoint, as the delivery log shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Delivery {
    /// `msg_…`: the `webhook-id` header, the same on every attempt.
    pub id: String,
    /// The endpoint.
    pub endpoint_id: String,
    /// The Omnigate event id.
    pub event_id: String,
    /// The event type.
    pub event_type: String,
    /// `pending`, `succeeded` or `failed`.
    pub status: String,
    /// Attempts made.
    pub attempts: i64,
    /// When the next attempt is due (pending only), Unix ms.
    pub next_attempt_at: i64,
    /// The last HTTP status received, or 0.
    pub last_status_code: i64,
    /// How the last attempt ended, if it failed.
    pub last_error: String,
    /// Created, Unix ms.
    pub created_at: i64,
    /// Last changed, Unix ms.
    pub updated_at: i64,
}

/// One attempt of a delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Attempt {
    /// 1 for the first.
    pub attempt: i64,
    /// Started, Unix ms.
    pub started_at: i64,
    /// How long it took.
    pub duration_ms: i64,
    /// HTTP status, or 0 when none arrived.
    pub status_code: i64,
    /// Why it failed, if it did.
    pub error: String,
    /// The start of the response body (capped).
    pub response_body: String,
}

/// A new delivery of an event to an endpoint.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    /// `msg_…`, deterministic over (endpoint, event) so a re-consumed event adds nothing.
    pub id: String,
    /// The endpoint.
    pub endpoint_id: String,
    /// Owner.
    pub tenant: String,
    /// Deliveries with one key arrive in order on ordered endpoints (the conversation).
    pub ordering_key: String,
    /// Position within the ordering key (the Kafka offset).
    pub seq: i64,
    /// When its first attempt may start: now, or later when the dispatcher that
    /// created it attempts it at once and holds it for that long.
    pub first_attempt_at: i64,
    /// The first attempt's result, when the dispatcher made it before logging the
    /// delivery (the usual case): the row is written with it, in one go.
    pub first_outcome: Option<Outcome>,
}

/// An event's body and its deliveries, written together.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// The message's key in the log: the event's time, then its id
    /// (`dispatcher::message_key`).
    pub key: String,
    /// The Omnigate event id.
    pub event_id: String,
    /// The event type.
    pub event_type: String,
    /// The exact JSON bytes every delivery POSTs.
    pub body: bytes::Bytes,
    /// Its deliveries.
    pub deliveries: Vec<NewDelivery>,
}

/// The result of one attempt, to record.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The delivery.
    pub delivery_id: String,
    /// The attempt as logged.
    pub attempt: Attempt,
    /// The delivery's new status.
    pub status: &'static str,
    /// When the next attempt is due (pending only).
    pub next_attempt_at: i64,
}

/// What the dispatcher writes in one transaction.
#[derive(Debug, Default)]
pub struct WriteBatch {
    /// New events with their deliveries.
    pub messages: Vec<NewMessage>,
    /// Finished attempts.
    pub outcomes: Vec<Outcome>,
    /// Claimed deliveries handed back without an attempt, due again at the given time.
    pub deferred: Vec<(String, i64)>,
}

/// Whether a delivery's first attempt, made before the delivery was logged, is kept in
/// the delivery's own row (`first_*` columns) rather than as a row of
/// `webhook_attempts`: when it succeeded, as most do, and so is its only attempt until
/// a replay. One insert fewer per delivery for the log's one writer.
fn kept_inline(first: &Outcome) -> bool {
    first.status == status::SUCCEEDED
}

/// A delivery's state after an attempt.
struct DeliveryUpdate<'a> {
    id: &'a str,
    status: &'a str,
    attempts: i64,
    next_attempt_at: i64,
    last_status_code: i64,
    last_error: &'a str,
}

impl<'a> DeliveryUpdate<'a> {
    /// The delivery's state after the attempt of `outcome`.
    fn after(outcome: &'a Outcome) -> Self {
        Self {
            id: &outcome.delivery_id,
            status: outcome.status,
            attempts: outcome.attempt.attempt,
            next_attempt_at: outcome.next_attempt_at,
            last_status_code: outcome.attempt.status_code,
            last_error: &outcome.attempt.error,
        }
    }
}

/// Rows per multi-row statement. sqlx's SQLite driver looks parameters up by name at a
/// cost that grows with their count squared, so statements stay small.
const ROWS_PER_STATEMENT: usize = 25;

/// `($1, $2), ($3, $4)` for `rows` rows of `columns` parameters.
fn placeholders(rows: usize, columns: usize) -> String {
    (0..rows)
        .map(|r| {
            let row: Vec<String> = (1..=columns)
                .map(|c| format!("${}", r * columns + c))
                .collect();
            format!("({})", row.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A delivery due for an attempt, with what the attempt needs.
#[derive(Debug, Clone)]
pub struct DueDelivery {
    /// `msg_…`.
    pub id: String,
    /// The endpoint.
    pub endpoint_id: String,
    /// The event id.
    pub event_id: String,
    /// Attempts already made.
    pub attempts: i64,
    /// The JSON body.
    pub body: bytes::Bytes,
}

/// A message body as text: JSON is UTF-8, so this borrows it; anything else is stored
/// with its invalid bytes replaced. `from_utf8` checks ASCII a word at a time, where
/// `from_utf8_lossy` alone goes byte by byte.
fn body_text(body: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(body) {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(body),
    }
}

/// The webhook store.
#[derive(Debug, Clone)]
pub struct WebhookStore {
    pool: AnyPool,
    /// The database is SQLite. It plans `UPDATE … FROM (VALUES …)` as a scan of the
    /// table per row, so there updates go row by row; PostgreSQL joins them. The two
    /// also spell "rows of a JSON array" differently.
    sqlite: bool,
    /// Checkpoints the SQLite log beside its writer.
    _checkpointer: omnigate_core::db::Checkpointer,
}

const ENDPOINT_COLUMNS: &str = "id, tenant, url, description, events, filters, headers, rate_limit, ordered, enabled, disabled_reason, secret, previous_secret, previous_secret_until, failing_since, created_at, updated_at";
const DELIVERY_COLUMNS: &str = "id, endpoint_id, event_id, event_type, status, attempts, next_attempt_at, last_status_code, last_error, created_at, updated_at";

fn json<T: serde::de::DeserializeOwned>(
    row: &AnyRow,
    column: &'static str,
) -> Result<T, StoreError> {
    let text: String = row.try_get(column)?;
    serde_json::from_str(&text).map_err(|source| StoreError::Corrupt { column, source })
}

fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

fn endpoint_from(row: &AnyRow) -> Result<Endpoint, StoreError> {
    Ok(Endpoint {
        id: row.try_get("id")?,
        tenant: row.try_get("tenant")?,
        url: row.try_get("url")?,
        description: row.try_get("description")?,
        events: json(row, "events")?,
        filters: json(row, "filters")?,
        headers: json(row, "headers")?,
        rate_limit: u32::try_from(row.try_get::<i64, _>("rate_limit")?).unwrap_or(0),
        ordered: row.try_get::<i64, _>("ordered")? != 0,
        enabled: row.try_get::<i64, _>("enabled")? != 0,
        disabled_reason: row.try_get("disabled_reason")?,
        secret: row.try_get("secret")?,
        previous_secret: row.try_get("previous_secret")?,
        previous_secret_until: row.try_get("previous_secret_until")?,
        failing_since: row.try_get("failing_since")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn delivery_from(row: &AnyRow) -> Result<Delivery, StoreError> {
    Ok(Delivery {
        id: row.try_get("id")?,
        endpoint_id: row.try_get("endpoint_id")?,
        event_id: row.try_get("event_id")?,
        event_type: row.try_get("event_type")?,
        status: row.try_get("status")?,
        attempts: row.try_get("attempts")?,
        next_attempt_at: row.try_get("next_attempt_at")?,
        last_status_code: row.try_get("last_status_code")?,
        last_error: row.try_get("last_error")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// Filters of the delivery log.
#[derive(Debug, Clone, Default)]
pub struct DeliveryQuery {
    /// Only this status.
    pub status: Option<String>,
    /// Created at or after (Unix ms).
    pub since: Option<i64>,
    /// Created before (Unix ms).
    pub until: Option<i64>,
    /// At most this many, newest first.
    pub limit: i64,
}

impl WebhookStore {
    /// Opens the database and brings its schema up to date.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let pool = omnigate_core::db::connect(url).await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Self {
            pool,
            sqlite: omnigate_core::db::is_sqlite(url),
            _checkpointer: omnigate_core::db::Checkpointer::start(url).await?,
        })
    }

    /// Stores a new endpoint.
    pub async fn create_endpoint(&self, endpoint: &Endpoint) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "INSERT INTO webhook_endpoints ({ENDPOINT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)"
        ))
        .bind(&endpoint.id)
        .bind(&endpoint.tenant)
        .bind(&endpoint.url)
        .bind(&endpoint.description)
        .bind(to_json(&endpoint.events))
        .bind(to_json(&endpoint.filters))
        .bind(to_json(&endpoint.headers))
        .bind(i64::from(endpoint.rate_limit))
        .bind(i64::from(endpoint.ordered))
        .bind(i64::from(endpoint.enabled))
        .bind(&endpoint.disabled_reason)
        .bind(&endpoint.secret)
        .bind(&endpoint.previous_secret)
        .bind(endpoint.previous_secret_until)
        .bind(endpoint.failing_since)
        .bind(endpoint.created_at)
        .bind(endpoint.updated_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// One tenant's endpoint.
    pub async fn endpoint(&self, tenant: &str, id: &str) -> Result<Option<Endpoint>, StoreError> {
        sqlx::query(&format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE tenant = $1 AND id = $2"
        ))
        .bind(tenant)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(endpoint_from)
        .transpose()
    }

    /// A tenant's endpoints, oldest first.
    pub async fn endpoints(&self, tenant: &str) -> Result<Vec<Endpoint>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE tenant = $1 ORDER BY created_at, id"
        ))
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(endpoint_from).collect()
    }

    /// Every endpoint of every tenant, for the dispatcher's cache.
    pub async fn all_endpoints(&self) -> Result<Vec<Endpoint>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(endpoint_from).collect()
    }

    /// Replaces the API-set fields of an endpoint; false if there is none.
    pub async fn update_endpoint(
        &self,
        tenant: &str,
        id: &str,
        fields: &EndpointFields,
        now: i64,
    ) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "UPDATE webhook_endpoints SET url = $1, description = $2, events = $3, filters = $4,
             headers = $5, rate_limit = $6, ordered = $7, updated_at = $8 WHERE tenant = $9 AND id = $10",
        )
        .bind(&fields.url)
        .bind(&fields.description)
        .bind(to_json(&fields.events))
        .bind(to_json(&fields.filters))
        .bind(to_json(&fields.headers))
        .bind(i64::from(fields.rate_limit))
        .bind(i64::from(fields.ordered))
        .bind(now)
        .bind(tenant)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() > 0)
    }

    /// Enables (clearing the failure clock) or disables an endpoint; false if there is none.
    /// An empty `tenant` matches any tenant (the dispatcher acts for all of them).
    pub async fn set_enabled(
        &self,
        tenant: &str,
        id: &str,
        enabled: bool,
        reason: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "UPDATE webhook_endpoints SET enabled = $1, disabled_reason = $2, failing_since = 0,
             updated_at = $3 WHERE ($4 = '' OR tenant = $4) AND id = $5 AND enabled <> $1",
        )
        .bind(i64::from(enabled))
        .bind(reason)
        .bind(now)
        .bind(tenant)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() > 0)
    }

    /// Starts (`since` > 0, only if not already running) or clears (`since` = 0) an
    /// endpoint's failure clock.
    pub async fn set_failing_since(&self, id: &str, since: i64) -> Result<(), StoreError> {
        let condition = if since > 0 {
            "failing_since = 0"
        } else {
            "failing_since <> 0"
        };
        sqlx::query(&format!(
            "UPDATE webhook_endpoints SET failing_since = $1 WHERE id = $2 AND {condition}"
        ))
        .bind(since)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Makes `secret` current; the old one keeps signing until `overlap_until`.
    pub async fn rotate_secret(
        &self,
        tenant: &str,
        id: &str,
        secret: &str,
        overlap_until: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "UPDATE webhook_endpoints SET previous_secret = secret, previous_secret_until = $1,
             secret = $2, updated_at = $3 WHERE tenant = $4 AND id = $5",
        )
        .bind(overlap_until)
        .bind(secret)
        .bind(now)
        .bind(tenant)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() > 0)
    }

    /// Deletes an endpoint with its deliveries and attempts; false if there is none.
    pub async fn delete_endpoint(&self, tenant: &str, id: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let result = sqlx::query("DELETE FROM webhook_endpoints WHERE tenant = $1 AND id = $2")
            .bind(tenant)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if result.rows_affected() > 0 {
            sqlx::query(
                "DELETE FROM webhook_attempts WHERE delivery_id IN
                 (SELECT id FROM webhook_deliveries WHERE endpoint_id = $1)",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM webhook_deliveries WHERE endpoint_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(result.rows_affected() > 0)
    }

    /// Writes messages with their deliveries, attempt outcomes and deferrals in one
    /// transaction. Each table's new rows go in one statement, whatever their number,
    /// as one JSON parameter (see `insert_rows`): a batch of thousands of
    /// deliveries costs a handful of round trips to the database.
    /// Writing a message or delivery again changes nothing (a re-consumed event).
    pub async fn write(&self, batch: &WriteBatch, now: i64) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let messages: Vec<Vec<SqlValue<'_>>> = batch
            .messages
            .iter()
            .map(|m| {
                vec![
                    (&m.key).into(),
                    (&m.event_id).into(),
                    (&m.event_type).into(),
                    SqlValue::Text(body_text(&m.body)),
                    now.into(),
                ]
            })
            .collect();
        insert_rows(
            &mut tx,
            "webhook_messages (message_key, event_id, event_type, body, created_at)",
            OnConflict::Ignore("(message_key)"),
            &messages,
        )
        .await?;
        let deliveries: Vec<(&NewMessage, &NewDelivery)> = batch
            .messages
            .iter()
            .flat_map(|m| m.deliveries.iter().map(move |d| (m, d)))
            .collect();
        let delivery_rows: Vec<Vec<SqlValue<'_>>> = deliveries
            .iter()
            .map(|(message, delivery)| {
                let state = match &delivery.first_outcome {
                    Some(o) => DeliveryUpdate::after(o),
                    None => DeliveryUpdate {
                        id: &delivery.id,
                        status: status::PENDING,
                        attempts: 0,
                        next_attempt_at: delivery.first_attempt_at,
                        last_status_code: 0,
                        last_error: "",
                    },
                };
                let first = delivery.first_outcome.as_ref().filter(|o| kept_inline(o));
                vec![
                    state.id.into(),
                    (&delivery.endpoint_id).into(),
                    (&delivery.tenant).into(),
                    (&message.event_id).into(),
                    (&message.key).into(),
                    (&message.event_type).into(),
                    (&delivery.ordering_key).into(),
                    delivery.seq.into(),
                    state.status.into(),
                    state.attempts.into(),
                    state.next_attempt_at.into(),
                    state.last_status_code.into(),
                    state.last_error.into(),
                    now.into(),
                    now.into(),
                    first.map_or(0, |o| o.attempt.started_at).into(),
                    first.map_or(0, |o| o.attempt.duration_ms).into(),
                    first.map_or(0, |o| o.attempt.status_code).into(),
                    first
                        .map_or("", |o| o.attempt.response_body.as_str())
                        .into(),
                ]
            })
            .collect();
        insert_rows(
            &mut tx,
            "webhook_deliveries (id, endpoint_id, tenant, event_id, message_key, event_type, ordering_key,
             seq, status, attempts, next_attempt_at, last_status_code, last_error, created_at,
             updated_at, first_started_at, first_duration_ms, first_status_code,
             first_response_body)",
            OnConflict::Ignore("(id)"),
            &delivery_rows,
        )
        .await?;
        // Attempt rows: first attempts made before their delivery was logged and not
        // kept in its row, then the outcomes of deliveries logged earlier (which also
        // update their row).
        let attempts: Vec<Vec<SqlValue<'_>>> = deliveries
            .iter()
            .filter_map(|(_, d)| d.first_outcome.as_ref().filter(|o| !kept_inline(o)))
            .chain(&batch.outcomes)
            .map(|o| {
                let a = &o.attempt;
                vec![
                    (&o.delivery_id).into(),
                    a.attempt.into(),
                    a.started_at.into(),
                    a.duration_ms.into(),
                    a.status_code.into(),
                    (&a.error).into(),
                    (&a.response_body).into(),
                ]
            })
            .collect();
        insert_rows(
            &mut tx,
            "webhook_attempts (delivery_id, attempt, started_at, duration_ms, status_code,
             error, response_body)",
            OnConflict::Ignore("(delivery_id, attempt)"),
            &attempts,
        )
        .await?;
        for chunk in batch.outcomes.chunks(ROWS_PER_STATEMENT) {
            let updates: Vec<DeliveryUpdate<'_>> =
                chunk.iter().map(DeliveryUpdate::after).collect();
            self.update_deliveries(&mut tx, &updates, now).await?;
        }
        for (id, at) in &batch.deferred {
            sqlx::query(
                "UPDATE webhook_deliveries SET next_attempt_at = $1 WHERE id = $2 AND status = 'pending'",
            )
            .bind(*at)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn update_deliveries(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        updates: &[DeliveryUpdate<'_>],
        now: i64,
    ) -> Result<(), StoreError> {
        if self.sqlite {
            for u in updates {
                sqlx::query(
                    "UPDATE webhook_deliveries SET status = $1, attempts = $2, next_attempt_at = $3,
                     last_status_code = $4, last_error = $5, updated_at = $6 WHERE id = $7",
                )
                .bind(u.status)
                .bind(u.attempts)
                .bind(u.next_attempt_at)
                .bind(u.last_status_code)
                .bind(u.last_error)
                .bind(now)
                .bind(u.id)
                .execute(&mut **tx)
                .await?;
            }
            return Ok(());
        }
        let sql = format!(
            "UPDATE webhook_deliveries SET status = v.column2, attempts = v.column3,
             next_attempt_at = v.column4, last_status_code = v.column5, last_error = v.column6,
             updated_at = v.column7 FROM (VALUES {}) AS v WHERE webhook_deliveries.id = v.column1",
            placeholders(updates.len(), 7)
        );
        let mut query = sqlx::query(&sql);
        for u in updates {
            query = query
                .bind(u.id)
                .bind(u.status)
                .bind(u.attempts)
                .bind(u.next_attempt_at)
                .bind(u.last_status_code)
                .bind(u.last_error)
                .bind(now);
        }
        query.execute(&mut **tx).await?;
        Ok(())
    }

    /// Claims up to `limit` deliveries due at `now` for this dispatcher until
    /// `lease_until`, and returns them with their bodies. On ordered endpoints only a
    /// conversation's oldest pending delivery is due, so later ones wait for it.
    /// Endpoints in `busy` (no free slot) are skipped.
    pub async fn claim_due(
        &self,
        now: i64,
        lease_until: i64,
        limit: i64,
        busy: &[String],
    ) -> Result<Vec<DueDelivery>, StoreError> {
        let skip = if busy.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = (0..busy.len()).map(|i| format!("${}", i + 4)).collect();
            format!("AND d.endpoint_id NOT IN ({})", list.join(", "))
        };
        let sql = format!(
            "UPDATE webhook_deliveries SET next_attempt_at = $1
             WHERE status = 'pending' AND next_attempt_at <= $2 AND id IN (
               SELECT d.id FROM webhook_deliveries d
               JOIN webhook_endpoints e ON e.id = d.endpoint_id
               WHERE d.status = 'pending' AND d.next_attempt_at <= $2 AND e.enabled = 1 {skip}
                 AND (e.ordered = 0 OR NOT EXISTS (
                   SELECT 1 FROM webhook_deliveries p
                   WHERE p.endpoint_id = d.endpoint_id AND p.ordering_key = d.ordering_key
                     AND p.status = 'pending' AND p.seq < d.seq))
               ORDER BY d.next_attempt_at LIMIT $3)
             RETURNING id, endpoint_id, event_id, message_key, attempts"
        );
        let mut query = sqlx::query(&sql).bind(lease_until).bind(now).bind(limit);
        for endpoint in busy {
            query = query.bind(endpoint);
        }
        let rows = query.fetch_all(&self.pool).await?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let mut claimed = Vec::with_capacity(rows.len());
        for row in &rows {
            claimed.push((
                row.try_get::<String, _>("id")?,
                row.try_get::<String, _>("endpoint_id")?,
                row.try_get::<String, _>("event_id")?,
                row.try_get::<String, _>("message_key")?,
                row.try_get::<i64, _>("attempts")?,
            ));
        }
        let mut keys: Vec<&String> = claimed.iter().map(|c| &c.3).collect();
        keys.sort_unstable();
        keys.dedup();
        let mut bodies = std::collections::HashMap::with_capacity(keys.len());
        for chunk in keys.chunks(ROWS_PER_STATEMENT) {
            let list: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT message_key, body FROM webhook_messages WHERE message_key IN ({})",
                list.join(", ")
            );
            let mut query = sqlx::query(&sql);
            for key in chunk {
                query = query.bind(*key);
            }
            for row in query.fetch_all(&self.pool).await? {
                bodies.insert(
                    row.try_get::<String, _>("message_key")?,
                    bytes::Bytes::from(row.try_get::<String, _>("body")?),
                );
            }
        }
        Ok(claimed
            .into_iter()
            .map(|(id, endpoint_id, event_id, key, attempts)| DueDelivery {
                body: bodies.get(&key).cloned().unwrap_or_default(),
                id,
                endpoint_id,
                event_id,
                attempts,
            })
            .collect())
    }

    /// An endpoint's deliveries, newest first.
    pub async fn deliveries(
        &self,
        endpoint_id: &str,
        query: &DeliveryQuery,
    ) -> Result<Vec<Delivery>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE endpoint_id = $1
             AND ($2 = '' OR status = $2) AND created_at >= $3 AND created_at < $4
             ORDER BY created_at DESC, id LIMIT $5"
        ))
        .bind(endpoint_id)
        .bind(query.status.clone().unwrap_or_default())
        .bind(query.since.unwrap_or(0))
        .bind(query.until.unwrap_or(i64::MAX))
        .bind(query.limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(delivery_from).collect()
    }

    /// One delivery of an endpoint, with its attempts.
    pub async fn delivery(
        &self,
        endpoint_id: &str,
        id: &str,
    ) -> Result<Option<(Delivery, Vec<Attempt>)>, StoreError> {
        let Some(row) = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS}, first_started_at, first_duration_ms, first_status_code,
             first_response_body FROM webhook_deliveries WHERE endpoint_id = $1 AND id = $2"
        ))
        .bind(endpoint_id)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let first_started_at: i64 = row.try_get("first_started_at")?;
        let first = if first_started_at > 0 {
            Some(Attempt {
                attempt: 1,
                started_at: first_started_at,
                duration_ms: row.try_get("first_duration_ms")?,
                status_code: row.try_get("first_status_code")?,
                error: String::new(),
                response_body: row.try_get("first_response_body")?,
            })
        } else {
            None
        };
        let logged = sqlx::query(
            "SELECT attempt, started_at, duration_ms, status_code, error, response_body
             FROM webhook_attempts WHERE delivery_id = $1 ORDER BY attempt",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        let first_in_row = first.is_some();
        let mut attempts = first.into_iter().collect::<Vec<_>>();
        for row in &logged {
            let attempt: i64 = row.try_get("attempt")?;
            // A first attempt of the same event consumed again after a crash: the
            // row's own first attempt stands, as a duplicate attempt row never landed.
            if first_in_row && attempt == 1 {
                continue;
            }
            attempts.push(Attempt {
                attempt,
                started_at: row.try_get("started_at")?,
                duration_ms: row.try_get("duration_ms")?,
                status_code: row.try_get("status_code")?,
                error: row.try_get("error")?,
                response_body: row.try_get("response_body")?,
            });
        }
        Ok(Some((delivery_from(&row)?, attempts)))
    }

    /// Makes finished deliveries of an endpoint due again at `now`: the one named by
    /// `id`, or every failed one created since `since`. Returns how many.
    pub async fn replay(
        &self,
        endpoint_id: &str,
        id: Option<&str>,
        since: i64,
        now: i64,
    ) -> Result<u64, StoreError> {
        let result = sqlx::query(
            "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = $1, updated_at = $1
             WHERE endpoint_id = $2 AND status <> 'pending'
               AND (($3 <> '' AND id = $3) OR ($3 = '' AND status = 'failed' AND created_at >= $4))",
        )
        .bind(now)
        .bind(endpoint_id)
        .bind(id.unwrap_or_default())
        .bind(since)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected())
    }

    /// Deletes finished deliveries, their attempts, and bodies no delivery needs, older than `cutoff`.
    pub async fn purge(&self, cutoff: i64) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "DELETE FROM webhook_attempts WHERE delivery_id IN (SELECT id FROM webhook_deliveries
             WHERE status <> 'pending' AND updated_at < $1)",
        )
        .bind(cutoff)
        .execute(&mut *tx)
        .await?;
        let deleted = sqlx::query(
            "DELETE FROM webhook_deliveries WHERE status <> 'pending' AND updated_at < $1",
        )
        .bind(cutoff)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query(
            "DELETE FROM webhook_messages WHERE created_at < $1 AND NOT EXISTS
             (SELECT 1 FROM webhook_deliveries d WHERE d.message_key = webhook_messages.message_key)",
        )
        .bind(cutoff)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// A pending delivery logged before migration 0003 (messages keyed by event id)
    /// is still claimed with its body after it.
    #[tokio::test]
    async fn deliveries_logged_before_time_ordered_keys_keep_their_bodies() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("log.db").display());
        let pool = omnigate_core::db::connect(&url).await.unwrap();
        // The schema as it was: the migrations before 0003, loaded from a copy.
        let before = dir.path().join("migrations");
        std::fs::create_dir(&before).unwrap();
        for name in ["0001_webhooks.sql", "0002_pending_only_indexes.sql"] {
            let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
            std::fs::copy(source.join(name), before.join(name)).unwrap();
        }
        sqlx::migrate::Migrator::new(before.as_path())
            .await
            .unwrap()
            .run(&pool)
            .await
            .unwrap();
        sqlx::raw_sql(
            "INSERT INTO webhook_endpoints VALUES ('ep_1', 'acme', 'http://127.0.0.1:9/hook',
               '', '[\"*\"]', '{}', '{}', 0, 0, 1, '', 'whsec_x', '', 0, 0, 1, 1);
             INSERT INTO webhook_messages VALUES ('ev-1', 'message.received', '{\"id\":\"ev-1\"}', 1);
             INSERT INTO webhook_deliveries VALUES ('msg_old', 'ep_1', 'acme', 'ev-1',
               'message.received', '', 0, 'pending', 1, 5, 500, 'status 500', 1, 1);",
        )
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;

        let store = WebhookStore::connect(&url).await.unwrap();
        let due = store.claim_due(10, 1_000, 10, &[]).await.unwrap();
        assert_eq!(due.len(), 1, "{due:?}");
        assert_eq!(due[0].id, "msg_old");
        assert_eq!(due[0].event_id, "ev-1");
        assert_eq!(&due[0].body[..], br#"{"id":"ev-1"}"#);
    }
}
