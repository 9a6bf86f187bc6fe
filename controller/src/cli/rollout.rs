//! `fleet rollout`: reads the command line's settings, runs the rollout's work (`crate::rollout`)
//! on the commands' runtime, writes the audit row of every subcommand that changes nodes
//! (start, pause, resume, abort) once it handed out its documents, and turns the outcome into
//! a report: per-node tables, a line per rollout, the JSON document. Not the work itself.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, anyhow};
use fleet_proto::Outcome;
use fleet_release::order::Action;
use serde_json::json;

use super::args::{NodeArgs, OrderKeyArg, ReachArgs, RolloutCommand, RolloutStart};
use super::audit::{self, Changed};
use super::commands::{load_inventory, runtime, select, skipped_failure, skipped_json};
use super::fanout::table;
use super::report::{Failure, Report};
use crate::rollout::{self, Shown};
use crate::ssh::Timeouts;
use crate::store::{Rollout, StateLocation, Store};

/// Runs one `fleet rollout` subcommand.
pub fn rollout(
    command: RolloutCommand,
    state: Option<&str>,
    json: bool,
) -> Result<Report, Failure> {
    match command {
        RolloutCommand::Start(args) => start(args, state, json),
        RolloutCommand::Status {
            id,
            inventory,
            connect_timeout,
        } => status(id, inventory, connect_timeout, state),
        RolloutCommand::Watch {
            id,
            reach,
            lost_after,
        } => {
            let inventory = load_inventory(&reach.inventory)?;
            let settings = rollout::Settings {
                timeouts: timeouts(reach.connect_timeout),
                lost_after: Duration::from_secs(lost_after),
                progress: !json,
            };
            let shown = with_store(state, |store| async move {
                rollout::watch(&store, &inventory, &[id], settings).await
            })?;
            Ok(watched_report(&shown))
        }
        RolloutCommand::List => list(state),
        RolloutCommand::Pause { id, reach, key } => {
            control(id, Action::Pause, reach, key, state, json)
        }
        RolloutCommand::Resume { id, reach, key } => {
            control(id, Action::Resume, reach, key, state, json)
        }
        RolloutCommand::Abort {
            id,
            rollback,
            reach,
            key,
        } => {
            let action = if rollback {
                Action::AbortRollback
            } else {
                Action::Abort
            };
            control(id, action, reach, key, state, json)
        }
    }
}

fn timeouts(connect: u64) -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(connect),
        command: rollout::ANSWER_WITHIN,
    }
}

/// Opens the state store, runs `work` on it, closes it.
fn with_store<T, F, Fut>(state: Option<&str>, work: F) -> Result<T, Failure>
where
    F: FnOnce(Store) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let location = StateLocation::from_setting(state).map_err(anyhow::Error::from)?;
    runtime()?.block_on(async {
        let store = Store::open(&location).await.map_err(anyhow::Error::from)?;
        let out = work(store.clone()).await;
        store.close().await;
        out.map_err(Failure::from)
    })
}

fn when(ms: Option<u64>) -> String {
    ms.map_or_else(String::new, |ms| {
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms))
            .to_string()
    })
}

fn when_i64(ms: Option<i64>) -> String {
    when(ms.and_then(|v| u64::try_from(v).ok()))
}

/// `fleet rollout start`: prepares the rollouts, starts each cluster whose maintenance windows
/// let it start now (or all, under `--now`, which the audit row records), waits for the next
/// window of the others (a line each on stderr) and starts them then, each batch of hand-outs
/// its own audit row; then watches them all unless `--detach`.
fn start(args: RolloutStart, state: Option<&str>, json: bool) -> Result<Report, Failure> {
    let progress = !json;
    let store_dir = match &args.store {
        Some(dir) => Some(dir.clone()),
        None => crate::files::data_dir().map(|d| d.join("releases")),
    };
    let bundle = store_dir.map(|dir| {
        dir.join(format!(
            "{}{}",
            args.version,
            fleet_release::bundle::BUNDLE_SUFFIX
        ))
    });
    let changed = |overrode: Vec<String>| Changed {
        command: "rollout start",
        nodes: &args.nodes,
        bootstrap: false,
        bundle: bundle.as_deref(),
        overrode,
    };
    let rt = runtime()?;
    // A start that cannot begin is recorded too.
    let prepared = match prepare(&args, bundle.as_deref()) {
        Ok(p) => p,
        Err(f) => return audit::audited(state, &changed(Vec::new()), Err(f)),
    };
    let mut skipped = prepared.skipped.clone();
    let mut pending = prepared.plans.clone();
    let mut announced = std::collections::HashSet::new();
    let mut started: Option<Report> = None;
    let mut ids = Vec::new();
    let mut store: Option<Store> = None;
    loop {
        let now = std::time::SystemTime::now();
        let closed = rollout::closed(&prepared.inventory, &pending, now);
        let (mut ready, mut waiting, mut overrode) = (Vec::new(), Vec::new(), Vec::new());
        for (plan, closed) in pending.into_iter().zip(closed) {
            match closed {
                None => ready.push(plan),
                Some(c) if args.now => {
                    overrode.push(c.overridden());
                    ready.push(plan);
                }
                Some(c) => waiting.push((plan, c)),
            }
        }
        if !ready.is_empty() {
            let handed = hand_out(&args, &prepared, ready, state, progress, &rt).map(
                |(mut report, batch, batch_store)| {
                    // The nodes never contacted go with the first batch (and its audit row).
                    with_skipped(&mut report, &std::mem::take(&mut skipped));
                    ids.extend(batch);
                    if let Some(old) = store.replace(batch_store) {
                        rt.block_on(old.close());
                    }
                    report
                },
            );
            // The change to the nodes is recorded now, before any waiting or watching; a failed
            // attempt too.
            let report = audit::audited(state, &changed(overrode), handed)?;
            started = Some(match started.take() {
                None => report,
                Some(before) => merged(before, report),
            });
        }
        if waiting.is_empty() {
            break;
        }
        for (_, c) in &waiting {
            // Said once per window awaited; stderr also under --json, where stdout is the report.
            if announced.insert((c.cluster.clone(), c.opens)) {
                eprintln!("{}", c.waiting_line(now));
            }
        }
        let opens = waiting.iter().map(|(_, c)| c.opens).min().unwrap_or(now);
        // Looked at again at least every minute: the clock may jump.
        let nap = opens
            .duration_since(now)
            .unwrap_or_default()
            .min(Duration::from_secs(60))
            .max(Duration::from_millis(100));
        std::thread::sleep(nap);
        pending = waiting.into_iter().map(|(plan, _)| plan).collect();
    }
    let report = started.unwrap_or_else(|| Report::new("", json!({ "ok": true })));
    let Some(store) = store else {
        return Ok(report);
    };
    if ids.is_empty() || args.detach {
        rt.block_on(store.close());
        return Ok(report);
    }
    let inventory = &prepared.inventory;
    if progress {
        eprintln!(
            "watching {} (Ctrl-C stops watching; the rollout goes on, and `fleet rollout watch ID -i INVENTORY` follows it again)",
            ids.join(", ")
        );
    }
    let settings = rollout::Settings {
        timeouts: timeouts(args.nodes.connect_timeout),
        lost_after: Duration::from_secs(args.lost_after),
        progress,
    };
    let watched = rt.block_on(rollout::watch(&store, inventory, &ids, settings));
    rt.block_on(store.close());
    let after = watched_report(&watched.map_err(Failure::from)?);
    let mut text = report.text;
    text.push_str("\n\n");
    text.push_str(&after.text);
    let mut doc = report.json;
    if let Some(obj) = doc.as_object_mut() {
        obj.insert("watched".into(), after.json["rollouts"].clone());
    }
    let mut problems = report.problems;
    problems.extend(after.problems);
    let out = Report::new(text, doc).with_problems(problems);
    Ok(if after.success {
        out
    } else {
        out.unsuccessful()
    })
}

/// Adds the nodes never contacted to a start's report: a line each and a `nodes` entry each.
fn with_skipped(report: &mut Report, skipped: &[crate::node::Skipped]) {
    if skipped.is_empty() {
        return;
    }
    for s in skipped {
        report.text.push_str(&format!("\n{s}"));
    }
    if let Some(nodes) = report.json["nodes"].as_array_mut() {
        nodes.extend(skipped.iter().map(skipped_json));
    }
}

/// Two batches' reports as one: the texts one after the other, the rollouts and nodes of both.
fn merged(first: Report, second: Report) -> Report {
    let mut doc = first.json;
    for key in ["rollouts", "nodes"] {
        if let (Some(all), Some(more)) = (
            doc[key].as_array_mut(),
            second.json[key].as_array().cloned(),
        ) {
            all.extend(more);
        }
    }
    let mut problems = first.problems;
    problems.extend(second.problems);
    Report::new(format!("{}\n\n{}", first.text, second.text), doc).with_problems(problems)
}

/// What every batch of a start shares: the inventory, the plans, the nodes never contacted,
/// the release's bundle, the order key and the timeouts.
struct Prepared {
    inventory: fleet_inventory::Inventory,
    plans: Vec<rollout::ClusterPlan>,
    skipped: Vec<crate::node::Skipped>,
    bundle: std::path::PathBuf,
    key: fleet_release::SecretKey,
    timeouts: Timeouts,
}

/// Everything checked before a start touches a node or the state store.
fn prepare(args: &RolloutStart, bundle: Option<&std::path::Path>) -> Result<Prepared, Failure> {
    let inventory = load_inventory(&args.nodes.inventory)?;
    let (selected, skipped) =
        crate::node::reachable(select(&inventory, args.nodes.limit.as_deref())?);
    if selected.is_empty() && !skipped.is_empty() {
        return Err(skipped_failure(&skipped));
    }
    let overrides = rollout::Overrides {
        canary: args.canary,
        max_unavailable: args.max_unavailable,
        min_healthy_secs: args.min_healthy,
        health_timeout_secs: args.health_timeout,
        smoke_flow: args.smoke_flow.clone(),
        deadline: args
            .deadline
            .as_deref()
            .map(rollout::parse_deadline)
            .transpose()?,
    };
    let plans = rollout::plan(&inventory, &selected, &overrides)?;
    let bundle = bundle.ok_or_else(|| anyhow!("no release store: give --store STORE"))?;
    std::fs::metadata(bundle).with_context(|| {
        format!(
            "release {}: {} (give --store STORE, the release store holding it)",
            args.version,
            bundle.display()
        )
    })?;
    let (_, key) = rollout::order_key(args.key.order_key.as_deref())?;
    let timeouts = Timeouts {
        connect: Duration::from_secs(args.nodes.connect_timeout),
        command: args
            .nodes
            .command_timeout
            .map_or(Timeouts::default().command, Duration::from_secs),
    };
    Ok(Prepared {
        inventory,
        plans,
        skipped,
        bundle: bundle.to_owned(),
        key,
        timeouts,
    })
}

/// Starts the rollouts of `plans`: its report, the rollouts to watch and the open store.
fn hand_out(
    args: &RolloutStart,
    prepared: &Prepared,
    plans: Vec<rollout::ClusterPlan>,
    state: Option<&str>,
    progress: bool,
    rt: &tokio::runtime::Runtime,
) -> Result<(Report, Vec<String>, Store), Failure> {
    let location = StateLocation::from_setting(state).map_err(anyhow::Error::from)?;
    let store = rt
        .block_on(Store::open(&location))
        .map_err(anyhow::Error::from)?;
    let started = rt.block_on(rollout::start(
        &store,
        rollout::Start {
            inventory: &prepared.inventory,
            plans,
            version: args.version.clone(),
            bundle: prepared.bundle.clone(),
            key: &prepared.key,
            skip_unstaged: args.skip_unstaged,
            parallel: args.nodes.parallel as usize,
            timeouts: prepared.timeouts,
            progress,
        },
    ));
    match started {
        Ok((clusters, nodes)) => {
            let (report, ids) = started_report(&args.version, &clusters, &nodes);
            if progress && !args.detach && !ids.is_empty() {
                // What was handed out, before the watch's lines (the table follows at the end).
                for line in report.text.lines().filter(|l| l.starts_with("rollout ")) {
                    eprintln!("{line}");
                }
            }
            Ok((report, ids, store))
        }
        Err(e) => {
            rt.block_on(store.close());
            Err(Failure::from(e))
        }
    }
}

/// The report of the start's hand-out, and the ids of the rollouts to watch.
fn started_report(
    version: &semver::Version,
    clusters: &[rollout::ClusterStarted],
    nodes: &[rollout::NodeStarted],
) -> (Report, Vec<String>) {
    // Nodes of a cluster that could not be claimed were not touched: no row.
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .filter(|n| n.rollout.is_some())
        .map(|n| {
            vec![
                n.node.clone(),
                n.rollout.clone().unwrap_or_default(),
                match (&n.stage, &n.stage_error) {
                    (Some(s), _) => s.clone(),
                    (None, Some(e)) => format!("FAILED: {e}"),
                    (None, None) => "-".into(),
                },
                match (&n.order, &n.order_error) {
                    (Some(o), _) => o.clone(),
                    (None, Some(e)) => format!("REFUSED: {e}"),
                    (None, None) => "-".into(),
                },
            ]
        })
        .collect();
    let mut lines = Vec::new();
    if !rows.is_empty() {
        lines.push(table(&["NODE", "ROLLOUT", "STAGE", "ORDER"], &rows));
        lines.push(String::new());
    }
    let mut problems = Vec::new();
    let mut ids = Vec::new();
    for c in clusters {
        let name = c.rollout.as_deref().unwrap_or("(none)");
        if c.started {
            ids.push(name.to_owned());
            let policy = c
                .order
                .as_ref()
                .map_or_else(String::new, |o| format!("; {}", policy(o)));
            lines.push(format!(
                "rollout {name}: {} to {version}: {} of {} node(s) took the order{policy}",
                c.cluster,
                c.accepted.len(),
                c.targets.len()
            ));
        } else if c.rollout.is_some() {
            lines.push(format!(
                "rollout {name}: {} to {version}: not started",
                c.cluster
            ));
        } else {
            lines.push(format!("{}: not started", c.cluster));
        }
        match (&c.reason, &c.rollout) {
            (Some(reason), Some(id)) => problems.push(format!("{} ({id}): {reason}", c.cluster)),
            // The claim was refused: the reason names the cluster and the rollout in flight.
            (Some(reason), None) => problems.push(reason.clone()),
            (None, _) => {}
        }
        for left in &c.left_out {
            lines.push(format!("  left out (--skip-unstaged): {left}"));
        }
    }
    for n in nodes {
        if n.order_error.is_some() && n.stage.is_some() {
            problems.push(format!(
                "{}: did not take its order: {}",
                n.node,
                n.order_error.as_deref().unwrap_or_default()
            ));
        }
    }
    let json_nodes: Vec<serde_json::Value> = nodes
        .iter()
        .map(|n| {
            let mut doc = serde_json::to_value(n).unwrap_or_default();
            if let Some(obj) = doc.as_object_mut() {
                match n.result() {
                    Ok(result) => obj.insert("result".into(), result.into()),
                    Err(error) => obj.insert("error".into(), error.into()),
                };
            }
            doc
        })
        .collect();
    let report = Report::new(
        lines.join("\n"),
        json!({ "ok": true, "version": version, "rollouts": clusters, "nodes": json_nodes }),
    )
    .with_problems(problems);
    (report, ids)
}

/// An order's policy in one line.
fn policy(o: &fleet_release::order::Order) -> String {
    format!(
        "canary {}; max_unavailable {}; min_healthy {} s; health_timeout {} s{}; deadline {}",
        if o.canary.is_empty() {
            "none".to_owned()
        } else {
            o.canary.join(", ")
        },
        o.max_unavailable,
        o.min_healthy_secs,
        o.health_timeout_secs,
        o.smoke_flow
            .as_ref()
            .map_or_else(String::new, |f| format!("; smoke flow {f}")),
        o.deadline
    )
}

/// The report of watched rollouts: per rollout a line and a summary table; not successful
/// unless every target of every rollout committed.
fn watched_report(shown: &[Shown]) -> Report {
    let mut texts = Vec::new();
    let mut problems = Vec::new();
    let mut success = true;
    for s in shown {
        texts.push(shown_text(s));
        problems.extend(s.problems.iter().map(|p| format!("{}: {p}", s.rollout.id)));
        if !s.committed() {
            success = false;
        }
    }
    let report = Report::new(texts.join("\n\n"), json!({ "ok": true, "rollouts": shown }))
        .with_problems(problems);
    if success {
        report
    } else {
        report.unsuccessful()
    }
}

/// A rollout's header line, its nodes' table and a count of outcomes.
fn shown_text(s: &Shown) -> String {
    let r = &s.rollout;
    let mut head = format!(
        "rollout {}: {} to {}: {}",
        r.id, r.cluster, r.version, r.state
    );
    if let Some(reason) = &r.reason {
        head.push_str(&format!(" ({reason})"));
    }
    if let Some(asked) = s.asked {
        head.push_str(&format!("; asked: {}", rollout::asked_word(asked)));
    }
    // An ended rollout's reason already says why it halted.
    if let (Some(halted), None) = (&s.halted, &r.reason) {
        head.push_str(&format!("; halted: {halted}"));
    }
    if let Some(order) = &s.order {
        head.push_str(&format!("\n{}", policy(order)));
    }
    let rows: Vec<Vec<String>> = s
        .nodes
        .iter()
        .map(|n| {
            let p = &n.progress;
            let reason = match (&p.reason, &n.error) {
                (Some(r), _) => r.clone(),
                (None, Some(e)) => format!("not reached: {e}"),
                (None, None) => String::new(),
            };
            vec![
                p.node.clone(),
                p.outcome.map_or_else(|| "-".to_owned(), |o| o.to_string()),
                p.step.clone().unwrap_or_else(|| "-".into()),
                reason,
                when(p.started_unix_ms),
                when(p.ended_unix_ms),
                rollout::took(p).unwrap_or_default(),
            ]
        })
        .collect();
    let mut counts: Vec<(String, usize)> = Vec::new();
    for n in &s.nodes {
        let word = n
            .progress
            .outcome
            .map_or("in progress", Outcome::as_str)
            .to_owned();
        match counts.iter_mut().find(|(w, _)| *w == word) {
            Some((_, k)) => *k += 1,
            None => counts.push((word, 1)),
        }
    }
    let counts = counts
        .iter()
        .map(|(w, k)| format!("{k} {w}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "{head}\n{}\n{} node(s): {counts}",
        table(
            &[
                "NODE", "OUTCOME", "STEP", "REASON", "STARTED", "ENDED", "TOOK"
            ],
            &rows
        ),
        s.nodes.len()
    )
}

/// `fleet rollout status [ID]`.
fn status(
    id: Option<String>,
    inventory: Option<PathBuf>,
    connect_timeout: u64,
    state: Option<&str>,
) -> Result<Report, Failure> {
    let inventory = inventory.as_deref().map(load_inventory).transpose()?;
    let Some(id) = id else {
        let rollouts = with_store(
            state,
            |store| async move { Ok(store.rollouts(true).await?) },
        )?;
        return Ok(rollouts_report(&rollouts, "no rollout in flight"));
    };
    let timeouts = timeouts(connect_timeout);
    let shown = with_store(state, |store| async move {
        rollout::snapshot(&store, inventory.as_ref(), &id, timeouts).await
    })?;
    let mut report = watched_report(std::slice::from_ref(&shown));
    if let Some(obj) = report.json.as_object_mut() {
        obj.remove("rollouts");
        obj.insert(
            "rollout".into(),
            serde_json::to_value(&shown).unwrap_or_default(),
        );
    }
    Ok(report)
}

/// `fleet rollout list`.
fn list(state: Option<&str>) -> Result<Report, Failure> {
    let rollouts = with_store(
        state,
        |store| async move { Ok(store.rollouts(false).await?) },
    )?;
    Ok(rollouts_report(&rollouts, "no rollout in the state store"))
}

fn rollouts_report(rollouts: &[Rollout], none: &str) -> Report {
    let rows: Vec<Vec<String>> = rollouts
        .iter()
        .map(|r| {
            vec![
                r.id.clone(),
                r.cluster.clone(),
                r.version.clone(),
                r.state.clone(),
                when_i64(Some(r.created_ms)),
                when_i64(r.ended_ms),
                r.targets.len().to_string(),
                r.reason
                    .as_deref()
                    .map(|t| t.chars().take(80).collect())
                    .unwrap_or_default(),
            ]
        })
        .collect();
    let text = if rows.is_empty() {
        none.to_owned()
    } else {
        table(
            &[
                "ID", "CLUSTER", "VERSION", "STATE", "STARTED", "ENDED", "NODES", "REASON",
            ],
            &rows,
        )
    };
    Report::new(text, json!({ "ok": true, "rollouts": rollouts }))
}

/// `fleet rollout pause|resume|abort ID`.
fn control(
    id: String,
    action: Action,
    reach: ReachArgs,
    key: OrderKeyArg,
    state: Option<&str>,
    json: bool,
) -> Result<Report, Failure> {
    let word = rollout::action_word(action);
    let outcome = (|| {
        let inventory = load_inventory(&reach.inventory)?;
        let (_, key) = rollout::order_key(key.order_key.as_deref())?;
        let timeouts = timeouts(reach.connect_timeout);
        let parallel = reach.parallel as usize;
        let sent = with_store(state, |store| {
            let (inventory, id) = (&inventory, id.clone());
            async move {
                rollout::send_control(
                    &store, inventory, &id, action, &key, parallel, timeouts, !json,
                )
                .await
            }
        })?;
        Ok(control_report(&sent, word))
    })();
    // The targets' names select what the audit row's key fingerprints are read for.
    let targets = outcome
        .as_ref()
        .ok()
        .map(|r| {
            r.json["nodes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|n| n["node"].as_str().map(str::to_owned))
                .collect::<Vec<_>>()
        })
        .filter(|t| !t.is_empty());
    let nodes = NodeArgs {
        inventory: reach.inventory.clone(),
        limit: targets.map(|t| t.join(",")),
        parallel: reach.parallel,
        connect_timeout: reach.connect_timeout,
        command_timeout: None,
    };
    let command = match action {
        Action::Pause => "rollout pause",
        Action::Resume => "rollout resume",
        Action::Abort | Action::AbortRollback => "rollout abort",
    };
    let changed = Changed {
        command,
        nodes: &nodes,
        bootstrap: false,
        bundle: None,
        overrode: Vec::new(),
    };
    audit::audited(state, &changed, outcome)
}

fn control_report(sent: &rollout::ControlSent, word: &str) -> Report {
    let id = &sent.rollout.id;
    let Some(sequence) = sent.sequence else {
        return Report::new(
            format!(
                "rollout {id}: {}: {}",
                sent.rollout.state,
                sent.rollout.reason.as_deref().unwrap_or_default()
            ),
            json!({ "ok": true, "rollout": id, "action": sent.action, "state": sent.rollout.state, "nodes": [] }),
        );
    };
    let rows: Vec<Vec<String>> = sent
        .nodes
        .iter()
        .map(|n| {
            let result = match (&n.error, n.asked) {
                (Some(e), _) => format!("FAILED: {e}"),
                (None, Some(asked)) => {
                    format!("taken (the node's agents: {})", rollout::asked_word(asked))
                }
                (None, None) => "taken".to_owned(),
            };
            vec![n.node.clone(), result]
        })
        .collect();
    let taken = sent.nodes.iter().filter(|n| n.taken).count();
    let mut text = table(&["NODE", "RESULT"], &rows);
    text.push_str(&format!(
        "\nrollout {id}: {word} (sequence {sequence}) taken by {taken} of {} node(s)",
        sent.nodes.len()
    ));
    if taken < sent.nodes.len() && taken > 0 {
        text.push_str(
            "; the nodes that took it pass it on to the others through their cluster's Redis",
        );
    }
    match &sent.ended {
        Some((true, why)) => text.push_str(&format!(
            "\nrollout {id} ended: {}: {why}",
            sent.rollout.state
        )),
        Some((false, why)) => text.push_str(&format!("\nrollout {id}: {why}")),
        None => {}
    }
    let problems: Vec<String> = sent
        .nodes
        .iter()
        .filter_map(|n| n.error.as_ref().map(|e| format!("{}: {e}", n.node)))
        .collect();
    let nodes: Vec<serde_json::Value> = sent
        .nodes
        .iter()
        .map(|n| {
            let mut doc = json!({ "node": n.node, "asked": n.asked });
            if let Some(obj) = doc.as_object_mut() {
                match &n.error {
                    Some(e) => {
                        obj.insert("error".into(), e.clone().into());
                        if let Some(code) = n.code {
                            obj.insert("code".into(), code.as_str().into());
                        }
                    }
                    None => {
                        obj.insert("result".into(), "taken".into());
                    }
                }
            }
            doc
        })
        .collect();
    let mut doc = json!({ "ok": true, "rollout": id, "action": sent.action, "sequence": sequence, "nodes": nodes });
    if let (Some((ended, why)), Some(obj)) = (&sent.ended, doc.as_object_mut()) {
        obj.insert("ended".into(), (*ended).into());
        obj.insert("state".into(), sent.rollout.state.clone().into());
        obj.insert("why".into(), why.clone().into());
    }
    Report::new(text, doc).with_problems(problems)
}
