//! Fleets that outlive their process (`TestFleet::keep`, `fleet-testfleet start`): the `pids`
//! file and `stop_kept`, which kills exactly those sshd and nothing that merely reuses a PID;
//! not starting fleets (see `fleet`) nor their agents (see `agents`).

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};

use crate::error::HarnessError;
use crate::node;

/// The file, in the fleet's folder, listing its running sshd, one PID a line.
pub const PIDS_FILE: &str = "pids";
const PIDS_CAP: u64 = 64 * 1024;
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) fn write_pids(dir: &Path, pids: &[u32]) -> Result<(), HarnessError> {
    write_pid_file(&dir.join(PIDS_FILE), pids)
}

/// Writes `pids`, one a line, to `path` (this file and the agents' one).
pub(crate) fn write_pid_file(path: &Path, pids: &[u32]) -> Result<(), HarnessError> {
    let text: String = pids.iter().map(|p| format!("{p}\n")).collect();
    // Written whole then renamed, so a stop never reads half a list.
    let mut tmp = path.as_os_str().to_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    fs::write(&tmp, text)
        .and_then(|()| fs::rename(&tmp, path))
        .map_err(HarnessError::io(format!("write {}", path.display())))
}

/// Stops a kept fleet: SIGKILL to every PID in `dir/pids` whose command line still names the
/// fleet's folder (a PID reused by another program is left alone), waits until they are gone,
/// and their addresses refuse connections, then removes the `pids` file. Returns the PIDs it killed. The address block is released as
/// the last sshd exits.
pub fn stop_kept(dir: &Path) -> Result<Vec<u32>, HarnessError> {
    let dir = dir
        .canonicalize()
        .map_err(HarnessError::io(format!("resolve {}", dir.display())))?;
    let path = dir.join(PIDS_FILE);
    let pids = read_pids(&path)?;
    // Every sshd of the fleet runs with `-f DIR/node-K/sshd_config`.
    let needle = format!("{}/node-", dir.display());

    let mut killed = Vec::new();
    for &pid in &pids {
        if !runs_in(pid, &needle) {
            continue;
        }
        let raw = i32::try_from(pid).ok().and_then(Pid::from_raw);
        let Some(target) = raw else {
            continue;
        };
        match kill_process(target, Signal::KILL) {
            Ok(()) => killed.push(pid),
            // Exited between the check and the signal.
            Err(e) if e == rustix::io::Errno::SRCH => {}
            Err(e) => return Err(HarnessError::io(format!("kill {pid}"))(io::Error::from(e))),
        }
    }
    for &pid in &killed {
        let deadline = Instant::now() + EXIT_TIMEOUT;
        // A killed sshd whose parent is gone may stay a zombie (cmdline empty) if init does
        // not reap: that counts as gone, it holds no socket and no lock.
        while runs_in(pid, &needle) {
            if Instant::now() >= deadline {
                return Err(HarnessError::StillRunning {
                    pid,
                    timeout: EXIT_TIMEOUT,
                });
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
    if !killed.is_empty() {
        for config in node_configs(&dir) {
            if let Some(addr) = node::listen_addr(&config) {
                node::wait_refused(&config.display().to_string(), addr)?;
            }
        }
    }
    fs::remove_file(&path).map_err(HarnessError::io(format!("remove {}", path.display())))?;
    Ok(killed)
}

pub(crate) fn read_pids(path: &Path) -> Result<Vec<u32>, HarnessError> {
    let bad = |reason: String| HarnessError::PidFile {
        path: path.to_path_buf(),
        reason,
    };
    let mut text = String::new();
    File::open(path)
        .and_then(|f| f.take(PIDS_CAP).read_to_string(&mut text))
        .map_err(|e| bad(format!("{e} (not a kept test fleet, or already stopped)")))?;
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.parse::<u32>()
                .ok()
                .filter(|&p| p > 1)
                .ok_or_else(|| bad(format!("{l:?} is not a PID")))
        })
        .collect()
}

/// `DIR/node-*/sshd_config`, the configs of the fleet's nodes.
fn node_configs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("node-"))
        .map(|e| e.path().join("sshd_config"))
        .filter(|p| p.is_file())
        .collect()
}

/// `true` when `pid` is alive and its command line contains `needle`.
pub(crate) fn runs_in(pid: u32, needle: &str) -> bool {
    let path = PathBuf::from(format!("/proc/{pid}/cmdline"));
    match fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes)
            .replace('\0', " ")
            .contains(needle),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_files_round_trip_and_garbage_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        write_pids(dir.path(), &[12, 345]).expect("write");
        assert_eq!(
            read_pids(&dir.path().join(PIDS_FILE)).expect("read"),
            vec![12, 345]
        );
        fs::write(dir.path().join(PIDS_FILE), "12\nnope\n").expect("write");
        let err = read_pids(&dir.path().join(PIDS_FILE)).expect_err("garbage");
        assert!(err.to_string().contains("\"nope\" is not a PID"), "{err}");
        fs::write(dir.path().join(PIDS_FILE), "1\n").expect("write");
        let err = read_pids(&dir.path().join(PIDS_FILE)).expect_err("pid 1");
        assert!(err.to_string().contains("\"1\" is not a PID"), "{err}");
    }

    #[test]
    fn a_pid_whose_command_line_does_not_name_the_fleet_is_left_alone() {
        let dir = tempfile::tempdir().expect("temp dir");
        // Our own PID stands for a recycled one: alive, but not an sshd of this fleet.
        write_pids(dir.path(), &[std::process::id()]).expect("write");
        let killed = stop_kept(dir.path()).expect("stop");
        assert!(killed.is_empty());
        assert!(!dir.path().join(PIDS_FILE).exists());
        let err = stop_kept(dir.path()).expect_err("a second stop has no pids file");
        assert!(
            matches!(&err, HarnessError::PidFile { reason, .. } if reason.contains("already stopped")),
            "{err}"
        );
    }
}
