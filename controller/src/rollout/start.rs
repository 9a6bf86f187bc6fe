//! Starting rollouts, one per cluster among the selected nodes: claim the cluster in the state
//! store (a second start is refused naming the first), stage the release on every target
//! (push's path: nothing running changes), sign the order for the targets that staged with the
//! next sequence, record it with the rollout, and hand it to each target over SSH. A cluster
//! where a node cannot stage is left alone (its claim ended, saying why) unless unstaged nodes
//! are skipped; a rollout no node took ends at once. Not the watching (`watch`) and not the
//! order's rules (`plan`, and the agents').

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{Context, anyhow};
use fleet_inventory::Inventory;
use fleet_proto::{Code, Outcome, Request, RolloutReport};
use fleet_release::SecretKey;
use fleet_release::order::{Order, SignedOrder};
use serde::Serialize;

use super::plan::{self, ClusterPlan};
use crate::cli::fanout;
use crate::node::{self, agent, deploy_target};
use crate::ssh::{Input, Session, Timeouts};
use crate::store::{NodeOutcome, Store, StoreError, now_ms};

/// A target and the signed order to hand it.
type Handout = (fleet_inventory::Node, Arc<Vec<u8>>);

/// What starting needs besides the store.
pub struct Start<'a> {
    pub inventory: &'a Inventory,
    pub plans: Vec<ClusterPlan>,
    pub version: semver::Version,
    /// The release's bundle in the release store.
    pub bundle: PathBuf,
    pub key: &'a SecretKey,
    pub skip_unstaged: bool,
    pub parallel: usize,
    pub timeouts: Timeouts,
    pub progress: bool,
}

/// What happened on one target.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStarted {
    pub node: String,
    pub cluster: String,
    pub rollout: Option<String>,
    /// `staged` or `unchanged` (it had the release); `None` when not tried.
    pub stage: Option<String>,
    pub stage_error: Option<String>,
    /// `accepted` once the node took its order.
    pub order: Option<String>,
    pub order_error: Option<String>,
    /// The agent's code when it refused to stage or to take the order.
    pub code: Option<Code>,
}

impl NodeStarted {
    /// The node's part in one line: what the audit log and the summary say.
    pub fn result(&self) -> Result<String, String> {
        if let Some(e) = &self.stage_error {
            return Err(format!("staging: {e}"));
        }
        if let Some(e) = &self.order_error {
            return Err(format!("order: {e}"));
        }
        let stage = self.stage.as_deref().unwrap_or("not staged");
        Ok(match &self.order {
            Some(order) => format!("{stage}, order {order}"),
            None => format!("{stage}, no order"),
        })
    }
}

/// What happened on one cluster.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStarted {
    pub cluster: String,
    /// The rollout's id (`None` when the cluster could not be claimed).
    pub rollout: Option<String>,
    /// Whether orders were handed out and at least one node took one.
    pub started: bool,
    /// Why it did not start.
    pub reason: Option<String>,
    /// The selected nodes that could not stage, left out under `--skip-unstaged`, each with
    /// why.
    pub left_out: Vec<String>,
    /// The nodes its order names (the selected ones, less the unstaged under
    /// `--skip-unstaged`).
    pub targets: Vec<String>,
    pub accepted: Vec<String>,
    pub order: Option<Order>,
}

/// The digest an order names the release by: the sha256 of the bundle's exact signed manifest
/// bytes, after checking that the bundle holds `version`.
pub fn bundle_digest(bundle: &Path, version: &semver::Version) -> anyhow::Result<String> {
    let context = || format!("release {version}: {}", bundle.display());
    let mut file = std::fs::File::open(bundle).with_context(context)?;
    let header = fleet_release::bundle::read_header(&mut file).with_context(context)?;
    let manifest = header.manifest_unverified().with_context(context)?;
    if &manifest.version != version {
        return Err(anyhow!(
            "{}: holds release {}, not {version}",
            bundle.display(),
            manifest.version
        ));
    }
    Ok(fleet_release::bundle::manifest_digest(
        &header.manifest_bytes,
    ))
}

/// Starts a rollout on each planned cluster; returns each cluster's and each target's part.
pub async fn start(
    store: &Store,
    start: Start<'_>,
) -> anyhow::Result<(Vec<ClusterStarted>, Vec<NodeStarted>)> {
    let digest = bundle_digest(&start.bundle, &start.version)?;
    let version = start.version.to_string();
    let mut clusters = Vec::new();
    let mut nodes: BTreeMap<String, NodeStarted> = BTreeMap::new();

    // Claim every cluster first: a second start on one is refused before it stages anything.
    for plan in &start.plans {
        let cluster = plan.cluster();
        let id = plan::new_rollout_id(plan)?;
        let claimed = match store
            .start_rollout(&id, &cluster, &version, &plan.targets)
            .await
        {
            Ok(_) => {
                if start.progress {
                    eprintln!(
                        "rollout {id}: {cluster} to {version} on {}",
                        plan.targets.join(", ")
                    );
                }
                Some(id)
            }
            Err(e @ StoreError::RolloutInFlight { .. }) => {
                clusters.push(ClusterStarted {
                    cluster: cluster.clone(),
                    rollout: None,
                    started: false,
                    reason: Some(e.to_string()),
                    left_out: Vec::new(),
                    targets: plan.targets.clone(),
                    accepted: Vec::new(),
                    order: None,
                });
                None
            }
            Err(e) => return Err(e.into()),
        };
        for node in &plan.targets {
            nodes.insert(
                node.clone(),
                NodeStarted {
                    node: node.clone(),
                    cluster: cluster.clone(),
                    rollout: claimed.clone(),
                    stage: None,
                    stage_error: None,
                    order: None,
                    order_error: None,
                    code: None,
                },
            );
        }
        if let Some(id) = claimed {
            clusters.push(ClusterStarted {
                cluster,
                rollout: Some(id),
                started: false,
                reason: None,
                left_out: Vec::new(),
                targets: plan.targets.clone(),
                accepted: Vec::new(),
                order: None,
            });
        }
    }

    // Stage on every target of every claimed cluster.
    let to_stage: Vec<(String, fleet_inventory::Node)> = nodes
        .values()
        .filter(|n| n.rollout.is_some())
        .filter_map(|n| {
            start
                .inventory
                .node(&n.node)
                .map(|found| (n.node.clone(), found.clone()))
        })
        .collect();
    if start.progress && !to_stage.is_empty() {
        eprintln!(
            "staging {version} on {} node(s) (nothing running changes)",
            to_stage.len()
        );
    }
    let (bundle, v, timeouts) = (
        Arc::new(start.bundle.clone()),
        start.version.clone(),
        start.timeouts,
    );
    let staged = fanout::run(to_stage, start.parallel, start.progress, move |n| {
        let (bundle, v) = (bundle.clone(), v.clone());
        async move { node::push(&n, &v, &bundle, timeouts).await }
    })
    .await;
    for r in staged {
        if let Some(n) = nodes.get_mut(&r.node) {
            match r.outcome {
                Ok(result) => n.stage = Some(result.to_owned()),
                Err(e) => {
                    n.stage_error = Some(e.error);
                    n.code = e.code;
                }
            }
        }
    }

    // Per cluster: the order for the nodes that staged, signed and recorded.
    let now = SystemTime::now();
    let mut documents: BTreeMap<String, Arc<Vec<u8>>> = BTreeMap::new();
    // `clusters` holds one entry per plan, in plan order.
    for (c, plan) in clusters.iter_mut().zip(&start.plans) {
        let Some(id) = c.rollout.clone() else {
            continue;
        };
        let unstaged: Vec<&NodeStarted> = plan
            .targets
            .iter()
            .filter_map(|t| nodes.get(t))
            .filter(|n| n.stage.is_none())
            .collect();
        let staged: Vec<String> = plan
            .targets
            .iter()
            .filter(|t| nodes.get(*t).is_some_and(|n| n.stage.is_some()))
            .cloned()
            .collect();
        let unstaged: Vec<String> = unstaged
            .iter()
            .map(|n| {
                format!(
                    "{} could not stage {version}: {}",
                    n.node,
                    n.stage_error.as_deref().unwrap_or("not in the inventory")
                )
            })
            .collect();
        let why_unstaged = unstaged.join("; ");
        let not_started = if staged.is_empty() {
            Some(format!(
                "not started: no node staged {version}: {why_unstaged}"
            ))
        } else if !unstaged.is_empty() && !start.skip_unstaged {
            Some(format!(
                "not started (--skip-unstaged would leave those out): {why_unstaged}"
            ))
        } else {
            None
        };
        if let Some(reason) = not_started {
            store.end_rollout(&id, "failed", Some(&reason)).await?;
            c.reason = Some(reason);
            continue;
        }
        c.left_out = unstaged;
        let sequence = store.next_sequence().await?;
        let order = plan.order(&id, &start.version, &digest, staged.clone(), sequence, now);
        let mut signed = SignedOrder::unsigned(order.clone())
            .with_context(|| format!("the order of rollout {id}"))?;
        signed.sign(start.key);
        let document = signed.to_json();
        plan::check_size(&document)?;
        store.set_rollout_order(&id, &staged, &document).await?;
        c.targets = staged;
        c.order = Some(order);
        documents.insert(id, Arc::new(document.into_bytes()));
    }

    // Hand each target its cluster's order.
    let to_order: Vec<(String, Handout)> = clusters
        .iter()
        .filter_map(|c| {
            let document = documents.get(c.rollout.as_deref()?)?;
            Some(c.targets.iter().filter_map(move |t| {
                start
                    .inventory
                    .node(t)
                    .map(|n| (t.clone(), (n.clone(), document.clone())))
            }))
        })
        .flatten()
        .collect();
    if start.progress && !to_order.is_empty() {
        eprintln!("handing out the signed orders");
    }
    let handed = fanout::run(
        to_order,
        start.parallel,
        start.progress,
        move |(n, doc)| async move { hand(&n, Request::Order, &doc, timeouts).await },
    )
    .await;
    for r in handed {
        if let Some(n) = nodes.get_mut(&r.node) {
            match r.outcome {
                Ok(_) => n.order = Some("accepted".into()),
                Err(e) => {
                    n.order_error = Some(e.error);
                    n.code = e.code;
                }
            }
        }
    }

    // A node that refused its order takes no part: skipped, saying why. A rollout no node
    // took ends at once.
    for c in clusters.iter_mut() {
        let (Some(id), Some(_)) = (c.rollout.clone(), &c.order) else {
            continue;
        };
        let mut refused = Vec::new();
        for t in &c.targets {
            let Some(n) = nodes.get(t) else { continue };
            if n.order.is_some() {
                c.accepted.push(t.clone());
                continue;
            }
            let error = n.order_error.as_deref().unwrap_or("not handed out");
            refused.push(format!("{t}: {error}"));
            if let Some(code) = n.code {
                let outcome = NodeOutcome {
                    node: t.clone(),
                    outcome: Some(Outcome::Skipped.as_str().to_owned()),
                    step: None,
                    reason: Some(format!("refused its order ({code}): {error}")),
                    updated_ms: now_ms(),
                    started_ms: None,
                    ended_ms: None,
                };
                store.set_node_outcome(&id, &outcome).await?;
            }
        }
        if c.accepted.is_empty() {
            let reason = format!("no node took the order: {}", refused.join("; "));
            store.end_rollout(&id, "failed", Some(&reason)).await?;
            c.reason = Some(reason);
        } else {
            c.started = true;
        }
    }
    let mut ordered = Vec::new();
    for plan in &start.plans {
        for t in &plan.targets {
            if let Some(n) = nodes.remove(t) {
                ordered.push(n);
            }
        }
    }
    Ok((clusters, ordered))
}

/// Hands `node` a signed document with `request` (`order` or `control`, the document on
/// stdin); its report on the rollout when it took it.
pub(super) async fn hand(
    node: &fleet_inventory::Node,
    request: Request,
    document: &[u8],
    timeouts: Timeouts,
) -> anyhow::Result<RolloutReport> {
    let session = Session::connect(&deploy_target(node)?, timeouts).await?;
    let answer =
        agent::<RolloutReport>(&session, &request, Input::Bytes(document), timeouts.command).await;
    session.close().await;
    Ok(answer?)
}
