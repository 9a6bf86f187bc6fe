//! Reaching nodes over SSH: the transport (`transport`: russh sessions, channels, timeouts),
//! OpenSSH known_hosts files (`known_hosts`), and host key enrolment (`hosts`), the one step
//! that records a key. Not what runs on a node: `node` builds the commands.

mod hosts;
mod known_hosts;
mod transport;

pub use hosts::{Enrolled, trust_host_key};
pub use known_hosts::{KnownHostsError, fingerprint};
pub use transport::{
    Input, OUTPUT_CAP, Output, PASSPHRASE_ENV, Session, SshError, Target, Timeouts, fetch_host_key,
    key_fingerprint,
};
