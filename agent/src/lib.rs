//! The node agent: it stages, verifies, activates and rolls back releases inside the node
//! layout (DESIGN.md), and reports status. It trusts only `trust/root.json` on the node, never
//! the controller. Not a transport: requests arrive on argv or, behind a restricted deploy key,
//! in `SSH_ORIGINAL_COMMAND`; a bundle arrives on stdin.

pub mod idle;
pub mod layout;
pub mod ops;
pub mod request;

use std::path::PathBuf;

pub use idle::{IdleTimeout, STDIN_IDLE_TIMEOUT};
pub use layout::Layout;
pub use ops::{Status, activate, rollback, stage, status};
pub use request::Request;

/// The agent's version, compared with a release's minimum agent version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("standard input: {0}")]
    Stdin(std::io::Error),
    #[error("refused: {0}")]
    Release(#[from] fleet_release::ReleaseError),
    #[error("the bundle holds release {found}, not {wanted}")]
    WrongVersion { wanted: String, found: String },
    #[error("release {version} is for {platform}, this node is {node}")]
    WrongPlatform {
        version: String,
        platform: String,
        node: String,
    },
    #[error("release {version} needs fleet-agent {needed} or newer; this is {VERSION}")]
    AgentTooOld { version: String, needed: String },
    #[error(
        "release {version} has counter {counter}, below the counter {installed} of a release this node already ran: an old release replayed? (stage refused)"
    )]
    OldCounter {
        version: String,
        counter: u64,
        installed: u64,
    },
    #[error("release {0} is not staged on this node; push it first")]
    NotStaged(String),
    #[error(
        "release {wanted} is older than the active {active}; activating it needs --allow-downgrade"
    )]
    Downgrade { wanted: String, active: String },
    #[error("another fleet-agent operation has held this node for over {0} s; try again")]
    Busy(u64),
    #[error("no previous release to roll back to")]
    NoPrevious,
    #[error("{0}")]
    BadRequest(String),
    #[error("node layout: {0}")]
    Layout(String),
}

pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> AgentError {
    let path = path.into();
    move |error| AgentError::Io { path, error }
}
