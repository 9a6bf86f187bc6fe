//! What an agent's successful answer carries: the outcome of `stage`, of `activate` and
//! `rollback`, and the node's release state from `status`. Their fields are the wire format
//! (flattened beside `ok` in the answer line). Not how the agent finds them out.

use serde::{Deserialize, Serialize};

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
}

/// Any successful outcome, as the agent writes it: the fields of the one it holds, nothing
/// more (no tag). The controller knows which request it sent and reads the matching type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Reply {
    Staged(Staged),
    Switched(Switched),
    Status(Status),
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
        Reply::Status(s)
    }
}
