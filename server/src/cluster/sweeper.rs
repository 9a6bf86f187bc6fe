//! The sweeper: the node holding the `sweeper` lock hands the runs of nodes that went away to
//! live ones. Not the hand-over itself, which is one transaction in `runs::sweep`.

use std::sync::Arc;

use crate::cluster::HEARTBEAT_TTL;
use crate::node::Node;
use crate::runs;

/// How often the sweeper looks for nodes that went away.
const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Until the shutdown, every `SWEEP_INTERVAL`, the node holding the sweeper lock hands the runs of nodes whose
/// heartbeat has been gone for a whole TTL to live nodes (`runs::sweep`). It does nothing while
/// it cannot see its own heartbeat: after a Redis restart every node looks gone until the
/// heartbeats come back.
pub(crate) async fn sweeper(app: Arc<Node>) {
    let (membership, pool, config) = (&app.membership, &app.pool, &app.config);
    let mut missing_since: std::collections::HashMap<String, std::time::Instant> =
        Default::default();
    loop {
        tokio::select! {
            () = tokio::time::sleep(SWEEP_INTERVAL) => {}
            () = app.stop.cancelled() => return,
        }
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
