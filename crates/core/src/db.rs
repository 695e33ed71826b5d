//! The SQL database every role shares (SQLite embedded by default, PostgreSQL in
//! production), opened one way so each store gets the same tuning.

use sqlx::{AnyPool, any::AnyPoolOptions};

/// Connects to `sqlite://path?mode=rwc` or `postgres://…`.
///
/// SQLite gets one connection (it has one writer; more connections only fight over
/// its lock) that is not pinged before each use, WAL so readers run beside the writer,
/// and a busy timeout so another process's writer is waited for instead of failing at
/// once.
pub async fn connect(url: &str) -> Result<AnyPool, sqlx::Error> {
    sqlx::any::install_default_drivers();
    let sqlite = is_sqlite(url);
    AnyPoolOptions::new()
        .max_connections(if sqlite { 1 } else { 8 })
        // sqlx pings a connection before each use by default. SQLite's is a file in this
        // process, never dropped by a network: the ping only doubled every statement's
        // hand-offs to sqlx's SQLite worker thread.
        .test_before_acquire(!sqlite)
        .after_connect(move |conn, _| {
            Box::pin(async move {
                if sqlite {
                    // NORMAL syncs at checkpoints (safe in WAL mode) instead of at every commit.
                    for pragma in [
                        "PRAGMA journal_mode=WAL",
                        "PRAGMA synchronous=NORMAL",
                        "PRAGMA busy_timeout=5000",
                        // Statement journals (every multi-row INSERT ... ON CONFLICT in a
                        // transaction keeps one) stay in memory instead of a temp file.
                        "PRAGMA temp_store=MEMORY",
                        // Checkpoint (copy the WAL into the database, and fsync) every
                        // 32 MiB instead of every 4 MiB: a page written many times
                        // between checkpoints is copied once, and a commit that runs the
                        // checkpoint stalls the writer less often.
                        "PRAGMA wal_autocheckpoint=8192",
                    ] {
                        sqlx::query(pragma).execute(&mut *conn).await?;
                    }
                }
                Ok(())
            })
        })
        .connect(url)
        .await
}

/// Inserts `rows` into `target` (`table (columns)`), with `on_conflict` deciding what
/// happens to rows whose key exists (`(id) DO NOTHING`, `(id) DO UPDATE SET ...`).
///
/// The rows go as one JSON parameter, an array of arrays, which `select` reads back
/// from a one-column table `value` (`value->>0, CAST(value->>1 AS BIGINT)`): one
/// statement whatever the batch size, where a parameter per value would cost sqlx's
/// SQLite driver time that grows with their count squared. `sqlite` picks the JSON
/// table function (`json_each` on SQLite, `jsonb_array_elements` on PostgreSQL).
pub async fn insert_json_rows<'e, E, T>(
    executor: E,
    sqlite: bool,
    target: &str,
    select: &str,
    on_conflict: &str,
    rows: &[T],
) -> Result<(), sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
    T: serde::Serialize,
{
    if rows.is_empty() {
        return Ok(());
    }
    let source = if sqlite {
        "json_each($1)"
    } else {
        "jsonb_array_elements($1::jsonb) AS rows (value)"
    };
    // `WHERE true` tells SQLite's parser the ON CONFLICT belongs to the INSERT.
    let sql = format!(
        "INSERT INTO {target} SELECT {select} FROM {source} WHERE true ON CONFLICT {on_conflict}"
    );
    let json = serde_json::to_string(rows).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    sqlx::query(&sql).bind(json).execute(executor).await?;
    Ok(())
}

/// Whether `url` names an SQLite database (the other choice is PostgreSQL).
pub fn is_sqlite(url: &str) -> bool {
    url.starts_with("sqlite:")
}

/// Checks that `url` names a database [`connect`] can open; `key` names the option.
pub fn validate_url(key: &str, url: &str) -> Result<(), crate::ConfigError> {
    if ["sqlite:", "postgres://", "postgresql://"]
        .iter()
        .any(|scheme| url.starts_with(scheme))
    {
        Ok(())
    } else {
        Err(crate::ConfigError::new(
            key,
            "must start with sqlite: or postgres://",
        ))
    }
}
