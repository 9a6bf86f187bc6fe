//! The server's Postgres: connecting (every session with a `lock_timeout` and an
//! `idle_in_transaction_session_timeout`, so no lock held elsewhere and no forgotten
//! transaction holds the server up), migrating (one server at a time, under sqlx's advisory
//! lock, so several servers may start at once), and error text that never shows a password
//! (`describe`, which every error holding a `sqlx::Error` displays through).

use std::str::FromStr;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::ServerError;
use crate::config::PostgresSettings;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How every session of the server's pool connects: `url` with the settings' timeouts.
pub fn connect_options(
    url: &str,
    settings: &PostgresSettings,
) -> Result<PgConnectOptions, sqlx::Error> {
    Ok(PgConnectOptions::from_str(url)?.options([
        ("lock_timeout", format!("{}ms", settings.lock_timeout_ms)),
        (
            "idle_in_transaction_session_timeout",
            format!("{}ms", settings.idle_in_transaction_timeout_ms),
        ),
    ]))
}

/// Connects a pool and brings the schema up to date.
pub async fn connect(
    url: &str,
    settings: &PostgresSettings,
    max_connections: u32,
) -> Result<PgPool, ServerError> {
    let connect = connect_options(url, settings).map_err(ServerError::Connect)?;
    let options = || PgPoolOptions::new().acquire_timeout(Duration::from_secs(10));
    // Migrations on a connection of their own: sqlx does not release its lock when a
    // migration fails, and closing the connection does. Waiting for another server's
    // migration is bounded by `lock_timeout` too.
    let migrate_pool = options()
        .max_connections(1)
        .connect_with(connect.clone())
        .await
        .map_err(ServerError::Connect)?;
    let migrated = MIGRATOR.run(&migrate_pool).await;
    migrate_pool.close().await;
    migrated.map_err(ServerError::Migrate)?;
    options()
        .max_connections(max_connections)
        .connect_with(connect)
        .await
        .map_err(ServerError::Connect)
}

/// The newest schema version this server knows.
pub fn schema_version() -> i64 {
    MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
}

/// An error's text for logs and API answers: the database's message, never the URL.
pub fn describe(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => db.message().to_owned(),
        sqlx::Error::Configuration(_) => "the Postgres URL is not valid".to_owned(),
        other => fleet_inventory::mask_url_password(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every session of the pool (and the migration connection, made from the same options)
    /// reports the configured timeouts.
    #[tokio::test]
    async fn every_session_of_the_pool_sets_its_timeouts() {
        let db = fleet_tests::TestDb::new("dbtimeouts").await;
        let settings = PostgresSettings {
            lock_timeout_ms: 1234,
            idle_in_transaction_timeout_ms: 5678,
        };
        let pool = connect(&db.url, &settings, 2).await.expect("connect");
        let mut sessions = Vec::new();
        for _ in 0..2 {
            sessions.push(pool.acquire().await.expect("session"));
        }
        for conn in &mut sessions {
            let lock: String = sqlx::query_scalar("SHOW lock_timeout")
                .fetch_one(&mut **conn)
                .await
                .expect("show");
            let idle: String = sqlx::query_scalar("SHOW idle_in_transaction_session_timeout")
                .fetch_one(&mut **conn)
                .await
                .expect("show");
            assert_eq!((lock.as_str(), idle.as_str()), ("1234ms", "5678ms"));
        }
        drop(sessions);
        pool.close().await;
    }
}
