//! The work on one node: provisioning through the bootstrap account (`plan` builds it as
//! data, `provision` applies it over one session), requests to its agent over the deploy key
//! (`agent`), the config files rendered for it (`config`), and the shell text they are built
//! from (`shell`). Not the transport (`ssh`), and not the fan-out over many nodes (`cli`).

mod agent;
mod config;
mod plan;
mod provision;
mod shell;

pub use agent::{
    AgentCallError, NodeStatus, agent, default_timeout, deploy_target, push, refusal, status,
    switch,
};
pub use config::node_files;
pub use provision::{Provisioned, provision, read_deploy_pub};
