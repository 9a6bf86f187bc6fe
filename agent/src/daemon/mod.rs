//! `fleet-agent run --root R`: the node daemon. It supervises the ETL server of the release
//! `current` names (`supervise.rs`, `process.rs`), polls its health, answers `status`,
//! `activate` and `rollback` on a control socket (`control.rs`) that the deploy key's one-shot
//! requests forward to, runs the per-node upgrade step with its journal (`upgrade.rs`),
//! takes part in rolling upgrades with the cluster's other agents through Redis (`rollout/`),
//! publishes a heartbeat in the cluster's Redis (`report.rs`) and Prometheus text on loopback
//! (`metrics.rs`), and rotates the server's log (`logs.rs`).
//!
//! One daemon per node root (`state/daemon.lock`, naming its pid). The daemon is [`run`]: a
//! library function taking its config and a shutdown future, so tests run it in-process as
//! well as in a real process; `main.rs` only parses, sets up logging and turns signals into the
//! future. Not the request path: `stage` and the one-shot requests without a daemon stay
//! synchronous in `ops` and `serve`.

mod config;
mod control;
mod http;
mod logs;
mod metrics;
mod process;
mod report;
mod rollout;
mod supervise;
mod upgrade;

use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use fleet_proto::{Status, Supervision};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub use config::{ConfigError, DaemonConfig, Rollout, Supervise};
pub use control::{Forwarded, ask_daemon, socket_path};
pub use process::start_time;
use supervise::{Order, Snapshot};

use crate::{AgentError, Layout, io};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(
        "another fleet-agent daemon runs for {} (pid {}); stop it first",
        root.display(),
        pid.map_or_else(|| "not recorded".to_owned(), |p| p.to_string())
    )]
    AlreadyRunning {
        root: std::path::PathBuf,
        pid: Option<u32>,
    },
    #[error("{0}")]
    Agent(#[from] AgentError),
    #[error("metrics listener {addr}: {error}")]
    Metrics {
        addr: std::net::SocketAddr,
        error: std::io::Error,
    },
}

/// How the daemon ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// Shut down: the server was stopped.
    Stopped,
    /// A committed release carries another agent: the caller execs this binary with the same
    /// arguments (the server keeps running and is adopted).
    Replace(std::path::PathBuf),
}

/// The daemon's shared state: its config, what its tasks see, and the order channel to the
/// supervisor.
pub(crate) struct Daemon {
    pub config: DaemonConfig,
    pub started: Instant,
    snapshot: Mutex<Snapshot>,
    orders: mpsc::Sender<Order>,
    /// One upgrade step at a time (and none while the journal is being recovered).
    pub step: Arc<tokio::sync::Mutex<()>>,
    /// Poked by the supervisor when a server starts or is adopted: the health poll looks at
    /// once instead of finishing the wait it computed for the server before.
    pub server_started: tokio::sync::Notify,
    /// Set before a shutdown that replaces the daemon: the server is left running.
    pub keep_server: AtomicBool,
    /// Set by a committed step whose release carries another agent binary.
    pub replace_with: Mutex<Option<std::path::PathBuf>>,
    /// The cluster's Redis (`None`: not configured, no heartbeats and no rollouts) and the
    /// connection the rollout work shares.
    pub redis: Option<redis::Client>,
    pub redis_conn: tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>>,
    /// Wakes the rollout loop (an order was just taken, a step ended).
    pub rollout_poke: tokio::sync::Notify,
    /// Has the heartbeat go out now instead of at its next interval.
    pub heartbeat_now: tokio::sync::Notify,
    pub shutdown: CancellationToken,
}

impl Daemon {
    pub fn snapshot(&self) -> MutexGuard<'_, Snapshot> {
        // A task that panicked while holding it left plain data: go on with it.
        self.snapshot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the daemon knows of the server, for `status` and the heartbeat.
    pub fn supervision(&self) -> Supervision {
        let s = self.snapshot();
        let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Supervision {
            node: self.config.node.clone(),
            agent_pid: std::process::id(),
            agent_uptime_ms: ms(self.started.elapsed()),
            server: s.state(self.config.supervise.start_timeout()),
            server_pid: s.server.as_ref().map(|r| r.pid),
            server_release: s.server.as_ref().map(|r| r.release.clone()),
            restarts: s.restarts,
            last_exit: s.last_exit.clone(),
            healthy_for_ms: s.healthy_for().map(ms),
            health_latency_ms: s.health_latency.map(ms),
            health_error: s.health_error.clone(),
            restart_in_ms: s
                .restart_at
                .filter(|_| s.server.is_none() && s.want_running)
                .map(|t| ms(t.saturating_duration_since(Instant::now()))),
            heartbeat_age_ms: s.heartbeat_at.map(|t| ms(t.elapsed())),
            redis_error: s.redis_error.clone(),
            step: s.step.clone(),
            last_step: s.last_step.clone(),
        }
    }

    /// The node's status: the release state read from disk, with the daemon's view.
    pub async fn status(&self) -> Result<Status, AgentError> {
        let layout = self.config.layout.clone();
        let mut status = blocking(move || crate::ops::status(&layout)).await?;
        status.daemon = Some(self.supervision());
        Ok(status)
    }

    /// Asks the supervisor to stop the server; how it ended (`None`: none ran).
    pub async fn stop_server(&self) -> Option<String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.orders.send(Order::Stop(tx)).await.is_err() {
            return None;
        }
        rx.await.ok().flatten()
    }

    /// Asks the supervisor to start the release `current` names.
    pub async fn start_server(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.orders.send(Order::Start(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

pub(crate) use crate::unix_ms;

/// Accepts connections until `shutdown` and answers each with `handle` on a task of its own;
/// a failed accept is logged (naming `what`) and retried after a pause.
pub(crate) async fn accept_each<S, Peer, Accept, Fut>(
    what: &'static str,
    shutdown: &CancellationToken,
    accept: impl Fn() -> Accept,
    handle: impl Fn(S) -> Fut,
) where
    Accept: Future<Output = std::io::Result<(S, Peer)>>,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting on {what}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        tokio::spawn(handle(stream).in_current_span());
    }
}

/// Runs blocking file work (the `ops` functions, which may wait for the node's lock) off the
/// daemon's one thread.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, AgentError> + Send + 'static,
) -> Result<T, AgentError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(AgentError::Layout(format!("a blocking task failed: {e}"))))
}

/// Holds `state/daemon.lock` for the daemon's life; the file names the daemon's pid.
struct DaemonLock(#[allow(dead_code)] std::fs::File);

impl DaemonLock {
    fn take(layout: &Layout) -> Result<DaemonLock, DaemonError> {
        use std::io::{Read, Write};
        let path = layout.state().join("daemon.lock");
        let mut file = crate::layout::open_lock_file(&path)?;
        match file.try_lock() {
            Ok(()) => {
                file.set_len(0).map_err(io(&path))?;
                writeln!(file, "{}", std::process::id()).map_err(io(&path))?;
                Ok(DaemonLock(file))
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = (&mut file).take(32).read_to_string(&mut text);
                Err(DaemonError::AlreadyRunning {
                    root: layout.root().to_owned(),
                    pid: text.trim().parse().ok(),
                })
            }
            Err(std::fs::TryLockError::Error(e)) => Err(io(&path)(e).into()),
        }
    }
}

/// The daemon: supervises the server and serves the node until `shutdown` completes (or a
/// committed release asks for the daemon to be replaced: [`Exit::Replace`]).
pub async fn run(
    config: DaemonConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<Exit, DaemonError> {
    let layout = config.layout.clone();
    layout.ensure()?;
    let _lock = DaemonLock::take(&layout)?;
    let log = logs::open(&layout)?;
    let control = control::bind(&layout)?;
    let metrics = match config.metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|error| DaemonError::Metrics { addr, error })?,
        ),
        None => None,
    };
    let adopted = process::Server::adopt(&layout)?;
    // The URL holds a password: a parse error is reported without it (`report.rs` says so in
    // `status`).
    let redis = config
        .redis_url
        .as_deref()
        .and_then(|url| redis::Client::open(url).ok());
    let (orders, inbox) = mpsc::channel(8);
    let token = CancellationToken::new();
    // A step left unsettled is gated again: a server started before that is on probation.
    let mut snapshot = Snapshot::default();
    snapshot.probation = upgrade::pending(&layout);
    let daemon = Arc::new(Daemon {
        config,
        started: Instant::now(),
        snapshot: Mutex::new(snapshot),
        orders,
        step: Arc::new(tokio::sync::Mutex::new(())),
        server_started: tokio::sync::Notify::new(),
        keep_server: AtomicBool::new(false),
        replace_with: Mutex::new(None),
        redis,
        redis_conn: tokio::sync::Mutex::new(None),
        rollout_poke: tokio::sync::Notify::new(),
        heartbeat_now: tokio::sync::Notify::new(),
        shutdown: token.clone(),
    });
    // Every line the daemon logs names its node.
    let span = tracing::info_span!("agent", node = %daemon.config.node);
    span.in_scope(|| tracing::info!(root = %layout.root().display(), pid = std::process::id(), "fleet-agent daemon started"));
    let tasks = TaskTracker::new();
    // The journal of an interrupted step is settled before anything else may start a step.
    let recovering = daemon.step.clone().lock_owned().await;
    let supervisor = tokio::spawn(
        supervise::supervise(
            daemon.clone(),
            adopted,
            inbox,
            log.try_clone().map_err(io(process::log_path(&layout)))?,
            token.clone(),
        )
        .instrument(span.clone()),
    );
    tasks.spawn(upgrade::recover(daemon.clone(), recovering).instrument(span.clone()));
    tasks.spawn(supervise::watch_health(daemon.clone(), token.clone()).instrument(span.clone()));
    tasks.spawn(report::heartbeat(daemon.clone(), token.clone()).instrument(span.clone()));
    tasks.spawn(rollout::participate(daemon.clone(), token.clone()).instrument(span.clone()));
    tasks.spawn(logs::rotate(daemon.clone(), log, token.clone()).instrument(span.clone()));
    tasks.spawn(control::serve(daemon.clone(), control, token.clone()).instrument(span.clone()));
    if let Some(listener) = metrics {
        tasks.spawn(
            metrics::serve(daemon.clone(), listener, token.clone()).instrument(span.clone()),
        );
    }
    tasks.close();
    tokio::select! {
        () = shutdown => span.in_scope(|| tracing::info!("shutting down: stopping the server")),
        () = token.cancelled() => {}
    }
    token.cancel();
    let _ = supervisor.await;
    tasks.wait().await;
    let _ = std::fs::remove_file(socket_path(&layout));
    let replace = daemon
        .replace_with
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    Ok(match replace {
        Some(binary) => Exit::Replace(binary),
        None => Exit::Stopped,
    })
}
