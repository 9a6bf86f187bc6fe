//! `HarnessError`, the one error type of the test fleet: each variant is something the person
//! running the tests can act on (install a package, free an address block, read a log).

use std::io;
use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// Why a test fleet could not be started, changed or stopped.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error(
        "OpenSSH server not found at {}: install it with `apt-get install -y openssh-server`",
        path.display()
    )]
    SshdMissing { path: PathBuf },

    #[error(
        "{} not found: install the OpenSSH client with `apt-get install -y openssh-client`",
        path.display()
    )]
    ClientToolMissing { path: PathBuf },

    #[error("invalid fleet options: {0}")]
    Options(String),

    #[error("{}: {reason}", path.display())]
    UnsuitablePath { path: PathBuf, reason: String },

    #[error("{}: {source}", what)]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },

    #[error("`{command}` failed ({status}): {stderr}")]
    Tool {
        command: String,
        status: ExitStatus,
        stderr: String,
    },

    #[error("sshd rejects the generated config {} ({status}): {stderr}", config.display())]
    ConfigRejected {
        config: PathBuf,
        status: ExitStatus,
        stderr: String,
    },

    #[error(
        "no free address block 127.A.B.0/24 for {nodes} nodes on port {port} after {tried} tries \
         (lock files in {}); stop leftover fleets with `fleet-testfleet stop --dir DIR`",
        lock_dir.display()
    )]
    NoFreeBlock {
        nodes: usize,
        port: u16,
        tried: usize,
        lock_dir: PathBuf,
    },

    #[error("{node}: sshd exited before accepting connections ({status}); {}: {tail}", log.display())]
    NodeExited {
        node: String,
        status: ExitStatus,
        log: PathBuf,
        tail: String,
    },

    #[error(
        "{node}: {addr} accepted no connection within {timeout:?}; {}: {tail}",
        log.display()
    )]
    NotReady {
        node: String,
        addr: SocketAddrV4,
        timeout: Duration,
        log: PathBuf,
        tail: String,
    },

    #[error("{node}: {addr} still accepted connections {timeout:?} after its sshd exited")]
    StillAccepting {
        node: String,
        addr: SocketAddrV4,
        timeout: Duration,
    },

    #[error("no node {index}: the fleet has {count} nodes, indexed from 0 (node-1 is 0)")]
    NoSuchNode { index: usize, count: usize },

    #[error("{}: {reason}", path.display())]
    PidFile { path: PathBuf, reason: String },

    #[error(
        "{}: no {} (the project's own binaries, for its releases): \
         build them first: cargo build -p fleet-server -p fleet-agent",
        dir.display(), missing.join(" or ")
    )]
    BinariesMissing { dir: PathBuf, missing: Vec<String> },

    #[error("sshd {pid} was still running {timeout:?} after SIGKILL")]
    StillRunning { pid: u32, timeout: Duration },

    #[error("{node}: no agent at {}: provision the node first (fleet provision)", path.display())]
    AgentMissing { node: String, path: PathBuf },

    #[error("{node}: fleet-agent run exited before its control socket answered ({status}); {}: {tail}", log.display())]
    AgentExited {
        node: String,
        status: String,
        log: PathBuf,
        tail: String,
    },

    #[error(
        "{node}: fleet-agent run's control socket accepted no connection within {timeout:?}; {}: {tail}",
        log.display()
    )]
    AgentNotReady {
        node: String,
        timeout: Duration,
        log: PathBuf,
        tail: String,
    },

    #[error(
        "agent {pid} was still running {timeout:?} after SIGTERM: killed (SIGKILL); its etl-server may be left running"
    )]
    AgentStuck { pid: u32, timeout: Duration },

    #[error("a systemd-nspawn node cannot boot: {0}")]
    NspawnUnavailable(String),

    #[error("container {machine}: systemd-nspawn exited before its sshd accepted connections ({status}); {}: {tail}", log.display())]
    ContainerExited {
        machine: String,
        status: String,
        log: PathBuf,
        tail: String,
    },

    #[error(
        "container {machine}: its sshd at {addr} accepted no connection within {timeout:?}; {}: {tail}",
        log.display()
    )]
    ContainerNotReady {
        machine: String,
        addr: SocketAddrV4,
        timeout: Duration,
        log: PathBuf,
        tail: String,
    },

    #[error(
        "container {machine}: still running {timeout:?} after SIGTERM to its systemd-nspawn: killed (SIGKILL); {}: {tail}",
        log.display()
    )]
    ContainerStuck {
        machine: String,
        timeout: Duration,
        log: PathBuf,
        tail: String,
    },
}

impl HarnessError {
    /// Wraps an I/O error with what was being done, for `map_err`.
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> HarnessError {
        let what = what.into();
        move |source| HarnessError::Io { what, source }
    }
}
