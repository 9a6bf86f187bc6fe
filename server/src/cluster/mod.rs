//! Cluster mode: membership and heartbeats in Redis, the sweeper that hands over the runs of
//! nodes that went away, and the leader-elected scheduler. Redis coordinates; Postgres holds
//! the truth (run rows, fencing epochs). Knows nothing of HTTP.

mod drain;
mod error;
mod heartbeat;
mod membership;
pub(crate) mod scheduler;
mod sweeper;

pub use drain::{Drain, DrainState, drain};
pub use error::ClusterError;
pub use heartbeat::HEARTBEAT_TTL;
pub(crate) use heartbeat::heartbeat;
pub use membership::{Member, Membership};
pub(crate) use sweeper::sweeper;

use std::sync::Arc;

use crate::node::Node;

/// Pokes the executor whenever a run is sent to this node over Redis, until the shutdown.
pub(crate) async fn wakes(node: Arc<Node>) {
    let executor = node.executor.clone();
    tokio::select! {
        () = node.membership.listen_wakes(&node.config.node, || executor.poke()) => {}
        () = node.stop.cancelled() => {}
    }
}
