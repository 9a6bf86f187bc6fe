//! The ETL server every node runs: flows (a source, transformations, a destination) defined
//! through a JSON API, run on this node with rows streamed in batches, their runs recorded in
//! Postgres. `run` is the whole server; the `etl-server` binary only reads the config, binds
//! the listener and turns SIGTERM into `shutdown`. Each part has its error type
//! (`ConfigError`, `RunsError`, the pipeline's, HTTP's `AppError`); `run` answers a
//! `ServerError`.

mod cluster;
mod config;
mod db;
mod http;
mod node;
mod pipeline;
mod runs;

use std::future::Future;
use std::sync::Arc;

pub use cluster::HEARTBEAT_TTL;
pub use config::{Config, ConfigError, ConfigProblem};
pub use db::schema_version;
pub use pipeline::{Flow, StorageError};
pub use runs::RunsError;

/// The server's version, reported by `/health`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Serves until `shutdown` completes: then stops taking requests and work, lets running flows
/// finish for the configured grace period, stops the rest (recorded as failed, never left
/// `running`), and returns.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    std::fs::create_dir_all(&config.shared_storage).map_err(|e| StorageError::Unavailable {
        base: config.shared_storage.clone(),
        error: Arc::new(e),
    })?;
    let connections = (config.limits.max_running_flows as u32) * 2 + 4;
    let pool = db::connect(&config.postgres_url, connections).await?;
    // Redis's own error may quote the URL, password included.
    let redis =
        redis::Client::open(config.redis_url.as_str()).map_err(|_| ServerError::RedisUrl)?;
    let membership = Arc::new(cluster::Membership::new(
        redis,
        config.redis_prefix.clone(),
        HEARTBEAT_TTL,
    ));
    let orphans = runs::fail_orphans(&pool, &config.node).await?;
    if orphans > 0 {
        tracing::warn!(
            orphans,
            "runs left running by an earlier start are marked failed"
        );
    }
    let executor = runs::Executor::new(
        pool.clone(),
        config.node.clone(),
        config.shared_storage.clone(),
        config.limits.max_running_flows,
    );
    let claims = tokio::spawn(executor.clone().serve());
    let wakes = {
        let (membership, executor, node) =
            (membership.clone(), executor.clone(), config.node.clone());
        tokio::spawn(async move { membership.listen_wakes(&node, || executor.poke()).await })
    };
    let grace = config.shutdown_grace();
    let app = Arc::new(node::Node {
        config,
        pool: pool.clone(),
        membership,
        executor: executor.clone(),
        started: chrono::Utc::now().to_rfc3339(),
        leadership: Default::default(),
        listen: listener
            .local_addr()
            .map_err(ServerError::Listener)?
            .to_string(),
    });
    let beats = tokio::spawn(cluster::heartbeat(app.clone()));
    let sweeps = tokio::spawn(cluster::sweeper(app.clone()));
    let leads = tokio::spawn(cluster::scheduler::lead(app.clone()));
    let app_for_stop = app.clone();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let mut http_stop = stop_rx.clone();
    let served = axum::serve(
        listener,
        http::router(app).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        let _ = http_stop.wait_for(|s| *s).await;
    })
    .await;
    tracing::info!("shutting down: no new runs; waiting for running ones");
    leads.abort();
    app_for_stop.leadership.step_down(&app_for_stop).await;
    executor.shutdown(grace).await;
    claims.abort();
    beats.abort();
    wakes.abort();
    sweeps.abort();
    pool.close().await;
    served.map_err(ServerError::Serve)
}

/// Why the server could not start or stopped serving. Each text is the whole line (cause
/// included, never a password); none has a `source()`.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Shared storage cannot be made.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Postgres cannot be reached, or refused the login.
    #[error("connecting to Postgres: {}", db::describe(.0))]
    Connect(sqlx::Error),
    /// A migration failed (sqlx leaves that migration undone).
    #[error("migrating the database: {0}")]
    Migrate(sqlx::migrate::MigrateError),
    #[error("the Redis URL is not valid")]
    RedisUrl,
    /// The run store failed at start (marking the runs an earlier start left running).
    #[error(transparent)]
    Runs(#[from] RunsError),
    /// The listener has no local address.
    #[error("listener: {0}")]
    Listener(std::io::Error),
    /// Serving HTTP stopped on an error.
    #[error("serving HTTP: {0}")]
    Serve(std::io::Error),
}
