//! Test fleet: N private OpenSSH `sshd` processes, each a "node" on its own loopback address
//! (127.A.B.K, one locked /24 per fleet), for end-to-end tests, the demo and benchmarks; not a
//! mock of SSH, and never the system sshd.
//!
//! ```no_run
//! use fleet_tests::{FleetOptions, TestFleet};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let fleet = TestFleet::start(FleetOptions::with_nodes(3))?;
//! let known_hosts = fleet.dir().join("known_hosts");
//! fleet.write_known_hosts(&known_hosts)?;
//! fleet.write_inventory(&fleet.dir().join("inventory.yaml"), &known_hosts)?;
//! let status = fleet.ssh_command(0, &known_hosts).arg("true").status()?;
//! assert!(status.success());
//! # Ok(())
//! # }
//! ```
//!
//! Signed releases for tests (keys, a trust root, bundles) come from [`Signing`],
//! [`release_tree`] and [`build_release`]; releases of the project's own `etl-server` and
//! `fleet-agent` from [`build_own_release`]; hostile but validly signed bundles from
//! [`hand_manifest`] and [`signed_bundle`].
//!
//! Each fleet stops exactly the sshd it started (kill and wait on its `Child`, also in `Drop`);
//! a fleet kept for another process (`TestFleet::keep`) is stopped with `stop_kept`. Once
//! provisioned, its nodes' agent daemons are started as an init system would
//! (`TestFleet::start_agents`, or `start_kept_agents` for a kept fleet) and stopped with
//! SIGTERM (`stop_agents`, on drop, or `stop_kept_agents`).
//!
//! A fleet set up through the real `fleet` binary, provisioned, its agents running and
//! releases of the project's own binaries in a store, is [`Provisioned`]; how one run of
//! `fleet` ended is a [`FleetRun`].
//!
//! It also holds what the tests of several packages share: a Postgres database per test
//! (`TestDb`), a Redis key prefix per test (`TestRedis`) and a small HTTP/1.1 client (`call`),
//! and a node booted with real systemd in `systemd-nspawn` (`NspawnNode`), for the agent's unit.
//! The rolling-upgrade tests put a running cluster under continuous load and check it from
//! outside with [`LoadChecker`] (runs all along, a schedule every second, every node sampled).

mod agents;
mod block;
mod error;
mod fleet;
mod http;
mod kept;
mod load;
mod node;
mod nspawn;
mod postgres;
mod provisioned;
mod redis;
mod release_fixture;
mod release_server;
mod unique;

pub use agents::{
    AGENT_PIDS_FILE, AGENT_READY_TIMEOUT, AGENT_STOP_TIMEOUT, start_kept_agents, stop_kept_agents,
};
pub use block::{MAX_NODES, lock_dir};
pub use error::HarnessError;
pub use fleet::{
    AGENT_METRICS_PORT, DEFAULT_POSTGRES_URL, FleetOptions, SERVER_PORT, TestFleet, TestNode,
};
pub use http::{ADMIN_TOKEN, call, call_raw, call_with_headers, try_call};
pub use kept::{PIDS_FILE, stop_kept};
pub use load::{
    FIRST_FIRE_WITHIN, LoadChecker, LoadError, LoadNode, LoadOptions, LoadReport, OutPeriod,
    Outage, RunOutcome, ScheduleReport,
};
pub use node::{READY_TIMEOUT, SSH, SSH_KEYGEN, SSHD, keygen_all};
pub use nspawn::{
    BOOT_TIMEOUT, DEFAULT_NSPAWN_ROOTFS, DEFAULT_NSPAWN_SYSV_ROOTFS, Init, NSPAWN, NSPAWN_SSH_PORT,
    NspawnNode, NspawnOptions, POWEROFF_TIMEOUT,
};
pub use postgres::{POSTGRES_ADMIN_URL, TestDb};
pub use provisioned::{FleetRun, Provisioned, per_node, run_fleet, trust_root};
pub use redis::{PrivateRedis, REDIS_URL, START_REDIS, TestRedis};
pub use release_fixture::{
    RELEASE_VALIDITY, Signing, build_own_release, build_release, bundle_manifest_digest,
    hand_manifest, own_binaries, release_tree, sha256_hex, sign_order, signed_bundle, test_order,
};
pub use release_server::ReleaseServer;

/// A maintenance window every day that opens two hours from now and lasts an hour: closed
/// for as long as the test runs.
pub fn window_not_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let minute = (secs / 60) % 1440;
    let clock = |m: u64| format!("\"{:02}:{:02}\"", (m % 1440) / 60, m % 60);
    format!(
        "[{{ days: [mon, tue, wed, thu, fri, sat, sun], start: {}, end: {} }}]",
        clock(minute + 120),
        clock(minute + 180)
    )
}
