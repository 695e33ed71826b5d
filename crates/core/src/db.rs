//! The SQL database every role shares (SQLite embedded by default, PostgreSQL in
//! production), opened one way so each store gets the same tuning.

use sqlx::{AnyPool, any::AnyPoolOptions};

/// Connects to `sqlite://path?mode=rwc` or `postgres://…`.
///
/// SQLite gets one connection (it has one writer; more connections only fight over
/// its lock), WAL so readers run beside the writer, and a busy timeout so another
/// process's writer is waited for instead of failing at once.
pub async fn connect(url: &str) -> Result<AnyPool, sqlx::Error> {
    sqlx::any::install_default_drivers();
    let sqlite = url.starts_with("sqlite:");
    AnyPoolOptions::new()
        .max_connections(if sqlite { 1 } else { 8 })
        .after_connect(move |conn, _| {
            Box::pin(async move {
                if sqlite {
                    // NORMAL syncs at checkpoints (safe in WAL mode) instead of at every commit.
                    for pragma in [
                        "PRAGMA journal_mode=WAL",
                        "PRAGMA synchronous=NORMAL",
                        "PRAGMA busy_timeout=5000",
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
