//! The server's Postgres: connecting, migrating (one server at a time, under sqlx's advisory
//! lock, so several servers may start at once), and error text that never shows a password
//! (`describe`, which every error holding a `sqlx::Error` displays through).

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::ServerError;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Connects a pool and brings the schema up to date.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, ServerError> {
    let options = || PgPoolOptions::new().acquire_timeout(Duration::from_secs(10));
    // Migrations on a connection of their own: sqlx does not release its lock when a
    // migration fails, and closing the connection does.
    let migrate_pool = options()
        .max_connections(1)
        .connect(url)
        .await
        .map_err(ServerError::Connect)?;
    let migrated = MIGRATOR.run(&migrate_pool).await;
    migrate_pool.close().await;
    migrated.map_err(ServerError::Migrate)?;
    options()
        .max_connections(max_connections)
        .connect(url)
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
