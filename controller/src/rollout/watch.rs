//! Watching rollouts from the controller: every target polled with `rollout ID` over one SSH
//! connection per node, kept open and opened again with backoff (at most one poll a second per
//! node); the answers merged (`progress::Tracker`), a progress line on each change, each
//! node's progress recorded in the state store, and the rollout ended there once every target
//! has an outcome. Everything it needs is in the store (cluster, targets, the order), so a
//! controller started afresh picks a rollout up where it stands. Also one round of polls for
//! `status`. Not the merging rules (`progress`) and never the cluster's Redis: what the agents
//! publish there reaches the controller only through their reports.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, anyhow, bail};
use fleet_inventory::Inventory;
use fleet_proto::{Asked, NodeProgress, Outcome, Request, RolloutReport};
use fleet_release::order::Order;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::progress::{Event, Polled, Tracker};
use crate::node::{self, AgentCallError, agent, deploy_target};
use crate::ssh::{Input, Session, Timeouts};
use crate::store::{NodeOutcome, Rollout, Store, now_ms};

/// How a watch polls and when it gives a node up.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub timeouts: Timeouts,
    /// A target without an outcome that nobody heard of for this long is `lost`.
    pub lost_after: Duration,
    /// Print a line on stderr for each change.
    pub progress: bool,
}

/// The shortest time between two polls of one node.
pub const POLL_EVERY: Duration = Duration::from_millis(500);
/// The longest wait before connecting again to a node that could not be reached.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a node may take to answer `rollout ID`.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(30);

/// A rollout as shown: the store's record, its order, and each target's progress.
#[derive(Debug, Clone, Serialize)]
pub struct Shown {
    #[serde(flatten)]
    pub rollout: Rollout,
    /// The order handed to the targets, as signed.
    pub order: Option<Order>,
    pub nodes: Vec<NodeShown>,
    pub asked: Option<Asked>,
    pub halted: Option<String>,
    /// What went wrong while watching (a write to the store that failed).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// One target as shown.
#[derive(Debug, Clone, Serialize)]
pub struct NodeShown {
    #[serde(flatten)]
    pub progress: NodeProgress,
    /// Whether the last poll brought its own report (`None`: it was not asked).
    pub reached: Option<bool>,
    /// Why it did not report, when it did not.
    pub error: Option<String>,
}

impl Shown {
    /// Whether every target committed (and the rollout was not aborted: after an abort with
    /// rollback, a node with no release to go back to stays committed).
    pub fn committed(&self) -> bool {
        !self.nodes.is_empty()
            && self.rollout.state != "aborted"
            && self
                .nodes
                .iter()
                .all(|n| n.progress.outcome == Some(Outcome::Committed))
    }
}

/// The order kept with a rollout (the controller's own record: its signatures were made here
/// and are the nodes' to check).
pub fn stored_order(rollout: &Rollout) -> anyhow::Result<Option<Order>> {
    let Some(document) = &rollout.order else {
        return Ok(None);
    };
    let envelope: serde_json::Value = serde_json::from_str(document)
        .with_context(|| format!("the order of rollout {} in the state store", rollout.id))?;
    let order = serde_json::from_value(envelope["order"].clone())
        .with_context(|| format!("the order of rollout {} in the state store", rollout.id))?;
    Ok(Some(order))
}

/// The targets of `rollout` in upgrade order (its order's, else those it claimed).
fn targets(rollout: &Rollout, order: Option<&Order>) -> Vec<String> {
    order.map_or_else(|| rollout.targets.clone(), |o| o.upgrade_sequence())
}

/// What the store recorded of a rollout's nodes, as progress.
pub(super) async fn stored_progress(store: &Store, id: &str) -> anyhow::Result<Vec<NodeProgress>> {
    let outcomes = store.node_outcomes(id).await?;
    Ok(outcomes
        .into_iter()
        .map(|o| NodeProgress {
            outcome: o.outcome.as_deref().and_then(parse_outcome),
            step: o.step,
            reason: o.reason,
            started_unix_ms: o.started_ms.and_then(|v| u64::try_from(v).ok()),
            ended_unix_ms: o.ended_ms.and_then(|v| u64::try_from(v).ok()),
            ..NodeProgress::new(o.node)
        })
        .collect())
}

fn parse_outcome(text: &str) -> Option<Outcome> {
    serde_json::from_value(serde_json::Value::from(text)).ok()
}

/// The last control the store records for `rollout` (`abort_rollback`, ...).
fn handed_out(rollout: &Rollout) -> Option<Asked> {
    let text = rollout.last_control.as_deref()?;
    serde_json::from_value(serde_json::Value::from(text)).ok()
}

/// Loads a rollout and its order from the store, or says why there is none.
pub async fn load(store: &Store, id: &str) -> anyhow::Result<(Rollout, Option<Order>)> {
    if !fleet_proto::is_rollout_id(id) {
        bail!(
            "`{id}` is not a rollout id (letters, digits, `-`, `_`, `.`; see `fleet rollout list`)"
        );
    }
    let rollout = store
        .rollout(id)
        .await?
        .ok_or_else(|| anyhow!("no rollout {id} in the state store (see `fleet rollout list`)"))?;
    let order = stored_order(&rollout)?;
    Ok((rollout, order))
}

/// Asks `node` (already connected) for its report on rollout `id`.
async fn ask(session: &Session, id: &str, timeout: Duration) -> Result<Polled, String> {
    let request = Request::Rollout { id: id.to_owned() };
    match agent::<RolloutReport>(session, &request, Input::None, timeout).await {
        Ok(report) => Ok(Polled::Report(Box::new(report))),
        Err(AgentCallError::Refused { refusal, .. }) => Ok(Polled::Refused(format!(
            "{} ({})",
            refusal.error, refusal.code
        ))),
        Err(e) => Err(e.to_string()),
    }
}

/// Polls one node until the receiver goes away: one connection kept open, opened again with
/// a backoff (from [`POLL_EVERY`], doubling to [`MAX_BACKOFF`]) while the node cannot be reached.
async fn poll_node(
    key: (usize, String),
    node: Result<fleet_inventory::Node, String>,
    id: String,
    timeouts: Timeouts,
    tx: mpsc::UnboundedSender<((usize, String), Polled)>,
) {
    let send = |polled: Polled| tx.send((key.clone(), polled)).is_ok();
    let target = node.and_then(|n| deploy_target(&n).map_err(|e| format!("{e:#}")));
    let target = match target {
        Ok(target) => target,
        Err(why) => {
            // Nothing will change that while this watch runs; said once a backoff.
            while send(Polled::Unreachable(why.clone())) {
                tokio::time::sleep(MAX_BACKOFF).await;
            }
            return;
        }
    };
    let mut session: Option<Session> = None;
    let mut backoff = POLL_EVERY;
    loop {
        let began = Instant::now();
        let open = match session.take() {
            Some(s) => Ok(s),
            None => Session::connect(&target, timeouts).await,
        };
        let polled = match open {
            Ok(s) => match ask(&s, &id, timeouts.command.min(ANSWER_WITHIN)).await {
                Ok(polled) => {
                    session = Some(s);
                    Ok(polled)
                }
                Err(why) => Err(why),
            },
            Err(e) => Err(e.to_string()),
        };
        let wait = match polled {
            Ok(polled) => {
                backoff = POLL_EVERY;
                if !send(polled) {
                    return;
                }
                POLL_EVERY.saturating_sub(began.elapsed())
            }
            Err(why) => {
                if !send(Polled::Unreachable(why)) {
                    return;
                }
                let wait = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                wait
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// A line on stderr: the time (UTC), the rollout when several are watched, the event.
fn print_event(prefix: &str, event: &Event) {
    let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let time = now.get(11..19).unwrap_or(&now);
    eprintln!("{time} {prefix}{event}");
}

fn outcome_row(p: &NodeProgress) -> NodeOutcome {
    NodeOutcome {
        node: p.node.clone(),
        outcome: p.outcome.map(|o| o.as_str().to_owned()),
        step: p.step.clone(),
        reason: p.reason.clone(),
        updated_ms: now_ms(),
        started_ms: p.started_unix_ms.and_then(|v| i64::try_from(v).ok()),
        ended_ms: p.ended_unix_ms.and_then(|v| i64::try_from(v).ok()),
    }
}

fn shown(
    rollout: Rollout,
    order: Option<Order>,
    tracker: &Tracker,
    asked_nodes: bool,
    problems: Vec<String>,
) -> Shown {
    let nodes = tracker
        .nodes()
        .into_iter()
        .map(|progress| {
            let node = progress.node.clone();
            NodeShown {
                reached: asked_nodes.then(|| tracker.reached(&node)),
                error: tracker.problem(&node).map(str::to_owned),
                progress,
            }
        })
        .collect();
    Shown {
        rollout,
        order,
        nodes,
        asked: tracker.asked(),
        halted: tracker.halted().map(str::to_owned),
        problems,
    }
}

/// One watched rollout.
struct Watching {
    rollout: Rollout,
    order: Option<Order>,
    tracker: Tracker,
    pollers: JoinSet<()>,
    problems: Vec<String>,
    /// Whether its nodes are polled (it was in flight when the watch began).
    polled: bool,
    done: bool,
}

/// Watches rollouts `ids` until each ended (every target has an outcome), recording what
/// the nodes report; returns each as it ended. A rollout that had ended already is shown from
/// the store. A rollout still in flight with no order (its start stopped before signing one)
/// is an error: `fleet rollout abort` ends it.
pub async fn watch(
    store: &Store,
    inventory: &Inventory,
    ids: &[String],
    settings: Settings,
) -> anyhow::Result<Vec<Shown>> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut watching = Vec::new();
    for (k, id) in ids.iter().enumerate() {
        let (rollout, order) = load(store, id).await?;
        let stored = stored_progress(store, id).await?;
        let targets = targets(&rollout, order.as_ref());
        let now = Instant::now();
        let mut tracker = Tracker::new(&targets, stored, settings.lost_after, now);
        tracker.set_handed_out(handed_out(&rollout));
        let mut pollers = JoinSet::new();
        let done = !rollout.in_flight();
        if !done {
            if order.is_none() {
                bail!(
                    "rollout {id} has no order: its start is still staging, or stopped before it signed one (`fleet rollout abort {id}` ends it)"
                );
            }
            for node in &targets {
                let found = node::rollout_target(inventory, node).cloned();
                pollers.spawn(poll_node(
                    (k, node.clone()),
                    found,
                    id.clone(),
                    settings.timeouts,
                    tx.clone(),
                ));
            }
        }
        watching.push(Watching {
            rollout,
            order,
            tracker,
            pollers,
            problems: Vec::new(),
            polled: !done,
            done,
        });
    }
    drop(tx);
    let several = watching.iter().filter(|w| !w.done).count() > 1;
    let mut tick = tokio::time::interval(POLL_EVERY);
    while watching.iter().any(|w| !w.done) {
        let (k, events) = tokio::select! {
            got = rx.recv() => match got {
                Some(((k, node), polled)) => {
                    let events = watching[k].tracker.apply(&node, polled, Instant::now());
                    (Some(k), events)
                }
                None => break,
            },
            _ = tick.tick() => (None, Vec::new()),
        };
        let now = Instant::now();
        let mut all_events: Vec<(usize, Event)> = k
            .map(|k| events.into_iter().map(|e| (k, e)).collect())
            .unwrap_or_default();
        for (j, w) in watching.iter_mut().enumerate() {
            if !w.done {
                all_events.extend(w.tracker.tick(now).into_iter().map(|e| (j, e)));
            }
        }
        if settings.progress {
            for (j, event) in &all_events {
                let prefix = if several {
                    format!("{}: ", watching[*j].rollout.id)
                } else {
                    String::new()
                };
                print_event(&prefix, event);
            }
        }
        for w in watching.iter_mut().filter(|w| !w.done) {
            record(store, w).await;
            if let Some((state, reason)) = w.tracker.ended() {
                w.done = true;
                w.pollers.abort_all();
                match store
                    .end_rollout(&w.rollout.id, state, reason.as_deref())
                    .await
                {
                    Ok(_) => {}
                    Err(e) => w
                        .problems
                        .push(format!("ending it in the state store: {e}")),
                }
                if settings.progress {
                    let prefix = if several {
                        format!("{}: ", w.rollout.id)
                    } else {
                        String::new()
                    };
                    let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
                    let time = now.get(11..19).unwrap_or(&now);
                    eprintln!("{time} {prefix}the rollout ended: {state}");
                }
            }
        }
    }
    let mut out = Vec::new();
    for w in watching {
        // The store's record as it ended (another controller may have ended it first).
        let rollout = store
            .rollout(&w.rollout.id)
            .await
            .ok()
            .flatten()
            .unwrap_or(w.rollout);
        out.push(shown(rollout, w.order, &w.tracker, w.polled, w.problems));
    }
    Ok(out)
}

/// Records what changed of a watched rollout's nodes; a failed write is kept as a problem.
async fn record(store: &Store, w: &mut Watching) {
    for p in w.tracker.changed_since_recorded() {
        if let Err(e) = store
            .set_node_outcome(&w.rollout.id, &outcome_row(&p))
            .await
        {
            let line = format!("recording {} in the state store: {e}", p.node);
            if !w.problems.contains(&line) {
                w.problems.push(line);
            }
        }
    }
}

/// Rollout `id` now: the store's record, and with an inventory, one report from every target
/// that can be reached (each asked once, at once), merged. Changes nothing.
pub async fn snapshot(
    store: &Store,
    inventory: Option<&Inventory>,
    id: &str,
    timeouts: Timeouts,
) -> anyhow::Result<Shown> {
    let (rollout, order) = load(store, id).await?;
    let stored = stored_progress(store, id).await?;
    let targets = targets(&rollout, order.as_ref());
    let now = Instant::now();
    let mut tracker = Tracker::new(&targets, stored, Duration::MAX, now);
    tracker.set_handed_out(handed_out(&rollout));
    let Some(inventory) = inventory.filter(|_| order.is_some()) else {
        return Ok(shown(rollout, order, &tracker, false, Vec::new()));
    };
    let mut asks = JoinSet::new();
    for node in &targets {
        let found = node::rollout_target(inventory, node).cloned();
        let (node, id) = (node.clone(), id.to_owned());
        asks.spawn(async move {
            let polled = match found {
                Err(why) => Polled::Unreachable(why),
                Ok(n) => match deploy_target(&n) {
                    Err(e) => Polled::Unreachable(format!("{e:#}")),
                    Ok(target) => match Session::connect(&target, timeouts).await {
                        Err(e) => Polled::Unreachable(e.to_string()),
                        Ok(session) => {
                            let polled = ask(&session, &id, timeouts.command.min(ANSWER_WITHIN))
                                .await
                                .unwrap_or_else(Polled::Unreachable);
                            session.close().await;
                            polled
                        }
                    },
                },
            };
            (node, polled)
        });
    }
    let mut polls = BTreeMap::new();
    while let Some(joined) = asks.join_next().await {
        if let Ok((node, polled)) = joined {
            polls.insert(node, polled);
        }
    }
    // Applied in upgrade order, so the merge does not depend on who answered first.
    for node in &targets {
        if let Some(polled) = polls.remove(node) {
            tracker.apply(node, polled, now);
        }
    }
    Ok(shown(rollout, order, &tracker, true, Vec::new()))
}
