//! Why a cluster-mode step failed: Redis (membership, locks, the leader lease), Postgres (the
//! leadership's epoch), or the run store under a drain or a fire. Texts never hold a password.
//! Not the answer a client sees: `http` turns these into a generic 503.

use std::sync::Arc;

use crate::runs::RunsError;

/// How long a new Redis connection may take before the step gives up.
pub const REDIS_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Debug, Clone, thiserror::Error)]
pub enum ClusterError {
    /// Redis did not accept a connection within `REDIS_CONNECT_TIMEOUT`.
    #[error("Redis: no answer within {} s", REDIS_CONNECT_TIMEOUT.as_secs())]
    RedisTimeout,
    /// Redis refused or failed a command (the connection is dropped and made again).
    #[error("Redis: {}", fleet_inventory::mask_url_password(&.0.to_string()))]
    Redis(Arc<redis::RedisError>),
    /// Postgres failed while reading or granting the leadership's epoch.
    #[error("{}", crate::db::describe(.0))]
    Database(Arc<sqlx::Error>),
    /// The run store failed (handing runs back on a drain, recording a fire's run).
    #[error("{0}")]
    Runs(Arc<RunsError>),
}

impl From<redis::RedisError> for ClusterError {
    fn from(e: redis::RedisError) -> Self {
        ClusterError::Redis(Arc::new(e))
    }
}

impl From<sqlx::Error> for ClusterError {
    fn from(e: sqlx::Error) -> Self {
        ClusterError::Database(Arc::new(e))
    }
}

impl From<RunsError> for ClusterError {
    fn from(e: RunsError) -> Self {
        ClusterError::Runs(Arc::new(e))
    }
}
