//! Supervision: one task owns the server process. It starts the release `current` names,
//! restarts a server that exited with backoff (0.5 s doubling to 30 s, with jitter, back to
//! 0.5 s after a run of 30 s; three quick exits in a row make the state `crashlooping`, and it
//! goes on restarting), stops it on order (SIGTERM, then SIGKILL after the grace), and on the
//! daemon's shutdown stops it too, unless the daemon is replacing itself (`exec`), when the
//! server is left running for the new image to adopt. A second task polls `/health` and keeps
//! "healthy since" on the monotonic clock. Both write what they see into the daemon's
//! [`Snapshot`]; nothing else starts or signals the server.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use fleet_proto::ServerState;
use rustix::process::Signal;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::process::{self, Server};
use super::{Daemon, http};

/// The first restart waits this long; each quick exit doubles it...
const BACKOFF_FIRST: Duration = Duration::from_millis(500);
/// ...up to this.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A server up this long has started well: the next exit restarts after `BACKOFF_FIRST`.
const GOOD_RUN: Duration = Duration::from_secs(30);
/// Quick exits in a row (each within `GOOD_RUN` of its start) that make a crash loop.
const CRASHLOOP_EXITS: u32 = 3;

/// What the upgrade step asks of the supervisor.
pub enum Order {
    /// Stop the server (SIGTERM, SIGKILL after the grace) and keep it stopped; answers with
    /// how it ended, `None` when none ran.
    Stop(oneshot::Sender<Option<String>>),
    /// Start the release `current` names now (no backoff), and keep it running.
    Start(oneshot::Sender<()>),
}

/// The running server as the snapshot shows it.
#[derive(Debug, Clone)]
pub struct Running {
    pub pid: u32,
    pub release: String,
    pub since: Instant,
    /// Counts starts and adoptions: a health answer for an earlier one is ignored.
    pub generation: u64,
}

/// What the daemon knows, as its tasks last saw it.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub want_running: bool,
    pub server: Option<Running>,
    pub generation: u64,
    /// Exits the agent did not ask for.
    pub exits: u64,
    pub restarts: u32,
    pub last_exit: Option<String>,
    quick_exits: u32,
    pub restart_at: Option<Instant>,
    pub healthy_since: Option<Instant>,
    ever_healthy: bool,
    pub health_latency: Option<Duration>,
    pub health_error: Option<String>,
    pub health_checks: u64,
    pub health_failures: u64,
    pub health_latency_total: Duration,
    pub draining: bool,
    /// Servers started now start on probation (`FLEET_PROBATION=1`): set by the upgrade step
    /// before it starts a release to gate, cleared when the step ends.
    pub probation: bool,
    pub heartbeat_at: Option<Instant>,
    pub redis_error: Option<String>,
    pub step: Option<String>,
    pub last_step: Option<String>,
}

impl Snapshot {
    pub fn state(&self, start_timeout: Duration) -> ServerState {
        let looping = self.quick_exits >= CRASHLOOP_EXITS;
        match &self.server {
            Some(_) if self.draining => ServerState::Draining,
            Some(_) if self.healthy_since.is_some() => ServerState::Healthy,
            Some(_) if looping => ServerState::Crashlooping,
            Some(s) if self.ever_healthy || s.since.elapsed() >= start_timeout => {
                ServerState::Unhealthy
            }
            Some(_) => ServerState::Starting,
            None if self.want_running && self.restart_at.is_some() => {
                if looping {
                    ServerState::Crashlooping
                } else {
                    ServerState::Unhealthy
                }
            }
            None => ServerState::Stopped,
        }
    }

    /// How long the server has been healthy without a miss.
    pub fn healthy_for(&self) -> Option<Duration> {
        self.healthy_since.map(|t| t.elapsed())
    }
}

/// The delay before the restart after `quick_exits` quick exits in a row, with ±20 % jitter.
fn backoff(quick_exits: u32) -> Duration {
    let doublings = quick_exits.saturating_sub(1).min(16);
    let base = BACKOFF_FIRST
        .saturating_mul(1 << doublings)
        .min(BACKOFF_MAX);
    let mut byte = [0u8; 1];
    let _ = getrandom::fill(&mut byte);
    // 0.8 .. 1.2 of the base.
    base.mul_f64(0.8 + 0.4 * f64::from(byte[0]) / 255.0)
}

/// The supervisor task: runs until `shutdown`, then stops the server (unless the daemon
/// keeps it for its next image).
pub async fn supervise(
    daemon: Arc<Daemon>,
    mut server: Option<Server>,
    mut orders: mpsc::Receiver<Order>,
    log: std::fs::File,
    shutdown: CancellationToken,
) {
    let mut sup = Supervisor {
        daemon,
        log,
        server: None,
    };
    match server.take() {
        Some(adopted) => {
            tracing::info!(pid = adopted.pid, release = %adopted.release, "adopted the running server");
            sup.running(adopted);
        }
        None => {
            sup.daemon.snapshot().want_running = true;
            sup.start();
        }
    }
    loop {
        let restart_at = {
            let s = sup.daemon.snapshot();
            s.restart_at
                .filter(|_| s.want_running && sup.server.is_none())
        };
        tokio::select! {
            () = shutdown.cancelled() => break,
            reason = async {
                match &sup.server {
                    Some(server) => server.exited().await,
                    None => std::future::pending().await,
                }
            } => sup.exited(reason),
            () = async {
                match restart_at {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            } => {
                sup.daemon.snapshot().restarts += 1;
                sup.start();
            }
            order = orders.recv() => match order {
                Some(Order::Stop(reply)) => {
                    let ended = sup.stop().await;
                    let _ = reply.send(ended);
                }
                Some(Order::Start(reply)) => {
                    {
                        let mut s = sup.daemon.snapshot();
                        s.want_running = true;
                        s.quick_exits = 0;
                        s.restart_at = None;
                    }
                    if sup.server.is_none() {
                        sup.start();
                    }
                    let _ = reply.send(());
                }
                None => break,
            },
        }
    }
    if sup.daemon.keep_server.load(Ordering::SeqCst) {
        if let Some(server) = &sup.server {
            tracing::info!(
                pid = server.pid,
                "leaving the server running for the next agent"
            );
        }
    } else {
        sup.stop().await;
    }
}

struct Supervisor {
    daemon: Arc<Daemon>,
    log: std::fs::File,
    server: Option<Server>,
}

impl Supervisor {
    fn running(&mut self, server: Server) {
        let mut s = self.daemon.snapshot();
        s.generation += 1;
        s.server = Some(Running {
            pid: server.pid,
            release: server.release.clone(),
            since: server.since,
            generation: s.generation,
        });
        s.healthy_since = None;
        s.ever_healthy = false;
        s.restart_at = None;
        s.want_running = true;
        drop(s);
        self.server = Some(server);
        self.daemon.server_started.notify_one();
    }

    /// Starts the release `current` names; a failure to start counts as an exit.
    fn start(&mut self) {
        let layout = &self.daemon.config.layout;
        let release = match layout.link_version(&layout.current()) {
            Ok(Some(release)) => release,
            Ok(None) => {
                tracing::info!("no release is active: nothing to start");
                let mut s = self.daemon.snapshot();
                s.restart_at = None;
                return;
            }
            Err(e) => {
                self.failed_start(format!("could not start: {e}"));
                return;
            }
        };
        let probation = self.daemon.snapshot().probation;
        match Server::spawn(
            layout,
            &release,
            probation,
            &self.daemon.config.server_config,
            &self.log,
        ) {
            Ok(server) => {
                tracing::info!(pid = server.pid, release = %release, probation, "started the server");
                self.running(server);
            }
            Err(e) => self.failed_start(format!("could not start release {release}: {e}")),
        }
    }

    fn failed_start(&mut self, reason: String) {
        tracing::error!("{reason}");
        self.after_exit(reason, Duration::ZERO);
    }

    fn exited(&mut self, reason: String) {
        let Some(server) = self.server.take() else {
            return;
        };
        let up = server.since.elapsed();
        tracing::warn!(
            pid = server.pid,
            up_ms = up.as_millis() as u64,
            "the server {reason}"
        );
        if let Err(e) = process::forget(&self.daemon.config.layout) {
            tracing::warn!(error = %e, "removing the server's pid file");
        }
        self.after_exit(reason, up);
    }

    fn after_exit(&mut self, reason: String, up: Duration) {
        let mut s = self.daemon.snapshot();
        s.server = None;
        s.healthy_since = None;
        s.exits += 1;
        s.last_exit = Some(reason);
        if !s.want_running {
            return;
        }
        if up >= GOOD_RUN {
            s.quick_exits = 0;
        }
        s.quick_exits += 1;
        let delay = backoff(s.quick_exits);
        s.restart_at = Some(Instant::now() + delay);
        if s.quick_exits == CRASHLOOP_EXITS {
            tracing::error!(
                exits = s.quick_exits,
                "the server is crash-looping: it keeps exiting soon after it starts; still restarting, with growing delays (see logs/etl-server.log)"
            );
        }
        tracing::info!(
            delay_ms = delay.as_millis() as u64,
            "restarting the server after a delay"
        );
    }

    /// Stops the server: SIGTERM, SIGKILL after the grace; says how it ended.
    async fn stop(&mut self) -> Option<String> {
        {
            let mut s = self.daemon.snapshot();
            s.want_running = false;
            s.restart_at = None;
        }
        let server = self.server.take()?;
        let grace = self.daemon.config.supervise.stop_grace();
        tracing::info!(
            pid = server.pid,
            grace_ms = grace.as_millis() as u64,
            "stopping the server (SIGTERM)"
        );
        server.signal(Signal::TERM);
        let ended = match tokio::time::timeout(grace, server.exited()).await {
            Ok(reason) => format!("stopped by the agent: {reason}"),
            Err(_) => {
                tracing::warn!(
                    pid = server.pid,
                    "the server did not stop within the grace: SIGKILL"
                );
                server.signal(Signal::KILL);
                format!(
                    "killed by the agent after a {} s grace: {}",
                    grace.as_secs(),
                    server.exited().await
                )
            }
        };
        if let Err(e) = process::forget(&self.daemon.config.layout) {
            tracing::warn!(error = %e, "removing the server's pid file");
        }
        let mut s = self.daemon.snapshot();
        s.server = None;
        s.healthy_since = None;
        s.draining = false;
        s.last_exit = Some(ended.clone());
        Some(ended)
    }
}

/// While a started server has not answered yet, `/health` is asked this often (the upgrade
/// step's gate starts counting at its first good answer).
const STARTING_POLL: Duration = Duration::from_millis(100);

/// Polls the server's `/health` every interval while one runs (every [`STARTING_POLL`] until
/// its first good answer), and records the answers.
pub async fn watch_health(daemon: Arc<Daemon>, shutdown: CancellationToken) {
    let supervise = &daemon.config.supervise;
    let mut wait = Duration::ZERO;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
            () = daemon.server_started.notified() => {}
        }
        let (generation, starting) = {
            let s = daemon.snapshot();
            (
                s.server.as_ref().map(|s| s.generation),
                s.server.is_some() && !s.ever_healthy,
            )
        };
        wait = if starting {
            STARTING_POLL.min(supervise.health_interval())
        } else {
            supervise.health_interval()
        };
        let Some(generation) = generation else {
            continue;
        };
        let started = Instant::now();
        let answer = http::request(
            daemon.config.server_listen,
            "GET",
            "/health",
            None,
            supervise.health_check_timeout(),
        )
        .await;
        let latency = started.elapsed();
        let failure = match answer {
            Ok(r) if r.status == 200 => None,
            Ok(r) => Some(format!(
                "/health answered {}{}",
                r.status,
                r.json()
                    .and_then(|v| v["status"].as_str().map(|s| format!(" ({s})")))
                    .unwrap_or_default()
            )),
            Err(e) => Some(format!("/health: {e}")),
        };
        let mut s = daemon.snapshot();
        if s.server.as_ref().map(|s| s.generation) != Some(generation) {
            continue;
        }
        s.health_checks += 1;
        s.health_latency = Some(latency);
        s.health_latency_total += latency;
        match failure {
            None => {
                if s.healthy_since.is_none() {
                    tracing::info!(
                        latency_ms = latency.as_millis() as u64,
                        "the server is healthy"
                    );
                    s.healthy_since = Some(Instant::now());
                }
                s.ever_healthy = true;
                s.health_error = None;
            }
            Some(error) => {
                s.health_failures += 1;
                if s.healthy_since.take().is_some() {
                    tracing::warn!("the server is not healthy any more: {error}");
                }
                s.health_error = Some(error);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_half_a_second_to_thirty_with_jitter() {
        for (exits, base) in [
            (1, 0.5),
            (2, 1.0),
            (3, 2.0),
            (6, 16.0),
            (7, 30.0),
            (40, 30.0),
        ] {
            let d = backoff(exits).as_secs_f64();
            assert!(
                d >= base * 0.8 - 1e-9 && d <= base * 1.2 + 1e-9,
                "{exits} exits: {d} s, not within 20 % of {base} s"
            );
        }
    }

    #[test]
    fn the_state_follows_the_facts() {
        let timeout = Duration::from_secs(60);
        let mut s = Snapshot::default();
        assert_eq!(s.state(timeout), ServerState::Stopped);
        s.want_running = true;
        s.server = Some(Running {
            pid: 1,
            release: "1.0.0".into(),
            since: Instant::now(),
            generation: 1,
        });
        assert_eq!(s.state(timeout), ServerState::Starting);
        s.healthy_since = Some(Instant::now());
        assert_eq!(s.state(timeout), ServerState::Healthy);
        s.draining = true;
        assert_eq!(s.state(timeout), ServerState::Draining);
        s.draining = false;
        s.healthy_since = None;
        s.ever_healthy = true;
        assert_eq!(s.state(timeout), ServerState::Unhealthy);
        s.server = None;
        s.restart_at = Some(Instant::now());
        assert_eq!(s.state(timeout), ServerState::Unhealthy);
        s.quick_exits = CRASHLOOP_EXITS;
        assert_eq!(s.state(timeout), ServerState::Crashlooping);
    }
}
