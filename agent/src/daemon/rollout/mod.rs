//! The rolling upgrade on this node (DESIGN.md, "Rolling upgrades"): the daemon takes part in
//! every rollout whose order it accepted, coordinating with the cluster's other agents through
//! the cluster's Redis (`coord.rs`), never trusting it.
//!
//! Each tick ([`participate`]), per accepted rollout whose part on this node is not over: the
//! node publishes what it holds (the signed order and last control, its own progress, the
//! highest epoch it saw), so a Redis restarted empty is re-seeded from the agents' records;
//! takes a newer control or an order it was not handed from Redis only after verifying it
//! itself (`orders::accept_*`); then decides: an abort or the failure flag skips a node that
//! has not begun, a pause or the deadline holds it; otherwise, when it is its turn (canaries
//! first, then the order's sequence, at most `max_unavailable` at once), the cluster has a
//! scheduler leader on a node that is not draining, and the node upgraded last is a live
//! member on the new release that takes runs (off probation), it asks for an upgrade slot: a lease with a fencing epoch
//! granted by one script only while fewer than `max_unavailable` nodes are out of service
//! (slot holders, nodes still marked busy, and nodes its heartbeats show down). It runs the
//! per-node upgrade step holding the lease ([`Lease`], checked before each side effect), records
//! its outcome (`state/orders/<id>.progress`, then Redis), raises the failure flag when the
//! release failed, and gives the slot back.
//!
//! Not the step itself (`upgrade.rs`), nor acceptance (`orders.rs`): nothing read from Redis
//! makes this node activate a release its own checks did not accept.

mod coord;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use fleet_proto::{Code, NodeProgress, NodeReport, Outcome, Refusal, RolloutReport, Switched};
use fleet_release::order::{Action, Order};
use tokio_util::sync::CancellationToken;

use super::upgrade::{self, GatePolicy, Goal, Plan, RolloutTag};
use super::{Daemon, blocking};
use crate::{AgentError, OrderRecord};
use coord::{Coord, Grant};

/// A step refused before it switched anything (not staged, altered files...) is recorded as
/// `skipped` with a reason starting so, and halts the rollout like a failed gate.
const REFUSED: &str = "the upgrade step was refused: ";
/// A node skipped because the failure flag was up says so with this, then the flag.
const HALTED: &str = "the rollout halted: ";
/// How often the daemon looks for orders published in Redis that it was not handed.
const SCAN_EVERY: Duration = Duration::from_secs(2);

/// An upgrade slot held by this node: renewed in the background, checked right before each
/// side effect of the step. Once it could not be renewed within its TTL it is lost for good.
pub struct Lease {
    node: String,
    epoch: u64,
    ttl: Duration,
    coord: tokio::sync::Mutex<Coord>,
    /// To connect again when a renewal fails (a multiplexed connection does not).
    client: Option<redis::Client>,
    /// When the last renewal that Redis confirmed was sent (monotonic clock).
    renewed: Mutex<Instant>,
    lost: Mutex<Option<String>>,
}

impl Lease {
    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Renews the lease now; fails when it is lost or cannot be renewed.
    pub async fn check(&self) -> Result<(), String> {
        if let Some(why) = Self::lock(&self.lost).clone() {
            return Err(why);
        }
        let since = Self::lock(&self.renewed).elapsed();
        if since >= self.ttl {
            return Err(self.lose(format!(
                "it was last renewed {} ms ago, past its {} ms lease",
                since.as_millis(),
                self.ttl.as_millis()
            )));
        }
        let sent = Instant::now();
        let renewed = self
            .coord
            .lock()
            .await
            .renew(&self.node, self.epoch, self.ttl)
            .await;
        match renewed {
            Ok(true) if sent.elapsed() < self.ttl => {
                *Self::lock(&self.renewed) = sent;
                Ok(())
            }
            Ok(true) => Err(self.lose("the renewal came back after the lease ran out".into())),
            Ok(false) => Err(self.lose(format!(
                "the slot (epoch {}) is no longer this node's",
                self.epoch
            ))),
            Err(e) => {
                if let Some(client) = &self.client
                    && let Ok(conn) = coord::connect(client).await
                {
                    self.coord.lock().await.reconnected(conn);
                }
                if Self::lock(&self.renewed).elapsed() >= self.ttl {
                    Err(self.lose(format!("it could not be renewed in time: {e}")))
                } else {
                    Err(format!("it could not be renewed: {e}"))
                }
            }
        }
    }

    fn lose(&self, why: String) -> String {
        tracing::warn!(
            epoch = self.epoch,
            "rollout: the upgrade slot is lost: {why}"
        );
        *Self::lock(&self.lost) = Some(why.clone());
        why
    }

    /// Renews every third of the TTL until `stop`, publishing the node's progress each time.
    async fn keep(&self, daemon: &Daemon, rollout: &str, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(self.ttl / 3) => {}
            }
            if Self::lock(&self.lost).is_some() {
                return;
            }
            if let Err(e) = self.check().await {
                tracing::warn!("rollout: renewing the upgrade slot: {e}");
                continue;
            }
            if let Ok(Some(p)) = read_progress(daemon, rollout).await {
                let _ = self.coord.lock().await.publish_progress(&p).await;
            }
        }
    }
}

async fn read_progress(daemon: &Daemon, rollout: &str) -> Result<Option<NodeProgress>, AgentError> {
    let layout = daemon.config.layout.clone();
    let id = rollout.to_owned();
    blocking(move || crate::read_progress(&layout, &id)).await
}

async fn write_progress(daemon: &Daemon, rollout: &str, p: &NodeProgress) {
    let layout = daemon.config.layout.clone();
    let (id, p) = (rollout.to_owned(), p.clone());
    if let Err(e) = blocking(move || crate::write_progress(&layout, &id, &p)).await {
        tracing::error!(error = %e, rollout, "recording this node's rollout progress");
    }
}

/// Records how this node's upgrade step in rollout `tag` ended (also after a restart settled
/// a step the journal recorded).
pub async fn settled(daemon: &Daemon, tag: &RolloutTag, result: &Result<Switched, Refusal>) {
    let mut p = read_progress(daemon, &tag.id)
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| NodeProgress::new(daemon.config.node.clone()));
    p.epoch = Some(p.epoch.unwrap_or(0).max(tag.epoch));
    let now = crate::unix_ms();
    match result {
        Ok(_) => {
            p.outcome = Some(Outcome::Committed);
            p.step = None;
            p.reason = None;
            p.ended_unix_ms = Some(now);
        }
        Err(r) => match r.code {
            Code::RolledBack | Code::RollbackFailed => {
                p.outcome = Some(if r.code == Code::RolledBack {
                    Outcome::RolledBack
                } else {
                    Outcome::RollbackFailed
                });
                p.step = None;
                p.reason = Some(r.error.clone());
                p.ended_unix_ms = Some(now);
            }
            Code::Interrupted | Code::Busy | Code::DaemonLost => {
                p.outcome = None;
                p.step = Some("waiting: the step was interrupted; asking for a slot again".into());
                p.reason = Some(r.error.clone());
            }
            _ => {
                p.outcome = Some(Outcome::Skipped);
                p.step = None;
                p.reason = Some(format!("{REFUSED}{}", r.error));
                p.ended_unix_ms = Some(now);
            }
        },
    }
    write_progress(daemon, &tag.id, &p).await;
}

/// This node's report on rollout `id`: its own progress from its records, the other targets'
/// as published in Redis, the failure flag. Also wakes the rollout loop.
pub async fn report(daemon: &Daemon, id: &str) -> Result<RolloutReport, AgentError> {
    let layout = daemon.config.layout.clone();
    let (node, rid) = (daemon.config.node.clone(), id.to_owned());
    let mut report = blocking(move || crate::disk_report(&layout, &node, &rid)).await?;
    report.daemon = true;
    daemon.rollout_poke.notify_one();
    match shared_conn(daemon).await {
        Ok(conn) => {
            let mut coord = Coord::new(conn, &daemon.config.redis_prefix, id);
            match (coord.progress().await, coord.failed().await) {
                (Ok(progress), Ok(failed)) => {
                    for n in &mut report.nodes {
                        if n.node != daemon.config.node
                            && let Some(p) = progress.get(&n.node)
                        {
                            *n = p.clone();
                        }
                    }
                    report.halted = failed;
                }
                (Err(e), _) | (_, Err(e)) => report.redis_error = Some(e),
            }
        }
        Err(e) => report.redis_error = Some(e),
    }
    Ok(report)
}

/// A connection to the cluster's Redis shared by the daemon's rollout work (made once, made
/// again after an error).
async fn shared_conn(daemon: &Daemon) -> Result<redis::aio::MultiplexedConnection, String> {
    let Some(client) = &daemon.redis else {
        return Err("no Redis configured (redis_url_file in config/agent.toml)".into());
    };
    let mut slot = daemon.redis_conn.lock().await;
    if let Some(conn) = slot.as_ref() {
        return Ok(conn.clone());
    }
    let conn = coord::connect(client).await?;
    *slot = Some(conn.clone());
    Ok(conn)
}

async fn drop_conn(daemon: &Daemon) {
    *daemon.redis_conn.lock().await = None;
}

/// The rollout loop: until `shutdown`, ticks every `rollout.poll_ms` (and when poked).
pub async fn participate(daemon: Arc<Daemon>, shutdown: CancellationToken) {
    if daemon.redis.is_none() {
        return;
    }
    let poll = Duration::from_millis(daemon.config.rollout.poll_ms);
    let mut refused: HashSet<String> = HashSet::new();
    let mut scanned: Option<Instant> = None;
    let mut said: HashMap<String, String> = HashMap::new();
    // Controls found in Redis that this node refused: not verified (nor logged) again.
    let mut refused_controls: HashSet<String> = HashSet::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = daemon.rollout_poke.notified() => {}
            () = tokio::time::sleep(poll) => {}
        }
        let conn = match shared_conn(&daemon).await {
            Ok(c) => c,
            Err(e) => {
                note(&mut said, "redis", format!("rollouts wait for Redis: {e}"));
                continue;
            }
        };
        said.remove("redis");
        if scanned.is_none_or(|t| t.elapsed() >= SCAN_EVERY) {
            scanned = Some(Instant::now());
            if let Err(e) = take_published(&daemon, conn.clone(), &mut refused).await {
                note(
                    &mut said,
                    "scan",
                    format!("looking for published orders: {e}"),
                );
                drop_conn(&daemon).await;
                continue;
            }
        }
        let layout = daemon.config.layout.clone();
        let ids = match blocking(move || crate::accepted_rollouts(&layout)).await {
            Ok(ids) => ids,
            Err(e) => {
                note(&mut said, "list", format!("listing accepted rollouts: {e}"));
                continue;
            }
        };
        for id in ids {
            if shutdown.is_cancelled() {
                return;
            }
            let coord = Coord::new(conn.clone(), &daemon.config.redis_prefix, &id);
            match tick(&daemon, coord, &id, &mut refused_controls, &shutdown).await {
                Ok(()) => {
                    said.remove(&id);
                }
                Err(e) => {
                    note(&mut said, &id, format!("rollout {id}: {e}"));
                    if e.starts_with("Redis") || e.contains("Redis gave no answer") {
                        drop_conn(&daemon).await;
                    }
                }
            }
        }
    }
}

/// Logs `text` once per `what` until it changes.
fn note(said: &mut HashMap<String, String>, what: &str, text: String) {
    if said.get(what) != Some(&text) {
        tracing::warn!("{text}");
        said.insert(what.to_owned(), text);
    }
}

/// Takes orders published in Redis for rollouts this node was not handed: each verified by
/// the node's own checks; one it refuses is not looked at again.
async fn take_published(
    daemon: &Daemon,
    mut conn: redis::aio::MultiplexedConnection,
    refused: &mut HashSet<String>,
) -> Result<(), String> {
    let ids = Coord::published_rollouts(&mut conn, &daemon.config.redis_prefix).await?;
    for id in ids {
        if refused.contains(&id) {
            continue;
        }
        let layout = daemon.config.layout.clone();
        let rid = id.clone();
        let known = blocking(move || crate::order_record(&layout, &rid))
            .await
            .map_err(|e| e.to_string())?;
        if known.is_some() {
            continue;
        }
        let mut coord = Coord::new(conn.clone(), &daemon.config.redis_prefix, &id);
        let Some(document) = coord.order().await? else {
            continue;
        };
        // Filed under another rollout's key: not what it says it is.
        let named = serde_json::from_str::<serde_json::Value>(&document)
            .ok()
            .and_then(|v| v["order"]["rollout"].as_str().map(str::to_owned));
        if named.as_deref() != Some(id.as_str()) {
            tracing::warn!(rollout = %id, "rollout: refused the order published in Redis: it is not an order of rollout {id}");
            refused.insert(id);
            continue;
        }
        let targets: Vec<String> = serde_json::from_str::<serde_json::Value>(&document)
            .ok()
            .and_then(|v| serde_json::from_value(v["order"]["targets"].clone()).ok())
            .unwrap_or_default();
        match accept(daemon, document.into_bytes(), true).await {
            Ok(()) => tracing::info!(rollout = %id, "rollout: took the order published in Redis"),
            // Waiting for the node's lock, or a file error: tried again at the next scan.
            Err(e @ (AgentError::Busy { .. } | AgentError::Io { .. })) => {
                tracing::warn!(rollout = %id, "rollout: taking the order published in Redis: {e}");
            }
            Err(e) => {
                tracing::warn!(rollout = %id, "rollout: refused the order published in Redis: {e}");
                // A genuine order (its signature verified: the refusal came after) that names
                // this node but that it cannot carry out: the others must not wait for it.
                let genuine = matches!(
                    e,
                    AgentError::OrderNotStaged { .. }
                        | AgentError::DigestMismatch { .. }
                        | AgentError::OrderDowngrade { .. }
                        | AgentError::OrderReplayed { .. }
                );
                if genuine && targets.contains(&daemon.config.node) {
                    let mut p = NodeProgress::new(daemon.config.node.clone());
                    p.outcome = Some(Outcome::Skipped);
                    p.reason = Some(format!("{REFUSED}the order: {e}"));
                    p.ended_unix_ms = Some(crate::unix_ms());
                    coord.publish_progress(&p).await?;
                    let flag = format!(
                        "{}: {}",
                        daemon.config.node,
                        p.reason.as_deref().unwrap_or_default()
                    );
                    coord.raise_failed(&flag).await?;
                }
                refused.insert(id);
            }
        }
    }
    Ok(())
}

/// Verifies and takes an order (`order`) or a control from Redis, exactly as one handed over
/// SSH.
async fn accept(daemon: &Daemon, bytes: Vec<u8>, order: bool) -> Result<(), AgentError> {
    let layout = daemon.config.layout.clone();
    let node = daemon.config.node.clone();
    let cluster = cluster_of(daemon)?;
    blocking(move || {
        if order {
            crate::accept_order(&layout, &node, &cluster, &bytes, SystemTime::now()).map(|_| ())
        } else {
            crate::accept_control(&layout, &cluster, &bytes, SystemTime::now()).map(|_| ())
        }
    })
    .await
}

fn cluster_of(daemon: &Daemon) -> Result<String, AgentError> {
    match (&daemon.config.customer, &daemon.config.cluster) {
        (Some(customer), Some(cluster)) => Ok(format!("{customer}/{cluster}")),
        _ => Err(AgentError::NotConfigured(
            "config/agent.toml names no customer and cluster".into(),
        )),
    }
}

/// One rollout's turn of the loop.
async fn tick(
    daemon: &Daemon,
    mut coord: Coord,
    id: &str,
    refused_controls: &mut HashSet<String>,
    shutdown: &CancellationToken,
) -> Result<(), String> {
    // A step runs (a manual one, or a step a restart is settling): its end is recorded first,
    // and the records are read only once it is (the lock is held through the decision).
    let Ok(probe) = daemon.step.try_lock() else {
        return Ok(());
    };
    let layout = daemon.config.layout.clone();
    let rid = id.to_owned();
    let (record, control, own) = blocking(move || {
        Ok((
            crate::order_record(&layout, &rid)?,
            crate::control_record(&layout, &rid)?,
            crate::read_progress(&layout, &rid)?,
        ))
    })
    .await
    .map_err(|e| e.to_string())?;
    let Some(record) = record else {
        return Ok(());
    };
    let order = &record.order;
    let me = daemon.config.node.clone();
    let mut own = own.unwrap_or_else(|| NodeProgress::new(me.clone()));
    // Over here and past its deadline: nothing more can happen to it.
    let abort_rollback = control.as_ref().map(|c| c.action) == Some(Action::AbortRollback);
    if own.outcome.is_some() && past(order, Duration::ZERO) && !abort_rollback {
        return Ok(());
    }

    // What this node holds goes to Redis, so a Redis restarted empty learns it again.
    if coord.order().await?.is_none() {
        coord.publish_order(&record.document).await?;
    }
    if let Some(epoch) = own.epoch {
        coord.seed_epoch(epoch).await?;
    }
    // The control: the newest one either side holds, each verified by this node.
    let mut asked = control.as_ref().map(|c| c.action);
    match (coord.control().await?, &control) {
        (Some(theirs), None) if refused_controls.contains(&theirs) => {}
        (Some(theirs), _)
            if serde_json::from_str::<serde_json::Value>(&theirs)
                .ok()
                .and_then(|v| v["control"]["rollout"].as_str().map(|r| r != id))
                .unwrap_or(true) =>
        {
            if refused_controls.insert(theirs) {
                tracing::warn!(
                    rollout = id,
                    "rollout: refused the control published in Redis: it is not a control of rollout {id}"
                );
            }
            if let Some(m) = &control {
                coord.publish_control(&m.document).await?;
            }
        }
        (Some(theirs), mine) if mine.as_ref().is_none_or(|m| m.document != theirs) => {
            match accept(daemon, theirs.clone().into_bytes(), false).await {
                Ok(()) => {
                    let layout = daemon.config.layout.clone();
                    let rid = id.to_owned();
                    asked = blocking(move || crate::control_record(&layout, &rid))
                        .await
                        .map_err(|e| e.to_string())?
                        .map(|c| c.action);
                }
                Err(AgentError::OrderReplayed { .. }) => {
                    if let Some(m) = mine {
                        coord.publish_control(&m.document).await?;
                    }
                }
                Err(e) => {
                    tracing::warn!(
                        rollout = id,
                        "rollout: refused the control published in Redis: {e}"
                    );
                    match mine {
                        Some(m) => coord.publish_control(&m.document).await?,
                        None => {
                            refused_controls.insert(theirs);
                        }
                    }
                }
            }
        }
        (None, Some(m)) => coord.publish_control(&m.document).await?,
        _ => {}
    }

    if let Some(outcome) = own.outcome {
        coord.publish_progress(&own).await?;
        let failed = matches!(outcome, Outcome::RolledBack | Outcome::RollbackFailed)
            && asked != Some(Action::AbortRollback)
            || outcome == Outcome::Skipped
                && own
                    .reason
                    .as_deref()
                    .is_some_and(|r| r.starts_with(REFUSED));
        if failed {
            coord
                .raise_failed(&format!(
                    "{me}: {}",
                    own.reason.as_deref().unwrap_or(outcome.as_str())
                ))
                .await?;
        }
        // A node skipped because of the flag keeps it too: a Redis restarted empty gets it
        // back from any of them.
        if let Some(flag) = own.reason.as_deref().and_then(|r| r.strip_prefix(HALTED)) {
            coord.raise_failed(flag).await?;
        }
        if let Some(epoch) = own.epoch {
            coord.release(&me, epoch).await?;
        }
        if outcome == Outcome::Committed && asked == Some(Action::AbortRollback) {
            drop(probe);
            return roll_back(daemon, coord, &record, own, shutdown).await;
        }
        return Ok(());
    }

    // Not begun (or interrupted): whatever stops the rollout stops this node's part.
    let stop = match asked {
        Some(Action::Abort | Action::AbortRollback) => Some("the rollout was aborted".to_owned()),
        _ => None,
    };
    let stop = match stop {
        Some(s) => Some(s),
        None => coord.failed().await?.map(|f| format!("{HALTED}{f}")),
    };
    let stop = stop.or_else(|| {
        past(order, Duration::ZERO)
            .then(|| "the rollout's deadline passed before this node's turn".into())
    });
    if let Some(reason) = stop {
        own.outcome = Some(Outcome::Skipped);
        own.step = None;
        own.reason = Some(reason);
        own.ended_unix_ms = Some(crate::unix_ms());
        write_progress(daemon, id, &own).await;
        coord.publish_progress(&own).await?;
        if let Some(epoch) = own.epoch {
            coord.release(&me, epoch).await?;
        }
        return Ok(());
    }
    // An interrupted step left the node serving its old release: it is in service again.
    if let Some(epoch) = own.epoch {
        coord.release(&me, epoch).await?;
    }
    if asked == Some(Action::Pause) {
        return wait(daemon, &mut coord, id, own, "paused".into()).await;
    }

    let sequence = order.upgrade_sequence();
    let progress = coord.progress().await?;
    let outcome_of = |n: &str| progress.get(n).and_then(|p| p.outcome);
    if !order.canary.contains(&me) {
        let waiting: Vec<&str> = order
            .canary
            .iter()
            .filter(|c| outcome_of(c) != Some(Outcome::Committed))
            .map(String::as_str)
            .collect();
        if !waiting.is_empty() {
            let why = format!("for the canaries to commit ({})", waiting.join(", "));
            return wait(daemon, &mut coord, id, own, why).await;
        }
    }
    let heartbeats = coord.heartbeats(&expected(order)).await?;
    let alive = |n: &str| heartbeats.get(n).is_some_and(Option::is_some);
    let pending: Vec<&String> = sequence
        .iter()
        .filter(|n| outcome_of(n).is_none() && (**n == me || alive(n)))
        .collect();
    let max = usize::try_from(order.max_unavailable).unwrap_or(usize::MAX);
    match pending.iter().position(|n| **n == me) {
        Some(i) if i < max => {}
        _ => {
            let before: Vec<&str> = pending
                .iter()
                .take_while(|n| ***n != me)
                .map(|n| n.as_str())
                .collect();
            let why = format!("its turn, after {}", before.join(", "));
            return wait(daemon, &mut coord, id, own, why).await;
        }
    }
    let last = progress
        .values()
        .filter(|p| p.outcome == Some(Outcome::Committed) && p.node != me)
        .max_by_key(|p| p.ended_unix_ms)
        .map(|p| p.node.clone());
    if let Err(why) = admission(daemon, &order.version.to_string(), last.as_deref()).await {
        return wait(daemon, &mut coord, id, own, why).await;
    }
    let down = down_nodes(&heartbeats, &me);
    let ttl = Duration::from_millis(daemon.config.rollout.slot_ttl_ms);
    let epoch = match coord
        .grant(&me, ttl, order.max_unavailable, &sequence, &down, true)
        .await?
    {
        Grant::Granted(epoch) => epoch,
        Grant::Halted => return Ok(()),
        Grant::Full(who) => {
            let why = format!(
                "a slot: {} of {} out of service ({who})",
                order.max_unavailable, order.max_unavailable
            );
            return wait(daemon, &mut coord, id, own, why).await;
        }
    };
    tracing::info!(rollout = id, epoch, "rollout: upgrade slot granted");
    own.epoch = Some(epoch);
    own.step = Some("drain".into());
    own.reason = None;
    own.started_unix_ms = Some(crate::unix_ms());
    write_progress(daemon, id, &own).await;
    coord.publish_progress(&own).await?;
    let goal = Goal::Activate {
        version: order.version.clone(),
        allow_downgrade: false,
    };
    drop(probe);
    let result = with_lease(
        daemon,
        coord,
        id,
        epoch,
        ttl,
        order,
        goal,
        order.smoke_flow.clone(),
    )
    .await;
    tracing::info!(
        rollout = id,
        "rollout: this node's step ended: {}",
        match &result {
            Ok(s) => format!("committed {}", s.active),
            Err(r) => r.to_string(),
        }
    );
    Ok(())
}

/// Runs the upgrade step holding the lease `epoch`, records its outcome, publishes it (and
/// the failure flag) and gives the slot back.
#[allow(clippy::too_many_arguments)]
async fn with_lease(
    daemon: &Daemon,
    coord: Coord,
    id: &str,
    epoch: u64,
    ttl: Duration,
    order: &Order,
    goal: Goal,
    smoke_flow: Option<String>,
) -> Result<Switched, Refusal> {
    let lease = Lease {
        node: daemon.config.node.clone(),
        epoch,
        ttl,
        coord: tokio::sync::Mutex::new(coord),
        client: daemon.redis.clone(),
        renewed: Mutex::new(Instant::now()),
        lost: Mutex::new(None),
    };
    let tag = RolloutTag {
        id: id.to_owned(),
        epoch,
    };
    let stop = CancellationToken::new();
    let plan = Plan {
        goal,
        gate: GatePolicy {
            min_healthy_secs: order.min_healthy_secs,
            health_timeout_secs: order.health_timeout_secs,
        },
        smoke_flow,
        lease: Some(&lease),
        rollout: Some(tag.clone()),
    };
    let (result, ()) = tokio::join!(
        async {
            let r = upgrade::run(daemon, plan).await;
            stop.cancel();
            r
        },
        lease.keep(daemon, id, stop.clone())
    );
    settled(daemon, &tag, &result).await;
    daemon.heartbeat_now.notify_one();
    daemon.rollout_poke.notify_one();
    result
}

/// The abort's rollback: this committed node goes back to the release that was active when
/// the rollout began, under the same `max_unavailable`, the failure flag notwithstanding.
async fn roll_back(
    daemon: &Daemon,
    mut coord: Coord,
    record: &OrderRecord,
    mut own: NodeProgress,
    _shutdown: &CancellationToken,
) -> Result<(), String> {
    let order = &record.order;
    let me = daemon.config.node.clone();
    let Some(back) = record.active_at_start.clone() else {
        own.reason =
            Some("aborted with rollback, but no release was active here before the rollout".into());
        write_progress(daemon, &order.rollout, &own).await;
        return Ok(());
    };
    let Ok(version) = back.parse::<semver::Version>() else {
        return Err(format!(
            "the release active before the rollout, `{back}`, is not a version"
        ));
    };
    let sequence = order.upgrade_sequence();
    let heartbeats = coord.heartbeats(&expected(order)).await?;
    let down = down_nodes(&heartbeats, &me);
    let ttl = Duration::from_millis(daemon.config.rollout.slot_ttl_ms);
    let epoch = match coord
        .grant(&me, ttl, order.max_unavailable, &sequence, &down, false)
        .await?
    {
        Grant::Granted(e) => e,
        Grant::Halted | Grant::Full(_) => return Ok(()),
    };
    let goal = Goal::Activate {
        version,
        allow_downgrade: true,
    };
    let result = with_lease(daemon, coord, &order.rollout, epoch, ttl, order, goal, None).await;
    // `settled` recorded the step as if it were the rollout's own; say what it was.
    let mut p = read_progress(daemon, &order.rollout)
        .await
        .ok()
        .flatten()
        .unwrap_or(own);
    match &result {
        Ok(_) => {
            p.outcome = Some(Outcome::RolledBack);
            p.reason = Some(format!("aborted with rollback: back to {back}"));
        }
        Err(r) if r.code == Code::Interrupted || r.code == Code::Busy => {
            p.outcome = Some(Outcome::Committed);
            p.reason = Some(format!("the abort's rollback was interrupted: {}", r.error));
        }
        Err(r) => {
            p.outcome = Some(Outcome::RollbackFailed);
            p.reason = Some(format!(
                "the abort's rollback to {back} failed: {}",
                r.error
            ));
        }
    }
    write_progress(daemon, &order.rollout, &p).await;
    Ok(())
}

/// Records and publishes that this node waits, and why.
async fn wait(
    daemon: &Daemon,
    coord: &mut Coord,
    id: &str,
    mut own: NodeProgress,
    why: String,
) -> Result<(), String> {
    let step = format!("waiting: {why}");
    if own.step.as_deref() != Some(step.as_str()) {
        own.step = Some(step);
        write_progress(daemon, id, &own).await;
    }
    coord.publish_progress(&own).await
}

/// The nodes whose heartbeats count: the targets and every other member the order names.
fn expected(order: &Order) -> Vec<String> {
    let mut nodes = order.upgrade_sequence();
    for m in &order.members {
        if !nodes.contains(m) {
            nodes.push(m.clone());
        }
    }
    nodes
}

/// Whether the order's deadline is more than `margin` behind.
fn past(order: &Order, margin: Duration) -> bool {
    SystemTime::now() > order.deadline.0 + margin
}

/// The nodes other than `me` that are out of service by their heartbeats: none, no daemon,
/// in an upgrade step, or a server that is not healthy.
fn down_nodes(heartbeats: &HashMap<String, Option<NodeReport>>, me: &str) -> Vec<String> {
    let mut down: Vec<String> = heartbeats
        .iter()
        .filter(|(n, _)| *n != me)
        .filter(|(_, r)| match r {
            None => true,
            Some(r) => match &r.status.daemon {
                None => true,
                Some(s) => s.step.is_some() || s.server != fleet_proto::ServerState::Healthy,
            },
        })
        .map(|(n, _)| n.clone())
        .collect();
    down.sort();
    down
}

/// App-aware admission, asked of this node's own server (`/api/cluster`): a scheduler leader
/// on a member that is not draining, and the node upgraded last (if any) a live member on
/// `version` that takes runs (neither draining nor on probation).
async fn admission(daemon: &Daemon, version: &str, last: Option<&str>) -> Result<(), String> {
    let cluster = upgrade::cluster_view(daemon)
        .await
        .map_err(|e| format!("this node's server to answer ({e})"))?;
    let members = cluster["members"].as_array().cloned().unwrap_or_default();
    let member = |n: &str| members.iter().find(|m| m["node"].as_str() == Some(n));
    let Some(leader) = cluster["leader"].as_str() else {
        return Err("a scheduler leader in the cluster".into());
    };
    match member(leader) {
        Some(m) if m["draining"] != true => {}
        Some(_) => {
            return Err(format!(
                "a scheduler leader that is not draining ({leader} drains)"
            ));
        }
        None => return Err(format!("the scheduler leader {leader} to be a live member")),
    }
    if let Some(last) = last {
        match member(last) {
            Some(m)
                if m["release"].as_str() == Some(version)
                    && m["draining"] != true
                    && m["probation"] != true => {}
            _ => {
                return Err(format!(
                    "{last}, upgraded last, to be a live member on {version} that takes runs"
                ));
            }
        }
    }
    Ok(())
}
