//! What an agent's successful answer carries: the outcome of `stage`, of `activate` and
//! `rollback`, and the node's release state from `status`. Their fields are the wire format
//! (flattened beside `ok` in the answer line). Not how the agent finds them out.

use serde::{Deserialize, Serialize};

use crate::report::Supervision;
use crate::rollout::RolloutReport;

/// What staging did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Staged {
    pub version: String,
    /// False when the release was already staged (nothing was read or written).
    pub changed: bool,
    pub files: usize,
    pub bytes: u64,
}

/// What activation or rollback did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Switched {
    pub active: String,
    pub previous: Option<String>,
    /// False when the version asked for was already active.
    pub changed: bool,
    /// What happened to the server: `committed` when the agent daemon ran the whole upgrade
    /// step (drain, stop, switch, start, health gate), `not_restarted` when no daemon runs and
    /// only `current` moved. An answer without it (an older agent) reads as `not_restarted`.
    #[serde(default)]
    pub server: SwitchOutcome,
}

/// See [`Switched::server`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SwitchOutcome {
    /// The new release serves: it passed the health gate (or was already active and serving).
    Committed,
    /// No agent daemon runs on the node: `current` moved, no server was stopped or started.
    #[default]
    NotRestarted,
}

/// A node's release state: what `status` answers, and what the controller reads back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub agent_version: String,
    pub active: Option<String>,
    pub previous: Option<String>,
    /// Staged releases, oldest version first.
    pub staged: Vec<String>,
    pub free_bytes: u64,
    /// What the running agent daemon knows of the server it supervises; `None` when no daemon
    /// runs on the node (the rest was read from disk: `agent: not running`).
    #[serde(default)]
    pub daemon: Option<Supervision>,
}

/// Any successful outcome, as the agent writes it: the fields of the one it holds, nothing
/// more (no tag). The controller knows which request it sent and reads the matching type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Reply {
    Staged(Staged),
    Switched(Switched),
    Status(Box<Status>),
    Rollout(Box<RolloutReport>),
}

impl From<RolloutReport> for Reply {
    fn from(r: RolloutReport) -> Self {
        Reply::Rollout(Box::new(r))
    }
}

impl From<Staged> for Reply {
    fn from(s: Staged) -> Self {
        Reply::Staged(s)
    }
}

impl From<Switched> for Reply {
    fn from(s: Switched) -> Self {
        Reply::Switched(s)
    }
}

impl From<Status> for Reply {
    fn from(s: Status) -> Self {
        Reply::Status(Box::new(s))
    }
}
