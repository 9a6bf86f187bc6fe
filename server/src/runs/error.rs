//! The errors of the run store: Postgres failing (its text without the URL), or membership
//! (Redis) failing where a run's node is chosen. Not a run's own failure, which is the
//! pipeline's `PipelineError` recorded as the run's text.

/// Why the run store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum RunsError {
    /// Postgres refused the statement or could not be reached.
    #[error("database: {}", crate::db::describe(.0))]
    Database(sqlx::Error),
    /// The operating system gave no random bytes (the `random` load balancing).
    #[error("random: {0}")]
    Random(getrandom::Error),
    /// Membership could not be read from Redis.
    #[error("{0}")]
    Cluster(crate::cluster::ClusterError),
}

impl From<sqlx::Error> for RunsError {
    fn from(e: sqlx::Error) -> Self {
        RunsError::Database(e)
    }
}
