//! Requests to a node's agent over the deploy key: status, push (stage), activate and
//! rollback, each sent as a `fleet_proto::Request` and read back as a typed answer; a refusal
//! keeps the agent's code. Not the agent's behaviour (that is the `fleet-agent` crate, which
//! the controller never links) and not provisioning.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, anyhow};
use fleet_inventory::Node;
use fleet_proto::{Answer, Code, Refusal, Request, Staged, Status, Switched};
use serde::Serialize;

use crate::ssh::{Input, Session, SshError, Target, Timeouts, fingerprint};

/// How long `activate` and `rollback` wait for a node's answer unless told otherwise. With an
/// agent daemon running, the node answers only after the whole upgrade step: the server's
/// drain (up to the deadline its config gives), its stop, the new server's start and the
/// health gate (up to `health_timeout_secs`), which together take minutes.
pub const SWITCH_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// How long to wait for the agent's answer to `request` unless the operator says otherwise:
/// [`SWITCH_TIMEOUT`] for `activate` and `rollback`, the transport's default for the rest.
pub fn default_timeout(request: &Request) -> Duration {
    match request {
        Request::Activate { .. } | Request::Rollback => SWITCH_TIMEOUT,
        _ => Timeouts::default().command,
    }
}

/// The target for the deploy key (restricted to the agent once provisioned).
pub fn deploy_target(node: &Node) -> anyhow::Result<Target> {
    let mut target = Target::of(node);
    let key = node.ssh.deploy_identity_file.as_deref().ok_or_else(|| {
        anyhow!(
            "{}: no ssh.deploy_identity_file in the inventory",
            node.name
        )
    })?;
    target.identity = Some(Target::expand(key));
    Ok(target)
}

/// Why a request to a node's agent failed: the connection, an answer that cannot be read, or
/// the agent's refusal with its code (retry on `busy`, halt on `downgrade` or `old_counter`).
/// Callers that need the code find it with `anyhow::Error::downcast_ref`, or [`refusal`].
#[derive(Debug, thiserror::Error)]
pub enum AgentCallError {
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error("the agent did not answer `{request}` (exit {status:?}): {stderr}")]
    NoAnswer {
        request: String,
        status: Option<u32>,
        stderr: String,
    },
    #[error("the agent's answer to `{request}` is not understood: {error}")]
    Unreadable { request: String, error: String },
    #[error("{refusal}")]
    Refused { request: String, refusal: Refusal },
}

impl AgentCallError {
    /// The agent's refusal, when it refused.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            AgentCallError::Refused { refusal, .. } => Some(refusal),
            _ => None,
        }
    }
}

/// The agent's refusal behind an error from this module, if that is what stopped it.
pub fn refusal(error: &anyhow::Error) -> Option<&Refusal> {
    error
        .downcast_ref::<AgentCallError>()
        .and_then(AgentCallError::refusal)
}

/// Sends one request to the agent (the deploy key's forced command) and reads its answer.
pub async fn agent<T: serde::de::DeserializeOwned>(
    session: &Session,
    request: &Request,
    input: Input<'_>,
    timeout: Duration,
) -> Result<T, AgentCallError> {
    let words = request.to_string();
    let out = session.exec(&words, input, timeout).await?;
    let answer: Answer<T> = match serde_json::from_slice(&out.stdout) {
        Ok(answer) => answer,
        Err(e) if e.is_data() => {
            return Err(AgentCallError::Unreadable {
                request: words,
                error: e.to_string(),
            });
        }
        Err(_) => {
            return Err(AgentCallError::NoAnswer {
                request: words,
                status: out.status,
                stderr: out.stderr_text().trim().to_owned(),
            });
        }
    };
    match answer {
        Answer::Done(value) if out.success() => Ok(value),
        Answer::Done(_) => Err(AgentCallError::Refused {
            request: words,
            refusal: Refusal::new(Code::Other, "the agent refused"),
        }),
        Answer::Refused(refusal) => Err(AgentCallError::Refused {
            request: words,
            refusal,
        }),
    }
}

/// Node state as the agent reports it, plus what the connection saw.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    pub host_key: String,
    #[serde(flatten)]
    pub agent: Status,
}

pub async fn status(node: &Node, timeouts: Timeouts) -> anyhow::Result<NodeStatus> {
    let session = Session::connect(&deploy_target(node)?, timeouts).await?;
    let agent = agent::<Status>(&session, &Request::Status, Input::None, timeouts.command).await?;
    let host_key = fingerprint(session.host_key());
    session.close().await;
    Ok(NodeStatus { host_key, agent })
}

/// Stages `version` from `bundle` unless the node has it; one connection for both steps.
pub async fn push(
    node: &Node,
    version: &semver::Version,
    bundle: &Path,
    timeouts: Timeouts,
) -> anyhow::Result<&'static str> {
    let session = Session::connect(&deploy_target(node)?, timeouts).await?;
    let status = agent::<Status>(&session, &Request::Status, Input::None, timeouts.command).await?;
    if status.staged.contains(&version.to_string()) {
        session.close().await;
        return Ok("unchanged");
    }
    let mut file = tokio::fs::File::open(bundle)
        .await
        .with_context(|| format!("{}", bundle.display()))?;
    let stage = Request::Stage {
        version: version.clone(),
    };
    agent::<Staged>(&session, &stage, Input::Reader(&mut file), timeouts.command).await?;
    session.close().await;
    Ok("staged")
}

/// Sends `activate` or `rollback` and reports what the agent switched.
pub async fn switch(
    node: &Node,
    request: &Request,
    timeouts: Timeouts,
) -> anyhow::Result<Switched> {
    let session = Session::connect(&deploy_target(node)?, timeouts).await?;
    let switched = agent::<Switched>(&session, request, Input::None, timeouts.command).await?;
    session.close().await;
    Ok(switched)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upgrade_step_is_waited_for_at_least_fifteen_minutes() {
        let activate = Request::Activate {
            version: "1.1.0".parse().expect("semver"),
            allow_downgrade: false,
        };
        for request in [activate, Request::Rollback] {
            assert!(
                default_timeout(&request) >= Duration::from_secs(15 * 60),
                "{request}"
            );
        }
        assert_eq!(default_timeout(&Request::Status), Duration::from_secs(600));
    }

    #[test]
    fn a_refusal_keeps_its_code_through_context() {
        let err = anyhow::Error::from(AgentCallError::Refused {
            request: "activate 1.0.0".into(),
            refusal: Refusal::new(
                Code::Busy,
                "another fleet-agent operation has held this node",
            ),
        })
        .context("node-1");
        assert_eq!(refusal(&err).map(|r| r.code), Some(Code::Busy));
        assert_eq!(
            format!("{err:#}"),
            "node-1: another fleet-agent operation has held this node"
        );
        let transport = anyhow::Error::from(AgentCallError::NoAnswer {
            request: "status".into(),
            status: Some(127),
            stderr: "fleet-agent: not found".into(),
        });
        assert_eq!(refusal(&transport), None);
    }
}
