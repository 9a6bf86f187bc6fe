//! The heartbeat: every `supervise.heartbeat_interval_ms` the daemon writes its
//! `fleet_proto::NodeReport` (the node's status with the daemon's view, and the time) to
//! `<prefix>agent:<node>` in the cluster's Redis, with a TTL, so a node that stops reporting
//! disappears (and a daemon that shuts down with its server removes it at once). Redis is
//! coordination, never needed: when it is down supervision goes on, the outage is logged once
//! (and shown in `status`), and heartbeats resume by themselves. The Redis URL holds a password
//! and is never logged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_proto::NodeReport;
use tokio_util::sync::CancellationToken;

use super::Daemon;

/// One connection attempt or command waits at most this long.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// The key a node's heartbeat lives under.
pub fn key(prefix: &str, node: &str) -> String {
    format!("{prefix}agent:{node}")
}

pub async fn heartbeat(daemon: Arc<Daemon>, shutdown: CancellationToken) {
    let Some(url) = daemon.config.redis_url.clone() else {
        daemon.snapshot().redis_error = Some("no redis_url_file in config/agent.toml".into());
        return;
    };
    let client = match redis::Client::open(url.as_str()) {
        Ok(c) => c,
        Err(e) => {
            // The parser's message does not repeat the URL.
            let error = format!("the Redis URL in redis_url_file is not usable: {e}");
            tracing::error!("{error}; no heartbeats");
            daemon.snapshot().redis_error = Some(error);
            return;
        }
    };
    let key = key(&daemon.config.redis_prefix, &daemon.config.node);
    let ttl = daemon.config.supervise.heartbeat_ttl();
    let mut conn: Option<redis::aio::MultiplexedConnection> = None;
    let mut tick = tokio::time::interval(daemon.config.supervise.heartbeat_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => {
                withdraw(&daemon, &client, &mut conn, &key).await;
                return;
            }
            _ = tick.tick() => {}
            () = daemon.heartbeat_now.notified() => {}
        }
        let result = beat(&daemon, &client, &mut conn, &key, ttl).await;
        let mut s = daemon.snapshot();
        match result {
            Ok(()) => {
                if s.redis_error.take().is_some() {
                    tracing::info!("Redis answers again: heartbeats resumed");
                }
                s.heartbeat_at = Some(Instant::now());
            }
            Err(error) => {
                conn = None;
                if s.redis_error.is_none() {
                    tracing::warn!(
                        "heartbeat to Redis failed: {error}; supervision goes on, retrying every interval (logged once)"
                    );
                }
                s.redis_error = Some(error);
            }
        }
    }
}

/// On a shutdown that stops the server, the heartbeat goes at once instead of lingering until
/// its TTL: the cluster's agents count the node out of service from now (an agent replaced by
/// a new binary keeps its server, and its heartbeat stays for the new one to renew).
async fn withdraw(
    daemon: &Daemon,
    client: &redis::Client,
    conn: &mut Option<redis::aio::MultiplexedConnection>,
    key: &str,
) {
    if daemon.keep_server.load(std::sync::atomic::Ordering::SeqCst)
        || daemon
            .replace_with
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    {
        return;
    }
    if conn.is_none() {
        *conn = tokio::time::timeout(REDIS_TIMEOUT, client.get_multiplexed_async_connection())
            .await
            .ok()
            .and_then(Result::ok);
    }
    if let Some(c) = conn.as_mut() {
        let deleted = tokio::time::timeout(
            REDIS_TIMEOUT,
            redis::cmd("DEL").arg(key).query_async::<()>(c),
        )
        .await;
        if !matches!(deleted, Ok(Ok(()))) {
            tracing::warn!(
                "removing this node's heartbeat on shutdown failed; it expires by itself"
            );
        }
    }
}

async fn beat(
    daemon: &Daemon,
    client: &redis::Client,
    conn: &mut Option<redis::aio::MultiplexedConnection>,
    key: &str,
    ttl: Duration,
) -> Result<(), String> {
    let status = daemon.status().await.map_err(|e| e.to_string())?;
    let report = NodeReport {
        status,
        reported_at_unix_ms: super::unix_ms(),
    };
    let value = serde_json::to_string(&report).map_err(|e| e.to_string())?;
    if conn.is_none() {
        let made = tokio::time::timeout(REDIS_TIMEOUT, client.get_multiplexed_async_connection())
            .await
            .map_err(|_| format!("no connection within {} s", REDIS_TIMEOUT.as_secs()))?
            .map_err(|e| e.to_string())?;
        *conn = Some(made);
    }
    let Some(c) = conn.as_mut() else {
        return Err("no connection".into());
    };
    let mut cmd = redis::cmd("SET");
    cmd.arg(key)
        .arg(value)
        .arg("PX")
        .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
    tokio::time::timeout(REDIS_TIMEOUT, cmd.query_async::<()>(c))
        .await
        .map_err(|_| format!("no answer within {} s", REDIS_TIMEOUT.as_secs()))?
        .map_err(|e| e.to_string())
}
