//! Rolling upgrades from the controller's side: a rollout as data (`plan`: clusters, policy,
//! ids, the order and control bodies), the order key (`key`), starting one per cluster
//! (`start`: claim, stage, sign, record, hand out), controls (`control`: pause, resume,
//! abort), and watching (`watch`: polling every target, recording, ending) with the merge of
//! the nodes' reports (`progress`), and whether a cluster's maintenance windows let a rollout
//! start now (`window`). The controller hands out signed documents and watches; the
//! rollout itself is carried on by the agents through their cluster's Redis, which the
//! controller never talks to. Not the command line (`cli/rollout.rs`) and not the store's SQL
//! (`store/rollouts.rs`).

mod control;
mod key;
mod plan;
mod progress;
mod start;
mod watch;
mod window;

pub use control::{ControlSent, action_word, send as send_control};
pub use key::order_key;
pub use plan::{ClusterPlan, Overrides, parse_deadline, plan};
pub use progress::{asked_word, took};
pub use start::{ClusterStarted, NodeStarted, Start, start};
pub use watch::{ANSWER_WITHIN, Settings, Shown, snapshot, watch};
pub use window::{Closed, closed};
