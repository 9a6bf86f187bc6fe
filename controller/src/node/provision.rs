//! Provisioning through the bootstrap account, the apply half: one SSH session that runs the
//! probe, reads what the plan needs read, and runs the plan's steps. Not the plan (`plan`
//! builds every command as data) and not the agent's requests (`agent`).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use fleet_inventory::Node;
use serde::Serialize;

use super::config::{NodeFile, diff};
use super::plan::{DeployKey, Desired, Step};
use crate::ssh::{Input, Session, Target, Timeouts};

/// The deploy key's public half, read from its `.pub` file (the first line).
pub fn read_deploy_pub(path: &Path) -> anyhow::Result<DeployKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("the deploy key's public half {}", path.display()))?;
    DeployKey::parse(text.lines().next().unwrap_or_default())
        .with_context(|| format!("the deploy key's public half {}", path.display()))
}

/// What provisioning found or did on a node: one line per item that differs, for `--check`
/// the diff of each rendered config file that would change, and what is left to the operator
/// (on a node without systemd: how to start the agent).
#[derive(Debug, Clone, Serialize)]
pub struct Provisioned {
    pub changes: Vec<String>,
    pub diffs: Vec<String>,
    pub applied: bool,
    pub notes: Vec<String>,
}

/// Brings a node to the provisioned state through the bootstrap account, over one SSH
/// session: probe, refuse a root the node's pinned one does not vouch for, plan, then (unless
/// `check`, or nothing differs) run the plan's steps, the agent's systemd `unit` installed and
/// started where the node runs systemd. With `check`, each config file that would change is
/// read and shown as a diff instead.
#[allow(clippy::too_many_arguments)]
pub async fn provision(
    node: &Node,
    timeouts: Timeouts,
    agent: &[u8],
    root_json: &[u8],
    files: &[NodeFile],
    unit: &str,
    deploy_key: &DeployKey,
    check: bool,
) -> anyhow::Result<Provisioned> {
    let desired = Desired::new(
        &node.node_root.to_string_lossy(),
        &node.ssh.authorized_keys,
        deploy_key,
        agent,
        root_json,
        files,
        unit,
    )?;
    let session = Session::connect(&Target::of(node), timeouts).await?;
    let out = run(&session, &desired.probe(), timeouts.command).await?;
    let probe = desired.read_probe(&out)?;
    if let Some(read) = desired.pinned_root_read(&probe) {
        let pinned = run(&session, &read, timeouts.command).await?;
        desired.check_successor(pinned.as_bytes())?;
    }
    let plan = desired.plan(&probe);
    let mut diffs = Vec::new();
    if check {
        for (file, read) in plan.diff_reads() {
            let old = run(&session, &read, timeouts.command).await?;
            diffs.push(diff(&file.path, &old, &String::from_utf8_lossy(file.bytes)));
        }
    }
    let changes = plan.describe();
    let notes = plan.notes();
    if check || plan.is_empty() {
        session.close().await;
        return Ok(Provisioned {
            changes,
            diffs,
            applied: false,
            notes,
        });
    }
    for step in plan.steps() {
        run(&session, &step, timeouts.command).await?;
    }
    session.close().await;
    Ok(Provisioned {
        changes,
        diffs,
        applied: true,
        notes,
    })
}

/// Runs one step; its stdout on success, its stderr as the error otherwise.
async fn run(session: &Session, step: &Step<'_>, timeout: Duration) -> anyhow::Result<String> {
    let input = step.input.map_or(Input::None, Input::Bytes);
    let outcome = async {
        let out = session.exec(&step.script, input, timeout).await?;
        if !out.success() {
            bail!("exit {:?}: {}", out.status, out.stderr_text().trim());
        }
        Ok(out.stdout_text())
    }
    .await;
    match &step.context {
        Some(context) => outcome.with_context(|| context.clone()),
        None => outcome,
    }
}
