//! The server process: started from a release's `bin/etl-server`, recorded in
//! `state/server.pid` (pid, start time, release), re-adopted from that file by a later agent,
//! watched for its exit through a pidfd and stopped with signals through it. One mechanism for
//! a server this daemon started and one it adopted: a pidfd says when it ended, and the exit
//! status is read when the process is still this process's child (started by it, or by the
//! same pid before an `exec`). A pid is taken for the server only when the start time the
//! kernel reports for it equals the recorded one, so a recycled pid is never signalled.

use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use rustix::process::{Pid, PidfdFlags, Signal, WaitId, WaitIdOptions};
use tokio::io::unix::AsyncFd;

use crate::{AgentError, Layout, io};

/// A server process being supervised.
pub struct Server {
    pub pid: u32,
    /// The release it was started from (`releases/<release>/bin/etl-server`).
    pub release: String,
    /// When this agent started or adopted it.
    pub since: Instant,
    pidfd: AsyncFd<OwnedFd>,
}

impl Server {
    /// Starts `releases/<release>/bin/etl-server --config <server_config>` in a process group
    /// of its own (a signal to the agent's group does not reach it, and it outlives an agent
    /// that is killed), its output appended to `log`, with `FLEET_RELEASE` naming the release
    /// and, with `probation`, `FLEET_PROBATION=1` (it takes only runs pinned to it and does not
    /// lead until `/admin/resume`).
    pub fn spawn(
        layout: &Layout,
        release: &str,
        probation: bool,
        server_config: &Path,
        log: &fs::File,
    ) -> Result<Server, AgentError> {
        let binary = layout.release(release).join("bin").join("etl-server");
        let log_path = log_path(layout);
        let out = log.try_clone().map_err(io(&log_path))?;
        let err = log.try_clone().map_err(io(&log_path))?;
        let mut command = Command::new(&binary);
        if probation {
            command.env("FLEET_PROBATION", "1");
        } else {
            command.env_remove("FLEET_PROBATION");
        }
        let child = command
            .arg("--config")
            .arg(server_config)
            .env("FLEET_RELEASE", release)
            .current_dir(layout.root())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(io(&binary))?;
        // The child is never waited for through `std`: its pidfd says when it ends, and
        // `waitid` on that reaps it (dropping a `Child` neither waits nor kills).
        let pid = child.id();
        let pidfd = open_pidfd(pid).map_err(io(format!("/proc/{pid}")))?;
        // A server that exited at once is a zombie by now, still unreaped: its start time is
        // read all the same, and its pidfd reports the exit.
        let (started, _) = stat_start_time(pid).map_err(io(format!("/proc/{pid}/stat")))?;
        let record = format!("{pid} {started} {release}\n");
        layout.write_atomic(&pid_file(layout), record.as_bytes())?;
        Ok(Server {
            pid,
            release: release.to_owned(),
            since: Instant::now(),
            pidfd,
        })
    }

    /// The server `state/server.pid` records, if that process still runs: same pid and the
    /// same start time. A file naming another process (the pid was recycled) or a process
    /// that ended is removed, and `Ok(None)` says nothing runs.
    pub fn adopt(layout: &Layout) -> Result<Option<Server>, AgentError> {
        let path = pid_file(layout);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path)(e)),
        };
        let words: Vec<&str> = text.split_whitespace().collect();
        let parsed = match words[..] {
            [pid, started, release] => pid
                .parse::<u32>()
                .ok()
                .zip(started.parse::<u64>().ok())
                .map(|(pid, started)| (pid, started, release.to_owned())),
            _ => None,
        };
        let Some((pid, started, release)) = parsed else {
            tracing::warn!(file = %path.display(), "the server's pid file does not read as `pid start-time release`; nothing adopted");
            forget(layout)?;
            return Ok(None);
        };
        // The start time is read again after the pidfd is open: the pidfd then refers to
        // the process checked, whatever happens to the pid afterwards.
        let adopted = open_pidfd(pid)
            .ok()
            .and_then(|pidfd| match start_time(pid) {
                Ok(now) if now == started => Some(pidfd),
                _ => None,
            });
        match adopted {
            Some(pidfd) => Ok(Some(Server {
                pid,
                release,
                since: Instant::now(),
                pidfd,
            })),
            None => {
                // A server that ended while this agent exec'd itself is still its child, a
                // zombie: reap it (a pid that is not our child is not touched by this).
                if let Some(p) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
                    let _ = rustix::process::waitpid(Some(p), rustix::process::WaitOptions::NOHANG);
                }
                if start_time(pid).is_ok() {
                    tracing::warn!(
                        pid,
                        "the server's pid file names a process that is not the server any more (the pid was reused); not adopted, not signalled"
                    );
                }
                forget(layout)?;
                Ok(None)
            }
        }
    }

    /// Waits until the process ends, and says how: its exit status when it is this process's
    /// child (reaped here), otherwise only that it ended.
    pub async fn exited(&self) -> String {
        loop {
            match self.pidfd.readable().await {
                Ok(mut guard) => {
                    guard.clear_ready();
                    // Readable means the process ended; the reap below may still race with
                    // nothing else (no one else waits for it).
                    return reap(self.pidfd.get_ref());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "waiting for the server's pidfd");
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// Sends `signal` to the process (through its pidfd: never to a recycled pid).
    pub fn signal(&self, signal: Signal) {
        if let Err(e) = rustix::process::pidfd_send_signal(self.pidfd.get_ref(), signal) {
            // ESRCH: it has just ended; its exit is seen through the pidfd.
            if e != rustix::io::Errno::SRCH {
                tracing::warn!(pid = self.pid, error = %e, "signalling the server");
            }
        }
    }
}

/// `state/server.pid`: `<pid> <start time in clock ticks after boot> <release>`.
pub fn pid_file(layout: &Layout) -> std::path::PathBuf {
    layout.state().join("server.pid")
}

/// `logs/etl-server.log`, the server's standard output and error.
pub fn log_path(layout: &Layout) -> std::path::PathBuf {
    layout.root().join("logs").join("etl-server.log")
}

/// Removes the pid file (the server it named has ended).
pub fn forget(layout: &Layout) -> Result<(), AgentError> {
    let path = pid_file(layout);
    match fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&path)(e)),
        _ => Ok(()),
    }
}

fn open_pidfd(pid: u32) -> std::io::Result<AsyncFd<OwnedFd>> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| std::io::Error::other("not a process id"))?;
    let fd = rustix::process::pidfd_open(pid, PidfdFlags::NONBLOCK)?;
    // `new` is deprecated for descriptors that may be closed while registered; this one is
    // owned by the `AsyncFd` and closed only when it is dropped.
    #[allow(deprecated)]
    AsyncFd::new(fd)
}

/// Reaps the ended process behind `pidfd` if it is a child of this process, and describes
/// its end.
fn reap(pidfd: &OwnedFd) -> String {
    match rustix::process::waitid(
        WaitId::PidFd(pidfd.as_fd()),
        WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
    ) {
        Ok(Some(status)) => {
            if let Some(code) = status.exit_status().filter(|_| status.exited()) {
                format!("exit status {code}")
            } else if let Some(signal) = status.terminating_signal() {
                format!("killed by signal {signal} ({})", signal_name(signal))
            } else {
                "ended".into()
            }
        }
        Ok(None) => "ended".into(),
        // Not our child (adopted after this agent restarted): the exit status went to its
        // parent.
        Err(_) => "ended (exit status unknown: adopted by this agent)".into(),
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        6 => "SIGABRT",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        15 => "SIGTERM",
        _ => "signal",
    }
}

/// The start time of process `pid` (clock ticks after boot, field 22 of `/proc/<pid>/stat`);
/// an error when it does not run or is a zombie (ended, not yet reaped): what adoption asks.
pub fn start_time(pid: u32) -> std::io::Result<u64> {
    match stat_start_time(pid)? {
        (_, true) => Err(std::io::Error::other("a zombie")),
        (started, false) => Ok(started),
    }
}

/// The start time of process `pid` and whether it is a zombie.
fn stat_start_time(pid: u32) -> std::io::Result<(u64, bool)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces and parentheses: fields are counted after
    // its last `)`.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| std::io::Error::other("unreadable /proc stat"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state); field 22 is index 19.
    let zombie = fields.first() == Some(&"Z");
    fields
        .get(19)
        .and_then(|f| f.parse().ok())
        .map(|started| (started, zombie))
        .ok_or_else(|| std::io::Error::other("unreadable /proc stat"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_time_of_a_live_process_is_stable_and_a_missing_one_errs() {
        let me = std::process::id();
        let a = start_time(me).expect("this process");
        assert_eq!(start_time(me).expect("again"), a);
        assert!(start_time(u32::MAX / 2).is_err());
    }
}
