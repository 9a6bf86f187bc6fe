//! A rolling upgrade as one node sees it: what `order` (a signed rollout order on stdin),
//! `control` (a signed pause, resume or abort on stdin) and `rollout ID` answer. The node's own
//! progress comes from its own records; the other targets' from what their agents published
//! in the cluster's Redis, which the controller may use for nodes it cannot reach. Not the
//! coordination itself (the agents') and not the signed documents (`fleet_release::order`).

use serde::{Deserialize, Serialize};

/// How a node's part in a rollout ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The node runs the rollout's release, which passed its gate.
    Committed,
    /// The release failed its gate (or the rollout was aborted with rollback): the node runs
    /// the release it ran before, which serves.
    RolledBack,
    /// The release failed and the one before could not be made to serve either.
    RollbackFailed,
    /// The node was never upgraded: the rollout halted, was aborted or ran out of time first.
    Skipped,
    /// Nothing more will be heard from the node about this rollout (it stopped reporting).
    Lost,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Committed => "committed",
            Outcome::RolledBack => "rolled_back",
            Outcome::RollbackFailed => "rollback_failed",
            Outcome::Skipped => "skipped",
            Outcome::Lost => "lost",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One target of a rollout: where it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeProgress {
    pub node: String,
    /// Set once the node's part ended.
    pub outcome: Option<Outcome>,
    /// What the node does now: `waiting: ...` with why, or the upgrade step
    /// (`drain`, `stop`, `switch`, `start`, `gate`, `smoke`, `rollback`).
    pub step: Option<String>,
    /// Why it ended so (a rollback's cause, why it was skipped), or why it waits.
    pub reason: Option<String>,
    /// When its upgrade step began and ended, in ms since the Unix epoch.
    pub started_unix_ms: Option<u64>,
    pub ended_unix_ms: Option<u64>,
    /// The fencing epoch of the upgrade slot it holds or last held.
    pub epoch: Option<u64>,
}

impl NodeProgress {
    pub fn new(node: impl Into<String>) -> Self {
        NodeProgress {
            node: node.into(),
            outcome: None,
            step: None,
            reason: None,
            started_unix_ms: None,
            ended_unix_ms: None,
            epoch: None,
        }
    }
}

/// What was last asked of the rollout by a signed control.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Asked {
    Pause,
    Resume,
    Abort,
    AbortRollback,
}

/// A node's report on one rollout: what `order`, `control` and `rollout ID` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutReport {
    pub rollout: String,
    /// `customer/cluster`.
    pub cluster: String,
    pub version: String,
    /// The node answering.
    pub reported_by: String,
    /// Every target in the order's sequence (canaries first): the answering node from its own
    /// records, the others as their agents published them in Redis (`None` fields when
    /// nothing was read).
    pub nodes: Vec<NodeProgress>,
    /// The last control the cluster's agents took, if any.
    pub asked: Option<Asked>,
    /// The failure flag: which node failed and why; no slot is granted after it.
    pub halted: Option<String>,
    /// Why the node cannot read its cluster's Redis, while it cannot (the other nodes'
    /// progress is then unknown, and no slot is granted).
    pub redis_error: Option<String>,
    /// True when the node's agent daemon runs and takes part; false when the answer was read
    /// from disk because no daemon runs (nothing moves on this node until one does).
    pub daemon: bool,
    pub reported_at_unix_ms: u64,
}

impl RolloutReport {
    /// The progress of `node`, if it is a target.
    pub fn node(&self, node: &str) -> Option<&NodeProgress> {
        self.nodes.iter().find(|n| n.node == node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_snake_case_words() {
        for o in [
            Outcome::Committed,
            Outcome::RolledBack,
            Outcome::RollbackFailed,
            Outcome::Skipped,
            Outcome::Lost,
        ] {
            let json = serde_json::to_string(&o).expect("json");
            assert_eq!(json, format!("\"{}\"", o.as_str()));
            assert_eq!(serde_json::from_str::<Outcome>(&json).expect("parses"), o);
        }
    }
}
