//! The fleet controller: the `fleet` command line and the work behind each command. Not the
//! inventory or release formats (the `fleet-inventory` and `fleet-release` crates), and not
//! the node agent: requests and answers are `fleet-proto` values, and the agent is a separate
//! program the controller copies to nodes, never a library it links.
//!
//! One folder per part: `cli/` (the command line, fan-out, reports), `ssh/` (transport,
//! known_hosts, host key enrolment), `node/` (provisioning, agent requests, config files),
//! `store/` (the state store), `rollout/` (rolling upgrades: orders, controls, watching),
//! `serve/` (`fleet serve`: the dashboard, the JSON API, users and sessions), `installer/`
//! (`fleet installer`: the install script and offline bundles);
//! `files.rs` is the controller's own small files.

mod cli;
mod files;
mod installer;
mod node;
mod rollout;
mod serve;
mod ssh;
mod store;

pub use cli::{Cli, init_logging, run};
pub use installer::{BuildRequest, Built, Script, build as build_installer, render_script};
pub use node::{AgentCallError, NodeStatus, Provisioned, agent, deploy_target, refusal};
pub use serve::collect::{CollectOptions, run as collect};
pub use serve::{Access, App, RouteSpec, ServeOptions, auth, router, routes};
pub use ssh::{
    Enrolled, Input, KnownHostsError, OUTPUT_CAP, Output, PASSPHRASE_ENV, Session, SshError,
    Target, Timeouts, fetch_host_key, trust_host_key,
};
pub use store::{
    AuditEntry, AuditRow, NodeOutcome, Principal, Role, Rollout, StateLocation, Store, StoreError,
    Tamper, Token, User,
};
