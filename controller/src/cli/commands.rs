//! The work behind each `fleet` command: load, check, build, verify, and describe the outcome
//! as a [`Report`]. Not argument parsing (that is `args`) and not printing (`cli/mod.rs`).

use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, anyhow, bail};
use fleet_inventory::Inventory;
use fleet_release::{PublicKey, Root, RootBody, SecretKey};
use serde_json::json;

use super::args::{
    HostsCommand, InventoryCommand, KeysCommand, NodeArgs, ReleaseCommand, RootKeys, TrustCommand,
};
use super::report::{Failure, Report};
use super::{fanout, rows};
use crate::{node, ssh};

pub fn inventory(command: InventoryCommand) -> Result<Report, Failure> {
    match command {
        InventoryCommand::Check { inventory } => {
            let inv = load_inventory(&inventory)?;
            let (customers, clusters, nodes) = (
                inv.customers().len(),
                inv.clusters().len(),
                inv.nodes().len(),
            );
            Ok(Report::new(
                format!(
                    "{}: ok ({customers} customers, {clusters} clusters, {nodes} nodes)",
                    inventory.display()
                ),
                json!({ "ok": true, "file": inventory, "customers": customers, "clusters": clusters, "nodes": nodes }),
            ))
        }
        InventoryCommand::List { inventory, limit } => {
            let inv = load_inventory(&inventory)?;
            let nodes = select(&inv, limit.as_deref())?;
            let cluster = |n| {
                inv.cluster_of(n)
                    .expect("a loaded inventory places every node in a cluster")
            };
            let text = nodes
                .iter()
                .map(|n| n.summary_line(cluster(n)))
                .collect::<Vec<_>>()
                .join("\n");
            let json: Vec<_> = nodes.iter().map(|n| n.with_cluster(cluster(n))).collect();
            Ok(Report::new(text, json!({ "ok": true, "nodes": json })))
        }
    }
}

pub fn hosts(command: HostsCommand, progress: bool) -> Result<Report, Failure> {
    match command {
        HostsCommand::Trust {
            inventory,
            limit,
            replace,
            parallel,
            timeout,
        } => {
            let args = NodeArgs {
                inventory,
                limit,
                parallel,
                connect_timeout: timeout,
                command_timeout: Some(timeout),
            };
            per_node(
                &selection(&args, Duration::from_secs(timeout))?,
                progress,
                &["NODE", "ACTION", "HOST KEY"],
                move |node, timeouts| async move {
                    ssh::trust_host_key(&ssh::Target::of(&node), replace, timeouts.connect).await
                },
                |e: &ssh::Enrolled| {
                    (
                        vec![e.action.to_owned(), e.fingerprint.clone()],
                        json!({ "action": e.action, "fingerprint": e.fingerprint }),
                    )
                },
            )
        }
    }
}

/// What a per-node command works on: the inventory, the selected nodes it may connect to,
/// those it never does (an airgapped customer's), how many at once and how long to wait.
struct Selection {
    inventory: Inventory,
    nodes: Vec<fleet_inventory::Node>,
    skipped: Vec<node::Skipped>,
    parallel: usize,
    timeouts: ssh::Timeouts,
}

/// The selection `args` make; a command waits `default_command` for each node's answer
/// unless `--command-timeout` says otherwise. Nodes never contacted are set aside here, before
/// any connection; when no node is left, nothing is done and the command fails saying why.
fn selection(args: &NodeArgs, default_command: Duration) -> Result<Selection, Failure> {
    let inventory = load_inventory(&args.inventory)?;
    let (nodes, skipped) = node::reachable(
        select(&inventory, args.limit.as_deref())?
            .into_iter()
            .cloned(),
    );
    if nodes.is_empty() && !skipped.is_empty() {
        return Err(skipped_failure(&skipped));
    }
    let timeouts = ssh::Timeouts {
        connect: Duration::from_secs(args.connect_timeout),
        command: args
            .command_timeout
            .map_or(default_command, Duration::from_secs),
    };
    Ok(Selection {
        inventory,
        nodes,
        skipped,
        parallel: args.parallel as usize,
        timeouts,
    })
}

/// Runs `work` on every selected node and reports a row per node from `row`.
fn per_node<T, F, Fut>(
    sel: &Selection,
    progress: bool,
    headers: &[&str],
    work: F,
    row: impl Fn(&T) -> (Vec<String>, serde_json::Value),
) -> Result<Report, Failure>
where
    T: Send + 'static,
    F: Fn(fleet_inventory::Node, ssh::Timeouts) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<T>> + Send + 'static,
{
    let items = sel
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.clone()))
        .collect();
    let timeouts = sel.timeouts;
    let results = runtime()?.block_on(fanout::run(items, sel.parallel, progress, move |n| {
        work(n, timeouts)
    }));
    let mut rows = Vec::new();
    let mut json = Vec::new();
    for r in &results {
        match &r.outcome {
            Ok(t) => {
                let (mut cells, mut doc) = row(t);
                cells.insert(0, r.node.clone());
                if let Some(obj) = doc.as_object_mut() {
                    obj.insert("node".into(), r.node.clone().into());
                    obj.insert("ok".into(), true.into());
                }
                rows.push(cells);
                json.push(doc);
            }
            Err(e) => {
                let mut cells = vec![r.node.clone(), e.label().to_owned(), e.error.clone()];
                cells.resize(headers.len(), String::new());
                rows.push(cells);
                let mut doc = json!({ "node": r.node, "ok": false, "error": e.error });
                if let (Some(code), Some(obj)) = (e.code, doc.as_object_mut()) {
                    obj.insert("code".into(), code.as_str().into());
                }
                json.push(doc);
            }
        }
    }
    Ok(node_report(headers, rows, json, &results, &sel.skipped))
}

/// The failure of a command that had only skipped nodes: a line per node, nothing done.
pub(super) fn skipped_failure(skipped: &[node::Skipped]) -> Failure {
    Failure {
        error: node::all_skipped(skipped),
        lines: skipped.iter().map(ToString::to_string).collect(),
        details: Some(json!({ "skipped": skipped })),
    }
}

/// A skipped node's entry in a command's JSON `nodes` (the audit log reads its `result`).
pub(super) fn skipped_json(s: &node::Skipped) -> serde_json::Value {
    json!({ "node": s.node, "ok": true, "result": "skipped", "skipped": s.why })
}

pub fn provision(
    args: NodeArgs,
    trust: &Path,
    agent: Option<std::path::PathBuf>,
    check: bool,
    progress: bool,
) -> Result<Report, Failure> {
    // The nodes pin exactly these bytes; a root that does not verify is never sent.
    Root::load(trust).context("trust root")?;
    let root_json = Arc::new(fs::read(trust).with_context(|| format!("{}", trust.display()))?);
    let agent = match agent {
        Some(path) => path,
        None => std::env::current_exe()
            .context("locating this fleet binary")?
            .with_file_name("fleet-agent"),
    };
    let agent_bytes = Arc::new(fs::read(&agent).with_context(|| {
        format!(
            "the fleet-agent binary {} (give --agent PATH)",
            agent.display()
        )
    })?);
    let sel = selection(&args, ssh::Timeouts::default().command)?;
    // The key the clusters' admin tokens are derived from (made on first use).
    let controller_key =
        node::ControllerKey::load_or_create_default().map_err(anyhow::Error::from)?;
    // Per node: its deploy key's public half and its rendered files and unit (or why they
    // cannot be made).
    let mut prepared = std::collections::BTreeMap::new();
    for node in &sel.nodes {
        let cluster = sel
            .inventory
            .cluster_of(node)
            .expect("a loaded inventory places every node in a cluster");
        let key = node::deploy_target(node)?
            .identity
            .expect("deploy_target sets the identity");
        let public =
            node::read_deploy_pub(std::path::Path::new(&format!("{}.pub", key.display())))?;
        let files = node::node_files(node, cluster, &controller_key)
            .and_then(|files| Ok((files, node::agent_unit(node, cluster)?)))
            .map_err(|e| e.to_string());
        prepared.insert(node.name.clone(), (public, files));
    }
    let prepared = Arc::new(prepared);
    let report = per_node(
        &sel,
        progress,
        &["NODE", "RESULT", "CHANGES"],
        move |node, timeouts| {
            let (agent_bytes, root_json, prepared) =
                (agent_bytes.clone(), root_json.clone(), prepared.clone());
            async move {
                let (public, files) = prepared
                    .get(&node.name)
                    .ok_or_else(|| anyhow!("{} was not prepared", node.name))?;
                let (files, unit) = files.as_ref().map_err(|e| anyhow!("{e}"))?;
                node::provision(
                    &node,
                    timeouts,
                    &agent_bytes,
                    &root_json,
                    files,
                    unit,
                    public,
                    check,
                )
                .await
            }
        },
        |p: &node::Provisioned| {
            let result = match (p.changes.is_empty(), p.applied) {
                (true, _) => "unchanged",
                (false, true) => "changed",
                (false, false) => "would change",
            };
            (
                vec![result.to_owned(), p.changes.join("; ")],
                json!({ "result": result, "changes": p.changes, "diffs": p.diffs, "notes": p.notes }),
            )
        },
    )?;
    // What is left to the operator follows the table, one line per node and note.
    let mut report = report;
    let notes: Vec<String> = report.json["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|n| {
            let node = n["node"].as_str().unwrap_or_default().to_owned();
            n["notes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(move |t| t.as_str().map(|t| format!("{node}: {t}")))
        })
        .collect();
    if !notes.is_empty() {
        report.text = format!("{}\n\n{}", report.text, notes.join("\n"));
    }
    // Under --check, each config file that would change follows the table as a diff.
    let diffs: Vec<String> = report.json["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|n| {
            let node = n["node"].as_str().unwrap_or_default().to_owned();
            n["diffs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(move |d| d.as_str().map(|d| format!("== {node}\n{d}")))
        })
        .collect();
    if !diffs.is_empty() {
        report.text = format!("{}\n\n{}", report.text, diffs.join("\n"));
    }
    Ok(report)
}

pub fn push(
    args: NodeArgs,
    version: &semver::Version,
    store: &Path,
    progress: bool,
) -> Result<Report, Failure> {
    let bundle = store.join(format!("{version}{}", fleet_release::bundle::BUNDLE_SUFFIX));
    fs::metadata(&bundle).with_context(|| format!("release {version}: {}", bundle.display()))?;
    let version = version.clone();
    per_node(
        &selection(&args, ssh::Timeouts::default().command)?,
        progress,
        &["NODE", "RESULT"],
        move |node, timeouts| {
            let (version, bundle) = (version.clone(), bundle.clone());
            async move { node::push(&node, &version, &bundle, timeouts).await }
        },
        |result: &&'static str| (vec![(*result).to_owned()], json!({ "result": result })),
    )
}

pub fn switch(
    args: NodeArgs,
    request: fleet_proto::Request,
    progress: bool,
) -> Result<Report, Failure> {
    per_node(
        &selection(&args, node::default_timeout(&request))?,
        progress,
        &rows::SWITCH_HEADERS,
        move |node, timeouts| {
            let request = request.clone();
            async move { node::switch(&node, &request, timeouts).await }
        },
        |s: &fleet_proto::Switched| {
            let cells = rows::switch_cells(s);
            let doc = json!({
                "active": s.active, "previous": s.previous, "result": cells[1], "server": s.server
            });
            (cells, doc)
        },
    )
}

pub fn status(args: NodeArgs, progress: bool) -> Result<Report, Failure> {
    per_node(
        &selection(&args, ssh::Timeouts::default().command)?,
        progress,
        &rows::STATUS_HEADERS,
        |node, timeouts| async move { node::status(&node, timeouts).await },
        |s: &node::NodeStatus| {
            (
                rows::status_cells(&s.agent),
                serde_json::to_value(s).unwrap_or_default(),
            )
        },
    )
}

/// Nodes chosen by `--limit`, or all of them.
pub(super) fn select<'a>(
    inv: &'a Inventory,
    limit: Option<&str>,
) -> Result<Vec<&'a fleet_inventory::Node>, Failure> {
    match limit {
        Some(pattern) => Ok(inv
            .select(pattern)
            .map_err(|e| anyhow!("--limit {pattern:?}: {e}"))?),
        None => Ok(inv.nodes().iter().collect()),
    }
}

pub(super) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// A per-node summary: the table, the JSON list, and one problem per failed node (so the
/// exit code says the run was partial).
fn node_report<T>(
    headers: &[&str],
    mut rows: Vec<Vec<String>>,
    mut json: Vec<serde_json::Value>,
    results: &[fanout::NodeResult<T>],
    skipped: &[node::Skipped],
) -> Report {
    for s in skipped {
        // Why follows the table, one line per node: a long cell would widen every row.
        let mut cells = vec![s.node.clone(), "SKIPPED".to_owned()];
        cells.resize(headers.len().max(2), String::new());
        rows.push(cells);
        json.push(skipped_json(s));
    }
    let failed: Vec<String> = results
        .iter()
        .filter_map(|r| {
            r.outcome
                .as_ref()
                .err()
                .map(|e| format!("{}: {}", r.node, e.problem()))
        })
        .collect();
    let mut summary = format!(
        "{} nodes: {} ok, {} failed",
        results.len() + skipped.len(),
        results.len() - failed.len(),
        failed.len()
    );
    if !skipped.is_empty() {
        summary.push_str(&format!(", {} skipped", skipped.len()));
    }
    let skip_lines: String = skipped.iter().map(|s| format!("\n{s}")).collect();
    let text = format!(
        "{}{skip_lines}
{summary}",
        fanout::table(headers, &rows)
    );
    Report::new(
        text,
        json!({ "ok": true, "nodes": json, "summary": summary }),
    )
    .with_problems(failed)
}

/// Loads an inventory; when it is invalid, every problem becomes its own stderr line.
pub(super) fn load_inventory(path: &Path) -> Result<Inventory, Failure> {
    Inventory::load(path).map_err(|e| {
        let problems = e.problems();
        Failure {
            error: anyhow!(
                "{}: {} problem{} found",
                path.display(),
                problems.len(),
                if problems.len() == 1 { "" } else { "s" }
            ),
            lines: problems.iter().map(ToString::to_string).collect(),
            details: Some(json!({ "problems": problems })),
        }
    })
}

pub fn keys(command: KeysCommand) -> Result<Report> {
    match command {
        KeysCommand::Generate { out, name } => {
            let files = fleet_release::write_key_pair(&out, &name)?;
            Ok(Report::new(
                format!(
                    "private key: {} (mode 0600, keep it secret)\npublic key:  {}\nkey:         {}",
                    files.secret.display(),
                    files.public.display(),
                    files.key
                ),
                json!({ "ok": true, "secret": files.secret, "public": files.public, "key": files.key }),
            ))
        }
    }
}

pub fn trust(command: TrustCommand) -> Result<Report> {
    match command {
        TrustCommand::Init { keys, out } => {
            let body = root_body(1, &keys, None, false)?;
            let mut root = Root::unsigned(body)?;
            sign_all(&mut root, &keys.sign)?;
            let status = match root.verify_self() {
                Ok(()) => "complete".to_owned(),
                Err(e) => format!("not yet valid: {e}"),
            };
            write_new(&out, root.to_json().as_bytes())?;
            Ok(root_report(&out, &root, &status))
        }
        TrustCommand::Rotate {
            current,
            keys,
            no_order_keys,
            out,
        } => {
            let current = Root::load(&current)?;
            let body = root_body(
                current.next_version()?,
                &keys,
                Some(current.body()),
                no_order_keys,
            )?;
            let mut next = Root::unsigned(body)?;
            sign_all(&mut next, &keys.sign)?;
            let status = match current.verify_successor(&next) {
                Ok(()) => "complete".to_owned(),
                Err(e) => format!("not yet valid: {e}"),
            };
            write_new(&out, next.to_json().as_bytes())?;
            Ok(root_report(&out, &next, &status))
        }
        TrustCommand::Sign { file, key } => {
            let mut root = Root::read(&file)?;
            root.sign(&load_secret(&key)?);
            replace(&file, root.to_json().as_bytes())?;
            Ok(root_report(&file, &root, "signed"))
        }
        TrustCommand::Verify { file, previous } => {
            let root = Root::read(&file)?;
            match previous {
                None => root
                    .verify_self()
                    .with_context(|| format!("{}", file.display()))?,
                Some(prev) => {
                    let prev = Root::load(&prev)?;
                    prev.verify_successor(&root).with_context(|| {
                        format!(
                            "{} does not succeed root version {}",
                            file.display(),
                            prev.body().version
                        )
                    })?;
                }
            }
            Ok(root_report(&file, &root, "valid"))
        }
    }
}

/// The body of a new root: keys given on the command line, else (rotating) those of `base`;
/// `drop_order` names no order keys whatever `base` named.
fn root_body(
    version: u64,
    keys: &RootKeys,
    base: Option<&RootBody>,
    drop_order: bool,
) -> Result<RootBody> {
    let load_all = |paths: &[std::path::PathBuf]| -> Result<Vec<PublicKey>> {
        paths
            .iter()
            .map(|p| PublicKey::load(p).map_err(Into::into))
            .collect()
    };
    let root_keys = match (keys.root_keys.is_empty(), base) {
        (true, Some(b)) => b.root_keys.clone(),
        (true, None) => bail!("give at least one --root-key"),
        (false, _) => load_all(&keys.root_keys)?,
    };
    let release_keys = match (keys.release_keys.is_empty(), base) {
        (true, Some(b)) => b.release_keys.clone(),
        (true, None) => bail!("give at least one --release-key"),
        (false, _) => load_all(&keys.release_keys)?,
    };
    let root_threshold = keys
        .root_threshold
        .or(base.map(|b| b.root_threshold))
        .unwrap_or(1);
    let release_threshold = keys
        .release_threshold
        .or(base.map(|b| b.release_threshold))
        .unwrap_or(1);
    let order_keys = match (keys.order_keys.is_empty(), base) {
        _ if drop_order => Vec::new(),
        (true, Some(b)) => b.order_keys.clone(),
        (true, None) => Vec::new(),
        (false, _) => load_all(&keys.order_keys)?,
    };
    let order_threshold = match keys.order_threshold {
        Some(n) => n,
        None if order_keys.is_empty() => 0,
        None => base
            .map(|b| b.order_threshold)
            .filter(|&n| n > 0 && !drop_order)
            .unwrap_or(1),
    };
    Ok(RootBody::new(
        version,
        root_keys,
        root_threshold,
        release_keys,
        release_threshold,
    )?
    .with_order_keys(order_keys, order_threshold)?)
}

fn sign_all(root: &mut Root, keys: &[std::path::PathBuf]) -> Result<()> {
    for path in keys {
        root.sign(&load_secret(path)?);
    }
    Ok(())
}

fn load_secret(path: &Path) -> Result<SecretKey> {
    Ok(SecretKey::load(path)?)
}

fn root_report(path: &Path, root: &Root, status: &str) -> Report {
    let b = root.body();
    Report::new(
        format!(
            "{}: root version {}, {} of {} root keys, {} of {} release keys, {} of {} order keys, {} signature(s): {status}",
            path.display(),
            b.version,
            b.root_threshold,
            b.root_keys.len(),
            b.release_threshold,
            b.release_keys.len(),
            b.order_threshold,
            b.order_keys.len(),
            root.signatures().len()
        ),
        json!({ "ok": true, "file": path, "status": status, "root": b, "signed_by": root.signatures().iter().map(|s| s.key).collect::<Vec<_>>() }),
    )
}

pub fn release(command: ReleaseCommand) -> Result<Report> {
    match command {
        ReleaseCommand::Build {
            version,
            from,
            bin_dir,
            key,
            channel,
            expires_in,
            platform,
            min_agent_version,
            out,
        } => {
            let key = load_secret(&key)?;
            // Either the tree given, or one assembled from the binaries (removed once built).
            let assembled = bin_dir
                .as_deref()
                .map(|dir| fleet_release::assemble(dir, &out))
                .transpose()
                .with_context(|| format!("assembling release {version}"))?;
            let from = match (&assembled, from) {
                (Some(tree), _) => tree.path().to_owned(),
                (None, Some(from)) => from,
                (None, None) => bail!("give --from TREE or --bin-dir DIR"),
            };
            let defaults = fleet_release::BuildOptions::new(version.clone(), &from, &key, &out);
            let opts = fleet_release::BuildOptions {
                channel,
                expires_in: Duration::from_secs(u64::from(expires_in) * 86_400),
                platform: platform.unwrap_or(defaults.platform.clone()),
                min_agent_version: min_agent_version.unwrap_or(defaults.min_agent_version.clone()),
                ..defaults
            };
            tracing::info!(version = %version, from = %from.display(), "building release");
            let (path, manifest) = fleet_release::build(&opts)
                .with_context(|| format!("building release {version}"))?;
            Ok(Report::new(
                format!(
                    "built release {} (counter {}, channel {}, {} files, {} bytes, expires {}) -> {}",
                    manifest.version,
                    manifest.counter,
                    manifest.channel,
                    manifest.file_count(),
                    manifest.total_size(),
                    manifest.expires,
                    path.display()
                ),
                json!({ "ok": true, "bundle": path, "version": manifest.version, "counter": manifest.counter,
                        "channel": manifest.channel, "files": manifest.file_count(), "bytes": manifest.total_size(),
                        "created": manifest.created, "expires": manifest.expires }),
            ))
        }
        ReleaseCommand::Verify { bundle, trust } => {
            let root = Root::load(&trust).context("trust root")?;
            let file = fs::File::open(&bundle).with_context(|| format!("{}", bundle.display()))?;
            let verified = fleet_release::verify(file, &root, SystemTime::now())
                .with_context(|| format!("{}: refused", bundle.display()))?;
            let m = &verified.manifest;
            Ok(Report::new(
                format!(
                    "{}: ok: release {} (counter {}, channel {}, {}), {} files, {} bytes, signed by {}, expires {}",
                    bundle.display(),
                    m.version,
                    m.counter,
                    m.channel,
                    m.platform,
                    verified.files,
                    verified.bytes,
                    verified
                        .signers
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                    m.expires
                ),
                json!({ "ok": true, "bundle": bundle, "version": m.version, "counter": m.counter, "channel": m.channel,
                        "platform": m.platform, "files": verified.files, "bytes": verified.bytes,
                        "signers": verified.signers, "expires": m.expires }),
            ))
        }
        ReleaseCommand::List { store } => {
            let items = fleet_release::list_store(&store).context("release store")?;
            let mut lines = vec![format!(
                "{:<16} {:>7} {:<10} {:<20} {:<20} {:>12}",
                "VERSION", "COUNTER", "CHANNEL", "CREATED", "EXPIRES", "SIZE"
            )];
            let mut json_items = Vec::new();
            let mut broken = Vec::new();
            for item in items {
                match item {
                    Ok(r) => {
                        let m = &r.manifest;
                        lines.push(format!(
                            "{:<16} {:>7} {:<10} {:<20} {:<20} {:>12}",
                            m.version.to_string(),
                            m.counter,
                            m.channel,
                            m.created.to_string(),
                            m.expires.to_string(),
                            r.size
                        ));
                        json_items.push(json!({ "version": m.version, "counter": m.counter, "channel": m.channel,
                            "created": m.created, "expires": m.expires, "platform": m.platform, "size": r.size,
                            "bundle": r.path, "signed_by": r.signers }));
                    }
                    Err(e) => broken.push(e.to_string()),
                }
            }
            Ok(Report::new(
                lines.join("\n"),
                json!({ "ok": true, "releases": json_items }),
            )
            .with_problems(broken))
        }
    }
}

/// Writes a file that must not exist yet.
fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| {
            format!(
                "{}: cannot create (it is never overwritten)",
                path.display()
            )
        })?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("{}", path.display()))
}

/// Replaces a file atomically, keeping its mode.
fn replace(path: &Path, bytes: &[u8]) -> Result<()> {
    fs::metadata(path).with_context(|| format!("{}", path.display()))?;
    crate::files::replace(path, bytes, 0o644).with_context(|| format!("{}", path.display()))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::args::{Cli, Command};

    /// The timeouts `fleet rollback -i <example inventory> EXTRA` works with.
    fn rollback_timeouts(extra: &[&str]) -> ssh::Timeouts {
        let inventory = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../inventory/examples/fleet.yaml"
        );
        let words = ["fleet", "rollback", "-i", inventory]
            .into_iter()
            .chain(extra.iter().copied());
        let Command::Rollback { nodes } = Cli::try_parse_from(words).expect("parses").command
        else {
            panic!("not a rollback");
        };
        let default = node::default_timeout(&fleet_proto::Request::Rollback);
        match selection(&nodes, default) {
            Ok(sel) => sel.timeouts,
            Err(f) => panic!("{:#}", f.error),
        }
    }

    #[test]
    fn command_timeout_overrides_the_request_default() {
        assert_eq!(
            rollback_timeouts(&[]).command,
            node::default_timeout(&fleet_proto::Request::Rollback)
        );
        let given = rollback_timeouts(&["--command-timeout", "60"]);
        assert_eq!(given.command, Duration::from_secs(60));
        assert_eq!(given.connect, Duration::from_secs(10));
    }
}
