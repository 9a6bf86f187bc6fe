//! The node agent: it stages, verifies, activates and rolls back releases inside the node
//! layout (DESIGN.md), and reports status. It trusts only `trust/root.json` on the node, never
//! the controller. One request in, one [`Answer`] out ([`answer`]); the request and answer
//! types are `fleet-proto`'s, shared with the controller. Not a transport: requests arrive on
//! argv or, behind a restricted deploy key, in `SSH_ORIGINAL_COMMAND`; a bundle arrives on
//! stdin. Not async: a request runs on the calling thread, no runtime is started; when the
//! node's daemon runs (`fleet-agent run`, [`daemon`]), `status`, `activate` and `rollback` are
//! forwarded to it ([`respond`]), so the upgrade step and the daemon's view answer them.

pub mod daemon;
mod idle;
mod installed;
mod layout;
mod ops;
mod orders;
mod serve;

use std::path::PathBuf;

pub use fleet_proto::{Answer, Code, Refusal, Reply, Request, Staged, Status, Switched};
pub use idle::{Deadline, IdleTimeout, RECEIVE_DEADLINE, STDIN_IDLE_TIMEOUT, stdin};
pub use layout::{Holder, LOCK_WAIT, Layout};
pub use ops::{activate, rollback, stage, status};
pub use orders::{
    AcceptedControl, AcceptedOrder, ControlRecord, OrderRecord, accept_control, accept_order,
    accepted_rollouts, control_record, disk_report, order_record, order_sequence, read_progress,
    write_progress,
};
pub use serve::{answer, answer_line, invocation, respond};

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
    #[error(
        "release {version} expired at {expires}, before {newest}, when the newest release this node accepted was created: is this node's clock behind?"
    )]
    ExpiredForNode {
        version: String,
        expires: fleet_release::Timestamp,
        newest: fleet_release::Timestamp,
    },
    #[error("release {version} changed after it was staged: `{path}` {problem}; stage it again")]
    Altered {
        version: String,
        path: String,
        problem: String,
    },
    #[error("release {0} is not staged on this node; push it first")]
    NotStaged(String),
    #[error(
        "release {wanted} is older than the active {active}; activating it needs --allow-downgrade"
    )]
    Downgrade { wanted: String, active: String },
    #[error(
        "another fleet-agent operation holds this node ({}); waited {waited} s for it; try again",
        holder.as_ref().map_or_else(|| "its holder is not recorded".to_owned(), ToString::to_string)
    )]
    Busy { waited: u64, holder: Option<Holder> },
    #[error("no previous release to roll back to")]
    NoPrevious,
    #[error("rollout order refused: {0}")]
    BadOrder(fleet_release::ReleaseError),
    #[error("rollout order refused: {0}")]
    OrderSignature(fleet_release::ReleaseError),
    #[error("rollout order refused: {0}")]
    NotOrderKey(fleet_release::ReleaseError),
    #[error("rollout order refused: {0}; ask for a new one")]
    OrderExpired(fleet_release::ReleaseError),
    #[error(
        "{what} refused: sequence {sequence} is not above {floor}, the highest this node accepted (a replay?)"
    )]
    OrderReplayed {
        what: &'static str,
        sequence: u64,
        floor: u64,
    },
    #[error("{what} refused: it is for cluster {ordered}, this node is in {node}")]
    WrongCluster {
        what: &'static str,
        ordered: String,
        node: String,
    },
    #[error(
        "rollout order refused: rollout {rollout} does not name this node ({node}) among its targets"
    )]
    NotTargeted { rollout: String, node: String },
    #[error("rollout order refused: release {version} is not staged on this node; push it first")]
    OrderNotStaged { version: String },
    #[error(
        "rollout order refused: release {version} is staged here with manifest digest {staged}, the order names {ordered}; push the release the order was made for"
    )]
    DigestMismatch {
        version: String,
        ordered: String,
        staged: String,
    },
    #[error(
        "rollout order refused: release {wanted} is older than {floor}, the release active when rollout {rollout} began (only that rollout's rollback may go below it)"
    )]
    OrderDowngrade {
        rollout: String,
        wanted: String,
        floor: String,
    },
    #[error("this node took no order of rollout {rollout}")]
    UnknownRollout { rollout: String },
    #[error("this node is not set up for rollouts: {0}; run `fleet provision`")]
    NotConfigured(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("node layout: {0}")]
    Layout(String),
}

/// Milliseconds since the Unix epoch (wall clock), for what the agent writes down.
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl AgentError {
    /// The code the answer carries, so a caller can act without reading the message.
    pub fn code(&self) -> Code {
        match self {
            AgentError::Io { .. } => Code::Io,
            AgentError::Stdin(_) => Code::Input,
            AgentError::Release(e) => release_code(e),
            AgentError::WrongVersion { .. } => Code::WrongVersion,
            AgentError::WrongPlatform { .. } => Code::WrongPlatform,
            AgentError::AgentTooOld { .. } => Code::AgentTooOld,
            AgentError::OldCounter { .. } => Code::OldCounter,
            AgentError::ExpiredForNode { .. } | AgentError::Altered { .. } => {
                Code::VerificationFailed
            }
            AgentError::NotStaged(_) => Code::NotStaged,
            AgentError::Downgrade { .. } => Code::Downgrade,
            AgentError::Busy { .. } => Code::Busy,
            AgentError::NoPrevious => Code::NoPrevious,
            AgentError::BadOrder(_) => Code::BadOrder,
            AgentError::OrderSignature(_) => Code::OrderSignature,
            AgentError::NotOrderKey(_) => Code::NotOrderKey,
            AgentError::OrderExpired(_) => Code::OrderExpired,
            AgentError::OrderReplayed { .. } => Code::OrderReplayed,
            AgentError::WrongCluster { .. } => Code::WrongCluster,
            AgentError::NotTargeted { .. } => Code::NotTargeted,
            AgentError::OrderNotStaged { .. } => Code::NotStaged,
            AgentError::DigestMismatch { .. } => Code::DigestMismatch,
            AgentError::OrderDowngrade { .. } => Code::OrderDowngrade,
            AgentError::UnknownRollout { .. } => Code::UnknownRollout,
            AgentError::NotConfigured(_) => Code::NotConfigured,
            AgentError::BadRequest(_) => Code::BadRequest,
            AgentError::Layout(_) => Code::Layout,
        }
    }
}

/// A release error is a failed verification unless it is the input breaking off or the
/// node's own files failing: those are retried or fixed on the node, not by another release.
fn release_code(e: &fleet_release::ReleaseError) -> Code {
    use fleet_release::ReleaseError as E;
    match e {
        E::Read(_) => Code::Input,
        E::Io { .. } | E::Write(_) => Code::Io,
        E::InFile { error, .. } => release_code(error),
        _ => Code::VerificationFailed,
    }
}

impl From<fleet_proto::BadRequest> for AgentError {
    fn from(e: fleet_proto::BadRequest) -> Self {
        AgentError::BadRequest(e.0)
    }
}

impl From<AgentError> for Refusal {
    fn from(e: AgentError) -> Self {
        Refusal::new(e.code(), e.to_string())
    }
}

pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> AgentError {
    let path = path.into();
    move |error| AgentError::Io { path, error }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_release::ReleaseError;

    #[test]
    fn every_error_maps_to_its_code() {
        let io_error = || std::io::Error::other("x");
        let s = || String::from("1.0.0");
        let cases = [
            (
                AgentError::Io {
                    path: "/n".into(),
                    error: io_error(),
                },
                Code::Io,
            ),
            (AgentError::Stdin(io_error()), Code::Input),
            (
                AgentError::Release(ReleaseError::Read(io_error())),
                Code::Input,
            ),
            (
                AgentError::Release(ReleaseError::Write(io_error())),
                Code::Io,
            ),
            (
                AgentError::Release(ReleaseError::Io {
                    path: "/n/trust/root.json".into(),
                    error: io_error(),
                }),
                Code::Io,
            ),
            (
                AgentError::Release(ReleaseError::PayloadMismatch("sha256")),
                Code::VerificationFailed,
            ),
            (
                AgentError::Release(ReleaseError::InFile {
                    path: "/n/b".into(),
                    error: Box::new(ReleaseError::Truncated),
                }),
                Code::VerificationFailed,
            ),
            (
                AgentError::WrongVersion {
                    wanted: s(),
                    found: s(),
                },
                Code::WrongVersion,
            ),
            (
                AgentError::WrongPlatform {
                    version: s(),
                    platform: s(),
                    node: s(),
                },
                Code::WrongPlatform,
            ),
            (
                AgentError::AgentTooOld {
                    version: s(),
                    needed: s(),
                },
                Code::AgentTooOld,
            ),
            (
                AgentError::OldCounter {
                    version: s(),
                    counter: 1,
                    installed: 2,
                },
                Code::OldCounter,
            ),
            (
                AgentError::ExpiredForNode {
                    version: s(),
                    expires: fleet_release::Timestamp::now(),
                    newest: fleet_release::Timestamp::now(),
                },
                Code::VerificationFailed,
            ),
            (
                AgentError::Altered {
                    version: s(),
                    path: "bin/etl-server".into(),
                    problem: "sha256 differs from its manifest".into(),
                },
                Code::VerificationFailed,
            ),
            (AgentError::NotStaged(s()), Code::NotStaged),
            (
                AgentError::Downgrade {
                    wanted: s(),
                    active: s(),
                },
                Code::Downgrade,
            ),
            (
                AgentError::Busy {
                    waited: 60,
                    holder: None,
                },
                Code::Busy,
            ),
            (AgentError::NoPrevious, Code::NoPrevious),
            (
                AgentError::BadOrder(ReleaseError::BadOrder(s())),
                Code::BadOrder,
            ),
            (
                AgentError::OrderSignature(ReleaseError::MissingSignature { what: "x" }),
                Code::OrderSignature,
            ),
            (
                AgentError::NotOrderKey(ReleaseError::NoOrderKeys { what: "x" }),
                Code::NotOrderKey,
            ),
            (
                AgentError::OrderExpired(ReleaseError::OrderExpired {
                    what: "x",
                    expires: fleet_release::Timestamp::now(),
                }),
                Code::OrderExpired,
            ),
            (
                AgentError::OrderReplayed {
                    what: "x",
                    sequence: 1,
                    floor: 1,
                },
                Code::OrderReplayed,
            ),
            (
                AgentError::WrongCluster {
                    what: "x",
                    ordered: s(),
                    node: s(),
                },
                Code::WrongCluster,
            ),
            (
                AgentError::NotTargeted {
                    rollout: s(),
                    node: s(),
                },
                Code::NotTargeted,
            ),
            (AgentError::OrderNotStaged { version: s() }, Code::NotStaged),
            (
                AgentError::DigestMismatch {
                    version: s(),
                    ordered: s(),
                    staged: s(),
                },
                Code::DigestMismatch,
            ),
            (
                AgentError::OrderDowngrade {
                    rollout: s(),
                    wanted: s(),
                    floor: s(),
                },
                Code::OrderDowngrade,
            ),
            (
                AgentError::UnknownRollout { rollout: s() },
                Code::UnknownRollout,
            ),
            (AgentError::NotConfigured(s()), Code::NotConfigured),
            (AgentError::BadRequest(s()), Code::BadRequest),
            (AgentError::Layout(s()), Code::Layout),
        ];
        for (error, code) in cases {
            let message = error.to_string();
            assert_eq!(error.code(), code, "{error}");
            assert_eq!(Refusal::from(error), Refusal::new(code, message));
        }
    }
}
