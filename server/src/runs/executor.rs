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

use crate::config::SourceConnection;
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

/// Claims and runs queued runs, at most `limit` at a time.
pub struct Executor {
    pool: PgPool,
    node: String,
    storage: std::path::PathBuf,
    /// The connections Postgres sources read through (`[sources.NAME]`).
    sources: Arc<BTreeMap<String, SourceConnection>>,
    slots: Arc<Semaphore>,
    limit: usize,
    wake: Notify,
    /// Running runs and their cancel flags.
    running: Mutex<HashMap<i64, Arc<AtomicBool>>>,
    /// The server's shutdown: once cancelled, nothing more is claimed.
    stop: CancellationToken,
    /// Where each run's task is tracked, so shutdown waits for it.
    tasks: TaskTracker,
    draining: AtomicBool,
    pub metrics: Metrics,
}

impl Executor {
    pub fn new(
        pool: PgPool,
        node: String,
        storage: std::path::PathBuf,
        sources: BTreeMap<String, SourceConnection>,
        limit: usize,
        stop: CancellationToken,
        tasks: TaskTracker,
    ) -> Arc<Executor> {
        Arc::new(Executor {
            pool,
            node,
            storage,
            sources: Arc::new(sources),
            slots: Arc::new(Semaphore::new(limit)),
            limit,
            wake: Notify::new(),
            running: Mutex::new(HashMap::new()),
            stop,
            tasks,
            draining: AtomicBool::new(false),
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

    /// Whether this node may claim: not draining, and its schema is the database's.
    async fn may_claim(&self) -> bool {
        !self.draining() && self.schema_is_current().await
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
    /// batches (recorded as failed, saying the node was drained) and waits for their end.
    pub async fn wait_idle(&self, deadline: Duration) {
        let until = Instant::now() + deadline;
        while self.running() > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Ok(r) = self.running.lock() {
            for flag in r.values() {
                flag.store(true, Ordering::Relaxed);
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
            Some(flag) => {
                flag.store(true, Ordering::Relaxed);
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
            match claim(&self.pool, &self.node).await {
                Ok(Some((id, definition, epoch))) => {
                    let me = self.clone();
                    self.tasks.spawn(async move {
                        me.execute(id, epoch, definition).await;
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

    async fn execute(&self, id: i64, epoch: i64, definition: serde_json::Value) {
        let cancel = Arc::new(AtomicBool::new(false));
        if let Ok(mut r) = self.running.lock() {
            r.insert(id, cancel.clone());
        }
        let text = definition.to_string();
        let (state, error, report) = match Flow::parse(&text, &format!("run {id}")) {
            Err(e) => (
                RunState::Failed,
                Some(format!("the stored flow is not valid: {e}")),
                Report::default(),
            ),
            Ok(flow) => {
                tracing::info!(run = id, flow = %flow.name, "run started");
                let (progress_tx, mut progress_rx) =
                    tokio::sync::watch::channel(Default::default());
                let env = RunEnv {
                    run_id: id,
                    claim_epoch: epoch,
                    storage: self.storage.clone(),
                    pool: self.pool.clone(),
                    node: self.node.clone(),
                    sources: self.sources.clone(),
                    cancel: cancel.clone(),
                    progress: progress_tx,
                };
                // Counts reach the run's row at most twice a second; a cancel asked through
                // any node comes back the same way.
                let pool = self.pool.clone();
                let flag = cancel.clone();
                let reporter = async move {
                    while progress_rx.changed().await.is_ok() {
                        let counts = *progress_rx.borrow_and_update();
                        let report = Report {
                            counts,
                            ..Default::default()
                        };
                        if progress(&pool, id, epoch, &report).await.unwrap_or(false) {
                            flag.store(true, Ordering::Relaxed);
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                };
                // The reporter lives as long as the run, in the run's own task.
                let (ending, report) = {
                    let run = engine::run(&flow, &env);
                    tokio::pin!(run);
                    tokio::select! {
                        ended = &mut run => ended,
                        () = reporter => run.await,
                    }
                };
                drop(env);
                match ending {
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

    async fn user_canceled(&self, id: i64) -> bool {
        matches!(get_run(&self.pool, id).await, Ok(Some(r)) if r.cancel_requested)
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
