//! Provisioning, push, activation, rollback and status: the per-node work of the controller's
//! deploy commands. Commands for a node are built as data (shell text with quoted values, or
//! agent requests); `ssh.rs` runs them on one connection per node.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use fleet_inventory::Node;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::ssh::{Input, Session, Target, Timeouts};

/// Quotes a value for the POSIX shell.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A node path that may start with `~/` (the remote user's home), as shell text.
fn remote_path(path: &str) -> String {
    match path.strip_prefix("~/") {
        Some(rest) => format!("\"$HOME\"/{}", sh_quote(rest)),
        None => sh_quote(path),
    }
}

/// The target for the deploy key (restricted to the agent once provisioned).
pub fn deploy_target(node: &Node) -> anyhow::Result<Target> {
    let mut target = Target::of(node);
    let key = node.ssh.deploy_identity_file.as_deref().ok_or_else(|| {
        anyhow!(
            "{}: no ssh.deploy_identity_file in the inventory",
            node.name
        )
    })?;
    target.identity = Some(Target::expand(key));
    Ok(target)
}

/// The authorized_keys line that lets the deploy key run the agent and nothing else.
pub fn deploy_line(node: &Node, deploy_pub: &str) -> String {
    let root = node.node_root.to_string_lossy();
    let agent = format!("{root}/bin/fleet-agent");
    let command = format!("{} --root {} serve", sh_quote(&agent), sh_quote(&root));
    format!(
        "restrict,command=\"{}\" {} fleet-deploy",
        command.replace('"', "\\\""),
        deploy_pub.trim()
    )
}

/// What provisioning found or did on a node: one line per item that differs.
#[derive(Debug, Clone, Serialize)]
pub struct Provisioned {
    pub changes: Vec<String>,
    pub applied: bool,
}

const DIRS: [&str; 7] = [
    "releases", "config", "trust", "state", "chunks", "logs", "bin",
];

/// Brings a node to the provisioned state through the bootstrap account: the node layout,
/// `bin/fleet-agent`, `trust/root.json`, and the deploy key restricted to the agent. Only
/// what differs is written; with `check`, nothing is.
pub async fn provision(
    node: &Node,
    timeouts: Timeouts,
    agent: &[u8],
    root_json: &[u8],
    deploy_pub: &str,
    check: bool,
) -> anyhow::Result<Provisioned> {
    let session = Session::connect(&Target::of(node), timeouts).await?;
    let root = node.node_root.to_string_lossy().into_owned();
    let r = sh_quote(&root);
    let ak = remote_path(&node.ssh.authorized_keys);
    let line = deploy_line(node, deploy_pub);
    let probe = format!(
        "for f in {r}/bin/fleet-agent {r}/trust/root.json; do if [ -f \"$f\" ]; then sha256sum < \"$f\" | cut -d' ' -f1; else echo -; fi; done; \
         if [ -f {ak} ] && grep -qxF {line} {ak}; then echo present; else echo absent; fi; \
         for d in {dirs}; do [ -d {r}/\"$d\" ] || echo \"missing $d\"; done",
        line = sh_quote(&line),
        dirs = DIRS.join(" ")
    );
    let out = run(&session, &probe, Input::None, timeouts.command)
        .await
        .context("probing the node")?;
    let lines: Vec<&str> = out.lines().collect();
    let (agent_sum, root_sum, key) = match lines.as_slice() {
        [a, b, k, ..] => (*a, *b, *k),
        _ => bail!("unexpected probe output: {out:?}"),
    };
    let missing: Vec<&str> = lines
        .iter()
        .skip(3)
        .filter_map(|l| l.strip_prefix("missing "))
        .collect();
    let mut changes = Vec::new();
    if !missing.is_empty() {
        changes.push(format!("create {} under {root}", missing.join(", ")));
    }
    let agent_changed = agent_sum != hex::encode(Sha256::digest(agent));
    if agent_changed {
        changes.push(format!("install bin/fleet-agent ({} bytes)", agent.len()));
    }
    let root_changed = root_sum != hex::encode(Sha256::digest(root_json));
    if root_changed {
        changes.push("write trust/root.json".to_owned());
    }
    let key_missing = key != "present";
    if key_missing {
        changes.push(format!(
            "authorize the deploy key for the agent only in {}",
            node.ssh.authorized_keys
        ));
    }
    if check || changes.is_empty() {
        session.close().await;
        return Ok(Provisioned {
            changes,
            applied: false,
        });
    }
    let dirs: Vec<String> = DIRS.iter().map(|d| format!("{r}/{d}")).collect();
    run(
        &session,
        &format!("mkdir -p {} && chmod 700 {r}/state", dirs.join(" ")),
        Input::None,
        timeouts.command,
    )
    .await?;
    if agent_changed {
        install(
            &session,
            &format!("{root}/bin/fleet-agent"),
            "755",
            agent,
            timeouts,
        )
        .await?;
    }
    if root_changed {
        install(
            &session,
            &format!("{root}/trust/root.json"),
            "644",
            root_json,
            timeouts,
        )
        .await?;
    }
    if key_missing {
        let script = format!(
            "mkdir -p \"$(dirname {ak})\" && touch {ak} && chmod 600 {ak} && (grep -qxF {line} {ak} || printf '%s\\n' {line} >> {ak})",
            line = sh_quote(&line)
        );
        run(&session, &script, Input::None, timeouts.command).await?;
    }
    session.close().await;
    Ok(Provisioned {
        changes,
        applied: true,
    })
}

/// Writes `bytes` to `path` on the node atomically (temporary name, then rename).
async fn install(
    session: &Session,
    path: &str,
    mode: &str,
    bytes: &[u8],
    timeouts: Timeouts,
) -> anyhow::Result<()> {
    let (p, tmp) = (sh_quote(path), sh_quote(&format!("{path}.new")));
    let script = format!("cat > {tmp} && chmod {mode} {tmp} && mv -f {tmp} {p}");
    run(session, &script, Input::Bytes(bytes), timeouts.command)
        .await
        .with_context(|| format!("installing {path}"))?;
    Ok(())
}

/// Runs a shell command; its stdout on success, its stderr as the error otherwise.
async fn run(
    session: &Session,
    command: &str,
    input: Input<'_>,
    timeout: Duration,
) -> anyhow::Result<String> {
    let out = session.exec(command, input, timeout).await?;
    if !out.success() {
        bail!("exit {:?}: {}", out.status, out.stderr_text().trim());
    }
    Ok(out.stdout_text())
}

/// Sends one request to the agent (the deploy key's forced command) and returns its JSON.
pub async fn agent(
    session: &Session,
    request: &str,
    input: Input<'_>,
    timeout: Duration,
) -> anyhow::Result<serde_json::Value> {
    let out = session.exec(request, input, timeout).await?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|_| {
        anyhow!(
            "the agent did not answer `{request}` (exit {:?}): {}",
            out.status,
            out.stderr_text().trim()
        )
    })?;
    if json["ok"] != true || !out.success() {
        bail!("{}", json["error"].as_str().unwrap_or("the agent refused"));
    }
    Ok(json)
}

/// Node state as the agent reports it, plus what the connection saw.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    pub host_key: String,
    #[serde(flatten)]
    pub agent: fleet_agent::Status,
}

pub async fn status(node: &Node, timeouts: Timeouts) -> anyhow::Result<NodeStatus> {
    let session = Session::connect(&deploy_target(node)?, timeouts).await?;
    let json = agent(&session, "status", Input::None, timeouts.command).await?;
    let host_key = crate::known_hosts::fingerprint(session.host_key());
    session.close().await;
    let agent = serde_json::from_value(json).context("the agent's status answer")?;
    Ok(NodeStatus { host_key, agent })
}

/// Stages `version` from `bundle` unless the node has it; one connection for both steps.
pub async fn push(
    node: &Node,
    version: &str,
    bundle: &Path,
    timeouts: Timeouts,
) -> anyhow::Result<&'static str> {
    let session = Session::connect(&deploy_target(node)?, timeouts).await?;
    let status = agent(&session, "status", Input::None, timeouts.command).await?;
    let has = status["staged"]
        .as_array()
        .is_some_and(|a| a.iter().any(|v| v == version));
    if has {
        session.close().await;
        return Ok("unchanged");
    }
    let mut file = tokio::fs::File::open(bundle)
        .await
        .with_context(|| format!("{}", bundle.display()))?;
    agent(
        &session,
        &format!("stage {version}"),
        Input::Reader(&mut file),
        timeouts.command,
    )
    .await?;
    session.close().await;
    Ok("staged")
}

/// Sends `activate` or `rollback` and reports the active release afterwards.
pub async fn switch(
    node: &Node,
    request: &str,
    timeouts: Timeouts,
) -> anyhow::Result<(String, bool)> {
    let session = Session::connect(&deploy_target(node)?, timeouts).await?;
    let json = agent(&session, request, Input::None, timeouts.command).await?;
    session.close().await;
    Ok((
        json["active"].as_str().unwrap_or_default().to_owned(),
        json["changed"] == true,
    ))
}
