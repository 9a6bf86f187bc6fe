//! Controls of a rollout in flight: pause (no new upgrade slot), resume, abort, and abort with
//! rollback. Each is signed with the order key and the next sequence, and handed to every
//! target that can be reached; the agents pass it on to the others through their cluster's
//! Redis, so a node that cannot be reached is reported, not waited for. An abort of a rollout
//! whose start stopped before it handed out an order just ends it; so does an abort after
//! which every target is at its end or could not be reached (and none is seen in an upgrade
//! step, nor still to roll back): otherwise `watch` ends it once the nodes did. Not what the
//! agents do with a control.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use fleet_inventory::Inventory;
use fleet_proto::{Asked, Code, Request};
use fleet_release::SecretKey;
use fleet_release::order::{Action, SignedControl};
use serde::Serialize;

use super::plan;
use super::progress::{Polled, Tracker};
use super::watch::{load, stored_progress};
use crate::cli::fanout;
use crate::node;
use crate::ssh::Timeouts;
use crate::store::{Rollout, Store};

/// How each target took a control.
#[derive(Debug, Clone, Serialize)]
pub struct NodeControl {
    pub node: String,
    /// Whether it took the control.
    pub taken: bool,
    /// The last control its report says the cluster's agents took.
    pub asked: Option<Asked>,
    pub error: Option<String>,
    pub code: Option<Code>,
}

/// A control handed out (or an abort that ended a rollout with no order).
#[derive(Debug, Clone, Serialize)]
pub struct ControlSent {
    pub rollout: Rollout,
    pub action: Action,
    /// The control's sequence (`None` when nothing was signed).
    pub sequence: Option<u64>,
    pub nodes: Vec<NodeControl>,
    /// An abort: whether it ended the rollout in the store, and why it did or did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended: Option<(bool, String)>,
}

/// What `action` is called on the command line.
pub fn action_word(action: Action) -> &'static str {
    match action {
        Action::Pause => "pause",
        Action::Resume => "resume",
        Action::Abort => "abort",
        Action::AbortRollback => "abort --rollback",
    }
}

/// Signs `action` for rollout `id` and hands it to every target.
#[allow(clippy::too_many_arguments)]
pub async fn send(
    store: &Store,
    inventory: &Inventory,
    id: &str,
    action: Action,
    key: &SecretKey,
    parallel: usize,
    timeouts: Timeouts,
    progress: bool,
) -> anyhow::Result<ControlSent> {
    let (rollout, order) = load(store, id).await?;
    let word = action_word(action);
    if !rollout.in_flight() {
        bail!(
            "rollout {id} has ended ({}): there is nothing to {word}",
            rollout.state
        );
    }
    let Some(order) = order else {
        if matches!(action, Action::Abort | Action::AbortRollback) {
            let reason = "aborted before any order was handed out";
            store.end_rollout(id, "aborted", Some(reason)).await?;
            let rollout = store.rollout(id).await?.unwrap_or(rollout);
            return Ok(ControlSent {
                rollout,
                action,
                sequence: None,
                nodes: Vec::new(),
                ended: Some((true, reason.to_owned())),
            });
        }
        bail!(
            "rollout {id} has no order yet: its start is still staging, or stopped before it signed one (`fleet rollout abort {id}` ends it)"
        );
    };
    let sequence = store.next_sequence().await?;
    let body = plan::control(&order, action, sequence, SystemTime::now());
    let mut signed =
        SignedControl::unsigned(body).with_context(|| format!("the control of rollout {id}"))?;
    signed.sign(key);
    let document = Arc::new(signed.to_json().into_bytes());
    let targets = order.upgrade_sequence();
    // A target not in the inventory, or never contacted, keeps the line that says why.
    let found: Vec<Result<&fleet_inventory::Node, String>> = targets
        .iter()
        .map(|t| node::rollout_target(inventory, t))
        .collect();
    let mut nodes: Vec<NodeControl> = targets
        .iter()
        .zip(&found)
        .map(|(t, found)| NodeControl {
            node: t.clone(),
            taken: false,
            asked: None,
            error: found.as_ref().err().cloned(),
            code: None,
        })
        .collect();
    let items: Vec<(String, fleet_inventory::Node)> = targets
        .iter()
        .zip(&found)
        .filter_map(|(t, found)| found.as_ref().ok().map(|n| (t.clone(), (*n).clone())))
        .collect();
    if progress {
        eprintln!("rollout {id}: handing {word} (sequence {sequence}) to its nodes");
    }
    let results = fanout::run(items, parallel, progress, move |n| {
        let document = document.clone();
        async move { super::start::hand(&n, Request::Control, &document, timeouts).await }
    })
    .await;
    let mut answers = Vec::new();
    for r in results {
        if let Some(n) = nodes.iter_mut().find(|n| n.node == r.node) {
            match r.outcome {
                Ok(report) => {
                    n.taken = true;
                    n.asked = report.asked;
                    n.error = None;
                    answers.push((r.node, Polled::Report(Box::new(report))));
                }
                Err(e) => {
                    let polled = match e.code {
                        Some(_) => Polled::Refused(e.error.clone()),
                        None => Polled::Unreachable(e.error.clone()),
                    };
                    answers.push((r.node, polled));
                    n.error = Some(e.error);
                    n.code = e.code;
                }
            }
        }
    }
    // Taken by a node, it reaches the others through their Redis: a watch begun afresh must
    // know of it before any node reports (an abort with rollback is no end of committed nodes).
    if nodes.iter().any(|n| n.taken) {
        store.set_rollout_control(id, &asked_name(action)).await?;
    }
    let mut rollout = rollout;
    let mut ended = None;
    if matches!(action, Action::Abort | Action::AbortRollback) {
        // What the store held and what each target answered, merged as a watch would.
        let now = Instant::now();
        let stored = stored_progress(store, id).await?;
        let mut tracker = Tracker::new(&targets, stored, Duration::MAX, now);
        tracker.set_handed_out(Some(asked_of(action)));
        for node in &targets {
            if let Some(i) = answers.iter().position(|(n, _)| n == node) {
                let (_, polled) = answers.swap_remove(i);
                tracker.apply(node, polled, now);
            }
        }
        ended = Some(match tracker.abort_ends() {
            Ok((state, why)) => {
                store.end_rollout(id, state, why.as_deref()).await?;
                rollout = store.rollout(id).await?.unwrap_or(rollout);
                (
                    true,
                    why.unwrap_or_else(|| "every target is at its end".into()),
                )
            }
            Err(why) => (
                false,
                format!(
                    "it goes on until its nodes end their part (`fleet rollout watch {id}` ends it then): {why}"
                ),
            ),
        });
    }
    Ok(ControlSent {
        rollout,
        action,
        sequence: Some(sequence),
        nodes,
        ended,
    })
}

/// The control `action` as the agents' reports name it.
fn asked_of(action: Action) -> Asked {
    match action {
        Action::Pause => Asked::Pause,
        Action::Resume => Asked::Resume,
        Action::Abort => Asked::Abort,
        Action::AbortRollback => Asked::AbortRollback,
    }
}

/// How the store names the control `action`: as the agents' reports do (`abort_rollback`).
fn asked_name(action: Action) -> String {
    serde_json::to_value(asked_of(action))
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}
