//! The server's output: `logs/etl-server.log`, opened for appending and handed to the server
//! as its stdout and stderr, so a server outlives its agent without losing its output (no pipe
//! to break). Size-capped: past `supervise.log_max_bytes` the file is copied to
//! `etl-server.log.1` (older ones shifted up to `log_keep`) and truncated; the server, writing
//! in append mode, goes on at the new end. Lines written between the copy and the truncation
//! are lost, as with logrotate's copytruncate.

use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Daemon;
use super::process::log_path;
use crate::{AgentError, Layout, io};

/// How often the log's size is looked at.
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// Opens (creating) the server's log for appending.
pub fn open(layout: &Layout) -> Result<fs::File, AgentError> {
    let path = log_path(layout);
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io(dir))?;
    }
    fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(&path)
        .map_err(io(&path))
}

/// Rotates the log whenever it is past its cap, until shutdown.
pub async fn rotate(daemon: Arc<Daemon>, log: fs::File, shutdown: CancellationToken) {
    let supervise = daemon.config.supervise.clone();
    let path = log_path(&daemon.config.layout);
    let mut tick = tokio::time::interval(CHECK_EVERY);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let size = log.metadata().map(|m| m.len()).unwrap_or(0);
        if size <= supervise.log_max_bytes {
            continue;
        }
        let (path, log_copy) = (path.clone(), log.try_clone());
        let keep = supervise.log_keep;
        let rotated = super::blocking(move || {
            let log = log_copy.map_err(io(&path))?;
            rotate_once(&path, &log, keep)
        })
        .await;
        if let Err(e) = rotated {
            tracing::warn!(error = %e, "rotating the server's log");
        }
    }
}

fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Shifts `.1`..`.keep-1` up by one (dropping the last), copies the log to `.1`, truncates it.
pub fn rotate_once(path: &Path, log: &fs::File, keep: u32) -> Result<(), AgentError> {
    if keep == 0 {
        return log.set_len(0).map_err(io(path));
    }
    for n in (1..keep).rev() {
        let from = numbered(path, n);
        if from.exists() {
            let to = numbered(path, n + 1);
            fs::rename(&from, &to).map_err(io(&to))?;
        }
    }
    let first = numbered(path, 1);
    fs::copy(path, &first).map_err(io(&first))?;
    log.set_len(0).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn rotation_keeps_the_newest_files_and_the_writer_goes_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("etl-server.log");
        let mut writer = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .expect("log");
        for round in 1..=4 {
            writeln!(writer, "round {round}").expect("write");
            rotate_once(&path, &writer, 2).expect("rotates");
        }
        writeln!(writer, "after").expect("write");
        let read = |p: PathBuf| fs::read_to_string(p).expect("read");
        assert_eq!(read(path.clone()), "after\n", "appended at the new start");
        assert_eq!(read(numbered(&path, 1)), "round 4\n");
        assert_eq!(read(numbered(&path, 2)), "round 3\n");
        assert!(!numbered(&path, 3).exists(), "only `keep` old files");
    }
}
