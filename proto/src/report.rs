//! What a running agent daemon knows of the server it supervises ([`Supervision`]), part of
//! every `status` answer, and the value it publishes in its cluster's Redis ([`NodeReport`]):
//! one document per node under `<prefix>agent:<node>` with a TTL, read by the other agents of
//! the cluster and by the dashboard. Not a trust anchor: Redis is coordination, and nothing read
//! from it authorizes a release.

use serde::{Deserialize, Serialize};

use crate::Status;

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
    /// Exiting again and again soon after each start; still restarted, with growing delays.
    Crashlooping,
    /// Draining before a stop: taking no new runs.
    Draining,
}

impl ServerState {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Stopped => "stopped",
            ServerState::Starting => "starting",
            ServerState::Healthy => "healthy",
            ServerState::Unhealthy => "unhealthy",
            ServerState::Crashlooping => "crashlooping",
            ServerState::Draining => "draining",
        }
    }
}

impl std::fmt::Display for ServerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The daemon's view of the node, as `status` answers it and the heartbeat carries it.
/// Durations are measured by the daemon when it answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Supervision {
    /// The node's inventory name.
    pub node: String,
    pub agent_pid: u32,
    pub agent_uptime_ms: u64,
    pub server: ServerState,
    pub server_pid: Option<u32>,
    /// The release the running server was started from.
    pub server_release: Option<String>,
    /// Server restarts since the daemon started.
    pub restarts: u32,
    /// How the server last ended (`exit status 1`, `killed by signal 9`), if it did.
    pub last_exit: Option<String>,
    /// How long the server has answered `/health` without a miss (monotonic clock).
    pub healthy_for_ms: Option<u64>,
    /// How long the last `/health` check took, answered or not.
    pub health_latency_ms: Option<u64>,
    /// Why the last `/health` check failed, while it fails.
    pub health_error: Option<String>,
    /// When the next start is due, while a restart waits out its backoff.
    pub restart_in_ms: Option<u64>,
    /// Since the last heartbeat Redis accepted; `None` before the first.
    pub heartbeat_age_ms: Option<u64>,
    /// Why heartbeats fail, while they fail.
    pub redis_error: Option<String>,
    /// The upgrade step in progress (`1.0.0 -> 1.1.0: gate`), if any.
    pub step: Option<String>,
    /// How the last upgrade step ended (`committed 1.1.0`, `rolled_back to 1.0.0: ...`).
    pub last_step: Option<String>,
}

/// One node's published state: its status, with the daemon's view, and when it was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    #[serde(flatten)]
    pub status: Status,
    /// When the agent wrote this, in milliseconds since the Unix epoch (UTC).
    pub reported_at_unix_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_snake_case_states() {
        let report = NodeReport {
            status: Status {
                agent_version: "0.1.0".into(),
                active: Some("2.0.0".into()),
                previous: Some("1.0.0".into()),
                staged: vec!["1.0.0".into(), "2.0.0".into()],
                free_bytes: 10 << 30,
                daemon: Some(Supervision {
                    node: "acme-prod-1".into(),
                    agent_pid: 42,
                    agent_uptime_ms: 1000,
                    server: ServerState::Draining,
                    server_pid: Some(43),
                    server_release: Some("2.0.0".into()),
                    restarts: 2,
                    last_exit: Some("killed by signal 9".into()),
                    healthy_for_ms: None,
                    health_latency_ms: Some(3),
                    health_error: None,
                    restart_in_ms: None,
                    heartbeat_age_ms: Some(500),
                    redis_error: None,
                    step: None,
                    last_step: None,
                }),
            },
            reported_at_unix_ms: 1_790_000_000_000,
        };
        let json = serde_json::to_string(&report).expect("json");
        assert!(json.contains(r#""server":"draining""#), "{json}");
        assert!(
            json.contains(r#""agent_version":"0.1.0""#),
            "flattened: {json}"
        );
        assert_eq!(
            serde_json::from_str::<NodeReport>(&json).expect("parses"),
            report
        );
    }

    #[test]
    fn a_status_without_a_daemon_reads_as_not_running() {
        let json =
            r#"{"agent_version":"0.1.0","active":null,"previous":null,"staged":[],"free_bytes":1}"#;
        let status: Status = serde_json::from_str(json).expect("an older agent's status");
        assert_eq!(status.daemon, None);
    }
}
