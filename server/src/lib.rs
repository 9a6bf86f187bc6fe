//! The ETL server every node runs: flows (a source, transformations, a destination) defined
//! through a JSON API, run on this node with rows streamed in batches, their runs recorded in
//! Postgres. `run` is the whole server; the `etl-server` binary only reads the config, binds
//! the listener and turns SIGTERM into `shutdown`. Each part has its error type
//! (`ConfigError`, `RunsError`, the pipeline's, HTTP's `AppError`); `run` answers a
//! `ServerError`.

pub mod auth;
mod cluster;
mod config;
mod db;
mod http;
mod node;
mod node_lock;
mod pipeline;
mod runs;
pub mod token_cli;

use std::future::Future;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use cluster::HEARTBEAT_TTL;
pub use config::{
    Config, ConfigError, ConfigProblem, PostgresSettings, SourceConnection, Tenant, TlsSettings,
};
pub use db::{connect as connect_db, schema_version};
pub use http::routes::{Access, Route, routes};
pub use pipeline::{Flow, StorageError};
pub use runs::RunsError;

/// The server's version, reported by `/health`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Serves until `shutdown` completes (or HTTP fails): then cancels the server's one token,
/// so every loop stops taking requests and work and the scheduler's lease is given up; lets
/// running flows finish for the configured grace period, stops the rest (recorded as failed,
/// never left `running`), waits for every tracked task, and returns.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    std::fs::create_dir_all(&config.shared_storage).map_err(|e| StorageError::Unavailable {
        base: config.shared_storage.clone(),
        error: Arc::new(e),
    })?;
    // One process per node name: held before anything touches the database, so a second
    // process with this name neither migrates nor marks this one's runs failed.
    let name = node_lock::NodeLock::take(&config.postgres_url, &config.node).await?;
    let connections = (config.limits.max_running_flows as u32) * 2 + 4;
    let pool = db::connect(&config.postgres_url, &config.postgres, connections).await?;
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
    let listen = listener
        .local_addr()
        .map_err(ServerError::Listener)?
        .to_string();
    // HTTPS: the certificate and key read, and the address bound, before anything serves.
    let tls = match &config.tls {
        None => None,
        Some(t) => {
            let server =
                fleet_tls::server_config(&t.cert_file, &t.key_file).map_err(ServerError::Tls)?;
            let bound = tokio::net::TcpListener::bind(t.listen)
                .await
                .map_err(|e| ServerError::Tls(format!("listen_tls {}: {e}", t.listen)))?;
            Some((bound, server))
        }
    };
    let listen_tls = match &tls {
        Some((l, _)) => Some(l.local_addr().map_err(ServerError::Listener)?.to_string()),
        None => None,
    };
    let peer_tls = match config.tls.as_ref().and_then(|t| t.ca_file.as_ref()) {
        Some(ca) => Some(fleet_tls::client_config(ca).map_err(ServerError::Tls)?),
        None => None,
    };
    // The one shutdown: every loop selects on `stop`, every task is spawned on `tasks`.
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    let executor = runs::Executor::new(pool.clone(), &config, stop.clone(), tasks.clone());
    executor.set_probation(config.probation);
    let grace = config.shutdown_grace();
    let node = Arc::new(node::Node {
        gate: auth::Gate::new(&config),
        config,
        listen_tls,
        peer_tls,
        pool: pool.clone(),
        membership,
        executor: executor.clone(),
        started: chrono::Utc::now().to_rfc3339(),
        leadership: Default::default(),
        listen,
        stop: stop.clone(),
        tasks: tasks.clone(),
        drain: Default::default(),
        beating: Default::default(),
    });
    let held = tasks.spawn(name.hold(stop.clone()));
    tasks.spawn(executor.clone().serve());
    tasks.spawn(cluster::wakes(node.clone()));
    tasks.spawn(cluster::heartbeat(node.clone()));
    tasks.spawn(cluster::sweeper(node.clone()));
    tasks.spawn(cluster::scheduler::lead(node.clone()));
    let http = tasks.spawn({
        let stop = stop.clone();
        async move {
            let served = http::serve(listener, tls, node).await;
            // HTTP failing stops the whole server.
            stop.cancel();
            served
        }
    });
    tokio::select! {
        () = shutdown => {}
        () = stop.cancelled() => {}
    }
    stop.cancel();
    tracing::info!("shutting down: no new runs; waiting for running ones");
    executor.shutdown(grace).await;
    tasks.close();
    // Runs have ended; what is left (requests in flight, the last heartbeat) gets the grace.
    if tokio::time::timeout(grace.max(SETTLE), tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            tasks = tasks.len(),
            "tasks still running after the grace period"
        );
    }
    // A connection an abandoned run still holds is not waited for.
    if tokio::time::timeout(SETTLE, pool.close()).await.is_err() {
        tracing::warn!("database connections still busy at exit: not waited for");
    }
    // The node's name goes last, once every run of this life recorded its end.
    match held.await {
        Ok(Ok(name)) => name.release().await,
        Ok(Err(lost)) => return Err(lost),
        Err(_) => {}
    }
    match http.is_finished() {
        true => match http.await {
            Ok(served) => served.map_err(ServerError::Serve),
            Err(e) => Err(ServerError::Serve(std::io::Error::other(e))),
        },
        false => Ok(()),
    }
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
    /// Another process holds this node's name (one process per node name): at start, or
    /// after this one lost the session that held it.
    #[error(
        "node `{node}` is already served by another etl-server ({holder}); one process per node name"
    )]
    NodeTaken { node: String, holder: String },
    /// The run store failed at start (marking the runs an earlier start left running).
    #[error(transparent)]
    Runs(#[from] RunsError),
    /// HTTPS cannot be served: a certificate or key file, or `listen_tls`.
    #[error("TLS: {0}")]
    Tls(String),
    /// The listener has no local address.
    #[error("listener: {0}")]
    Listener(std::io::Error),
    /// Serving HTTP stopped on an error.
    #[error("serving HTTP: {0}")]
    Serve(std::io::Error),
}

/// The least time the tasks get to end once runs have (requests in flight, a last heartbeat).
const SETTLE: std::time::Duration = std::time::Duration::from_secs(5);

/// `N` random bytes as lowercase hex: lease tokens, process ids, temporary names.
pub(crate) fn random_hex<const N: usize>() -> std::io::Result<String> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(std::io::Error::other)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
