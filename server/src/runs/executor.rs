//! The executor: claims this node's queued runs, at most `max_running_flows` at once, runs
//! each through the pipeline, and records its progress and end (a failed run's `error` is its
//! `PipelineError`'s text). Not the SQL (`store.rs`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Scope;
use crate::config::{SourceConnection, Tenant};
use crate::pipeline::engine::{self, Ending, Report, RunEnv};
use crate::pipeline::flow::Flow;

use super::RunState;
use super::store::*;

/// Totals for `/metrics`, since the server started.
#[derive(Debug, Default)]
pub struct Metrics {
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    pub canceled: AtomicU64,
    pub rows_read: AtomicU64,
    pub rows_written: AtomicU64,
    pub rows_rejected: AtomicU64,
}

/// How long a run gets to stop once asked (canceled, drained, shut down): one that has not
/// stopped by then (stuck where it does not look at its cancel flag) is recorded failed,
/// saying so, and its task is dropped.
pub const STOP_WITHIN: Duration = Duration::from_secs(5);

/// A running run's cancel flag, and the signal that starts its `STOP_WITHIN`.
struct RunHandle {
    cancel: Arc<AtomicBool>,
    asked: Notify,
}

impl RunHandle {
    fn stop(&self) {
        self.cancel.store(true, Ordering::Relaxed);
        self.asked.notify_one();
    }
}

/// Claims and runs queued runs, at most `limit` at a time.
pub struct Executor {
    pool: PgPool,
    node: String,
    storage: std::path::PathBuf,
    /// The connections Postgres sources read through (`[sources.NAME]`).
    sources: Arc<BTreeMap<String, SourceConnection>>,
    /// The configured tenants: what their flows may use, and their limits (`claim`).
    tenants: BTreeMap<String, Tenant>,
    limits: TenantLimits,
    slots: Arc<Semaphore>,
    limit: usize,
    wake: Notify,
    /// Running runs and their cancel flags.
    running: Mutex<HashMap<i64, Arc<RunHandle>>>,
    /// The server's shutdown: once cancelled, nothing more is claimed.
    stop: CancellationToken,
    /// Where each run's task is tracked, so shutdown waits for it.
    tasks: TaskTracker,
    draining: AtomicBool,
    /// On probation (`Config::probation`): claims only the runs pinned to this node.
    probation: AtomicBool,
    /// This node's heartbeat lapsed: the cluster may take it for gone and hand its runs to
    /// others, so it claims nothing until a heartbeat lands again.
    lapsed: AtomicBool,
    pub metrics: Metrics,
}

impl Executor {
    /// The executor of `config`'s node: its name, shared storage, source connections,
    /// tenants and `limits.max_running_flows`.
    pub fn new(
        pool: PgPool,
        config: &crate::config::Config,
        stop: CancellationToken,
        tasks: TaskTracker,
    ) -> Arc<Executor> {
        let tenants = config.tenants.clone();
        let limit = config.limits.max_running_flows;
        let limits = TenantLimits::new(
            tenants
                .iter()
                .filter_map(|(n, t)| Some((n.as_str(), t.max_running_flows?))),
        );
        Arc::new(Executor {
            pool,
            node: config.node.clone(),
            storage: config.shared_storage.clone(),
            sources: Arc::new(config.sources.clone()),
            tenants,
            limits,
            slots: Arc::new(Semaphore::new(limit)),
            limit,
            wake: Notify::new(),
            running: Mutex::new(HashMap::new()),
            stop,
            tasks,
            draining: AtomicBool::new(false),
            probation: AtomicBool::new(false),
            lapsed: AtomicBool::new(false),
            metrics: Metrics::default(),
        })
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Stops or resumes claiming runs.
    pub fn set_draining(&self, on: bool) {
        self.draining.store(on, Ordering::Relaxed);
        self.wake.notify_one();
    }

    pub fn on_probation(&self) -> bool {
        self.probation.load(Ordering::Relaxed)
    }

    /// Puts the node on probation (`true`: it claims only the runs pinned to it) or lifts it.
    pub fn set_probation(&self, on: bool) {
        self.probation.store(on, Ordering::Relaxed);
        self.wake.notify_one();
    }

    fn lapsed(&self) -> bool {
        self.lapsed.load(Ordering::Relaxed)
    }

    /// The heartbeat lapsed (`true`: claim nothing, the cluster may take this node for gone)
    /// or lands again (`false`: claim again). Whether it changed.
    pub fn set_lapsed(&self, on: bool) -> bool {
        let changed = self.lapsed.swap(on, Ordering::Relaxed) != on;
        if changed {
            self.wake.notify_one();
        }
        changed
    }

    /// Whether this node may claim: not draining, its heartbeat live, and its schema is the
    /// database's.
    async fn may_claim(&self) -> bool {
        !self.draining() && !self.lapsed() && self.schema_is_current().await
    }

    /// Whether this node knows the database's newest migration (else it neither claims nor
    /// leads).
    pub async fn schema_is_current(&self) -> bool {
        match database_schema_version(&self.pool).await {
            Ok(v) if v > crate::db::schema_version() => {
                tracing::warn!(
                    database = v,
                    mine = crate::db::schema_version(),
                    "schema is older than the database's: not claiming"
                );
                false
            }
            Ok(_) => true,
            Err(_) => false,
        }
    }

    /// Waits until no run executes here or `deadline` passes; then stops the rest between
    /// batches (recorded as failed, saying the node was drained) and waits for their end,
    /// which comes within `STOP_WITHIN` even for a run that does not stop.
    pub async fn wait_idle(&self, deadline: Duration) {
        let until = Instant::now() + deadline;
        while self.running() > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Ok(r) = self.running.lock() {
            for run in r.values() {
                run.stop();
            }
        }
        while self.running() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn running(&self) -> usize {
        self.running.lock().map(|r| r.len()).unwrap_or(0)
    }

    /// A run was queued: look for work now rather than at the next poll.
    pub fn poke(&self) {
        self.wake.notify_one();
    }

    /// Stops the run at its next batch if it runs here; `true` if it did.
    pub fn cancel_local(&self, id: i64) -> bool {
        match self.running.lock().ok().and_then(|r| r.get(&id).cloned()) {
            Some(run) => {
                run.stop();
                true
            }
            None => false,
        }
    }

    /// The claim loop; returns when `stop` is called.
    pub async fn serve(self: Arc<Self>) {
        while !self.stopping() {
            let permit = tokio::select! {
                permit = self.slots.clone().acquire_owned() => permit,
                () = self.stop.cancelled() => return,
            };
            let Ok(permit) = permit else {
                return;
            };
            if !self.may_claim().await {
                drop(permit);
                self.idle(Duration::from_secs(1)).await;
                continue;
            }
            match claim(&self.pool, &self.node, self.on_probation(), &self.limits).await {
                Ok(Some((id, tenant, definition, epoch))) => {
                    let me = self.clone();
                    self.tasks.spawn(async move {
                        me.execute(id, epoch, &tenant, definition).await;
                        drop(permit);
                        me.wake.notify_one();
                    });
                }
                Ok(None) => {
                    drop(permit);
                    // Runs queued through another node show up at the next poll.
                    self.idle(Duration::from_secs(1)).await;
                }
                Err(e) => {
                    drop(permit);
                    tracing::warn!(error = %e, "claiming a run");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        () = self.stop.cancelled() => {}
                    }
                }
            }
        }
    }

    /// Waits for a wake-up, at most `wait`, or the shutdown.
    async fn idle(&self, wait: Duration) {
        tokio::select! {
            _ = tokio::time::timeout(wait, self.wake.notified()) => {}
            () = self.stop.cancelled() => {}
        }
    }

    fn stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    async fn execute(&self, id: i64, epoch: i64, tenant: &str, definition: serde_json::Value) {
        let cancel = Arc::new(AtomicBool::new(false));
        let handle = Arc::new(RunHandle {
            cancel: cancel.clone(),
            asked: Notify::new(),
        });
        if let Ok(mut r) = self.running.lock() {
            r.insert(id, handle.clone());
        }
        let text = definition.to_string();
        let scope = Scope::new(tenant);
        // A tenant's flow is confined when it runs too, whatever was checked when it was
        // defined (the tenant's settings may have changed since).
        let flow = Flow::parse(&text, &format!("run {id}"))
            .map_err(|e| format!("the stored flow is not valid: {e}"))
            .and_then(|flow| {
                scope
                    .confine(&flow, self.tenants.get(tenant))
                    .map_err(|out| {
                        let why: Vec<String> = out
                            .iter()
                            .map(|o| format!("{}: {}", o.field, o.message))
                            .collect();
                        format!("outside tenant `{tenant}`: {}", why.join("; "))
                    })
            });
        let (state, error, report) = match flow {
            Err(e) => (RunState::Failed, Some(e), Report::default()),
            Ok(flow) => {
                tracing::info!(run = id, flow = %flow.name, "run started");
                let (progress_tx, mut progress_rx) =
                    tokio::sync::watch::channel(Default::default());
                let env = RunEnv {
                    run_id: id,
                    claim_epoch: epoch,
                    storage: self.storage.clone(),
                    scope,
                    pool: self.pool.clone(),
                    node: self.node.clone(),
                    sources: self.sources.clone(),
                    cancel: cancel.clone(),
                    progress: progress_tx,
                };
                // Counts reach the run's row at most twice a second; a cancel asked through
                // any node comes back the same way (at least every second, so it reaches a
                // run that makes no progress too), and so does the news that the run is no
                // longer this node's (it was taken for gone, paused or cut off from Redis,
                // and the run handed over): the run stops, as it could not commit anyway.
                let pool = self.pool.clone();
                let flag = handle.clone();
                let reporter = async move {
                    while !matches!(
                        tokio::time::timeout(Duration::from_secs(1), progress_rx.changed()).await,
                        Ok(Err(_))
                    ) {
                        let counts = *progress_rx.borrow_and_update();
                        let report = Report {
                            counts,
                            ..Default::default()
                        };
                        if let Ok(None | Some(true)) = progress(&pool, id, epoch, &report).await {
                            flag.stop();
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                };
                // The reporter lives as long as the run, in the run's own task.
                let run = async {
                    let run = engine::run(&flow, &env);
                    tokio::pin!(run);
                    tokio::select! {
                        ended = &mut run => ended,
                        () = reporter => run.await,
                    }
                };
                // Once asked to stop, the run has `STOP_WITHIN`; then it is dropped.
                let abandon = async {
                    handle.asked.notified().await;
                    tokio::time::sleep(STOP_WITHIN).await;
                };
                let ended = tokio::select! {
                    ended = run => Some(ended),
                    () = abandon => None,
                };
                let counts = *env.progress.borrow();
                drop(env);
                match ended {
                    None => {
                        let why = self.stop_reason(id).await;
                        tracing::warn!(run = id, "the run did not stop after {why}: abandoned");
                        let error = format!(
                            "the run did not stop within {} s after {why}: abandoned",
                            STOP_WITHIN.as_secs()
                        );
                        let report = Report {
                            counts,
                            ..Default::default()
                        };
                        (RunState::Failed, Some(error), report)
                    }
                    Some((ending, report)) => match ending {
                        Ending::Succeeded => (RunState::Succeeded, None, report),
                        Ending::Failed(why) => (RunState::Failed, Some(why.to_string()), report),
                        Ending::Canceled
                            if (self.stopping() || self.draining())
                                && !self.user_canceled(id).await =>
                        {
                            let why = if self.stopping() {
                                "the server shut down before the run finished"
                            } else {
                                "the node was drained before the run finished"
                            };
                            (RunState::Failed, Some(why.to_owned()), report)
                        }
                        Ending::Canceled => (RunState::Canceled, None, report),
                    },
                }
            }
        };
        let m = &self.metrics;
        m.rows_read.fetch_add(report.counts.read, Ordering::Relaxed);
        m.rows_written
            .fetch_add(report.counts.written, Ordering::Relaxed);
        m.rows_rejected
            .fetch_add(report.counts.rejected, Ordering::Relaxed);
        match state {
            RunState::Succeeded => &m.succeeded,
            RunState::Canceled => &m.canceled,
            _ => &m.failed,
        }
        .fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            run = id,
            state = state.as_str(),
            error = error.as_deref().unwrap_or(""),
            "run ended"
        );
        // The final state must land: retry a few times if the database blinks.
        for attempt in 0..5 {
            match finish(&self.pool, id, epoch, state, error.as_deref(), &report).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(run = id, error = %e, attempt, "recording the end of a run");
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
            }
        }
        if let Ok(mut r) = self.running.lock() {
            r.remove(&id);
        }
    }

    /// What asked run `id` to stop, for its error.
    async fn stop_reason(&self, id: i64) -> &'static str {
        if self.stopping() {
            "the server began shutting down"
        } else if self.draining() && !self.user_canceled(id).await {
            "the node began draining"
        } else {
            "it was canceled"
        }
    }

    async fn user_canceled(&self, id: i64) -> bool {
        matches!(get_run(&self.pool, id, None).await, Ok(Some(r)) if r.cancel_requested)
    }

    /// Once the server's shutdown began: lets running runs go on for `grace`, then stops them
    /// between batches (they end `failed`, saying why) and waits for their final state to be
    /// recorded.
    pub async fn shutdown(&self, grace: Duration) {
        debug_assert!(
            self.stopping(),
            "the server's shutdown token is cancelled first"
        );
        self.wait_idle(grace).await;
        // Every slot back means every run recorded its end.
        let _ = self.slots.acquire_many(self.limit as u32).await;
    }
}
