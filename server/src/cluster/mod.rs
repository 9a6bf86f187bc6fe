//! Cluster mode: membership and heartbeats in Redis, the sweeper that hands over the runs of
//! nodes that went away, and the leader-elected scheduler. Redis coordinates; Postgres holds
//! the truth (run rows, fencing epochs). Knows nothing of HTTP.

mod heartbeat;
mod membership;
pub(crate) mod scheduler;
mod sweeper;

pub use heartbeat::HEARTBEAT_TTL;
pub(crate) use heartbeat::heartbeat;
pub use membership::{Member, Membership};
pub(crate) use sweeper::sweeper;
