//! The value an agent will publish in its cluster's Redis (DESIGN.md, "The agent"): one
//! document per node under a key with a TTL, read by the other agents of the cluster and by
//! the dashboard. Not published yet: the daemon that writes it comes with rolling upgrades;
//! the shape is fixed here so both sides are written against one type. Not a trust anchor:
//! Redis is coordination, and nothing read from it authorizes a release.

use serde::{Deserialize, Serialize};

/// What the agent knows of the server process it supervises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerState {
    /// Not running, and not meant to be (no release active, or stopped for a switch).
    Stopped,
    /// Started, not yet healthy.
    Starting,
    /// Answering `/health`.
    Healthy,
    /// Running but failing `/health`, or exited and waiting to be restarted.
    Unhealthy,
    /// Draining before a stop: taking no new runs.
    Draining,
}

/// One node's published state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    /// The node's inventory name.
    pub node: String,
    pub agent_version: String,
    pub active: Option<String>,
    pub previous: Option<String>,
    /// Staged releases, oldest version first.
    pub staged: Vec<String>,
    pub server: ServerState,
    /// Server restarts since the agent started.
    pub restarts: u32,
    /// Free bytes on the node root's file system.
    pub free_bytes: u64,
    /// When the agent wrote this, in milliseconds since the Unix epoch (UTC).
    pub reported_at_unix_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_snake_case_states() {
        let report = NodeReport {
            node: "acme-prod-1".into(),
            agent_version: "0.1.0".into(),
            active: Some("2.0.0".into()),
            previous: Some("1.0.0".into()),
            staged: vec!["1.0.0".into(), "2.0.0".into()],
            server: ServerState::Draining,
            restarts: 2,
            free_bytes: 10 << 30,
            reported_at_unix_ms: 1_790_000_000_000,
        };
        let json = serde_json::to_string(&report).expect("json");
        assert!(json.contains(r#""server":"draining""#), "{json}");
        assert_eq!(
            serde_json::from_str::<NodeReport>(&json).expect("parses"),
            report
        );
    }
}
