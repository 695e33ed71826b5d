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
                        // The writer itself checkpoints (copies the WAL into the
                        // database, and fsyncs) only past 32 MiB of WAL instead of 4 MiB:
                        // a page written many times between checkpoints is copied once,
                        // and a commit that runs the checkpoint stalls the writer less
                        // often. A store's `Checkpointer` does most of it beside the
                        // writer, so this is the backstop.
                        "PRAGMA wal_autocheckpoint=8192",
                        // A 32 MiB page cache instead of 2 MiB: the delivery log's key
                        // indexes outgrow 2 MiB within minutes, and every page missed is
                        // read back from the OS with a system call and a copy.
                        "PRAGMA cache_size=-32768",
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

/// Connects to `url` (see [`connect`]), runs the store's `schema` statements (each
/// `CREATE … IF NOT EXISTS`), and starts its [`Checkpointer`]: how every store opens.
pub async fn open(url: &str, schema: &[&str]) -> Result<(AnyPool, Checkpointer), sqlx::Error> {
    let pool = connect(url).await?;
    for statement in schema {
        sqlx::query(statement).execute(&pool).await?;
    }
    Ok((pool, Checkpointer::start(url).await?))
}

/// How often a [`Checkpointer`] copies SQLite's write-ahead log into the database
/// while the log grows.
const CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// The longest a [`Checkpointer`] waits between checkpoints while little is written:
/// an idle gateway should not wake ten times a second for nothing, and the first
/// writes after a quiet spell are checkpointed within this.
const CHECKPOINT_IDLE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// New log frames (pages) since the last checkpoint that bring the short interval
/// back: 1 MiB of 4 KiB pages. A few rows written now and then (leases renewed, a
/// retry scheduled) are copied back at the idle pace instead of waking the
/// checkpointer ten times a second after each of them.
const BUSY_FRAMES: i64 = 256;

/// While any clone of it lives, a SQLite database's write-ahead log is copied back
/// into the database file (a passive checkpoint) every 100 ms while it grows by 1 MiB
/// or more between checkpoints, and less often (up to every 5 s) while it grows less,
/// on a connection of its own. Run by
/// the writer at a commit, the same work would hold that commit and every write
/// queued behind it. A passive checkpoint never waits for the writer, nor the writer
/// for it. For PostgreSQL and in-memory SQLite it does nothing.
#[derive(Debug, Clone, Default)]
pub struct Checkpointer {
    /// Dropped with the last clone, which ends the checkpoint task.
    _running: Option<std::sync::Arc<tokio::sync::oneshot::Sender<()>>>,
}

/// The running checkpointers, by database URL: stores that share a database file
/// share its checkpointer, instead of each polling the same log. Held across the
/// connect, so a second store of a file joins the first one's without connecting.
static RUNNING: tokio::sync::Mutex<
    Vec<(String, std::sync::Weak<tokio::sync::oneshot::Sender<()>>)>,
> = tokio::sync::Mutex::const_new(Vec::new());

impl Checkpointer {
    /// Starts checkpointing the database at `url` (as given to [`connect`]), or joins
    /// the checkpointer already running for it.
    pub async fn start(url: &str) -> Result<Self, sqlx::Error> {
        if !is_sqlite(url) || url.contains(":memory:") || url.contains("mode=memory") {
            return Ok(Self::default());
        }
        let mut running_list = RUNNING.lock().await;
        running_list.retain(|(_, weak)| weak.strong_count() > 0);
        if let Some(running) = running_list
            .iter()
            .find(|(u, _)| u == url)
            .and_then(|(_, weak)| weak.upgrade())
        {
            return Ok(Self {
                _running: Some(running),
            });
        }
        let pool = connect(url).await?;
        let (running, stopped) = tokio::sync::oneshot::channel();
        let running = std::sync::Arc::new(running);
        running_list.push((url.to_string(), std::sync::Arc::downgrade(&running)));
        tokio::spawn(checkpoint_loop(pool, stopped));
        Ok(Self {
            _running: Some(running),
        })
    }
}

/// The wait before the next checkpoint: the short interval when the last one found
/// `new_frames` of at least [`BUSY_FRAMES`], twice the last wait (up to the idle
/// interval) when the log grew less or stood still.
fn next_checkpoint_wait(last: std::time::Duration, new_frames: i64) -> std::time::Duration {
    if new_frames >= BUSY_FRAMES {
        CHECKPOINT_INTERVAL
    } else {
        (last * 2).min(CHECKPOINT_IDLE_INTERVAL)
    }
}

async fn checkpoint_loop(pool: AnyPool, mut stopped: tokio::sync::oneshot::Receiver<()>) {
    let seconds = metrics::histogram!(crate::telemetry::metric::SQLITE_CHECKPOINT_SECONDS);
    let mut wait = CHECKPOINT_INTERVAL;
    // The log's size (in frames) at the last checkpoint.
    let mut last_log = 0;
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            () = tokio::time::sleep(wait) => {}
        }
        let started = std::time::Instant::now();
        // The row is (busy, frames in the log, frames checkpointed).
        match sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(&pool)
            .await
        {
            Ok((_, log, _checkpointed)) => {
                seconds.record(started.elapsed().as_secs_f64());
                // A log shorter than before was started over (after a checkpoint that
                // copied all of it back): all its frames are new.
                let new_frames = if log >= last_log { log - last_log } else { log };
                wait = next_checkpoint_wait(wait, new_frames);
                last_log = log;
            }
            Err(err) => {
                // The writer's own checkpoints (the backstop) go on meanwhile.
                metrics::counter!(crate::telemetry::metric::SQLITE_CHECKPOINT_ERRORS_TOTAL)
                    .increment(1);
                tracing::warn!(error = %err, "SQLite checkpoint failed");
                wait = CHECKPOINT_INTERVAL;
            }
        }
    }
    pool.close().await;
}

/// One value of a row for [`insert_rows`]: text or a 64-bit integer, the only types
/// the shared schema uses.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(untagged)]
pub enum SqlValue<'a> {
    /// A `TEXT` column.
    Text(std::borrow::Cow<'a, str>),
    /// A `BIGINT` column.
    Int(i64),
}

impl<'a> From<&'a str> for SqlValue<'a> {
    fn from(text: &'a str) -> Self {
        Self::Text(std::borrow::Cow::Borrowed(text))
    }
}

impl<'a> From<&'a String> for SqlValue<'a> {
    fn from(text: &'a String) -> Self {
        Self::Text(std::borrow::Cow::Borrowed(text))
    }
}

impl From<i64> for SqlValue<'_> {
    fn from(number: i64) -> Self {
        Self::Int(number)
    }
}

/// The most parameters one SQLite statement of [`insert_rows`] binds (SQLite allows
/// 32,766; a few hundred rows per statement already amortize each statement's cost).
const SQLITE_PARAMS_PER_STATEMENT: usize = 2_000;

/// What [`insert_rows`] does with a row whose key exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnConflict<'a> {
    /// Keep the stored row; the key's columns, e.g. `(id)`. On SQLite this is
    /// `INSERT OR IGNORE`, which also skips a row breaking a NOT NULL constraint: with
    /// no statement that could fail halfway, SQLite keeps no statement journal (a copy
    /// of each page before the statement changes it), about a tenth of the delivery
    /// log's SQLite time.
    Ignore(&'a str),
    /// `ON CONFLICT` followed by this, e.g. `(id) DO UPDATE SET ...`.
    Clause(&'a str),
}

impl OnConflict<'_> {
    /// The statement's `INSERT` verb and its `ON CONFLICT` tail.
    fn sql(self, sqlite: bool) -> (&'static str, String) {
        match self {
            Self::Ignore(_) if sqlite => ("INSERT OR IGNORE", String::new()),
            Self::Ignore(key) => ("INSERT", format!("ON CONFLICT {key} DO NOTHING")),
            Self::Clause(clause) => ("INSERT", format!("ON CONFLICT {clause}")),
        }
    }
}

/// Inserts `rows` into `target` (`table (columns)`, one value per column in order),
/// with `on_conflict` deciding what happens to rows whose key exists. Every row has
/// the same shape.
///
/// On SQLite the values are bound as anonymous `?` parameters of multi-row `VALUES`
/// statements. Numbered `$N` parameters cost sqlx a scan of the statement's parameter
/// names per value (time growing with their count squared), and passing the rows as
/// one JSON parameter makes SQLite parse every row's JSON again for each column. On
/// PostgreSQL, a network away, the rows go
/// as one JSON parameter read by `jsonb_array_elements`: one round trip per call.
pub async fn insert_rows(
    conn: &mut sqlx::AnyConnection,
    target: &str,
    on_conflict: OnConflict<'_>,
    rows: &[Vec<SqlValue<'_>>],
) -> Result<(), sqlx::Error> {
    let Some(first) = rows.first() else {
        return Ok(());
    };
    let columns = first.len().max(1);
    let sqlite = conn.backend_name() == <sqlx::Sqlite as sqlx::Database>::NAME;
    let (insert, on_conflict) = on_conflict.sql(sqlite);
    if !sqlite {
        let select: Vec<String> = first
            .iter()
            .enumerate()
            .map(|(i, value)| match value {
                SqlValue::Text(_) => format!("value->>{i}"),
                SqlValue::Int(_) => format!("CAST(value->>{i} AS BIGINT)"),
            })
            .collect();
        let sql = format!(
            "{insert} INTO {target} SELECT {} FROM jsonb_array_elements($1::jsonb) AS rows (value)
             {on_conflict}",
            select.join(", ")
        );
        let json = serde_json::to_string(rows).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        sqlx::query(&sql).bind(json).execute(&mut *conn).await?;
        return Ok(());
    }
    let row_placeholders = format!("({})", vec!["?"; columns].join(", "));
    for chunk in rows.chunks((SQLITE_PARAMS_PER_STATEMENT / columns).max(1)) {
        let sql = format!(
            "{insert} INTO {target} VALUES {} {on_conflict}",
            vec![row_placeholders.as_str(); chunk.len()].join(", ")
        );
        let mut query = sqlx::query(&sql);
        for value in chunk.iter().flatten() {
            query = match value {
                SqlValue::Text(text) => query.bind(text.as_ref()),
                SqlValue::Int(number) => query.bind(*number),
            };
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Waits `linger` after the first item of a batch, then adds what `next` has queued
/// meanwhile, up to `limit` items in all. For writers that commit a batch per
/// transaction: items trickle in a few at a time, and without the pause each would be
/// its own transaction.
pub async fn linger_for_batch<T>(
    batch: &mut Vec<T>,
    limit: usize,
    linger: std::time::Duration,
    mut next: impl FnMut() -> Option<T>,
) {
    if batch.len() >= limit {
        return;
    }
    tokio::time::sleep(linger).await;
    while batch.len() < limit {
        let Some(item) = next() else { break };
        batch.push(item);
    }
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

#[cfg(test)]
mod checkpoint_tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn checkpoints_back_off_while_the_log_grows_little_and_return_when_it_grows_fast() {
        let mut wait = CHECKPOINT_INTERVAL;
        let mut waits = Vec::new();
        for new_frames in [0, 0, 3, 0, 255, 0, 0, 0] {
            wait = next_checkpoint_wait(wait, new_frames);
            waits.push(wait.as_millis());
        }
        assert_eq!(waits, [200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert_eq!(next_checkpoint_wait(wait, 256), Duration::from_millis(100));
    }

    #[tokio::test]
    async fn stores_of_one_database_share_one_checkpointer_until_the_last_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let url = |name: &str| format!("sqlite://{}?mode=rwc", dir.path().join(name).display());
        let running = |c: &Checkpointer| c._running.clone().unwrap();
        let first = Checkpointer::start(&url("a.db")).await.unwrap();
        let second = Checkpointer::start(&url("a.db")).await.unwrap();
        let other = Checkpointer::start(&url("b.db")).await.unwrap();
        assert!(std::sync::Arc::ptr_eq(&running(&first), &running(&second)));
        assert!(!std::sync::Arc::ptr_eq(&running(&first), &running(&other)));
        let shared = std::sync::Arc::downgrade(&running(&first));
        drop((first, second));
        assert_eq!(
            shared.strong_count(),
            0,
            "the loop stops with its last store"
        );
        let again = Checkpointer::start(&url("a.db")).await.unwrap();
        assert!(again._running.is_some(), "a later store starts a new one");
    }
}
