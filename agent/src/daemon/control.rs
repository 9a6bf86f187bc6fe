//! The daemon's control socket, `state/agent.sock` (mode 0600, in the agent's own 0700
//! `state/`): one request line in (the words of a `fleet_proto::Request`), one answer line out
//! (the same JSON line the one-shot agent prints). `status`, `activate` and `rollback` arrive
//! here from `fleet-agent serve` (the deploy key's forced command) when a daemon runs, so the
//! upgrade step and the daemon's view of the server answer them; `stage` never does (it is
//! written to disk by the one-shot agent under the node's lock).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fleet_proto::{Answer, Code, Refusal, Reply, Request};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

use super::{Daemon, rollout, upgrade};
use crate::{AgentError, Layout, answer_line, io};

/// A request line longer than this is refused.
const LINE_CAP: u64 = 1024;
/// A client that sends no line within this long is dropped.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

pub fn socket_path(layout: &Layout) -> PathBuf {
    layout.state().join("agent.sock")
}

/// Binds the socket (a file left by an earlier daemon is stale: this one holds the daemon
/// lock) and makes it the owner's alone.
pub fn bind(layout: &Layout) -> Result<std::os::unix::net::UnixListener, AgentError> {
    let path = socket_path(layout);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&path)(e)),
        _ => {}
    }
    let listener = std::os::unix::net::UnixListener::bind(&path).map_err(io(&path))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(io(&path))?;
    listener.set_nonblocking(true).map_err(io(&path))?;
    Ok(listener)
}

/// Answers requests on the socket until shutdown; each connection on a task of its own.
pub async fn serve(
    daemon: Arc<Daemon>,
    listener: std::os::unix::net::UnixListener,
    shutdown: CancellationToken,
) {
    let listener = match UnixListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "the control socket");
            return;
        }
    };
    super::accept_each(
        "the control socket",
        &shutdown,
        || listener.accept(),
        |stream| {
            let daemon = daemon.clone();
            async move {
                let (read, mut write) = stream.into_split();
                let mut line = String::new();
                let mut reader =
                    tokio::io::BufReader::new(tokio::io::AsyncReadExt::take(read, LINE_CAP));
                let answer = match tokio::time::timeout(READ_TIMEOUT, reader.read_line(&mut line))
                    .await
                {
                    Ok(Ok(_)) => handle(&daemon, line.trim()).await,
                    Ok(Err(e)) => Answer::Refused(Refusal::new(
                        Code::Input,
                        format!("reading the request: {e}"),
                    )),
                    Err(_) => {
                        Answer::Refused(Refusal::new(Code::Input, "no request line within 10 s"))
                    }
                };
                let mut out = answer_line(&answer);
                out.push('\n');
                let _ = write.write_all(out.as_bytes()).await;
                // A committed release brought another agent: replace this one once the answer is
                // out, leaving the server running for it.
                let replacing = daemon
                    .replace_with
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_some();
                if replacing {
                    daemon
                        .keep_server
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                    daemon.shutdown.cancel();
                }
            }
        },
    )
    .await;
}

async fn handle(daemon: &Daemon, line: &str) -> Answer<Reply> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let request = match Request::parse(&words) {
        Ok(r) => r,
        Err(e) => return Answer::Refused(AgentError::from(e).into()),
    };
    // Reads are asked often (watchers poll them): only what changes the node is logged.
    if matches!(request, Request::Status | Request::Rollout { .. }) {
        tracing::debug!(request = %request, "control request");
    } else {
        tracing::info!(request = %request, "control request");
    }
    match request {
        Request::Status => daemon
            .status()
            .await
            .map(Reply::from)
            .map_err(Refusal::from)
            .into(),
        Request::Activate {
            version,
            allow_downgrade,
        } => upgrade::step(
            daemon,
            upgrade::Goal::Activate {
                version,
                allow_downgrade,
            },
        )
        .await
        .map(Reply::from)
        .into(),
        Request::Rollback => upgrade::step(daemon, upgrade::Goal::Rollback)
            .await
            .map(Reply::from)
            .into(),
        Request::Rollout { id } => rollout::report(daemon, &id)
            .await
            .map(Reply::from)
            .map_err(Refusal::from)
            .into(),
        Request::Stage { .. } | Request::Order | Request::Control => Answer::Refused(Refusal::new(
            Code::BadRequest,
            format!("`{request}` is taken by the one-shot agent, not the daemon"),
        )),
    }
}

/// The daemon's answer to a forwarded request: the line to print, and whether it is `ok`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forwarded {
    pub line: String,
    pub ok: bool,
}

/// Sends `request` to the node's daemon and waits for its answer; `None` when no daemon runs
/// (no socket, or nothing listening on it). A daemon that goes away before it answers is
/// `daemon_lost`: an upgrade step it ran is finished or undone when it starts again.
pub fn ask_daemon(layout: &Layout, request: &Request) -> Option<Forwarded> {
    let path = socket_path(layout);
    let mut stream = std::os::unix::net::UnixStream::connect(&path).ok()?;
    let lost = |why: String| {
        let answer: Answer<Reply> = Answer::Refused(Refusal::new(
            Code::DaemonLost,
            format!(
                "the agent daemon went away during `{request}` ({why}); it finishes or undoes an upgrade step when it starts again: ask `status`"
            ),
        ));
        Forwarded {
            line: answer_line(&answer),
            ok: false,
        }
    };
    if let Err(e) = stream.write_all(format!("{request}\n").as_bytes()) {
        return Some(lost(e.to_string()));
    }
    let mut line = String::new();
    Some(match BufReader::new(stream).read_line(&mut line) {
        Ok(0) => lost("no answer".into()),
        Ok(_) => match serde_json::from_str::<serde_json::Value>(&line) {
            Ok(value) => Forwarded {
                ok: value["ok"] == true,
                line: line.trim_end().to_owned(),
            },
            Err(e) => lost(format!("unreadable answer: {e}")),
        },
        Err(e) => lost(e.to_string()),
    })
}
