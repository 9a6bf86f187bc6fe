//! The work on one node: provisioning through the bootstrap account (`plan` builds it as
//! data, `provision` applies it over one session), requests to its agent over the deploy key
//! (`agent`), the config files and systemd unit rendered for it (`config`), the cluster's
//! admin token derived from the controller's key (`admin_token`), the shell text they are
//! built from (`shell`), and which nodes are never contacted (`reach`: an airgapped
//! customer's). Not the transport (`ssh`), and not the fan-out over many nodes (`cli`).

mod admin_token;
mod agent;
pub(crate) mod config;
mod plan;
mod provision;
mod reach;
mod shell;

pub use admin_token::ControllerKey;
pub use agent::{
    AgentCallError, NodeStatus, agent, default_timeout, deploy_target, push, refusal, status,
    switch,
};
pub use config::{agent_unit, node_files};
pub use provision::{Provisioned, provision, read_deploy_pub};
pub use reach::{Skipped, all_skipped, reachable, target as rollout_target};
