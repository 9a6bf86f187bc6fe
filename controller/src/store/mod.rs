//! The controller's state store (sqlx): a SQLite file by default (nothing to install), or
//! Postgres for a controller that must survive its machine. One [`Store`] over both: the same
//! SQL text runs on each (`$N` placeholders, integer unix milliseconds, JSON as text), each
//! backend has its own migrations folder with the same numbers, and one conformance suite
//! (`controller/tests/store.rs`) runs against both. SQLite runs in WAL mode with a busy
//! timeout, and its write transactions take the write lock up front (`BEGIN IMMEDIATE`: a
//! deferred transaction that reads first fails at once on the lock upgrade); its migrations
//! run under a lock file beside the database (sqlx takes no lock for SQLite). Holds the audit
//! log (`audit.rs`), rollouts with their orders, per-node outcomes and the order sequence
//! (`rollouts.rs`), each node's last status and last failure to reach it (`nodes.rs`), and
//! the users of `fleet serve` with their sessions and API tokens (`users.rs`).
//! Never a secret: what goes in is what the operator may read.

mod audit;
mod nodes;
mod rollouts;
mod users;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

pub use audit::{AuditEntry, AuditRow, Tamper};
pub use nodes::NodeSnapshot;
pub use rollouts::{NodeOutcome, Rollout};
pub use users::{Principal, Role, Token, User};

/// How long a SQLite statement waits for another writer before it fails.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the same expression on whichever pool the store has (the SQL is the same text).
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match $store {
            $crate::store::Store::Sqlite($pool) => $body,
            $crate::store::Store::Postgres($pool) => $body,
        }
    };
}
pub(crate) use on_pool;

/// Where the state lives: a SQLite file or a Postgres URL (which may hold a password: never
/// displayed).
#[derive(Clone)]
pub enum StateLocation {
    Sqlite(PathBuf),
    Postgres(String),
}

impl std::fmt::Display for StateLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateLocation::Sqlite(path) => write!(f, "{}", path.display()),
            StateLocation::Postgres(url) => f.write_str(&fleet_inventory::mask_url_password(url)),
        }
    }
}

impl std::fmt::Debug for StateLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StateLocation({self})")
    }
}

impl StateLocation {
    /// `--state` (or `FLEET_STATE`): a `postgres://` URL or a file path; none: `state.db` in
    /// the controller's data directory (`crate::files::data_dir`).
    pub fn from_setting(setting: Option<&str>) -> Result<StateLocation, StoreError> {
        let setting = setting
            .map(str::to_owned)
            .or_else(|| std::env::var("FLEET_STATE").ok().filter(|s| !s.is_empty()));
        Ok(match setting {
            Some(s) if s.starts_with("postgres://") || s.starts_with("postgresql://") => {
                StateLocation::Postgres(s)
            }
            Some(s) => StateLocation::Sqlite(PathBuf::from(s)),
            None => StateLocation::Sqlite(
                crate::files::data_dir()
                    .ok_or(StoreError::NoDataDir)?
                    .join("state.db"),
            ),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no data directory: set FLEET_DATA_DIR, XDG_DATA_HOME or HOME, or give --state")]
    NoDataDir,
    #[error("state store {location}: {error}")]
    Open { location: String, error: String },
    #[error("state store {location}: migrating: {error}")]
    Migrate { location: String, error: String },
    #[error("state store: {0}")]
    Query(String),
    #[error("state store: {0}")]
    Corrupt(String),
    #[error("a rollout is already in flight on cluster {cluster}: {rollout}")]
    RolloutInFlight { cluster: String, rollout: String },
    #[error("a rollout with id {id} exists already")]
    RolloutExists { id: String },
    #[error("rollout {id} has ended (or does not exist)")]
    RolloutEnded { id: String },
    #[error("a user named {name} exists already")]
    UserExists { name: String },
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        // sqlx's errors name neither URLs nor passwords.
        StoreError::Query(e.to_string())
    }
}

/// The open store.
#[derive(Clone)]
pub enum Store {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

impl Store {
    /// Opens (creating a SQLite file and its directory if needed) and migrates.
    pub async fn open(location: &StateLocation) -> Result<Store, StoreError> {
        let shown = location.to_string();
        let open_error = |error: String| StoreError::Open {
            location: shown.clone(),
            error,
        };
        let migrate_error = |error: sqlx::migrate::MigrateError| StoreError::Migrate {
            location: shown.clone(),
            error: error.to_string(),
        };
        match location {
            StateLocation::Sqlite(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| open_error(e.to_string()))?;
                }
                let options = sqlx::sqlite::SqliteConnectOptions::from_str("sqlite://")
                    .map_err(|e| open_error(e.to_string()))?
                    .filename(path)
                    .create_if_missing(true)
                    .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                    .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
                    .busy_timeout(BUSY_TIMEOUT)
                    .foreign_keys(true);
                let pool = sqlx::sqlite::SqlitePoolOptions::new()
                    .max_connections(4)
                    .connect_with(options)
                    .await
                    .map_err(|e| open_error(e.to_string()))?;
                {
                    let _lock = MigrationLock::take(path).map_err(|e| open_error(e.to_string()))?;
                    SQLITE_MIGRATIONS.run(&pool).await.map_err(migrate_error)?;
                }
                Ok(Store::Sqlite(pool))
            }
            StateLocation::Postgres(url) => {
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(4)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect(url)
                    .await
                    .map_err(|e| open_error(e.to_string()))?;
                // sqlx holds an advisory lock while it migrates Postgres.
                POSTGRES_MIGRATIONS
                    .run(&pool)
                    .await
                    .map_err(migrate_error)?;
                Ok(Store::Postgres(pool))
            }
        }
    }

    pub async fn close(&self) {
        on_pool!(self, pool => pool.close().await)
    }
}

/// A lock file beside a SQLite database, held while it is migrated.
struct MigrationLock(#[allow(dead_code)] std::fs::File);

impl MigrationLock {
    fn take(db: &Path) -> std::io::Result<MigrationLock> {
        let mut name = db.as_os_str().to_owned();
        name.push(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(PathBuf::from(name))?;
        file.lock()?;
        Ok(MigrationLock(file))
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
