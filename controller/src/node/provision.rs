//! Provisioning through the bootstrap account: the node layout, `bin/fleet-agent`, the pinned
//! trust root, the rendered config files and their secrets, and the deploy key restricted to
//! the agent. Not the agent's requests (`agent`) and not the transport (`ssh`).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use fleet_inventory::Node;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::config::{NodeFile, diff};
use super::shell::{remote_path, sh_quote};
use crate::ssh::{Input, Session, Target, Timeouts};

/// The deploy key's public half as `type base64`, read from its `.pub` file (first line; the
/// comment is dropped) and checked to be a key.
pub fn read_deploy_pub(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("the deploy key's public half {}", path.display()))?;
    let fields: Vec<&str> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .take(2)
        .collect();
    let key = fields.join(" ");
    russh::keys::ssh_key::PublicKey::from_openssh(&key)
        .map_err(|e| anyhow!("{}: not an OpenSSH public key: {e}", path.display()))?;
    Ok(key)
}

/// The authorized_keys line that lets the deploy key (`type base64`) run the agent and
/// nothing else.
pub fn deploy_line(node: &Node, deploy_pub: &str) -> String {
    let root = node.node_root.to_string_lossy();
    let agent = format!("{root}/bin/fleet-agent");
    let command = format!("{} --root {} serve", sh_quote(&agent), sh_quote(&root));
    format!(
        "restrict,command=\"{}\" {deploy_pub} fleet-deploy",
        command.replace('"', "\\\"")
    )
}

/// What provisioning found or did on a node: one line per item that differs, and for
/// `--check`, the diff of each rendered config file that would change.
#[derive(Debug, Clone, Serialize)]
pub struct Provisioned {
    pub changes: Vec<String>,
    pub diffs: Vec<String>,
    pub applied: bool,
}

const DIRS: [&str; 8] = [
    "releases",
    "config",
    "config/secrets",
    "trust",
    "state",
    "chunks",
    "logs",
    "bin",
];

/// A file provisioning keeps on the node, with how to show a change to it.
struct Managed<'a> {
    path: String,
    mode: &'a str,
    bytes: &'a [u8],
    show: Show,
}

enum Show {
    /// Binary or opaque: only its size.
    Size,
    /// Text: a diff under `--check`.
    Diff,
    /// Never displayed.
    Secret,
}

/// Brings a node to the provisioned state through the bootstrap account: the node layout,
/// `bin/fleet-agent`, `trust/root.json`, the config files rendered for it and their secrets,
/// and the deploy key restricted to the agent. Only what differs is written; with `check`,
/// nothing is, and each config file that would change is shown as a diff.
#[allow(clippy::too_many_arguments)]
pub async fn provision(
    node: &Node,
    timeouts: Timeouts,
    agent: &[u8],
    root_json: &[u8],
    files: &[NodeFile],
    deploy_pub: &str,
    check: bool,
) -> anyhow::Result<Provisioned> {
    let session = Session::connect(&Target::of(node), timeouts).await?;
    let root = node.node_root.to_string_lossy().into_owned();
    let r = sh_quote(&root);
    let mut managed = vec![
        Managed {
            path: "bin/fleet-agent".into(),
            mode: "755",
            bytes: agent,
            show: Show::Size,
        },
        Managed {
            path: "trust/root.json".into(),
            mode: "644",
            bytes: root_json,
            show: Show::Diff,
        },
    ];
    for f in files {
        let show = if f.secret { Show::Secret } else { Show::Diff };
        managed.push(Managed {
            path: f.path.clone(),
            mode: f.mode,
            bytes: f.content.as_bytes(),
            show,
        });
    }
    let ak = remote_path(&node.ssh.authorized_keys);
    let line = deploy_line(node, deploy_pub);
    let paths: Vec<String> = managed
        .iter()
        .map(|m| sh_quote(&format!("{root}/{}", m.path)))
        .collect();
    // One line per managed file, whatever happens to it, then the key's state, then what is
    // missing. The key counts as present only if our exact line is the key's only line: sshd
    // uses the first line for a key, so any other (an unrestricted one) must go.
    let blob = deploy_pub.split_whitespace().nth(1).unwrap_or_default();
    let probe = format!(
        "for f in {paths}; do if [ -f \"$f\" ]; then s=$(sha256sum < \"$f\" 2>/dev/null | cut -d' ' -f1); echo \"${{s:-unreadable}}\"; else echo -; fi; done; \
         if [ -f {ak} ] && grep -qxF {line} {ak} && [ \"$(grep -cF {blob} {ak})\" = 1 ]; then echo present; else echo absent; fi; \
         for d in {dirs}; do [ -d {r}/\"$d\" ] || echo \"missing $d\"; done",
        paths = paths.join(" "),
        line = sh_quote(&line),
        blob = sh_quote(blob),
        dirs = DIRS.join(" ")
    );
    let out = run(&session, &probe, Input::None, timeouts.command)
        .await
        .context("probing the node")?;
    let lines: Vec<&str> = out.lines().collect();
    if lines.len() < managed.len() + 1 {
        bail!("unexpected probe output: {out:?}");
    }
    let (sums, rest) = lines.split_at(managed.len());
    let key_missing = rest[0] != "present";
    let missing: Vec<&str> = rest[1..]
        .iter()
        .filter_map(|l| l.strip_prefix("missing "))
        .collect();

    // A node that pins a root accepts only that root again or its valid successor: a wrong
    // --trust file must not re-root the fleet.
    if !matches!(sums[1], "-") && sums[1] != hex::encode(Sha256::digest(root_json)) {
        let remote = run(
            &session,
            &format!("cat {}", sh_quote(&format!("{root}/trust/root.json"))),
            Input::None,
            timeouts.command,
        )
        .await
        .context("reading the node's pinned root")?;
        let pinned = fleet_release::Root::parse(remote.as_bytes())
            .context("the node's pinned trust/root.json")?;
        let offered = fleet_release::Root::parse(root_json)?;
        if pinned.body() != offered.body() {
            pinned.verify_successor(&offered).with_context(|| {
                format!("the node pins root version {}; the given root is not its successor (rotate with `fleet trust rotate`)", pinned.body().version)
            })?;
        }
    }
    let mut changes = Vec::new();
    let mut diffs = Vec::new();
    if !missing.is_empty() {
        changes.push(format!("create {} under {root}", missing.join(", ")));
    }
    let changed: Vec<&Managed> = managed
        .iter()
        .zip(sums)
        .filter(|(m, sum)| **sum != hex::encode(Sha256::digest(m.bytes)))
        .map(|(m, _)| m)
        .collect();
    for m in &changed {
        changes.push(match m.show {
            Show::Size => format!("install {} ({} bytes)", m.path, m.bytes.len()),
            Show::Diff => format!("write {}", m.path),
            Show::Secret => format!("write {} (secret, not shown)", m.path),
        });
        if check && matches!(m.show, Show::Diff) {
            let remote = format!("{root}/{}", m.path);
            let old = run(
                &session,
                &format!("cat {} 2>/dev/null || true", sh_quote(&remote)),
                Input::None,
                timeouts.command,
            )
            .await?;
            diffs.push(diff(&m.path, &old, &String::from_utf8_lossy(m.bytes)));
        }
    }
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
            diffs,
            applied: false,
        });
    }
    let dirs: Vec<String> = DIRS.iter().map(|d| format!("{r}/{d}")).collect();
    let mkdirs = format!(
        "mkdir -p {} && chmod 700 {r}/state {r}/config/secrets",
        dirs.join(" ")
    );
    run(&session, &mkdirs, Input::None, timeouts.command).await?;
    for m in changed {
        install(
            &session,
            &format!("{root}/{}", m.path),
            m.mode,
            m.bytes,
            timeouts,
        )
        .await?;
    }
    if key_missing {
        let script = format!(
            "mkdir -p \"$(dirname {ak})\" && touch {ak} && {{ grep -vF {blob} {ak} || true; printf '%s\\n' {line}; }} > {ak}.new && chmod 600 {ak}.new && mv -f {ak}.new {ak}",
            line = sh_quote(&line),
            blob = sh_quote(blob)
        );
        run(&session, &script, Input::None, timeouts.command).await?;
    }
    session.close().await;
    Ok(Provisioned {
        changes,
        diffs,
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
