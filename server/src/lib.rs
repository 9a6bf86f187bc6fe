//! The ETL server every node runs: flows (a source, transformations, a destination) defined
//! through a JSON API, run on this node with rows streamed in batches, their runs recorded in
//! Postgres. `run` is the whole server; the `etl-server` binary only reads the config, binds
//! the listener and turns SIGTERM into `shutdown`.

pub mod api;
pub mod cluster;
pub mod config;
pub mod db;
pub mod engine;
pub mod expr;
pub mod flow;
pub mod runs;
pub mod scheduler;
pub mod sink;
pub mod source;
pub mod storage;
pub mod value;

use std::future::Future;
use std::sync::Arc;

pub use config::Config;
pub use flow::Flow;

/// The server's version, reported by `/health`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// How long a heartbeat lives in Redis; nodes beat three times per TTL.
pub const HEARTBEAT_TTL: std::time::Duration = std::time::Duration::from_secs(3);

/// This node's heartbeat as it is now.
pub(crate) fn member(
    config: &Config,
    executor: &runs::Executor,
    started: &str,
    listen: &str,
) -> cluster::Member {
    cluster::Member {
        node: config.node.clone(),
        version: VERSION.to_owned(),
        schema_version: db::schema_version(),
        started: started.to_owned(),
        running: executor.running(),
        draining: executor.draining(),
        weight: config.weight,
        listen: listen.to_owned(),
    }
}

/// Publishes this node's heartbeat until the task is stopped; a Redis outage is logged once
/// and retried.
async fn heartbeat(app: Arc<api::App>) {
    let mut failing = false;
    loop {
        match app.membership.beat(&app.me()).await {
            Ok(()) if failing => {
                tracing::info!("heartbeats reach Redis again");
                failing = false;
            }
            Ok(()) => {}
            Err(e) if !failing => {
                tracing::warn!(error = %e, "heartbeat not published");
                failing = true;
            }
            Err(_) => {}
        }
        tokio::time::sleep(HEARTBEAT_TTL / 3).await;
    }
}

/// Serves until `shutdown` completes: then stops taking requests and work, lets running flows
/// finish for the configured grace period, stops the rest (recorded as failed, never left
/// `running`), and returns.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    std::fs::create_dir_all(&config.shared_storage)
        .map_err(|e| format!("shared storage {}: {e}", config.shared_storage.display()))?;
    let connections = (config.limits.max_running_flows as u32) * 2 + 4;
    let pool = db::connect(&config.postgres_url, connections).await?;
    let redis = redis::Client::open(config.redis_url.as_str())
        .map_err(|_| "the Redis URL is not valid".to_owned())?;
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
    let app = Arc::new(api::App {
        config,
        pool: pool.clone(),
        membership,
        executor: executor.clone(),
        started: chrono::Utc::now().to_rfc3339(),
        leadership: Default::default(),
        listen: listener
            .local_addr()
            .map_err(|e| format!("listener: {e}"))?
            .to_string(),
    });
    let beats = tokio::spawn(heartbeat(app.clone()));
    let sweeps = tokio::spawn(sweeper(app.clone()));
    let leads = tokio::spawn(scheduler::lead(app.clone()));
    let app_for_stop = app.clone();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let mut http_stop = stop_rx.clone();
    let served = axum::serve(
        listener,
        api::router(app).into_make_service_with_connect_info::<std::net::SocketAddr>(),
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
    served.map_err(|e| format!("serving HTTP: {e}"))
}

/// How often the sweeper looks for nodes that went away.
const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Every `SWEEP_INTERVAL`, the node holding the sweeper lock hands the runs of nodes whose
/// heartbeat has been gone for a whole TTL to live nodes (`runs::sweep`). It does nothing while
/// it cannot see its own heartbeat: after a Redis restart every node looks gone until the
/// heartbeats come back.
async fn sweeper(app: Arc<api::App>) {
    let (membership, pool, config) = (&app.membership, &app.pool, &app.config);
    let mut missing_since: std::collections::HashMap<String, std::time::Instant> =
        Default::default();
    loop {
        tokio::time::sleep(SWEEP_INTERVAL).await;
        let Ok(members) = membership.members().await else {
            continue;
        };
        if !members.iter().any(|m| m.node == config.node)
            || !membership
                .try_lock("sweeper", &config.node, SWEEP_INTERVAL)
                .await
        {
            continue;
        }
        let Ok(with_work) = runs::nodes_with_work(pool).await else {
            continue;
        };
        let now = std::time::Instant::now();
        let alive = |n: &str| members.iter().any(|m| m.node == n);
        missing_since.retain(|n, _| !alive(n));
        let dead: Vec<String> = with_work
            .into_iter()
            .filter(|n| !alive(n))
            .filter(|n| {
                now.duration_since(*missing_since.entry(n.clone()).or_insert(now)) >= HEARTBEAT_TTL
            })
            .collect();
        if dead.is_empty() {
            continue;
        }
        // The same choice of nodes as a run request makes.
        let Ok(live) = app.targets().await else {
            continue;
        };
        match runs::sweep(pool, &dead, &live, config.load_balancing).await {
            Ok(swept) => {
                tracing::warn!(
                    ?dead,
                    ?swept,
                    "runs of nodes that went away were handed over"
                );
                for (_, node) in swept.retries.iter().chain(&swept.redispatched) {
                    membership.wake(node).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "sweeping the runs of nodes that went away"),
        }
    }
}
