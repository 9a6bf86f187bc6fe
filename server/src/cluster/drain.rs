//! The drain of this node: it stops claiming, gives up the scheduler, publishes that it is
//! draining, hands back the runs it has not started (one pinned to it ends failed), lets
//! running ones finish up to a deadline (the rest end failed), and hands back what arrived
//! meanwhile. The drain is a task of its own
//! (tracked like every task of the server, and stopped by the shutdown); a request only waits
//! for it, at most `ANSWER_WITHIN`, so no request holds the shutdown up. Not the HTTP side.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::ClusterError;
use crate::node::Node;
use crate::runs;

/// How long a drain request waits for the drain before it answers with its progress; asking
/// again joins the same drain.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(60);

/// The drain in progress or the last one done.
#[derive(Default)]
pub struct DrainState(Mutex<Option<Arc<Progress>>>);

#[derive(Default)]
struct Progress {
    handed_back: Mutex<Vec<i64>>,
    /// The first failure to hand runs back.
    error: Mutex<Option<ClusterError>>,
    /// Every step ran (rather than the shutdown cutting the drain short).
    completed: std::sync::atomic::AtomicBool,
    done: CancellationToken,
}

/// Where a drain stands when its request answers.
#[derive(Debug, PartialEq, Eq)]
pub enum Drain {
    /// Nothing runs here and every run for this node went back to the others.
    Drained { handed_back: Vec<i64> },
    /// Still waiting for running runs (the request's wait ran out).
    Draining {
        handed_back: Vec<i64>,
        running: usize,
    },
    /// The server began shutting down; its grace period takes over.
    Stopping { handed_back: Vec<i64> },
}

/// Starts a drain with `deadline` for running runs, or joins the one in progress, and waits
/// for it at most `ANSWER_WITHIN`. `Err` carries why runs could not be handed back.
pub async fn drain(node: &Arc<Node>, deadline: Duration) -> Result<Drain, ClusterError> {
    let progress = {
        let mut slot = node.drain.0.lock().unwrap_or_else(|p| p.into_inner());
        match slot.as_ref() {
            Some(p) if !p.done.is_cancelled() => p.clone(),
            _ => {
                let p = Arc::new(Progress::default());
                *slot = Some(p.clone());
                node.tasks.spawn(run(node.clone(), p.clone(), deadline));
                p
            }
        }
    };
    let handed = |p: &Progress| p.handed_back.lock().map(|h| h.clone()).unwrap_or_default();
    // The shutdown ends the drain task too (`run`): `completed` then tells the two apart.
    tokio::select! {
        () = progress.done.cancelled() => {}
        () = tokio::time::sleep(ANSWER_WITHIN) => {
            return Ok(Drain::Draining {
                handed_back: handed(&progress),
                running: node.executor.running(),
            });
        }
    }
    if let Some(e) = progress.error.lock().ok().and_then(|e| e.clone()) {
        return Err(e);
    }
    if !progress.completed.load(Ordering::SeqCst) {
        return Ok(Drain::Stopping {
            handed_back: handed(&progress),
        });
    }
    Ok(Drain::Drained {
        handed_back: handed(&progress),
    })
}

/// The drain itself; `progress.done` once it ended, failed, or the shutdown began.
async fn run(node: Arc<Node>, progress: Arc<Progress>, deadline: Duration) {
    tokio::select! {
        () = steps(&node, &progress, deadline) => {
            progress.completed.store(true, Ordering::SeqCst);
        }
        () = node.stop.cancelled() => {}
    }
    progress.done.cancel();
}

async fn steps(node: &Arc<Node>, progress: &Progress, deadline: Duration) {
    node.executor.set_draining(true);
    // Leadership goes at once, so another node schedules without waiting for the TTL.
    node.leadership.step_down(node).await;
    // The others stop sending runs here at once, not at the next heartbeat.
    if let Err(e) = node.beat().await {
        tracing::warn!(error = %e, "publishing the drain");
    }
    if !hand_back(node, progress).await {
        return;
    }
    node.executor.wait_idle(deadline).await;
    hand_back(node, progress).await;
}

/// Hands this node's queued runs to the others and wakes them (those pinned to it end
/// failed); `false` (and the error kept) when the database refused.
async fn hand_back(node: &Node, progress: &Progress) -> bool {
    let me = [node.config.node.clone()];
    match runs::redispatch(
        &node.pool,
        &me,
        &node.others().await,
        node.config.load_balancing,
    )
    .await
    {
        Ok(handed) => {
            for (_, to) in &handed.moved {
                node.membership.wake(to).await;
            }
            if !handed.failed_pinned.is_empty() {
                tracing::warn!(runs = ?handed.failed_pinned, "runs pinned to this node ended failed: it drains");
            }
            if let Ok(mut h) = progress.handed_back.lock() {
                h.extend(handed.moved.iter().map(|(id, _)| *id));
            }
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "handing back runs on drain");
            if let Ok(mut slot) = progress.error.lock() {
                slot.get_or_insert(e.into());
            }
            false
        }
    }
}
