//! The per-node upgrade step (DESIGN.md, "The agent"): drain the server, stop it, switch
//! `current`, start the new release, and gate on its health: answering `/health` without a
//! miss for `min_healthy_secs` within `health_timeout_secs`, and a live member of its cluster
//! (in the server's `/api/cluster`) on the new release. Pass: `committed`. Fail: switch back,
//! start the previous release and gate it the same way: `rolled_back` with the reason, or
//! `rollback_failed` when it does not serve either.
//!
//! The journal `state/upgrade` (JSON: from, to, step) is written atomically before each step,
//! so a daemon killed anywhere settles the step when it starts again ([`recover`]): before the
//! switch (`current` still names `from`), the step is undone (the old server restarted or
//! resumed); after it, the gate runs again and the step commits or rolls back; during a roll
//! back, the roll back is finished. The supervisor is the only one that starts or stops the
//! server, so there is never a second one, and `current` only ever names `from` or `to`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_proto::{Code, Refusal, SwitchOutcome, Switched};
use serde::{Deserialize, Serialize};
use tokio::sync::OwnedMutexGuard;

use super::{Daemon, blocking, http};
use crate::{AgentError, Layout, ops};

/// How often the gate looks at the server's state.
const GATE_POLL: Duration = Duration::from_millis(50);
/// One drain request waits this long for its answer (the server answers within a minute).
const DRAIN_REQUEST: Duration = Duration::from_secs(90);

/// What the step is asked to do.
#[derive(Debug, Clone)]
pub enum Goal {
    Activate {
        version: semver::Version,
        allow_downgrade: bool,
    },
    /// Back to `previous`.
    Rollback,
}

/// How long the new release must stay healthy, and within how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatePolicy {
    pub min_healthy_secs: u64,
    pub health_timeout_secs: u64,
}

impl From<&super::Rollout> for GatePolicy {
    fn from(r: &super::Rollout) -> Self {
        GatePolicy {
            min_healthy_secs: r.min_healthy_secs,
            health_timeout_secs: r.health_timeout_secs,
        }
    }
}

/// The rollout a step belongs to, and the epoch of the slot it was granted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutTag {
    pub id: String,
    pub epoch: u64,
}

/// One upgrade step: what it does, how it gates, and, in a rollout, the lease it must hold
/// before each side effect.
pub struct Plan<'a> {
    pub goal: Goal,
    pub gate: GatePolicy,
    /// A flow that must run successfully on this node before the step commits.
    pub smoke_flow: Option<String>,
    pub lease: Option<&'a super::rollout::Lease>,
    pub rollout: Option<RolloutTag>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Drain,
    Stop,
    Switch,
    Start,
    Gate,
    /// The smoke flow runs on the new release.
    Smoke,
    /// The gate failed: going back to `from`.
    Rollback,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Drain => "drain",
            Step::Stop => "stop",
            Step::Switch => "switch",
            Step::Start => "start",
            Step::Gate => "gate",
            Step::Smoke => "smoke",
            Step::Rollback => "rollback",
        }
    }
}

/// `state/upgrade`: the step in flight.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Journal {
    from: Option<String>,
    to: String,
    step: Step,
    /// Why the step is rolling back (with `Step::Rollback`).
    #[serde(default)]
    reason: Option<String>,
    /// The step lost its rollout slot and is being undone: not the release's fault.
    #[serde(default)]
    interrupted: bool,
    started_unix_ms: u64,
    /// The gate the step applies (`None` in journals written before it was recorded: the
    /// config's).
    #[serde(default)]
    gate: Option<GatePolicy>,
    #[serde(default)]
    smoke_flow: Option<String>,
    /// The rollout the step belongs to, if any.
    #[serde(default)]
    rollout: Option<RolloutTag>,
}

fn journal_path(layout: &Layout) -> std::path::PathBuf {
    layout.state().join("upgrade")
}

/// Whether a journal records a step left unsettled (the daemon settles it when it starts;
/// until then a server it starts is on probation).
pub fn pending(layout: &Layout) -> bool {
    journal_path(layout).exists()
}

/// Servers started from now on are on probation (they take only runs pinned to them and do
/// not lead) until the step closes; the exits counted so far, for the gate.
fn on_probation(daemon: &Daemon) -> u64 {
    let mut s = daemon.snapshot();
    s.probation = true;
    s.exits
}

impl Journal {
    fn read(layout: &Layout) -> Result<Option<Journal>, AgentError> {
        let path = journal_path(layout);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| AgentError::Layout(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(crate::io(&path)(e)),
        }
    }

    async fn enter(&mut self, daemon: &Daemon, step: Step) -> Result<(), AgentError> {
        self.step = step;
        daemon.snapshot().step = Some(format!(
            "{} -> {}: {}",
            self.from.as_deref().unwrap_or("none"),
            self.to,
            step.as_str()
        ));
        let bytes = serde_json::to_vec(self).map_err(|e| AgentError::Layout(e.to_string()))?;
        let layout = daemon.config.layout.clone();
        let progress = self.rollout.as_ref().map(|tag| {
            let mut p = fleet_proto::NodeProgress::new(daemon.config.node.clone());
            p.step = Some(step.as_str().to_owned());
            p.reason = self.reason.clone();
            p.started_unix_ms = Some(self.started_unix_ms);
            p.epoch = Some(tag.epoch);
            (tag.id.clone(), p)
        });
        blocking(move || {
            layout.write_atomic(&journal_path(&layout), &bytes)?;
            if let Some((id, p)) = progress {
                crate::write_progress(&layout, &id, &p)?;
            }
            Ok(())
        })
        .await?;
        crash_point(step);
        Ok(())
    }

    fn gate_policy(&self, daemon: &Daemon) -> GatePolicy {
        self.gate
            .unwrap_or_else(|| GatePolicy::from(&daemon.config.rollout))
    }

    /// Ends the step, whatever its outcome: the server takes runs again (out of its drain, off
    /// probation: restarts from now on start without it), then the journal goes.
    async fn close(&self, daemon: &Daemon, outcome: String) {
        tracing::info!(from = ?self.from, to = %self.to, "upgrade step: {outcome}");
        daemon.snapshot().probation = false;
        resume(daemon).await;
        {
            let mut s = daemon.snapshot();
            s.step = None;
            s.last_step = Some(outcome);
        }
        let layout = daemon.config.layout.clone();
        let removed = blocking(move || {
            let path = journal_path(&layout);
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(crate::io(&path)(e)),
                _ => crate::layout::sync_dir(&layout.state()),
            }
        })
        .await;
        if let Err(e) = removed {
            tracing::error!(error = %e, "removing the upgrade journal");
        }
    }
}

/// Fault injection for the journal's tests: with `FLEET_AGENT_CRASH_AT=<step>` (drain, stop,
/// switch, start, gate, rollback) in its environment, the daemon kills itself with SIGKILL
/// right after the journal records that step, as a power cut or an OOM kill would.
fn crash_point(step: Step) {
    let Ok(at) = std::env::var("FLEET_AGENT_CRASH_AT") else {
        return;
    };
    if step.as_str() == at {
        tracing::warn!(?step, "FLEET_AGENT_CRASH_AT: killing this agent now");
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
}

/// Runs the whole step for `goal` with the gate of the node's config, outside any rollout.
pub async fn step(daemon: &Daemon, goal: Goal) -> Result<Switched, Refusal> {
    let gate = GatePolicy::from(&daemon.config.rollout);
    run(
        daemon,
        Plan {
            goal,
            gate,
            smoke_flow: None,
            lease: None,
            rollout: None,
        },
    )
    .await
}

/// Checks the rollout's lease before a side effect (`what`); always passes outside rollouts.
async fn fenced(lease: Option<&super::rollout::Lease>, what: &str) -> Result<(), String> {
    match lease {
        Some(lease) => lease
            .check()
            .await
            .map_err(|why| format!("lost its upgrade slot before the {what}: {why}")),
        None => Ok(()),
    }
}

fn interrupted(message: String) -> Refusal {
    Refusal::new(Code::Interrupted, message)
}

/// Runs the whole step of `plan`; one at a time (a second is refused `busy`). In a rollout,
/// the lease is checked right before the drain, the stop, the switch, the start and the
/// commit; a step that lost it undoes itself (`interrupted`): before the switch the old
/// server serves again, after it the node switches back.
pub async fn run(daemon: &Daemon, plan: Plan<'_>) -> Result<Switched, Refusal> {
    let Plan {
        goal,
        gate,
        smoke_flow,
        lease,
        rollout,
    } = plan;
    let Ok(_guard) = daemon.step.clone().try_lock_owned() else {
        return Err(Refusal::new(
            Code::Busy,
            "another upgrade step runs on this node; try again when it ends",
        ));
    };
    let layout = daemon.config.layout.clone();
    let (to, allow_downgrade) = match &goal {
        Goal::Activate {
            version,
            allow_downgrade,
        } => (version.clone(), *allow_downgrade),
        Goal::Rollback => {
            let l = layout.clone();
            let previous = blocking(move || l.link_version(&l.previous()))
                .await?
                .ok_or(AgentError::NoPrevious)?;
            let version = previous.parse().map_err(|_| {
                AgentError::Layout(format!("previous names `{previous}`, not a version"))
            })?;
            (version, true)
        }
    };
    let (l, wanted) = (layout.clone(), to.clone());
    let from = blocking(move || ops::check_activation(&l, &wanted, allow_downgrade)).await?;
    let to = to.to_string();
    if from.as_deref() == Some(to.as_str()) {
        let l = layout.clone();
        let previous = blocking(move || l.link_version(&l.previous())).await?;
        return Ok(Switched {
            active: to,
            previous,
            changed: false,
            server: SwitchOutcome::Committed,
        });
    }
    let mut journal = Journal {
        from,
        to,
        step: Step::Drain,
        reason: None,
        interrupted: false,
        started_unix_ms: super::unix_ms(),
        gate: Some(gate),
        smoke_flow,
        rollout,
    };
    let started = Instant::now();
    if let Err(why) = fenced(lease, "drain").await {
        return Err(interrupted(why));
    }
    journal.enter(daemon, Step::Drain).await?;
    if journal.from.is_some() {
        drain(daemon).await;
    }
    if let Err(why) = fenced(lease, "stop").await {
        journal.close(daemon, format!("interrupted: {why}")).await;
        return Err(interrupted(why));
    }
    journal.enter(daemon, Step::Stop).await?;
    if let Some(ended) = daemon.stop_server().await {
        tracing::info!("upgrade step: the server {ended}");
    }
    if let Err(why) = fenced(lease, "switch").await {
        daemon.start_server().await;
        journal.close(daemon, format!("interrupted: {why}")).await;
        return Err(interrupted(why));
    }
    journal.enter(daemon, Step::Switch).await?;
    let l = layout.clone();
    let switched = match goal {
        Goal::Activate { version, .. } => {
            blocking(move || ops::activate(&l, &version, allow_downgrade)).await
        }
        Goal::Rollback => blocking(move || ops::rollback(&l)).await,
    };
    if let Err(e) = switched {
        // Nothing switched: the release that was active serves again.
        daemon.start_server().await;
        journal
            .close(daemon, format!("refused before the switch: {e}"))
            .await;
        return Err(e.into());
    }
    finish(daemon, journal, started, lease).await
}

/// From the start of the new release to the outcome: start, gate, smoke flow, commit or roll
/// back.
async fn finish(
    daemon: &Daemon,
    mut journal: Journal,
    started: Instant,
    lease: Option<&super::rollout::Lease>,
) -> Result<Switched, Refusal> {
    if let Err(why) = fenced(lease, "start").await {
        journal.reason = Some(why);
        journal.interrupted = true;
        return Err(undo(daemon, journal).await);
    }
    journal.enter(daemon, Step::Start).await?;
    let exits = on_probation(daemon);
    daemon.start_server().await;
    journal.enter(daemon, Step::Gate).await?;
    let policy = journal.gate_policy(daemon);
    let mut passed = gate(daemon, &journal.to, exits, policy).await;
    if passed.is_ok()
        && let Some(flow) = journal.smoke_flow.clone()
    {
        journal.enter(daemon, Step::Smoke).await?;
        passed = smoke(daemon, &flow, policy).await;
    }
    if passed.is_ok()
        && let Err(why) = fenced(lease, "commit").await
    {
        journal.reason = Some(why);
        journal.interrupted = true;
        return Err(undo(daemon, journal).await);
    }
    match passed {
        Ok(()) => {
            let took = started.elapsed();
            journal
                .close(
                    daemon,
                    format!("committed {} in {} ms", journal.to, took.as_millis()),
                )
                .await;
            replace_agent_if_new(daemon, &journal.to).await;
            Ok(Switched {
                active: journal.to.clone(),
                previous: journal.from.clone(),
                changed: true,
                server: SwitchOutcome::Committed,
            })
        }
        Err(reason) => {
            journal.reason = Some(reason);
            Err(undo(daemon, journal).await)
        }
    }
}

/// Goes back to `from` after the gate failed: stop, switch back, start, gate it the same way.
async fn undo(daemon: &Daemon, mut journal: Journal) -> Refusal {
    let reason = journal.reason.clone().unwrap_or_default();
    let to = journal.to.clone();
    let Some(from) = journal.from.clone() else {
        let message = format!(
            "release {to} failed its health gate: {reason}; there is no previous release to go back to (the agent keeps restarting it)"
        );
        journal
            .close(daemon, format!("rollback_failed: {message}"))
            .await;
        return Refusal::new(Code::RollbackFailed, message);
    };
    if let Err(e) = journal.enter(daemon, Step::Rollback).await {
        tracing::error!(error = %e, "writing the upgrade journal");
    }
    tracing::warn!(to = %to, from = %from, "release failed its gate ({reason}); rolling back");
    daemon.stop_server().await;
    let layout = daemon.config.layout.clone();
    let l = layout.clone();
    let current = blocking(move || l.link_version(&l.current())).await;
    if matches!(current.as_ref(), Ok(Some(c)) if *c == to) {
        let l = layout.clone();
        if let Err(e) = blocking(move || ops::rollback(&l)).await {
            let message = format!(
                "release {to} failed its health gate: {reason}; switching back to {from} failed too: {e}"
            );
            journal
                .close(daemon, format!("rollback_failed: {message}"))
                .await;
            return Refusal::new(Code::RollbackFailed, message);
        }
    }
    let exits = on_probation(daemon);
    daemon.start_server().await;
    let policy = journal.gate_policy(daemon);
    match gate(daemon, &from, exits, policy).await {
        Ok(()) if journal.interrupted => {
            let message =
                format!("the step to {to} {reason}; switched back to {from}, which serves again");
            journal
                .close(daemon, format!("interrupted: {message}"))
                .await;
            interrupted(message)
        }
        Ok(()) => {
            let message = format!(
                "release {to} failed its health gate: {reason}; rolled back to {from}, which serves again"
            );
            journal
                .close(daemon, format!("rolled_back: {message}"))
                .await;
            Refusal::new(Code::RolledBack, message)
        }
        Err(again) => {
            let message = format!(
                "release {to} failed its health gate: {reason}; rolled back to {from}, which does not serve either: {again}"
            );
            journal
                .close(daemon, format!("rollback_failed: {message}"))
                .await;
            Refusal::new(Code::RollbackFailed, message)
        }
    }
}

/// Asks the server to drain and waits for it, at most the drain deadline. A drain that cannot
/// be asked (no server, a refused token) is logged: the stop that follows still gives runs
/// the server's own shutdown grace.
async fn drain(daemon: &Daemon) {
    let supervise = &daemon.config.supervise;
    let running = {
        let mut s = daemon.snapshot();
        s.draining = s.server.is_some();
        s.draining
    };
    if !running {
        return;
    }
    let deadline = Instant::now() + supervise.drain_deadline();
    let path = format!(
        "/admin/drain?deadline_secs={}",
        supervise.drain_deadline().as_secs()
    );
    loop {
        let answer = http::request(
            daemon.config.server_listen,
            "POST",
            &path,
            daemon.config.admin_token.as_deref(),
            DRAIN_REQUEST,
        )
        .await;
        match answer {
            Ok(r) if r.status == 200 => {
                tracing::info!("upgrade step: the server drained");
                return;
            }
            Ok(r) if r.status == 202 => {
                let state = r
                    .json()
                    .and_then(|v| v["state"].as_str().map(str::to_owned));
                if state.as_deref() == Some("stopping") {
                    return;
                }
            }
            Ok(r) => {
                tracing::warn!(
                    status = r.status,
                    "upgrade step: the server refused the drain ({}); stopping it anyway",
                    String::from_utf8_lossy(&r.body)
                        .chars()
                        .take(200)
                        .collect::<String>()
                );
                return;
            }
            Err(e) => {
                tracing::warn!("upgrade step: asking the server to drain: {e}; stopping it anyway");
                return;
            }
        }
        if Instant::now() >= deadline {
            tracing::warn!("upgrade step: the drain deadline passed; stopping the server anyway");
            return;
        }
    }
}

/// Waits until the server of `release` has answered `/health` without a miss for
/// `min_healthy_secs` and is a live, not draining, member of its cluster on `release`; fails
/// when `health_timeout_secs` pass first or when the server exits (`exits` is the exit count
/// before it was started).
async fn gate(
    daemon: &Daemon,
    release: &str,
    exits: u64,
    policy: GatePolicy,
) -> Result<(), String> {
    let min = Duration::from_secs(policy.min_healthy_secs);
    let timeout = Duration::from_secs(policy.health_timeout_secs);
    let deadline = Instant::now() + timeout;
    let mut waiting_for = "the server to start".to_owned();
    loop {
        let healthy_for = {
            let s = daemon.snapshot();
            if s.exits > exits {
                return Err(format!(
                    "the server exited during the gate ({})",
                    s.last_exit.as_deref().unwrap_or("no reason recorded")
                ));
            }
            if let Some(error) = &s.health_error {
                waiting_for = error.clone();
            }
            s.healthy_for()
        };
        if healthy_for.is_some_and(|h| h >= min) {
            match member(daemon, release).await {
                Ok(()) => return Ok(()),
                Err(why) => {
                    tracing::debug!("gate: healthy long enough, but {why}");
                    waiting_for = why;
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "not healthy for {} s in a row within {} s (last: {waiting_for})",
                min.as_secs(),
                timeout.as_secs()
            ));
        }
        tokio::time::sleep(GATE_POLL).await;
    }
}

/// Runs `flow` on this node (a run pinned to it, `POST /api/flows/{flow}/run?node=NODE` with
/// the admin token) and waits for the run's end, at most the gate's timeout: the step commits
/// only when it succeeded.
async fn smoke(daemon: &Daemon, flow: &str, policy: GatePolicy) -> Result<(), String> {
    let timeout = Duration::from_secs(policy.health_timeout_secs);
    let deadline = Instant::now() + timeout;
    let ask = daemon.config.supervise.health_check_timeout();
    let token = daemon.config.admin_token.as_deref();
    let path = format!(
        "/api/flows/{}/run?node={}",
        url_word(flow),
        url_word(&daemon.config.node)
    );
    let fail = |why: String| format!("smoke flow {flow}: {why}");
    let answer = http::request(daemon.config.server_listen, "POST", &path, token, ask)
        .await
        .map_err(|e| fail(e.to_string()))?;
    if answer.status != 202 {
        return Err(fail(format!(
            "the server answered {}: {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
                .chars()
                .take(300)
                .collect::<String>()
        )));
    }
    let id = answer
        .json()
        .and_then(|v| v["run_id"].as_i64())
        .ok_or_else(|| fail("the server's answer names no run_id".into()))?;
    loop {
        let run = http::request(
            daemon.config.server_listen,
            "GET",
            &format!("/api/runs/{id}"),
            token,
            ask,
        )
        .await
        .ok()
        .filter(|r| r.status == 200)
        .and_then(|r| r.json());
        if let Some(run) = run {
            match run["state"].as_str() {
                Some("succeeded") => {
                    tracing::info!(flow, run = id, "upgrade step: the smoke flow succeeded");
                    return Ok(());
                }
                Some(state @ ("failed" | "canceled")) => {
                    let error = run["error"].as_str().unwrap_or("no error recorded");
                    return Err(fail(format!(
                        "run {id} {state}: {}",
                        error.chars().take(300).collect::<String>()
                    )));
                }
                _ => {}
            }
        }
        if Instant::now() >= deadline {
            return Err(fail(format!(
                "run {id} did not end within {} s",
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `word` for a URL path or query: letters, digits, `-`, `_`, `.` as they are, the rest
/// percent-encoded.
fn url_word(word: &str) -> String {
    word.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The cluster as this node's server sees it (`GET /api/cluster` with the node's admin token:
/// members with their release and drain, the scheduler leader).
pub(super) async fn cluster_view(daemon: &Daemon) -> Result<serde_json::Value, String> {
    let answer = http::request(
        daemon.config.server_listen,
        "GET",
        "/api/cluster",
        daemon.config.admin_token.as_deref(),
        daemon.config.supervise.health_check_timeout(),
    )
    .await
    .map_err(|e| format!("/api/cluster: {e}"))?;
    if answer.status != 200 {
        return Err(format!("/api/cluster answered {}", answer.status));
    }
    answer.json().ok_or_else(|| "/api/cluster: not JSON".into())
}

/// Whether the server lists this node as a live, active member on `release`.
async fn member(daemon: &Daemon, release: &str) -> Result<(), String> {
    let cluster = cluster_view(daemon).await?;
    let node = &daemon.config.node;
    let me = cluster["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["node"].as_str() == Some(node)))
        .ok_or_else(|| format!("{node} is not a live member of its cluster yet"))?;
    if me["release"].as_str() != Some(release) {
        return Err(format!(
            "{node} is a member on release {}, not {release}",
            me["release"].as_str().unwrap_or("(none)")
        ));
    }
    if me["draining"] == true {
        return Err(format!("{node} is still draining"));
    }
    Ok(())
}

/// Settles the step a journal records, left by a daemon that was killed during it. Holds the
/// step lock (taken before any request could start a step) until it is done.
pub async fn recover(daemon: Arc<Daemon>, _step: OwnedMutexGuard<()>) {
    let layout = daemon.config.layout.clone();
    let l = layout.clone();
    let read = blocking(move || Ok((Journal::read(&l)?, l.link_version(&l.current())?))).await;
    let (journal, current) = match read {
        Ok((Some(journal), current)) => (journal, current),
        Ok((None, _)) => return,
        Err(e) => {
            tracing::error!(error = %e, "reading the upgrade journal: the step it records is left as it is");
            return;
        }
    };
    tracing::warn!(from = ?journal.from, to = %journal.to, step = ?journal.step, "the agent stopped during an upgrade step: settling it");
    let rollout = journal.rollout.clone();
    let switched = current.as_deref() == Some(journal.to.as_str());
    let result = match (journal.step, switched) {
        (Step::Rollback, _) => {
            let refusal = undo(&daemon, journal).await;
            tracing::warn!("upgrade step settled: {refusal}");
            Err(refusal)
        }
        (_, false) => {
            // Before the switch: the old release stays (the close takes a drained server out
            // of its drain).
            daemon.start_server().await;
            let from = journal.from.clone().unwrap_or_else(|| "no release".into());
            let message = format!(
                "the agent stopped during the step, before the switch; {from} serves again"
            );
            journal
                .close(&daemon, format!("rolled_back: {message}"))
                .await;
            Err(interrupted(message))
        }
        (_, true) => {
            // After the switch: a server of another release goes; the gate runs again.
            let stale = daemon
                .snapshot()
                .server
                .as_ref()
                .is_some_and(|s| s.release != journal.to);
            if stale {
                daemon.stop_server().await;
            }
            let result = finish(&daemon, journal, Instant::now(), None).await;
            match &result {
                Ok(switched) => {
                    tracing::info!(release = %switched.active, "upgrade step settled: committed")
                }
                Err(refusal) => tracing::warn!("upgrade step settled: {refusal}"),
            }
            result
        }
    };
    if let Some(tag) = rollout {
        super::rollout::settled(&daemon, &tag, &result).await;
    }
}

/// Takes the server out of its drain and off probation (`/admin/resume`), when one runs.
async fn resume(daemon: &Daemon) {
    if daemon.snapshot().server.is_none() {
        return;
    }
    let answer = http::request(
        daemon.config.server_listen,
        "POST",
        "/admin/resume",
        daemon.config.admin_token.as_deref(),
        daemon.config.supervise.health_check_timeout(),
    )
    .await;
    match answer {
        Ok(r) if r.status == 200 => {}
        Ok(r) => tracing::warn!(
            status = r.status,
            "taking the server out of drain and probation"
        ),
        Err(e) => tracing::warn!("taking the server out of drain and probation: {e}"),
    }
    daemon.snapshot().draining = false;
}

/// After a commit: when the release carries a `bin/fleet-agent` that differs from the node's
/// `bin/fleet-agent` (the deploy key's forced command), installs it there atomically and asks
/// the daemon to replace itself with it; the server keeps running and is adopted.
async fn replace_agent_if_new(daemon: &Daemon, release: &str) {
    let layout = daemon.config.layout.clone();
    let release = release.to_owned();
    let installed = blocking(move || install_agent(&layout, &release)).await;
    match installed {
        Ok(Some(binary)) => {
            tracing::info!(binary = %binary.display(), "the committed release carries a new agent: replacing this one");
            *daemon
                .replace_with
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(binary);
        }
        Ok(None) => {}
        Err(e) => tracing::error!(error = %e, "installing the release's agent; this agent goes on"),
    }
}

/// Copies `releases/<release>/bin/fleet-agent` over `bin/fleet-agent` (temporary name, fsync,
/// rename) when they differ; `Some(path)` when it did.
fn install_agent(layout: &Layout, release: &str) -> Result<Option<std::path::PathBuf>, AgentError> {
    let new = layout.release(release).join("bin").join("fleet-agent");
    let Ok(bytes) = std::fs::read(&new) else {
        return Ok(None);
    };
    let target = layout.root().join("bin").join("fleet-agent");
    if std::fs::read(&target).is_ok_and(|old| old == bytes) {
        return Ok(None);
    }
    let dir = layout.root().join("bin");
    std::fs::create_dir_all(&dir).map_err(crate::io(&dir))?;
    // Executable before it takes the name: the forced command never finds a half-made file.
    layout.write_atomic_mode(&target, &bytes, Some(0o755))?;
    Ok(Some(target))
}
