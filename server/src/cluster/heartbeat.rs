//! This node's heartbeat in Redis: published every third of `HEARTBEAT_TTL`, so the cluster
//! sees the node as long as it lives. Not the membership's storage (`membership.rs`).

use std::sync::Arc;

use crate::node::Node;

/// How long a heartbeat lives in Redis; nodes beat three times per TTL.
pub const HEARTBEAT_TTL: std::time::Duration = std::time::Duration::from_secs(3);

/// Publishes this node's heartbeat; a Redis outage is logged once and retried. It beats on
/// after the shutdown began, for as long as runs still execute here (the grace period), so no
/// other node takes this one for gone and interrupts them.
pub(crate) async fn heartbeat(app: Arc<Node>) {
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
        if app.stop.is_cancelled() && app.executor.running() == 0 {
            return;
        }
        tokio::time::sleep(HEARTBEAT_TTL / 3).await;
    }
}
