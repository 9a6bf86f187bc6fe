//! A load checker for rolling-upgrade tests: continuous load on a running cluster of
//! `etl-server` nodes, and what it saw, checked from outside. Given the nodes (name and HTTP
//! API address), the API token if the API needs one, the cluster's Postgres URL and its shared
//! storage, it defines a small flow that succeeds quickly and a schedule firing every second,
//! then on a thread of its own (its own runtime) submits runs all along, round-robin over the
//! nodes (one that refuses or does not answer is not the cluster's failure: the run goes to
//! the next node, and the retry is counted), and samples every node's state (`/health`, and
//! `/api/cluster`'s members with `draining` and `probation`), keeping the most nodes out of
//! service at once.
//! `finish` stops, waits (bounded) for every run to end and reads the truth from Postgres:
//! runs submitted, succeeded, failed, lost, and each second of the schedule fired once or not.
//! It knows nothing of how the cluster was started (agents, a test fleet, bare processes), and
//! it never changes a node: it only asks the API and reads the database.
//!
//! ```no_run
//! use fleet_tests::{LoadChecker, LoadNode, LoadOptions};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let nodes = vec![LoadNode::new("node-1", "127.0.0.1:8080".parse()?)];
//! let load = LoadChecker::start(LoadOptions::new(nodes, "postgres://…", "/srv/shared"))?;
//! // … the rolling upgrade, driven synchronously …
//! let report = load.finish();
//! println!("{}", report.summary());
//! report.assert_clean(1); // max_unavailable
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::watch;

use crate::http::try_call;
use crate::unique::unique_name;

/// How long one submission or one definition waits for a node's answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one sample waits for a node's `/health` or `/api/cluster`.
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long `start` waits for the schedule's first fire (the cluster needs a leader).
pub const FIRST_FIRE_WITHIN: Duration = Duration::from_secs(20);
/// How long `finish` waits for the fire of the last whole second before it was called.
const LAST_FIRE_WITHIN: Duration = Duration::from_secs(5);
/// Rows of the load flow's input: enough that a run takes a moment, few enough that it is
/// quick.
const INPUT_ROWS: usize = 2000;

/// One node of the cluster: its name (the server's `node`) and its HTTP API.
#[derive(Debug, Clone)]
pub struct LoadNode {
    pub name: String,
    pub api: SocketAddr,
}

impl LoadNode {
    pub fn new(name: impl Into<String>, api: SocketAddr) -> LoadNode {
        LoadNode {
            name: name.into(),
            api,
        }
    }
}

/// What the checker loads and how often.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub nodes: Vec<LoadNode>,
    /// Sent as `Authorization: Bearer …` with every request (default: the tests' operator
    /// admin token, `crate::ADMIN_TOKEN`; none: no header).
    pub token: Option<String>,
    /// The cluster's database (the test's own): where runs and fires are read at the end.
    pub postgres_url: String,
    /// The cluster's shared storage, on this machine: the flows' input and output go under
    /// `fleet-load/<tag>/`.
    pub shared_storage: PathBuf,
    /// How often a run is submitted (default 75 ms).
    pub submit_every: Duration,
    /// How often every node is sampled (default 100 ms).
    pub sample_every: Duration,
    /// How long `finish` waits for the runs to end (default 90 s); one not ended by then is
    /// lost.
    pub finish_within: Duration,
}

impl LoadOptions {
    /// The defaults for `nodes` of the cluster with database `postgres_url` and shared
    /// storage `shared_storage`.
    pub fn new(
        nodes: Vec<LoadNode>,
        postgres_url: impl Into<String>,
        shared_storage: impl Into<PathBuf>,
    ) -> LoadOptions {
        LoadOptions {
            nodes,
            token: Some(crate::ADMIN_TOKEN.to_owned()),
            postgres_url: postgres_url.into(),
            shared_storage: shared_storage.into(),
            submit_every: Duration::from_millis(75),
            sample_every: Duration::from_millis(100),
            finish_within: Duration::from_secs(90),
        }
    }
}

/// Why the load could not start.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("load checker: no nodes to load")]
    NoNodes,
    #[error("load checker: writing its input {}: {error}", path.display())]
    Input {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("load checker: Postgres: {0}")]
    Postgres(String),
    #[error("load checker: no node took the definition of flow `{flow}`: {reasons}")]
    Define { flow: String, reasons: String },
    #[error(
        "load checker: the schedule `{flow}` did not fire within {within:?}: has the cluster a scheduler leader?"
    )]
    NoFire { flow: String, within: Duration },
    #[error("load checker: its thread: {0}")]
    Thread(String),
}

impl From<sqlx::Error> for LoadError {
    fn from(e: sqlx::Error) -> Self {
        LoadError::Postgres(e.to_string())
    }
}

/// What the running checker is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    Run,
    Finish,
    /// Dropped without `finish`: stop at once, report nothing.
    Abandon,
}

/// The load running on its own thread; `finish` stops it and reports.
pub struct LoadChecker {
    signal: watch::Sender<Signal>,
    thread: Option<std::thread::JoinHandle<Option<LoadReport>>>,
    flow: String,
    schedule: String,
}

impl LoadChecker {
    /// Defines the flows, waits for the schedule's first fire (at most
    /// [`FIRST_FIRE_WITHIN`]) and starts submitting and sampling; returns once the load runs.
    pub fn start(opts: LoadOptions) -> Result<LoadChecker, LoadError> {
        if opts.nodes.is_empty() {
            return Err(LoadError::NoNodes);
        }
        let tag = unique_name("load");
        let (flow, schedule) = (tag.clone(), format!("{tag}-tick"));
        let (signal, watch) = watch::channel(Signal::Run);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let ctx = Ctx {
            opts,
            tag,
            flow: flow.clone(),
            schedule: schedule.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("load-checker".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready_tx.send(Err(LoadError::Thread(e.to_string())));
                        return None;
                    }
                };
                runtime.block_on(ctx.run(ready_tx, watch))
            })
            .map_err(|e| LoadError::Thread(e.to_string()))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(LoadChecker {
                signal,
                thread: Some(thread),
                flow,
                schedule,
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let why = match thread.join() {
                    Err(panic) => panic_text(&panic),
                    Ok(_) => "it ended without a word".to_owned(),
                };
                Err(LoadError::Thread(why))
            }
        }
    }

    /// The name of the flow whose runs are submitted.
    pub fn flow(&self) -> &str {
        &self.flow
    }

    /// The name of the flow scheduled every second.
    pub fn schedule(&self) -> &str {
        &self.schedule
    }

    /// Stops submitting and sampling, waits (at most `finish_within`) for every run to end,
    /// and reports. Blocks the calling thread: call it from synchronous code (or a blocking
    /// task).
    pub fn finish(mut self) -> LoadReport {
        let _ = self.signal.send(Signal::Finish);
        let thread = self
            .thread
            .take()
            .expect("the checker's thread runs until finish");
        match thread.join() {
            Ok(Some(report)) => report,
            Ok(None) => panic!("the load checker stopped without a report"),
            Err(panic) => panic!("the load checker's thread panicked: {}", panic_text(&panic)),
        }
    }
}

impl Drop for LoadChecker {
    /// Without `finish` (the test failed first): the thread stops at once, unwaited.
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.signal.send(Signal::Abandon);
        }
    }
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "a panic".to_owned())
}

/// A run the cluster answered for, or found in its database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutcome {
    pub id: i64,
    /// `failed`, `canceled`, `interrupted`; for a lost run `queued`, `running` or `vanished`.
    pub state: String,
    /// The node that ran it, else the one it was for.
    pub node: Option<String>,
    pub error: Option<String>,
}

impl std::fmt::Display for RunOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "run {} {}", self.id, self.state)?;
        if let Some(node) = &self.node {
            write!(f, " on {node}")?;
        }
        if let Some(error) = &self.error {
            write!(f, ": {error}")?;
        }
        Ok(())
    }
}

/// The nodes out of service at one sample, each with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outage {
    /// Since the load started.
    pub at: Duration,
    pub nodes: Vec<(String, String)>,
}

/// A node out of service from one sample to a later one (or to the end).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutPeriod {
    pub node: String,
    /// Why, at the period's first sample: `draining`, `on probation` (started for a health
    /// gate: it takes no dispatched runs), `no heartbeat in the membership`,
    /// `/health answered 503`, `/health: no answer within 1s`, ….
    pub reason: String,
    pub from: Duration,
    pub to: Duration,
}

/// Each second of the schedule between its first fire and the last whole second before
/// `finish`, read from `schedule_fires` (whose key makes a second fire of one time
/// impossible: an extra one shows as a run no fire names).
#[derive(Debug, Clone, Default)]
pub struct ScheduleReport {
    /// Unix seconds of the first and last expected fire.
    pub first: i64,
    pub last: i64,
    pub fired_once: usize,
    /// Seconds with no fire (Unix seconds).
    pub missed: Vec<i64>,
    /// Seconds recorded as passed over (a misfire), with no run.
    pub skipped: Vec<i64>,
    /// Runs of the scheduled flow that no fire names.
    pub extra_runs: Vec<i64>,
    pub runs_succeeded: usize,
    pub failed: Vec<RunOutcome>,
    pub lost: Vec<RunOutcome>,
}

/// What the load saw; `assert_clean` names every problem.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    pub duration: Duration,
    /// Runs a node answered 202 for.
    pub submitted: usize,
    /// Submissions a node refused (or did not answer) and another node took.
    pub retried: usize,
    /// Why nodes refused submissions ("NODE: reason"), with how many times.
    pub refusals: BTreeMap<String, usize>,
    /// Submissions no node took, each with the last refusal.
    pub not_accepted: Vec<String>,
    pub succeeded: usize,
    /// Runs that ended otherwise than succeeded (failed, canceled, interrupted).
    pub failed: Vec<RunOutcome>,
    /// Runs that had not ended by the bound of `finish`, or vanished from the database.
    pub lost: Vec<RunOutcome>,
    /// Runs of the load's flow in the database that no answer named (an answer lost on the
    /// way); counted in the outcomes above too.
    pub unacknowledged: Vec<i64>,
    pub samples: usize,
    /// Samples where no node answered `/api/cluster` (draining unknown).
    pub membership_unread: usize,
    pub max_out_of_service: usize,
    /// The first sample with `max_out_of_service` nodes out.
    pub peak: Option<Outage>,
    pub periods: Vec<OutPeriod>,
    pub schedule: ScheduleReport,
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

impl LoadReport {
    /// The nodes that were out of service at some sample.
    pub fn out_of_service(&self) -> BTreeSet<String> {
        self.periods.iter().map(|p| p.node.clone()).collect()
    }

    /// Every breach of the invariants: more than `max_unavailable` nodes out of service at
    /// once, a run failed or lost, a submission no node took, a second of the schedule not
    /// fired exactly once or its run not succeeded; and no run at all (a load that did
    /// nothing proves nothing).
    pub fn problems(&self, max_unavailable: usize) -> Vec<String> {
        let mut p = Vec::new();
        if self.max_out_of_service > max_unavailable {
            let peak = self.peak.as_ref().map_or(String::new(), |o| {
                let nodes: Vec<String> =
                    o.nodes.iter().map(|(n, r)| format!("{n} ({r})")).collect();
                format!(" at {}: {}", secs(o.at), nodes.join(", "))
            });
            p.push(format!(
                "{} nodes out of service at once, more than max_unavailable {max_unavailable}{peak}",
                self.max_out_of_service
            ));
        }
        if self.submitted == 0 {
            p.push("no run was submitted".to_owned());
        }
        p.extend(self.failed.iter().map(|r| format!("failed: {r}")));
        p.extend(self.lost.iter().map(|r| format!("lost: {r}")));
        p.extend(
            self.not_accepted
                .iter()
                .map(|why| format!("no node took a submission: {why}")),
        );
        let s = &self.schedule;
        if s.fired_once == 0 {
            p.push("the schedule never fired".to_owned());
        }
        if !s.missed.is_empty() {
            p.push(format!("schedule: seconds not fired: {:?}", s.missed));
        }
        if !s.skipped.is_empty() {
            p.push(format!("schedule: seconds passed over: {:?}", s.skipped));
        }
        if !s.extra_runs.is_empty() {
            p.push(format!(
                "schedule: runs no fire names (a second fired twice): {:?}",
                s.extra_runs
            ));
        }
        p.extend(
            s.failed
                .iter()
                .map(|r| format!("scheduled run failed: {r}")),
        );
        p.extend(s.lost.iter().map(|r| format!("scheduled run lost: {r}")));
        p
    }

    /// Panics listing every problem (`problems`) and the summary, unless there is none.
    pub fn assert_clean(&self, max_unavailable: usize) {
        let problems = self.problems(max_unavailable);
        if !problems.is_empty() {
            panic!(
                "the load found {} problem(s):\n  - {}\n{}",
                problems.len(),
                problems.join("\n  - "),
                self.summary()
            );
        }
    }

    /// A few lines for people: runs, nodes, schedule.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "load over {}: {} runs submitted ({} retried on another node, {} taken by none), {} succeeded, {} failed, {} lost, {} unacknowledged",
            secs(self.duration),
            self.submitted,
            self.retried,
            self.not_accepted.len(),
            self.succeeded,
            self.failed.len(),
            self.lost.len(),
            self.unacknowledged.len(),
        );
        let peak = self.peak.as_ref().map_or(String::new(), |o| {
            let nodes: Vec<String> = o.nodes.iter().map(|(n, r)| format!("{n} ({r})")).collect();
            format!(", first at {}: {}", secs(o.at), nodes.join(", "))
        });
        let _ = writeln!(
            s,
            "nodes: {} samples, at most {} out of service at once{peak}",
            self.samples, self.max_out_of_service
        );
        for period in &self.periods {
            let _ = writeln!(
                s,
                "  {} out of service {}..{}: {}",
                period.node,
                secs(period.from),
                secs(period.to),
                period.reason
            );
        }
        let sch = &self.schedule;
        let _ = write!(
            s,
            "schedule: {} seconds ({}..={}), {} fired once, {} missed, {} passed over, {} extra runs; {} runs succeeded, {} failed, {} lost",
            (sch.last - sch.first + 1).max(0),
            sch.first,
            sch.last,
            sch.fired_once,
            sch.missed.len(),
            sch.skipped.len(),
            sch.extra_runs.len(),
            sch.runs_succeeded,
            sch.failed.len(),
            sch.lost.len(),
        );
        s
    }
}

/// The checker's setting, moved onto its thread.
struct Ctx {
    opts: LoadOptions,
    tag: String,
    flow: String,
    schedule: String,
}

/// What the submitting side saw.
#[derive(Default)]
struct Submits {
    /// Run ids the cluster answered for.
    ids: Vec<i64>,
    retried: usize,
    refusals: BTreeMap<String, usize>,
    not_accepted: Vec<String>,
}

/// What the sampling side saw.
#[derive(Default)]
struct Samples {
    count: usize,
    membership_unread: usize,
    max_out: usize,
    peak: Option<Outage>,
    periods: Vec<OutPeriod>,
    /// Nodes out of service now: since when and why.
    open: BTreeMap<String, (Duration, String)>,
}

impl Ctx {
    fn headers(&self) -> Vec<(&'static str, String)> {
        self.opts
            .token
            .iter()
            .map(|t| ("Authorization", format!("Bearer {t}")))
            .collect()
    }

    /// One request to `node` bounded by `within`: the status and body, or why none came.
    async fn ask(
        &self,
        node: &LoadNode,
        method: &str,
        path: &str,
        body: &[u8],
        within: Duration,
    ) -> Result<(u16, String), String> {
        let headers = self.headers();
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        match tokio::time::timeout(within, try_call(node.api, method, path, &headers, body)).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {within:?}")),
        }
    }

    /// The whole life of the load: set up (answering `ready`), run until told, report.
    async fn run(
        self,
        ready: std::sync::mpsc::Sender<Result<(), LoadError>>,
        mut signal: watch::Receiver<Signal>,
    ) -> Option<LoadReport> {
        let setup = self.setup().await;
        let (pool, first_fire) = match setup {
            Ok(s) => s,
            Err(e) => {
                let _ = ready.send(Err(e));
                return None;
            }
        };
        let started = Instant::now();
        let _ = ready.send(Ok(()));
        let (submits, samples) = tokio::join!(
            self.submit_all(signal.clone()),
            self.sample_all(started, signal.clone())
        );
        let told = *signal.borrow_and_update();
        if told != Signal::Finish {
            return None;
        }
        Some(
            self.report(&pool, started, first_fire, submits, samples)
                .await,
        )
    }

    /// Writes the input, defines both flows, waits for the first fire: the pool and the
    /// first fire's second.
    async fn setup(&self) -> Result<(sqlx::PgPool, i64), LoadError> {
        let dir = self.opts.shared_storage.join("fleet-load").join(&self.tag);
        let input = dir.join("in.csv");
        let mut text = String::from("id,amount\n");
        for i in 0..INPUT_ROWS {
            let _ = writeln!(text, "{i},{}", i % 100);
        }
        std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(&input, text))
            .map_err(|error| LoadError::Input { path: input, error })?;
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&self.opts.postgres_url)
            .await?;
        let base = format!("fleet-load/{}", self.tag);
        let source = format!("source: {{ type: csv, path: {base}/in.csv }}\n");
        let transform = "transform:\n  - filter: \"amount >= 10\"\n  - compute: { doubled: \"amount * 2.0\" }\n";
        let load = format!(
            "name: {}\n{source}{transform}destination: {{ type: jsonl, path: {base}/out/load.jsonl }}\n",
            self.flow
        );
        let tick = format!(
            "name: {}\n{source}{transform}destination: {{ type: jsonl, path: {base}/out/tick.jsonl }}\nschedule: \"* * * * * *\"\n",
            self.schedule
        );
        self.define(&self.flow, &load).await?;
        self.define(&self.schedule, &tick).await?;
        let deadline = Instant::now() + FIRST_FIRE_WITHIN;
        loop {
            let first: Option<i64> = sqlx::query_scalar(
                "SELECT min(extract(epoch FROM fire_time))::bigint FROM schedule_fires WHERE flow = $1",
            )
            .bind(&self.schedule)
            .fetch_one(&pool)
            .await?;
            if let Some(first) = first {
                return Ok((pool, first));
            }
            if Instant::now() >= deadline {
                return Err(LoadError::NoFire {
                    flow: self.schedule.clone(),
                    within: FIRST_FIRE_WITHIN,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `POST /api/flows` to the first node that takes it.
    async fn define(&self, name: &str, definition: &str) -> Result<(), LoadError> {
        let mut reasons = Vec::new();
        for node in &self.opts.nodes {
            match self
                .ask(
                    node,
                    "POST",
                    "/api/flows",
                    definition.as_bytes(),
                    REQUEST_TIMEOUT,
                )
                .await
            {
                Ok((200 | 201, _)) => return Ok(()),
                Ok((status, body)) => reasons.push(format!("{}: {status} {body}", node.name)),
                Err(e) => reasons.push(format!("{}: {e}", node.name)),
            }
        }
        Err(LoadError::Define {
            flow: name.to_owned(),
            reasons: reasons.join("; "),
        })
    }

    /// Submits a run every `submit_every`, round-robin, until told to stop.
    async fn submit_all(&self, mut signal: watch::Receiver<Signal>) -> Submits {
        let mut out = Submits::default();
        let mut tick = tokio::time::interval(self.opts.submit_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let path = format!("/api/flows/{}/run", self.flow);
        let nodes = &self.opts.nodes;
        for turn in 0usize.. {
            tokio::select! {
                _ = tick.tick() => {}
                _ = signal.changed() => break,
            }
            let mut last = String::new();
            let mut taken = false;
            for attempt in 0..nodes.len() {
                let node = &nodes[(turn + attempt) % nodes.len()];
                let why = match self.ask(node, "POST", &path, b"", REQUEST_TIMEOUT).await {
                    Ok((202, body)) => match serde_json::from_str::<Value>(&body)
                        .ok()
                        .and_then(|v| v["run_id"].as_i64())
                    {
                        Some(id) => {
                            out.ids.push(id);
                            taken = true;
                            break;
                        }
                        None => format!("202 without a run id: {body}"),
                    },
                    Ok((status, body)) => format!("{status} {}", short(&body)),
                    Err(e) => e,
                };
                *out.refusals
                    .entry(format!("{}: {why}", node.name))
                    .or_insert(0) += 1;
                last = format!("{}: {why}", node.name);
            }
            if taken {
                if !last.is_empty() {
                    out.retried += 1;
                }
            } else {
                out.not_accepted.push(last);
            }
        }
        out
    }

    /// Samples every node every `sample_every` until told to stop.
    async fn sample_all(&self, started: Instant, mut signal: watch::Receiver<Signal>) -> Samples {
        let mut out = Samples::default();
        let mut tick = tokio::time::interval(self.opts.sample_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = signal.changed() => break,
            }
            let at = started.elapsed();
            let out_now = self.sample(out.count).await;
            out.count += 1;
            let (out_now, membership_read) = out_now;
            if !membership_read {
                out.membership_unread += 1;
            }
            if out_now.len() > out.max_out {
                out.max_out = out_now.len();
                out.peak = Some(Outage {
                    at,
                    nodes: out_now.clone(),
                });
            }
            let now_out: BTreeMap<String, String> = out_now.into_iter().collect();
            let back: Vec<String> = out
                .open
                .keys()
                .filter(|n| !now_out.contains_key(*n))
                .cloned()
                .collect();
            for node in back {
                if let Some((from, reason)) = out.open.remove(&node) {
                    out.periods.push(OutPeriod {
                        node,
                        reason,
                        from,
                        to: at,
                    });
                }
            }
            for (node, reason) in now_out {
                out.open.entry(node).or_insert((at, reason));
            }
        }
        let end = started.elapsed();
        for (node, (from, reason)) in std::mem::take(&mut out.open) {
            out.periods.push(OutPeriod {
                node,
                reason,
                from,
                to: end,
            });
        }
        out.periods.sort_by_key(|p| p.from);
        out
    }

    /// One sample: the nodes out of service, each with why, and whether the membership
    /// could be read.
    async fn sample(&self, turn: usize) -> (Vec<(String, String)>, bool) {
        let nodes = &self.opts.nodes;
        let mut tasks = tokio::task::JoinSet::new();
        for (k, node) in nodes.iter().enumerate() {
            let (node, headers) = (node.clone(), self.headers());
            tasks.spawn(async move {
                let headers: Vec<(&str, &str)> =
                    headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
                let asked = tokio::time::timeout(
                    SAMPLE_TIMEOUT,
                    try_call(node.api, "GET", "/health", &headers, b""),
                )
                .await;
                let why = match asked {
                    Ok(Ok((200, _))) => None,
                    Ok(Ok((status, _))) => Some(format!("/health answered {status}")),
                    Ok(Err(e)) => Some(format!("/health: {e}")),
                    Err(_) => Some(format!("/health: no answer within {SAMPLE_TIMEOUT:?}")),
                };
                (k, why)
            });
        }
        let mut health: Vec<Option<String>> = vec![None; nodes.len()];
        while let Some(done) = tasks.join_next().await {
            if let Ok((k, why)) = done {
                health[k] = why;
            }
        }
        // The membership as one healthy node reads it (they all read the same Redis).
        // Each member, and why it takes no dispatched runs (none: it takes them).
        let mut members: Option<BTreeMap<String, Option<&str>>> = None;
        for attempt in 0..nodes.len() {
            let k = (turn + attempt) % nodes.len();
            if health[k].is_some() {
                continue;
            }
            if let Ok((200, body)) = self
                .ask(&nodes[k], "GET", "/api/cluster", b"", SAMPLE_TIMEOUT)
                .await
                && let Ok(v) = serde_json::from_str::<Value>(&body)
                && let Some(list) = v["members"].as_array()
            {
                members = Some(
                    list.iter()
                        .filter_map(|m| {
                            let why = if m["draining"] == true {
                                Some("draining")
                            } else if m["probation"] == true {
                                Some("on probation")
                            } else {
                                None
                            };
                            Some((m["node"].as_str()?.to_owned(), why))
                        })
                        .collect(),
                );
                break;
            }
        }
        let out = nodes
            .iter()
            .zip(health)
            .filter_map(|(node, why)| {
                let why = why.or_else(|| match members.as_ref()?.get(&node.name) {
                    None => Some("no heartbeat in the membership".to_owned()),
                    Some(why) => why.map(str::to_owned),
                })?;
                Some((node.name.clone(), why))
            })
            .collect();
        (out, members.is_some())
    }

    /// After the stop: waits for the last fire and the runs, then reads the outcome.
    async fn report(
        &self,
        pool: &sqlx::PgPool,
        started: Instant,
        first_fire: i64,
        submits: Submits,
        samples: Samples,
    ) -> LoadReport {
        let duration = started.elapsed();
        let flows = [self.flow.clone(), self.schedule.clone()];
        let deadline = Instant::now() + self.opts.finish_within;
        // The last whole second before the stop is the last fire expected.
        let last_expected = db_now(pool).await.map(|t| t - 1);
        let fire_deadline = Instant::now() + LAST_FIRE_WITHIN;
        if let Some(last) = last_expected {
            while Instant::now() < fire_deadline {
                let newest: Option<i64> = sqlx::query_scalar(
                    "SELECT max(extract(epoch FROM fire_time))::bigint FROM schedule_fires WHERE flow = $1",
                )
                .bind(&self.schedule)
                .fetch_one(pool)
                .await
                .ok()
                .flatten();
                if newest.is_some_and(|n| n >= last) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        // The schedule stops (asked of any node that answers; a cluster with none left
        // keeps firing it into its own database, which the test drops).
        let path = format!("/api/flows/{}", self.schedule);
        for node in &self.opts.nodes {
            if let Ok((204 | 404, _)) = self.ask(node, "DELETE", &path, b"", REQUEST_TIMEOUT).await
            {
                break;
            }
        }
        while Instant::now() < deadline {
            let open: Result<i64, _> = sqlx::query_scalar(
                "SELECT count(*) FROM runs WHERE flow = ANY($1) AND state IN ('queued', 'running')",
            )
            .bind(&flows[..])
            .fetch_one(pool)
            .await;
            if open.is_ok_and(|n| n == 0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let rows: Vec<RunRow> = sqlx::query_as(
            "SELECT id, flow, state, coalesce(node, target_node), error FROM runs WHERE flow = ANY($1) ORDER BY id",
        )
        .bind(&flows[..])
        .fetch_all(pool)
        .await
        .unwrap_or_else(|e| panic!("load checker: reading the runs: {e}"));
        let fires: Vec<(i64, bool, Option<i64>)> = sqlx::query_as(
            "SELECT extract(epoch FROM fire_time)::bigint, skipped, run_id FROM schedule_fires WHERE flow = $1 ORDER BY fire_time",
        )
        .bind(&self.schedule)
        .fetch_all(pool)
        .await
        .unwrap_or_else(|e| panic!("load checker: reading the schedule's fires: {e}"));
        pool.close().await;

        let outcome = |(id, _, state, node, error): &RunRow| RunOutcome {
            id: *id,
            state: state.clone(),
            node: node.clone(),
            error: error.clone(),
        };
        let mut report = LoadReport {
            duration,
            submitted: submits.ids.len(),
            retried: submits.retried,
            refusals: submits.refusals,
            not_accepted: submits.not_accepted,
            samples: samples.count,
            membership_unread: samples.membership_unread,
            max_out_of_service: samples.max_out,
            peak: samples.peak,
            periods: samples.periods,
            ..LoadReport::default()
        };
        let acknowledged: BTreeSet<i64> = submits.ids.iter().copied().collect();
        let by_id: BTreeMap<i64, &RunRow> = rows.iter().map(|r| (r.0, r)).collect();
        for id in &submits.ids {
            match by_id.get(id) {
                None => report.lost.push(RunOutcome {
                    id: *id,
                    state: "vanished".to_owned(),
                    node: None,
                    error: None,
                }),
                Some(row) => judge(
                    outcome(row),
                    &mut report.succeeded,
                    &mut report.failed,
                    &mut report.lost,
                ),
            }
        }
        let sch = &mut report.schedule;
        let fired: BTreeSet<i64> = fires.iter().filter_map(|f| f.2).collect();
        for row in &rows {
            if row.1 == self.flow && !acknowledged.contains(&row.0) {
                report.unacknowledged.push(row.0);
                judge(
                    outcome(row),
                    &mut report.succeeded,
                    &mut report.failed,
                    &mut report.lost,
                );
            } else if row.1 == self.schedule {
                if !fired.contains(&row.0) {
                    sch.extra_runs.push(row.0);
                }
                judge(
                    outcome(row),
                    &mut sch.runs_succeeded,
                    &mut sch.failed,
                    &mut sch.lost,
                );
            }
        }
        sch.first = first_fire;
        sch.last = last_expected.unwrap_or(first_fire);
        let by_second: BTreeMap<i64, bool> = fires.iter().map(|f| (f.0, f.1)).collect();
        for second in sch.first..=sch.last {
            match by_second.get(&second) {
                None => sch.missed.push(second),
                Some(true) => sch.skipped.push(second),
                Some(false) => sch.fired_once += 1,
            }
        }
        report
    }
}

/// A run as read at the end: id, flow, state, node (or the one it was for), error.
type RunRow = (i64, String, String, Option<String>, Option<String>);

/// Files a run under succeeded, failed (ended otherwise) or lost (not ended).
fn judge(
    run: RunOutcome,
    succeeded: &mut usize,
    failed: &mut Vec<RunOutcome>,
    lost: &mut Vec<RunOutcome>,
) {
    match run.state.as_str() {
        "succeeded" => *succeeded += 1,
        "queued" | "running" => lost.push(run),
        _ => failed.push(run),
    }
}

/// The database's clock, in whole Unix seconds (schedules are due by it).
async fn db_now(pool: &sqlx::PgPool) -> Option<i64> {
    sqlx::query_scalar("SELECT floor(extract(epoch FROM now()))::bigint")
        .fetch_one(pool)
        .await
        .ok()
}

/// A refusal's body, cut short for the counts.
fn short(body: &str) -> String {
    let body = body.trim();
    match body.char_indices().nth(120) {
        Some((at, _)) => format!("{}…", &body[..at]),
        None => body.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: i64, state: &str) -> RunOutcome {
        RunOutcome {
            id,
            state: state.to_owned(),
            node: Some("n2".to_owned()),
            error: Some("why".to_owned()),
        }
    }

    #[test]
    fn a_clean_report_has_no_problem_and_each_breach_is_named() {
        let mut r = LoadReport {
            submitted: 10,
            succeeded: 10,
            max_out_of_service: 1,
            schedule: ScheduleReport {
                first: 100,
                last: 104,
                fired_once: 5,
                runs_succeeded: 5,
                ..ScheduleReport::default()
            },
            ..LoadReport::default()
        };
        assert_eq!(r.problems(1), Vec::<String>::new());
        r.assert_clean(1);
        assert_eq!(r.problems(0).len(), 1, "{:?}", r.problems(0));
        r.failed.push(run(3, "interrupted"));
        r.lost.push(run(4, "queued"));
        r.schedule.missed.push(102);
        r.schedule.extra_runs.push(9);
        let problems = r.problems(1);
        assert_eq!(
            problems,
            vec![
                "failed: run 3 interrupted on n2: why",
                "lost: run 4 queued on n2: why",
                "schedule: seconds not fired: [102]",
                "schedule: runs no fire names (a second fired twice): [9]",
            ]
        );
        let panic = std::panic::catch_unwind(|| r.assert_clean(1)).expect_err("not clean");
        let text = panic_text(&panic);
        assert!(
            text.contains("4 problem(s)") && text.contains("run 3"),
            "{text}"
        );
    }

    #[test]
    fn a_load_that_did_nothing_is_not_clean() {
        let problems = LoadReport::default().problems(3);
        assert!(
            problems.contains(&"no run was submitted".to_owned()),
            "{problems:?}"
        );
        assert!(
            problems.contains(&"the schedule never fired".to_owned()),
            "{problems:?}"
        );
    }
}
