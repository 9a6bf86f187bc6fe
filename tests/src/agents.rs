//! The nodes' agent daemons, started as an init system would: `<root>/bin/fleet-agent run
//! --root <root>` for each node (the binary `fleet provision` installed), its output appended to
//! the node's `agent.log`, ready once its control socket accepts a connection; stopped with
//! SIGTERM (the agent stops its server first) and waited for. Also the agents of a kept fleet
//! (`fleet-testfleet agents start|stop`), listed in its `agent-pids` file. Not the agent itself
//! (see the `fleet-agent` package) nor the sshd of the nodes (see `node` and `kept`).

use std::fs::{self, File};
use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};

use crate::error::HarnessError;
use crate::kept;
use crate::node;

/// The file, in the fleet's folder, listing its running agents, one PID a line.
pub const AGENT_PIDS_FILE: &str = "agent-pids";
/// How long an agent may take until its control socket accepts connections.
pub const AGENT_READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long an agent may take to exit after SIGTERM: it stops its server first (SIGTERM, then
/// SIGKILL after the node's `stop_grace_secs`, 30 s by default).
pub const AGENT_STOP_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(50);

/// Where node `root`'s agent binary is, once provisioned.
pub(crate) fn binary(root: &Path) -> PathBuf {
    root.join("bin").join("fleet-agent")
}

/// The daemon's control socket under `root`: bound once the daemon runs.
fn socket(root: &Path) -> PathBuf {
    root.join("state").join("agent.sock")
}

/// Starts node `name`'s agent from its root, output appended to `log`.
pub(crate) fn spawn(name: &str, root: &Path, log: &Path) -> Result<Child, HarnessError> {
    let bin = binary(root);
    if !bin.is_file() {
        return Err(HarnessError::AgentMissing {
            node: name.to_string(),
            path: bin,
        });
    }
    let out = File::options()
        .create(true)
        .append(true)
        .open(log)
        .map_err(HarnessError::io(format!("open {}", log.display())))?;
    let err = out
        .try_clone()
        .map_err(HarnessError::io(format!("duplicate {}", log.display())))?;
    Command::new(&bin)
        .arg("run")
        .arg("--root")
        .arg(root)
        // Plain text in the log file, as under an init system's journal.
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        // Never the caller's stdout: `$(fleet-testfleet agents start ...)` would wait for it.
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .map_err(HarnessError::io(format!("{name}: start {}", bin.display())))
}

/// Waits until node `name`'s agent accepts connections on its control socket; fails early, with
/// the log's last lines, when it exits.
pub(crate) fn wait_ready(
    name: &str,
    root: &Path,
    mut exited: impl FnMut() -> Result<Option<String>, HarnessError>,
    log: &Path,
    deadline: Instant,
) -> Result<(), HarnessError> {
    let sock = socket(root);
    loop {
        if let Some(status) = exited()? {
            return Err(HarnessError::AgentExited {
                node: name.to_string(),
                status,
                log: log.to_path_buf(),
                tail: node::log_tail(log),
            });
        }
        if UnixStream::connect(&sock).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(HarnessError::AgentNotReady {
                node: name.to_string(),
                timeout: AGENT_READY_TIMEOUT,
                log: log.to_path_buf(),
                tail: node::log_tail(log),
            });
        }
        thread::sleep(POLL);
    }
}

/// SIGTERM to `pid`; `false` when it was already gone.
fn terminate(pid: u32, signal: Signal) -> Result<bool, HarnessError> {
    let Some(target) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return Ok(false);
    };
    match kill_process(target, signal) {
        Ok(()) => Ok(true),
        Err(e) if e == rustix::io::Errno::SRCH => Ok(false),
        Err(e) => Err(HarnessError::io(format!("signal {pid}"))(io::Error::from(
            e,
        ))),
    }
}

/// Stops a child this process started: SIGTERM, then waits for it (and reaps it) at most
/// `timeout`; past that, SIGKILL, and `Ok(false)` says it had to be killed. `what` names it in
/// errors.
pub(crate) fn terminate_child(
    child: &mut Child,
    timeout: Duration,
    what: &str,
) -> Result<bool, HarnessError> {
    let pid = child.id();
    if child
        .try_wait()
        .map_err(HarnessError::io(format!("check {what} {pid}")))?
        .is_some()
    {
        return Ok(true);
    }
    terminate(pid, Signal::TERM)?;
    let deadline = Instant::now() + timeout;
    loop {
        if child
            .try_wait()
            .map_err(HarnessError::io(format!("wait for {what} {pid}")))?
            .is_some()
        {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(false);
        }
        thread::sleep(POLL);
    }
}

/// Stops an agent this process started: SIGTERM, then waits for it (and reaps it) at most
/// [`AGENT_STOP_TIMEOUT`]; past that, SIGKILL and an error (its server may be left running).
pub(crate) fn stop(child: &mut Child) -> Result<(), HarnessError> {
    let pid = child.id();
    if terminate_child(child, AGENT_STOP_TIMEOUT, "agent")? {
        Ok(())
    } else {
        Err(HarnessError::AgentStuck {
            pid,
            timeout: AGENT_STOP_TIMEOUT,
        })
    }
}

/// The nodes of the fleet kept in `dir`: `(node-K, DIR/node-K/root)`, node-1 first.
fn kept_nodes(dir: &Path) -> Result<Vec<(String, PathBuf)>, HarnessError> {
    let entries = fs::read_dir(dir).map_err(HarnessError::io(format!("read {}", dir.display())))?;
    let mut nodes: Vec<(u32, String, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let k = name.strip_prefix("node-")?.parse::<u32>().ok()?;
            let root = e.path().join("root");
            root.is_dir().then_some((k, name, root))
        })
        .collect();
    nodes.sort();
    if nodes.is_empty() {
        return Err(HarnessError::UnsuitablePath {
            path: dir.to_path_buf(),
            reason: "holds no node-K/root: not a test fleet's folder".into(),
        });
    }
    Ok(nodes
        .into_iter()
        .map(|(_, name, root)| (name, root))
        .collect())
}

/// Starts the agent of every node of the fleet kept in `dir` and leaves them running, listed in
/// `dir/agent-pids`; returns `(node, pid)` once every one accepts connections. Refuses while
/// agents listed there still run; on error, stops the ones it started.
pub fn start_kept_agents(dir: &Path) -> Result<Vec<(String, u32)>, HarnessError> {
    let dir = dir
        .canonicalize()
        .map_err(HarnessError::io(format!("resolve {}", dir.display())))?;
    let pids_file = dir.join(AGENT_PIDS_FILE);
    if pids_file.exists() {
        let running: Vec<u32> = kept::read_pids(&pids_file)?
            .into_iter()
            .filter(|&p| kept::runs_in(p, &kept_needle(&dir)))
            .collect();
        if !running.is_empty() {
            return Err(HarnessError::PidFile {
                path: pids_file,
                reason: format!(
                    "agents {running:?} still run: stop them first with `fleet-testfleet agents stop --dir {}`",
                    dir.display()
                ),
            });
        }
    }
    let nodes = kept_nodes(&dir)?;
    let mut started: Vec<(String, Child)> = Vec::with_capacity(nodes.len());
    let result = (|| {
        for (name, root) in &nodes {
            let log = root.with_file_name("agent.log");
            started.push((name.clone(), spawn(name, root, &log)?));
        }
        let deadline = Instant::now() + AGENT_READY_TIMEOUT;
        for ((name, root), (_, child)) in nodes.iter().zip(started.iter_mut()) {
            let log = root.with_file_name("agent.log");
            wait_ready(name, root, || exit_text(child), &log, deadline)?;
        }
        let pids: Vec<u32> = started.iter().map(|(_, c)| c.id()).collect();
        kept::write_pid_file(&pids_file, &pids)
    })();
    match result {
        Ok(()) => Ok(started
            .into_iter()
            .map(|(name, child)| (name, child.id()))
            .collect()),
        Err(e) => {
            for (_, child) in &mut started {
                let _ = stop(child);
            }
            Err(e)
        }
    }
}

/// How a child exited, when it did.
pub(crate) fn exit_text(child: &mut Child) -> Result<Option<String>, HarnessError> {
    child
        .try_wait()
        .map(|s| s.map(|s| s.to_string()))
        .map_err(HarnessError::io(format!("check agent {}", child.id())))
}

/// What every agent of the fleet kept in `dir` has in its command line.
fn kept_needle(dir: &Path) -> String {
    format!("{}/node-", dir.display())
}

/// Stops the agents listed in `dir/agent-pids` whose command line still names the fleet's
/// folder (a PID reused by another program is left alone): SIGTERM, then waits for each at most
/// [`AGENT_STOP_TIMEOUT`] (SIGKILL and an error past it), then removes the file. Returns the
/// PIDs it stopped; a fleet without the file has no agents to stop.
pub fn stop_kept_agents(dir: &Path) -> Result<Vec<u32>, HarnessError> {
    let dir = dir
        .canonicalize()
        .map_err(HarnessError::io(format!("resolve {}", dir.display())))?;
    let path = dir.join(AGENT_PIDS_FILE);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let needle = kept_needle(&dir);
    let mut signalled = Vec::new();
    for pid in kept::read_pids(&path)? {
        if kept::runs_in(pid, &needle) && terminate(pid, Signal::TERM)? {
            signalled.push(pid);
        }
    }
    let deadline = Instant::now() + AGENT_STOP_TIMEOUT;
    let mut stuck = None;
    for &pid in &signalled {
        // Not our child: gone is "its command line is gone" (a zombie init has not reaped yet
        // holds nothing).
        while kept::runs_in(pid, &needle) {
            if Instant::now() >= deadline {
                let _ = terminate(pid, Signal::KILL);
                stuck = Some(pid);
                break;
            }
            thread::sleep(POLL);
        }
    }
    fs::remove_file(&path).map_err(HarnessError::io(format!("remove {}", path.display())))?;
    match stuck {
        Some(pid) => Err(HarnessError::AgentStuck {
            pid,
            timeout: AGENT_STOP_TIMEOUT,
        }),
        None => Ok(signalled),
    }
}

/// The last `lines` lines of a log (at most its last 64 KiB), for a test's failure message.
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    const TAIL_BYTES: u64 = 64 * 1024;
    match node::last_bytes(path, TAIL_BYTES) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("({}: {e})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unprovisioned_node_has_no_agent_to_start() {
        let dir = tempfile::tempdir().expect("temp dir");
        let err = spawn("node-1", dir.path(), &dir.path().join("agent.log"))
            .expect_err("no bin/fleet-agent");
        assert!(
            err.to_string().contains("provision the node first"),
            "{err}"
        );
    }

    #[test]
    fn kept_agents_need_a_fleet_folder_and_stop_only_their_own() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert!(start_kept_agents(dir.path()).is_err(), "no node-K/root");
        assert_eq!(
            stop_kept_agents(dir.path()).expect("no file"),
            Vec::<u32>::new()
        );
        // Our own PID stands for a recycled one: alive, but no agent of this fleet.
        kept::write_pid_file(&dir.path().join(AGENT_PIDS_FILE), &[std::process::id()])
            .expect("write");
        assert_eq!(
            stop_kept_agents(dir.path()).expect("stop"),
            Vec::<u32>::new()
        );
        assert!(!dir.path().join(AGENT_PIDS_FILE).exists());
    }

    #[test]
    fn tails_keep_the_last_lines() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("a.log");
        fs::write(&log, "1\n2\n3\n").expect("write");
        assert_eq!(tail(&log, 2), "2\n3");
        assert!(tail(&dir.path().join("none"), 2).contains("none"));
    }
}
