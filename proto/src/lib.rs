//! The values that cross the process boundary between the controller and a node's agent: the
//! requests the agent accepts ([`Request`], parsed from words and displayed back to the same
//! words), its answers ([`Answer`], one JSON line with `ok`, and on a refusal a message and a
//! machine-readable [`Code`]), the outcomes inside an answer ([`Staged`], [`Switched`],
//! [`Status`], a node's [`RolloutReport`] on a rolling upgrade), the daemon's view of the server it supervises ([`Supervision`]), and the value an agent
//! daemon publishes in its cluster's Redis ([`NodeReport`]).
//!
//! Not I/O and not policy: nothing here reads a file, opens a socket or decides what a node
//! may do; the agent and the controller both depend on this crate and never on each other.
//! Dependencies: serde for the wire format, and `semver` because parsing a request checks that
//! its version is one (a path like `../../etc` is refused before anything sees it).

mod answer;
mod report;
mod request;
mod rollout;
mod status;

pub use answer::{Answer, Code, Refusal};
pub use report::{NodeReport, ServerState, Supervision};
pub use request::{BadRequest, Request, is_rollout_id};
pub use rollout::{Asked, NodeProgress, Outcome, RolloutReport};
pub use status::{Reply, Staged, Status, SwitchOutcome, Switched};
