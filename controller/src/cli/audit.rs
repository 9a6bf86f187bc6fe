//! The audit log on the command line: the row every command that changes nodes writes after it
//! ran (`record`: who — the OS user and the fingerprints of the SSH keys it used —, the
//! command line, each node with its result, the release manifest digests, the result), and
//! `fleet audit [--since T]` / `fleet audit verify` reading the chain back. Not the store
//! (`store/audit.rs` keeps and checks the chain).

use std::path::Path;

use anyhow::Context as _;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::args::{AuditArgs, AuditCommand, NodeArgs};
use super::report::{Failure, Report};
use crate::store::{AuditEntry, StateLocation, Store, now_ms};

/// What a node-changing command tells the audit log besides its report.
pub struct Changed<'a> {
    /// The command's name (`push`, `rollout start`).
    pub command: &'static str,
    pub nodes: &'a NodeArgs,
    /// Whether it logged in with the bootstrap key (provision) or the deploy key.
    pub bootstrap: bool,
    /// The bundle it pushed, if any (its manifest's digest is recorded).
    pub bundle: Option<&'a Path>,
    /// What an operator's `--now` overrode (a cluster and its maintenance windows, each), added
    /// to the row's result with who gave it.
    pub overrode: Vec<String>,
}

/// Appends the audit row of a command that ran (whether it succeeded or not).
pub fn record(
    state: Option<&str>,
    changed: &Changed<'_>,
    outcome: &Result<Report, Failure>,
) -> anyhow::Result<()> {
    let nodes: Vec<(String, String)> = match outcome {
        Ok(report) => report.json["nodes"]
            .as_array()
            .map(|nodes| {
                nodes
                    .iter()
                    .map(|n| {
                        let name = n["node"].as_str().unwrap_or("?").to_owned();
                        let result = match n["error"].as_str() {
                            Some(e) => format!("failed: {e}"),
                            None => n["result"].as_str().unwrap_or("ok").to_owned(),
                        };
                        (name, result)
                    })
                    .collect()
            })
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    let result = match outcome {
        Ok(report) if report.problems.is_empty() => "ok".to_owned(),
        Ok(report) => format!("failed: {}", report.problems.join("; ")),
        Err(failure) => format!("failed: {:#}", failure.error),
    };
    let result = if changed.overrode.is_empty() {
        result
    } else {
        format!(
            "{result}; --now by {}: {}",
            os_user(),
            changed.overrode.join("; ")
        )
    };
    let entry = AuditEntry {
        at_ms: now_ms(),
        os_user: os_user(),
        key_fingerprints: key_fingerprints(changed),
        command: changed.command.to_owned(),
        args: std::env::args().skip(1).collect(),
        nodes,
        digests: changed
            .bundle
            .and_then(|b| manifest_digest(b).ok())
            .into_iter()
            .collect(),
        result,
    };
    append(state, &entry)
}

/// Appends `entry` to the audit log of the store `state` names.
fn append(state: Option<&str>, entry: &AuditEntry) -> anyhow::Result<()> {
    let location = StateLocation::from_setting(state)?;
    block_on(async {
        let store = Store::open(&location).await?;
        store.append_audit(entry).await?;
        store.close().await;
        Ok::<_, crate::store::StoreError>(())
    })?
    .with_context(|| format!("the audit log in {location}"))
}

/// Appends the audit row of a command that changed the controller's own state (`user`,
/// `token`: no node, no key) and hands its outcome back, like `audited`. `detail` goes into
/// the result (a token's id; never a secret).
pub fn record_local(
    state: Option<&str>,
    command: &'static str,
    detail: Option<String>,
    outcome: Result<Report, Failure>,
) -> Result<Report, Failure> {
    let result = match &outcome {
        Ok(_) => "ok".to_owned(),
        Err(failure) => format!("failed: {:#}", failure.error),
    };
    let entry = AuditEntry {
        at_ms: now_ms(),
        os_user: os_user(),
        key_fingerprints: Vec::new(),
        command: command.to_owned(),
        args: std::env::args().skip(1).collect(),
        nodes: Vec::new(),
        digests: Vec::new(),
        result: match detail {
            Some(d) => format!("{result} ({d})"),
            None => result,
        },
    };
    noted(append(state, &entry), outcome)
}

/// Appends the audit row of a command that ran and hands its outcome back; a row that cannot
/// be written makes the command fail (the operator must know), whatever it did.
pub fn audited(
    state: Option<&str>,
    changed: &Changed<'_>,
    outcome: Result<Report, Failure>,
) -> Result<Report, Failure> {
    noted(record(state, changed, &outcome), outcome)
}

/// A command's outcome, with a failure to record it added: the change was made (or tried),
/// and the operator must know it is not in the log.
fn noted(
    recorded: anyhow::Result<()>,
    outcome: Result<Report, Failure>,
) -> Result<Report, Failure> {
    let Err(e) = recorded else {
        return outcome;
    };
    let e = format!("{e:#}");
    match outcome {
        Ok(report) => {
            let mut problems = report.problems.clone();
            problems.push(format!("the change was made but not recorded: {e}"));
            Ok(report.with_problems(problems))
        }
        Err(mut failure) => {
            failure
                .lines
                .push(format!("error: the attempt was not recorded: {e}"));
            Err(failure)
        }
    }
}

fn block_on<F: std::future::Future>(f: F) -> anyhow::Result<F::Output> {
    Ok(super::commands::runtime()?.block_on(f))
}

/// The user running this command: the name `/etc/passwd` gives its uid, else `$USER`, else
/// `uid N`.
pub(super) fn os_user() -> String {
    // The real uid, as /proc/self/status gives it (`Uid: real effective saved fs`).
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().next().map(str::to_owned))
        })
        .unwrap_or_else(|| "?".into());
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| {
            passwd.lines().find_map(|line| {
                let mut fields = line.split(':');
                let name = fields.next()?;
                (fields.nth(1)? == uid).then(|| name.to_owned())
            })
        })
        .or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| format!("uid {uid}"))
}

/// The fingerprints of the keys the selected nodes are reached with (the deploy key, or the
/// bootstrap key for provisioning; `ssh-agent` when none is configured).
fn key_fingerprints(changed: &Changed<'_>) -> Vec<String> {
    let Ok(inventory) = fleet_inventory::Inventory::load(&changed.nodes.inventory) else {
        return Vec::new();
    };
    let nodes: Vec<&fleet_inventory::Node> = match changed.nodes.limit.as_deref() {
        Some(pattern) => match inventory.select(pattern) {
            Ok(nodes) => nodes,
            Err(_) => return Vec::new(),
        },
        None => inventory.nodes().iter().collect(),
    };
    let mut prints: Vec<String> = nodes
        .iter()
        .map(|node| {
            let key = if changed.bootstrap {
                node.ssh.identity_file.as_deref()
            } else {
                node.ssh.deploy_identity_file.as_deref()
            };
            match key {
                Some(path) => crate::ssh::key_fingerprint(&crate::ssh::Target::expand(path)),
                None => "ssh-agent".to_owned(),
            }
        })
        .collect();
    prints.sort();
    prints.dedup();
    prints
}

/// The sha256 of a bundle's manifest bytes (what nodes verify the signature over).
fn manifest_digest(bundle: &Path) -> anyhow::Result<String> {
    let mut file = std::fs::File::open(bundle)?;
    let header = fleet_release::bundle::read_header(&mut file)?;
    Ok(hex::encode(Sha256::digest(&header.manifest_bytes)))
}

/// `--since`: an RFC 3339 time, or a duration before now (`2h`, `30m`, `7days`).
fn since_ms(since: &str) -> anyhow::Result<i64> {
    if let Ok(ago) = humantime::parse_duration(since) {
        return Ok(now_ms() - i64::try_from(ago.as_millis()).unwrap_or(i64::MAX));
    }
    let at = humantime::parse_rfc3339_weak(since).with_context(|| {
        format!("--since {since:?}: neither a time (2026-11-30T10:00:00Z) nor a duration (2h)")
    })?;
    Ok(at
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0))
}

pub(super) fn when(ms: i64) -> String {
    let at =
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(at).to_string()
}

/// `fleet audit [--since T]` and `fleet audit verify`.
pub fn audit(state: Option<&str>, args: AuditArgs) -> Result<Report, Failure> {
    let location = StateLocation::from_setting(state).map_err(anyhow::Error::from)?;
    let since = args.since.as_deref().map(since_ms).transpose()?;
    let store_error = |e: crate::store::StoreError| Failure::from(anyhow::Error::from(e));
    block_on(async {
        let store = Store::open(&location).await.map_err(store_error)?;
        let report = match args.command {
            Some(AuditCommand::Verify) => {
                let (rows, tamper) = store.verify_audit().await.map_err(store_error)?;
                let head = store
                    .audit(None)
                    .await
                    .map_err(store_error)?
                    .last()
                    .map(|r| r.hash.clone());
                match tamper {
                    None => Report::new(
                        format!(
                            "audit log {location}: {rows} rows, the chain is intact (newest hash {})",
                            head.as_deref().unwrap_or("none")
                        ),
                        json!({ "ok": true, "rows": rows, "newest_hash": head }),
                    ),
                    Some(tamper) => {
                        let line = tamper.to_string();
                        Report::new(
                            format!("audit log {location}: {rows} rows"),
                            json!({ "ok": false, "rows": rows }),
                        )
                        .with_problems(vec![line])
                    }
                }
            }
            None => {
                let rows = store.audit(since).await.map_err(store_error)?;
                let table: Vec<Vec<String>> = rows
                    .iter()
                    .map(|r| {
                        let failed = r
                            .entry
                            .nodes
                            .iter()
                            .filter(|(_, res)| res.starts_with("failed"))
                            .count();
                        vec![
                            r.id.to_string(),
                            when(r.entry.at_ms),
                            r.entry.os_user.clone(),
                            r.entry.args.join(" "),
                            format!("{} ({} failed)", r.entry.nodes.len(), failed),
                            r.entry.result.chars().take(60).collect(),
                        ]
                    })
                    .collect();
                let text = if table.is_empty() {
                    format!("audit log {location}: no rows")
                } else {
                    super::fanout::table(
                        &["ID", "WHEN", "USER", "COMMAND", "NODES", "RESULT"],
                        &table,
                    )
                };
                Report::new(text, json!({ "ok": true, "rows": rows }))
            }
        };
        store.close().await;
        Ok::<_, Failure>(report)
    })?
}
