//! The rolling upgrade on this node: taking part in the rollouts whose orders it accepted,
//! coordinated with the cluster's other agents through Redis.

use fleet_proto::RolloutReport;

use super::{Daemon, blocking};
use crate::AgentError;

/// This node's report on rollout `id`.
pub async fn report(daemon: &Daemon, id: &str) -> Result<RolloutReport, AgentError> {
    let layout = daemon.config.layout.clone();
    let (node, id) = (daemon.config.node.clone(), id.to_owned());
    let mut report = blocking(move || crate::disk_report(&layout, &node, &id)).await?;
    report.daemon = true;
    Ok(report)
}
