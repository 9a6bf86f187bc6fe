//! The status collector of `fleet serve`: asks every reachable node for its status over SSH
//! (the same call as `fleet status`), at most `parallel` at once, each node every `every`;
//! a node that fails is asked again after a growing wait (doubling, at most `BACKOFF_MAX`),
//! and any node can be asked at once on demand (`App::collect_now`). Each answer or failure
//! goes to the store (`save_node_status`, `save_node_error`), which the pages and the API
//! read, and out as a live `node` note with the node's new view. Airgapped nodes are never
//! contacted.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fleet_inventory::{Inventory, Mode};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::App;
use crate::ssh::Timeouts;
use crate::store::NodeSnapshot;

/// The longest a failing node waits before it is asked again.
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// How the collector polls.
#[derive(Debug, Clone, Copy)]
pub struct CollectOptions {
    /// Each node's status is asked this often.
    pub every: Duration,
    /// At most this many nodes are asked at once.
    pub parallel: usize,
    pub timeouts: Timeouts,
}

impl Default for CollectOptions {
    fn default() -> Self {
        CollectOptions {
            every: Duration::from_secs(30),
            parallel: 32,
            timeouts: Timeouts {
                connect: Duration::from_secs(10),
                command: Duration::from_secs(30),
            },
        }
    }
}

/// When a node that failed `failures` times in a row is asked next, after `every`.
pub fn backoff(every: Duration, failures: u32) -> Duration {
    if failures == 0 {
        return every;
    }
    every
        .saturating_mul(1u32 << failures.min(16))
        .min(BACKOFF_MAX.max(every))
}

/// Polls until `stop`.
pub async fn run(
    app: Arc<App>,
    inventory: Arc<Inventory>,
    options: CollectOptions,
    stop: CancellationToken,
) {
    let names: Vec<String> = inventory
        .nodes()
        .iter()
        .filter(|n| n.mode != Mode::Airgapped)
        .map(|n| n.name.clone())
        .collect();
    let now = Instant::now();
    let mut due: HashMap<String, Instant> = names.iter().map(|n| (n.clone(), now)).collect();
    let mut failures: HashMap<String, u32> = HashMap::new();
    let slots = Arc::new(Semaphore::new(options.parallel.max(1)));
    let mut running: JoinSet<(String, Result<serde_json::Value, String>)> = JoinSet::new();
    let mut asked: std::collections::HashSet<String> = Default::default();
    loop {
        // Nodes asked for on demand are due now.
        for name in app.take_collect_requests() {
            if let Some(at) = due.get_mut(&name) {
                *at = Instant::now();
            }
        }
        let now = Instant::now();
        for name in &names {
            if asked.contains(name) || due[name] > now {
                continue;
            }
            let Some(node) = inventory.node(name).cloned() else {
                continue;
            };
            asked.insert(name.clone());
            let slots = slots.clone();
            let timeouts = options.timeouts;
            running.spawn(async move {
                let _slot = slots.acquire_owned().await;
                let answer = crate::node::status(&node, timeouts)
                    .await
                    .map(|s| serde_json::to_value(s).unwrap_or_default())
                    .map_err(|e| format!("{e:#}"));
                (node.name, answer)
            });
        }
        let next = names
            .iter()
            .filter(|n| !asked.contains(*n))
            .map(|n| due[n])
            .min()
            .unwrap_or_else(|| now + options.every);
        tokio::select! {
            () = stop.cancelled() => {
                running.abort_all();
                return;
            }
            () = app.collect_wake.notified() => {}
            () = tokio::time::sleep_until(next) => {}
            Some(done) = running.join_next(), if !running.is_empty() => {
                let Ok((name, answer)) = done else { continue };
                asked.remove(&name);
                let failed = failures.entry(name.clone()).or_default();
                let at = crate::store::now_ms();
                let saved = match &answer {
                    Ok(status) => {
                        *failed = 0;
                        app.store.save_node_status(&name, status).await
                    }
                    Err(error) => {
                        *failed += 1;
                        tracing::debug!(node = %name, %error, "status not collected");
                        app.store.save_node_error(&name, error).await
                    }
                };
                if let Err(e) = saved {
                    tracing::error!(node = %name, error = %e, "saving a node's status");
                }
                let known = {
                    let mut heard = app.heard.write().unwrap_or_else(|e| e.into_inner());
                    let known = heard.entry(name.clone()).or_insert_with(|| NodeSnapshot {
                        node: name.clone(),
                        status: None,
                        error: None,
                    });
                    match answer {
                        Ok(status) => known.status = Some((at, status)),
                        Err(error) => known.error = Some((at, error)),
                    }
                    known.clone()
                };
                if let Some(node) = inventory.node(&name) {
                    let view = super::view::node(node, Some(&known), at, app.options.stale_after);
                    app.events.publish("node", view);
                }
                due.insert(name, Instant::now() + backoff(options.every, *failed));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_node_waits_longer_each_time_up_to_the_cap() {
        let every = Duration::from_secs(30);
        assert_eq!(backoff(every, 0), every);
        assert_eq!(backoff(every, 1), Duration::from_secs(60));
        assert_eq!(backoff(every, 2), Duration::from_secs(120));
        assert_eq!(backoff(every, 3), Duration::from_secs(240));
        assert_eq!(backoff(every, 4), BACKOFF_MAX);
        assert_eq!(backoff(every, 40), BACKOFF_MAX);
        // An interval above the cap is never shortened.
        let slow = Duration::from_secs(600);
        assert_eq!(backoff(slow, 5), slow);
    }
}
