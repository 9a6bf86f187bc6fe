//! This node's heartbeat in Redis: published every third of `HEARTBEAT_TTL`, so the cluster
//! sees the node as long as it lives. Not the membership's storage (`membership.rs`).

use std::sync::Arc;

use crate::node::Node;

/// How long a heartbeat lives in Redis; nodes beat three times per TTL.
pub const HEARTBEAT_TTL: std::time::Duration = std::time::Duration::from_secs(3);

/// Publishes this node's heartbeat; a Redis outage is logged once and retried. It beats on
/// after the shutdown began, for as long as runs still execute here (the grace period), so no
/// other node takes this one for gone and interrupts them. When no beat has landed for a TTL
/// (Redis out of reach, or the process was paused), the cluster may take this node for gone:
/// it claims nothing until a beat lands again. (Its running runs stop once their rows say
/// they were handed over, and could not commit anyway: see `runs::executor`.)
pub(crate) async fn heartbeat(app: Arc<Node>) {
    let mut failing = false;
    let mut landed = std::time::Instant::now();
    loop {
        // Checked before beating: a process resumed after a pause beats at once, but its key
        // expired meanwhile.
        if landed.elapsed() > HEARTBEAT_TTL && app.executor.set_lapsed(true) {
            tracing::warn!(
                since_ms = landed.elapsed().as_millis() as u64,
                "the heartbeat lapsed: not claiming until it lands again"
            );
        }
        let beat = app.beat().await;
        if beat.is_ok() {
            landed = std::time::Instant::now();
            app.executor.set_lapsed(false);
        }
        match beat {
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
        // A shutdown wakes it at once (it then ends, unless runs still execute); once shutting
        // down it beats every third of the TTL until the last run ends.
        let stopping = app.stop.is_cancelled();
        tokio::select! {
            () = tokio::time::sleep(HEARTBEAT_TTL / 3) => {}
            () = app.stop.cancelled(), if !stopping => {}
        }
    }
}
