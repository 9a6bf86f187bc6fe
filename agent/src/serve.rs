//! One request in, one answer out: what `fleet-agent` does between reading its command line
//! and printing its one JSON line. Not the operations themselves (`ops`), and not the process:
//! `main.rs` reads argv, `SSH_ORIGINAL_COMMAND` and the clock, and sets the exit code.

use std::io::Read;
use std::time::SystemTime;

use fleet_proto::{Answer, Reply, Request};

use crate::{AgentError, Layout, ops, orders};

/// What the command line asks: `--root DIR serve` takes the request from the deploy key's
/// original command (`ssh_original_command`), `--root DIR WORDS...` from the words.
pub fn invocation(
    args: &[String],
    ssh_original_command: &str,
) -> Result<(Layout, Request), AgentError> {
    let usage = || {
        AgentError::BadRequest(format!(
            "usage: fleet-agent --root DIR ({} | serve)",
            Request::USAGE
        ))
    };
    let [flag, root, rest @ ..] = args else {
        return Err(usage());
    };
    if flag != "--root" {
        return Err(usage());
    }
    let words: Vec<&str> = match rest {
        [serve] if serve == "serve" => ssh_original_command.split_whitespace().collect(),
        _ => rest.iter().map(String::as_str).collect(),
    };
    Ok((Layout::new(root), Request::parse(&words)?))
}

/// Runs `request` on the node and answers it. `open_input` is called only by a request that
/// reads a bundle, so the others never touch stdin.
pub fn answer<R: Read>(
    layout: &Layout,
    request: Request,
    open_input: impl FnOnce() -> std::io::Result<R>,
    now: SystemTime,
) -> Answer<Reply> {
    reply(layout, request, open_input, now).into()
}

fn reply<R: Read>(
    layout: &Layout,
    request: Request,
    open_input: impl FnOnce() -> std::io::Result<R>,
    now: SystemTime,
) -> Result<Reply, AgentError> {
    Ok(match request {
        Request::Stage { version } => {
            let mut input = open_input().map_err(AgentError::Stdin)?;
            ops::stage(layout, &version, &mut input, now)?.into()
        }
        Request::Activate {
            version,
            allow_downgrade,
        } => ops::activate(layout, &version, allow_downgrade)?.into(),
        Request::Rollback => ops::rollback(layout)?.into(),
        Request::Status => ops::status(layout)?.into(),
        Request::Order => {
            let (node, cluster) = identity(layout)?;
            let bytes = read_document(open_input)?;
            let accepted = orders::accept_order(layout, &node, &cluster, &bytes, now)?;
            orders::disk_report(layout, &node, &accepted.order.rollout)?.into()
        }
        Request::Control => {
            let (node, cluster) = identity(layout)?;
            let bytes = read_document(open_input)?;
            let accepted = orders::accept_control(layout, &cluster, &bytes, now)?;
            orders::disk_report(layout, &node, &accepted.control.rollout)?.into()
        }
        Request::Rollout { id } => {
            let (node, _) = identity(layout)?;
            orders::disk_report(layout, &node, &id)?.into()
        }
    })
}

/// The node's name and its cluster (`customer/cluster`), from `config/agent.toml`.
pub fn identity(layout: &Layout) -> Result<(String, String), AgentError> {
    let config = crate::daemon::DaemonConfig::load(layout.root())
        .map_err(|e| AgentError::NotConfigured(e.to_string()))?;
    match (config.customer, config.cluster) {
        (Some(customer), Some(cluster)) => Ok((config.node, format!("{customer}/{cluster}"))),
        _ => Err(AgentError::NotConfigured(format!(
            "{} names no customer and cluster",
            crate::daemon::DaemonConfig::path(layout.root()).display()
        ))),
    }
}

/// A signed order or control from stdin, read up to one byte past the cap (which the check
/// of the document refuses with its size).
fn read_document<R: Read>(
    open_input: impl FnOnce() -> std::io::Result<R>,
) -> Result<Vec<u8>, AgentError> {
    let input = open_input().map_err(AgentError::Stdin)?;
    let mut bytes = Vec::new();
    input
        .take(fleet_release::order::ORDER_CAP + 1)
        .read_to_end(&mut bytes)
        .map_err(AgentError::Stdin)?;
    Ok(bytes)
}

/// The line to print for `request`: the daemon's answer when one runs on the node and the
/// request is one it takes (`status`, `activate`, `rollback`, `rollout ID`), otherwise
/// [`answer`]'s. An order or control is taken here, on disk under the node's lock (the daemon's
/// socket carries no documents); then a running daemon is asked for its report on the
/// rollout, which also has it take part at once.
pub fn respond<R: Read>(
    layout: &Layout,
    request: Request,
    open_input: impl FnOnce() -> std::io::Result<R>,
    now: SystemTime,
) -> crate::daemon::Forwarded {
    let forwards = !matches!(
        request,
        Request::Stage { .. } | Request::Order | Request::Control
    );
    if forwards && let Some(forwarded) = crate::daemon::ask_daemon(layout, &request) {
        return forwarded;
    }
    let answer = answer(layout, request, open_input, now);
    if let Answer::Done(Reply::Rollout(report)) = &answer {
        let ask = Request::Rollout {
            id: report.rollout.clone(),
        };
        if let Some(forwarded) = crate::daemon::ask_daemon(layout, &ask) {
            return forwarded;
        }
    }
    crate::daemon::Forwarded {
        line: answer_line(&answer),
        ok: answer.is_ok(),
    }
}

/// The answer as the one line the agent prints. Keys come out sorted, as they always have
/// (the line goes through `serde_json::Value`, whose maps are ordered by key).
pub fn answer_line(answer: &Answer<Reply>) -> String {
    serde_json::to_value(answer)
        .expect("an answer serializes: plain structs with string keys")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_proto::{Code, Refusal, Switched};

    fn args(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| (*w).to_owned()).collect()
    }

    #[test]
    fn the_command_line_names_a_root_and_a_request() {
        let (layout, request) =
            invocation(&args(&["--root", "/n", "serve"]), "activate 2.0.0").expect("parses");
        assert_eq!(layout.root(), std::path::Path::new("/n"));
        assert_eq!(request.to_string(), "activate 2.0.0");
        let (_, request) =
            invocation(&args(&["--root", "/n", "status"]), "rollback").expect("parses");
        assert_eq!(request, Request::Status, "argv wins over the environment");
        for bad in [&["status"][..], &["--rot", "/n", "status"], &[]] {
            let err = invocation(&args(bad), "").expect_err("usage");
            assert!(
                err.to_string().starts_with("usage: fleet-agent --root DIR"),
                "{err}"
            );
        }
        let err = invocation(&args(&["--root", "/n", "serve"]), "sh -c id").expect_err("refused");
        assert_eq!(err.code(), Code::BadRequest);
        assert!(
            err.to_string().contains("only runs fleet-agent requests"),
            "{err}"
        );
    }

    #[test]
    fn the_line_keeps_sorted_keys_and_adds_the_code() {
        let done = Answer::Done(Reply::Switched(Switched {
            active: "2.0.0".into(),
            previous: None,
            changed: true,
            server: fleet_proto::SwitchOutcome::NotRestarted,
        }));
        assert_eq!(
            answer_line(&done),
            r#"{"active":"2.0.0","changed":true,"ok":true,"previous":null,"server":"not_restarted"}"#
        );
        let refused: Answer<Reply> = Answer::Refused(Refusal::new(
            Code::NoPrevious,
            "no previous release to roll back to",
        ));
        assert_eq!(
            answer_line(&refused),
            r#"{"code":"no_previous","error":"no previous release to roll back to","ok":false}"#
        );
    }
}
