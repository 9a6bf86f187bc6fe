//! `TestFleet`: N private sshd nodes on one locked loopback block, with the client key, the
//! known_hosts lines and an inventory to reach them (each node's server and agent on its own
//! address, the cluster's Redis prefix the fleet's own), and the nodes' agent daemons once
//! provisioned; not one node's files and process (see `node`), an agent process (see
//! `agents`) nor stopping a fleet another process kept (see `kept`).

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Instant;

use tempfile::TempDir;

use crate::agents;
use crate::block::{self, Block};
use crate::error::HarnessError;
use crate::kept;
use crate::node::{self, NodeFiles};
use crate::unique::unique_name;

/// The cluster's `postgres_url` unless the options say otherwise.
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// The port each node's `etl-server` listens on, on the node's own address (its `listen`).
pub const SERVER_PORT: u16 = 8080;
/// The port each node's agent serves its metrics on, on the node's own address.
pub const AGENT_METRICS_PORT: u16 = 9464;

/// What kind of fleet to start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetOptions {
    /// How many nodes (1..=250).
    pub nodes: usize,
    /// The port every node's sshd listens on, each on its own address.
    pub port: u16,
    /// Who logs in (the inventory's `ssh.user`); default: the current user (`id -un`).
    pub user: String,
    /// The inventory's customer name.
    pub customer: String,
    /// The inventory's cluster name.
    pub cluster: String,
    /// The cluster's `postgres_url`: the database the nodes' servers share (default: the
    /// `postgres` database of the local Postgres; a test running servers gives its own).
    pub postgres_url: String,
    /// The cluster's `rollout.min_healthy_secs`: how long a new server must stay healthy in
    /// the upgrade step (short, so tests are quick).
    pub min_healthy_secs: u64,
    /// The cluster's `maintenance_windows`, as YAML flow text (`[{ days: [sat], start:
    /// "02:00", end: "05:00" }]`); with them the customer is `customer_managed`, without them
    /// `dedicated`.
    pub maintenance_windows: Option<String>,
    /// Nodes (by index) written under a second customer, `<customer>-offline`, whose mode is
    /// `airgapped` (a cluster of the same name): nodes the controller must never contact.
    pub airgapped: Vec<usize>,
}

impl Default for FleetOptions {
    fn default() -> Self {
        FleetOptions {
            nodes: 3,
            port: 2222,
            user: current_user(),
            customer: "test".to_string(),
            cluster: "local".to_string(),
            postgres_url: DEFAULT_POSTGRES_URL.to_string(),
            min_healthy_secs: 2,
            maintenance_windows: None,
            airgapped: Vec::new(),
        }
    }
}

impl FleetOptions {
    /// The defaults with `nodes` nodes.
    pub fn with_nodes(nodes: usize) -> Self {
        FleetOptions {
            nodes,
            ..FleetOptions::default()
        }
    }
}

/// The user running the harness: `id -un`, else `$USER`, else `root`.
fn current_user() -> String {
    let from_id = Command::new("id")
        .arg("-un")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|name| !name.is_empty());
    from_id
        .or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| "root".to_string())
}

/// One node of a running fleet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestNode {
    /// `node-1`, `node-2`, ...
    pub name: String,
    /// The node's own loopback address, 127.A.B.K.
    pub addr: Ipv4Addr,
    pub port: u16,
    /// The node's root folder (the inventory's `node_root`), created empty.
    pub root: PathBuf,
    /// Holds the node's sshd_config, host key, authorized_keys and log.
    pub dir: PathBuf,
    /// The host key's public line, `ssh-ed25519 AAAA...` (no comment).
    pub host_key_pub: String,
    /// sshd's stderr (`-e`, LogLevel VERBOSE), appended across restarts.
    pub log: PathBuf,
    /// Where the node's `etl-server` listens once its agent runs it (the inventory's `listen`,
    /// [`SERVER_PORT`] on the node's address).
    pub api: SocketAddrV4,
    /// The output of the node's agent daemon (`start_agents`), appended across starts; the
    /// server's own output is in `root/logs/`.
    pub agent_log: PathBuf,
}

impl TestNode {
    /// `addr:port`.
    pub fn socket_addr(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.addr, self.port)
    }
}

/// A running fleet of private sshd nodes. Dropping it kills and reaps every sshd it started and
/// removes its temporary folder; `keep` leaves both for another process.
#[derive(Debug)]
pub struct TestFleet {
    /// `None` when the caller chose the folder or the fleet was kept.
    temp: Option<TempDir>,
    dir: PathBuf,
    opts: FleetOptions,
    block: Block,
    client_key: PathBuf,
    deploy_key: PathBuf,
    nodes: Vec<TestNode>,
    files: Vec<NodeFiles>,
    /// `children[k]` is node k's sshd while it runs.
    children: Vec<Option<Child>>,
    /// `agents[k]` is node k's `fleet-agent run` while it runs.
    agents: Vec<Option<Child>>,
    /// The cluster's `redis_prefix`, unique to this fleet.
    redis_prefix: String,
}

impl TestFleet {
    /// Starts a fleet in a new temporary folder; every sshd accepts connections on return.
    pub fn start(opts: FleetOptions) -> Result<TestFleet, HarnessError> {
        check_options(&opts)?;
        node::check_tools()?;
        let temp = tempfile::Builder::new()
            .prefix("fleet-testfleet-")
            .tempdir()
            .map_err(HarnessError::io("create a temporary folder"))?;
        let dir = canonical(temp.path())?;
        Self::start_at(opts, Some(temp), dir)
    }

    /// Starts a fleet in `dir`, which is created or must be empty; `dir` is left on disk when
    /// the fleet drops (its sshd are still killed).
    pub fn start_in(opts: FleetOptions, dir: &Path) -> Result<TestFleet, HarnessError> {
        check_options(&opts)?;
        node::check_tools()?;
        match fs::read_dir(dir) {
            Ok(mut entries) => {
                if entries.next().is_some() {
                    return Err(HarnessError::UnsuitablePath {
                        path: dir.to_path_buf(),
                        reason: "exists and is not empty: a fleet needs a new or empty folder"
                            .into(),
                    });
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir_all(dir)
                .map_err(HarnessError::io(format!("create {}", dir.display())))?,
            Err(e) => return Err(HarnessError::io(format!("read {}", dir.display()))(e)),
        }
        let dir = canonical(dir)?;
        Self::start_at(opts, None, dir)
    }

    fn start_at(
        opts: FleetOptions,
        temp: Option<TempDir>,
        dir: PathBuf,
    ) -> Result<TestFleet, HarnessError> {
        node::check_config_path(&dir)?;
        node::ensure_privsep_dir()?;
        let no_penalties = node::sshd_has_penalties()?;
        let block = block::allocate(opts.nodes, opts.port, &dir)?;

        let client_key = dir.join("client_ed25519");
        let deploy_key = dir.join("deploy_ed25519");
        let files: Vec<NodeFiles> = (1..=opts.nodes)
            .map(|k| NodeFiles::new(dir.join(format!("node-{k}"))))
            .collect();
        for f in &files {
            for d in [&f.dir, &f.root] {
                fs::create_dir_all(d)
                    .map_err(HarnessError::io(format!("create {}", d.display())))?;
            }
        }
        let mut keys = vec![client_key.clone(), deploy_key.clone()];
        keys.extend(files.iter().map(|f| f.host_key.clone()));
        node::keygen_all(&keys, "fleet-testfleet")?;
        let client_pub = node::read_public_key(&node::pub_path(&client_key))?;

        let mut nodes = Vec::with_capacity(files.len());
        for (k, f) in files.iter().enumerate() {
            let listen = SocketAddrV4::new(block.addr(k), opts.port);
            write(&f.config, &node::render_config(listen, f, no_penalties))?;
            write(
                &f.authorized_keys,
                &format!("{client_pub} fleet-testfleet\n"),
            )?;
            nodes.push(TestNode {
                name: format!("node-{}", k + 1),
                addr: block.addr(k),
                port: opts.port,
                root: f.root.clone(),
                dir: f.dir.clone(),
                host_key_pub: node::read_public_key(&f.host_key_pub())?,
                log: f.log.clone(),
                api: SocketAddrV4::new(block.addr(k), SERVER_PORT),
                agent_log: f.dir.join("agent.log"),
            });
        }
        let shared = dir.join("shared");
        fs::create_dir_all(&shared)
            .map_err(HarnessError::io(format!("create {}", shared.display())))?;
        // All configs differ only in paths and address: one check catches a bad template.
        node::test_config(&files[0].config)?;

        let count = nodes.len();
        let mut fleet = TestFleet {
            temp,
            dir,
            opts,
            block,
            client_key,
            deploy_key,
            nodes,
            files,
            children: (0..count).map(|_| None).collect(),
            agents: (0..count).map(|_| None).collect(),
            redis_prefix: format!("{}:", unique_name("testfleet")),
        };
        // Start every sshd before waiting for any, so large fleets start in parallel. On error
        // `fleet` drops and kills whatever was started.
        for k in 0..count {
            fleet.children[k] = Some(node::spawn(&fleet.files[k], &fleet.block.file)?);
        }
        let deadline = Instant::now() + node::READY_TIMEOUT;
        for k in 0..count {
            fleet.wait_ready(k, deadline)?;
        }
        fleet.write_pids()?;
        Ok(fleet)
    }

    /// The nodes, node-1 first; every `k` below indexes this slice.
    pub fn nodes(&self) -> &[TestNode] {
        &self.nodes
    }

    /// The fleet's folder (absolute, canonical).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The ed25519 private key (no passphrase) every node's authorized_keys accepts.
    pub fn client_key(&self) -> &Path {
        &self.client_key
    }

    /// The controller's deploy key (ed25519, no passphrase). No node accepts it until
    /// provisioning installs it, restricted to the agent.
    pub fn deploy_key(&self) -> &Path {
        &self.deploy_key
    }

    /// The user the inventory logs in as.
    pub fn user(&self) -> &str {
        &self.opts.user
    }

    /// The options the fleet was started with.
    pub fn options(&self) -> &FleetOptions {
        &self.opts
    }

    /// The cluster's Redis key prefix (`vars.redis_prefix`), unique to this fleet, so the
    /// servers and agents of two fleets never share keys.
    pub fn redis_prefix(&self) -> &str {
        &self.redis_prefix
    }

    /// The PIDs of the sshd that are running now, node order.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().flatten().map(Child::id).collect()
    }

    /// Node `k`'s OpenSSH known_hosts line, `[127.A.B.C]:PORT ssh-ed25519 AAAA...` (a bare
    /// address on port 22). Panics when `k` is out of range, like slice indexing.
    pub fn known_hosts_line(&self, node: usize) -> String {
        let n = &self.nodes[node];
        known_hosts_line(n.addr, n.port, &n.host_key_pub)
    }

    /// Writes every node's known_hosts line to `path`.
    pub fn write_known_hosts(&self, path: &Path) -> io::Result<()> {
        let text: String = (0..self.nodes.len())
            .map(|k| self.known_hosts_line(k) + "\n")
            .collect();
        fs::write(path, text)
    }

    /// Writes an inventory for `fleet-inventory`: one dedicated customer (customer_managed
    /// with `maintenance_windows`) with one cluster holding every node but the `airgapped`
    /// ones, which an airgapped customer's cluster holds, each node with its own `node_root`, logging in with the client key and
    /// checking host keys against `known_hosts` (written as given; relative paths are read
    /// from the inventory's folder).
    pub fn write_inventory(&self, path: &Path, known_hosts: &Path) -> io::Result<()> {
        fs::write(path, self.inventory_text(known_hosts))
    }

    fn inventory_text(&self, known_hosts: &Path) -> String {
        let q = |s: &str| serde_json::Value::from(s).to_string();
        let p = |p: &Path| q(&p.to_string_lossy());
        let mut y = String::new();
        let _ = writeln!(
            y,
            "# Test fleet in {}, written by fleet-tests: every node is a private sshd.",
            self.dir.display()
        );
        let _ = writeln!(y, "defaults:\n  ssh:");
        let _ = writeln!(y, "    user: {}", q(&self.opts.user));
        let _ = writeln!(y, "    port: {}", self.opts.port);
        let _ = writeln!(y, "    identity_file: {}", p(&self.client_key));
        let _ = writeln!(y, "    deploy_identity_file: {}", p(&self.deploy_key));
        let _ = writeln!(y, "    known_hosts: {}", p(known_hosts));
        let _ = writeln!(y, "customers:");
        let (offline, online): (Vec<_>, Vec<_>) = self
            .nodes
            .iter()
            .enumerate()
            .partition(|(k, _)| self.opts.airgapped.contains(k));
        let mode = match self.opts.maintenance_windows {
            Some(_) => "customer_managed",
            None => "dedicated",
        };
        self.customer_text(&mut y, &self.opts.customer, mode, &online);
        let offline_name = format!("{}-offline", self.opts.customer);
        self.customer_text(&mut y, &offline_name, "airgapped", &offline);
        y
    }

    /// One customer of the inventory holding `nodes` in one cluster (nothing when none).
    fn customer_text(
        &self,
        y: &mut String,
        customer: &str,
        mode: &str,
        nodes: &[(usize, &TestNode)],
    ) {
        if nodes.is_empty() {
            return;
        }
        let q = |s: &str| serde_json::Value::from(s).to_string();
        let p = |p: &Path| q(&p.to_string_lossy());
        let _ = writeln!(y, "  {}:", q(customer));
        let _ = writeln!(
            y,
            "    mode: {mode}\n    clusters:\n      {}:",
            q(&self.opts.cluster)
        );
        let _ = writeln!(y, "        redis_url: \"redis://127.0.0.1:6379/0\"");
        let _ = writeln!(y, "        postgres_url: {}", q(&self.opts.postgres_url));
        let _ = writeln!(y, "        shared_storage: {}", p(&self.dir.join("shared")));
        let _ = writeln!(
            y,
            "        rollout: {{ min_healthy_secs: {} }}",
            self.opts.min_healthy_secs
        );
        if let (Some(windows), "customer_managed") = (&self.opts.maintenance_windows, mode) {
            let _ = writeln!(y, "        maintenance_windows: {windows}");
        }
        // The cluster's keys in the shared Redis are this fleet's alone.
        let _ = writeln!(
            y,
            "        vars: {{ redis_prefix: {} }}",
            q(&self.redis_prefix)
        );
        let _ = writeln!(y, "        nodes:");
        for (_, n) in nodes {
            // Each node's server and agent metrics on the node's own address: the nodes of all
            // fleets on this machine can run at once.
            let _ = writeln!(
                y,
                "          - {{ name: {}, host: {}, node_root: {}, ssh: {{ authorized_keys: {} }}, vars: {{ listen: {}, agent_metrics_listen: {} }} }}",
                q(&n.name),
                q(&n.addr.to_string()),
                p(&n.root),
                p(&n.dir.join("authorized_keys")),
                q(&n.api.to_string()),
                q(&SocketAddrV4::new(n.addr, AGENT_METRICS_PORT).to_string())
            );
        }
    }

    /// An OpenSSH client command logging in to node `k` as the fleet's user with the client key,
    /// checking the host key strictly against `known_hosts` only; append the remote command.
    pub fn ssh_command(&self, k: usize, known_hosts: &Path) -> Command {
        let n = &self.nodes[k];
        let mut cmd = Command::new(node::SSH);
        cmd.args(["-F", "/dev/null", "-o", "BatchMode=yes"])
            .args(["-o", "StrictHostKeyChecking=yes"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
            .args(["-o", "GlobalKnownHostsFile=/dev/null"])
            .args(["-o", "KexAlgorithms=curve25519-sha256"])
            .args(["-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=5"])
            .arg("-i")
            .arg(&self.client_key)
            .arg("-p")
            .arg(n.port.to_string())
            .arg(format!("{}@{}", self.opts.user, n.addr));
        cmd
    }

    /// Kills node `k`'s sshd (SIGKILL), reaps it and waits until its address refuses
    /// connections: the node is down. Sessions already open stay up (their sshd children are
    /// not the node's listener). Stopping a stopped node does nothing.
    pub fn stop_node(&mut self, k: usize) -> Result<(), HarnessError> {
        self.check_index(k)?;
        if let Some(mut child) = self.children[k].take() {
            node::kill(&self.nodes[k].name, &mut child)?;
            self.write_pids()?;
            node::wait_refused(&self.nodes[k].name, self.nodes[k].socket_addr())?;
        }
        Ok(())
    }

    /// Starts node `k`'s sshd again, same address, port and host key, and waits until it accepts
    /// connections. Starting a running node does nothing.
    pub fn start_node(&mut self, k: usize) -> Result<(), HarnessError> {
        self.check_index(k)?;
        if self.children[k].is_some() {
            return Ok(());
        }
        self.children[k] = Some(node::spawn(&self.files[k], &self.block.file)?);
        if let Err(e) = self.wait_ready(k, Instant::now() + node::READY_TIMEOUT) {
            // The node stays down: reap the exited (or kill the unresponsive) sshd.
            if let Some(mut child) = self.children[k].take() {
                let _ = node::kill(&self.nodes[k].name, &mut child);
            }
            self.write_pids()?;
            return Err(e);
        }
        self.write_pids()
    }

    /// Gives node `k` a new host key and restarts it, so known_hosts lines written before no
    /// longer match; `nodes()[k].host_key_pub` is the new key.
    pub fn replace_host_key(&mut self, k: usize) -> Result<(), HarnessError> {
        self.check_index(k)?;
        self.stop_node(k)?;
        let f = &self.files[k];
        for key in [f.host_key.clone(), f.host_key_pub()] {
            match fs::remove_file(&key) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(HarnessError::io(format!("remove {}", key.display()))(e)),
            }
        }
        node::keygen_all(std::slice::from_ref(&f.host_key), "fleet-testfleet")?;
        self.nodes[k].host_key_pub = node::read_public_key(&f.host_key_pub())?;
        self.start_node(k)
    }

    /// Starts every node's agent daemon as an init system would: `<root>/bin/fleet-agent run
    /// --root <root>` (the binary provisioning installed), output appended to the node's
    /// `agent_log`; returns once each control socket accepts connections. The agents' PIDs are
    /// in the folder's `agent-pids`; `stop_agents` (or dropping the fleet) stops them. Nodes
    /// whose agent runs are left alone.
    pub fn start_agents(&mut self) -> Result<(), HarnessError> {
        for k in 0..self.nodes.len() {
            if self.agents[k].is_none() {
                let n = &self.nodes[k];
                self.agents[k] = Some(agents::spawn(&n.name, &n.root, &n.agent_log)?);
            }
        }
        let deadline = Instant::now() + agents::AGENT_READY_TIMEOUT;
        for (n, slot) in self.nodes.iter().zip(self.agents.iter_mut()) {
            if let Some(child) = slot.as_mut() {
                agents::wait_ready(
                    &n.name,
                    &n.root,
                    || agents::exit_text(child),
                    &n.agent_log,
                    deadline,
                )?;
            }
        }
        self.write_agent_pids()
    }

    /// Stops every agent `start_agents` started: SIGTERM (each stops its server first), then
    /// waits for it; the first failure is returned after every agent was asked.
    pub fn stop_agents(&mut self) -> Result<(), HarnessError> {
        let mut first = None;
        for slot in &mut self.agents {
            if let Some(mut child) = slot.take()
                && let Err(e) = agents::stop(&mut child)
            {
                first.get_or_insert(e);
            }
        }
        let written = self.write_agent_pids();
        match first {
            Some(e) => Err(e),
            None => written,
        }
    }

    /// The PIDs of the agents that run now (started by `start_agents`), node order.
    pub fn agent_pids(&self) -> Vec<u32> {
        self.agents.iter().flatten().map(Child::id).collect()
    }

    /// The last `lines` lines of every node's agent log and server log (`root/logs/`), for a
    /// failure message.
    pub fn agent_logs(&self, lines: usize) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            for log in [n.agent_log.clone(), n.root.join("logs/etl-server.log")] {
                let _ = writeln!(
                    out,
                    "--- {} {}:\n{}",
                    n.name,
                    log.display(),
                    agents::tail(&log, lines)
                );
            }
        }
        out
    }

    /// Leaves every sshd (and agent) running and the folder on disk, returning the folder. Its
    /// `pids` file lists the sshd for `stop_kept`, `agent-pids` the agents for
    /// `stop_kept_agents`; the address block stays locked while the sshd run.
    pub fn keep(mut self) -> PathBuf {
        // Dropping a `Child` neither kills nor waits for it.
        self.children.clear();
        self.agents.clear();
        if let Some(temp) = self.temp.take() {
            let _ = temp.keep();
        }
        self.dir.clone()
    }

    fn check_index(&self, k: usize) -> Result<(), HarnessError> {
        if k < self.nodes.len() {
            Ok(())
        } else {
            Err(HarnessError::NoSuchNode {
                index: k,
                count: self.nodes.len(),
            })
        }
    }

    fn wait_ready(&mut self, k: usize, deadline: Instant) -> Result<(), HarnessError> {
        let n = &self.nodes[k];
        let child = self.children[k]
            .as_mut()
            .expect("wait_ready is called right after spawning node k");
        node::wait_ready(&n.name, n.socket_addr(), child, &n.log, deadline)
    }

    fn write_pids(&self) -> Result<(), HarnessError> {
        kept::write_pids(&self.dir, &self.pids())
    }

    fn write_agent_pids(&self) -> Result<(), HarnessError> {
        kept::write_pid_file(&self.dir.join(agents::AGENT_PIDS_FILE), &self.agent_pids())
    }
}

impl Drop for TestFleet {
    fn drop(&mut self) {
        // The agents first: each stops its server, and nothing may outlive the fleet.
        for slot in &mut self.agents {
            if let Some(mut child) = slot.take() {
                let _ = agents::stop(&mut child);
            }
        }
        for (k, slot) in self.children.iter_mut().enumerate() {
            if let Some(mut child) = slot.take() {
                // Nothing better to do with a failure while dropping; the PID is reaped or gone.
                let _ = node::kill(&self.nodes[k].name, &mut child);
            }
        }
        // `temp` (when set) removes the folder after this, and `block` releases the lock.
    }
}

/// An OpenSSH known_hosts line for `addr:port`.
fn known_hosts_line(addr: Ipv4Addr, port: u16, key: &str) -> String {
    if port == 22 {
        format!("{addr} {key}")
    } else {
        format!("[{addr}]:{port} {key}")
    }
}

fn check_options(opts: &FleetOptions) -> Result<(), HarnessError> {
    let bad = |m: String| Err(HarnessError::Options(m));
    if opts.nodes == 0 || opts.nodes > block::MAX_NODES {
        return bad(format!(
            "{} nodes: a fleet has 1 to {} nodes",
            opts.nodes,
            block::MAX_NODES
        ));
    }
    if opts.port == 0 {
        return bad("port 0: sshd needs a fixed port".into());
    }
    for (what, value) in [
        ("user", &opts.user),
        ("customer", &opts.customer),
        ("cluster", &opts.cluster),
        ("postgres_url", &opts.postgres_url),
    ] {
        if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return bad(format!(
                "{what} {value:?}: must be non-empty, without spaces"
            ));
        }
    }
    Ok(())
}

fn canonical(dir: &Path) -> Result<PathBuf, HarnessError> {
    dir.canonicalize()
        .map_err(HarnessError::io(format!("resolve {}", dir.display())))
}

fn write(path: &Path, text: &str) -> Result<(), HarnessError> {
    fs::write(path, text).map_err(HarnessError::io(format!("write {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_hosts_lines_use_brackets_off_port_22() {
        let addr = Ipv4Addr::new(127, 101, 2, 3);
        assert_eq!(
            known_hosts_line(addr, 2222, "ssh-ed25519 AAAAkey"),
            "[127.101.2.3]:2222 ssh-ed25519 AAAAkey"
        );
        assert_eq!(
            known_hosts_line(addr, 22, "ssh-ed25519 AAAAkey"),
            "127.101.2.3 ssh-ed25519 AAAAkey"
        );
    }

    #[test]
    fn options_are_checked() {
        let ok = FleetOptions::with_nodes(3);
        assert!(check_options(&ok).is_ok());
        for bad in [
            FleetOptions {
                nodes: 0,
                ..ok.clone()
            },
            FleetOptions {
                nodes: 251,
                ..ok.clone()
            },
            FleetOptions {
                port: 0,
                ..ok.clone()
            },
            FleetOptions {
                customer: String::new(),
                ..ok.clone()
            },
            FleetOptions {
                user: "a b".into(),
                ..ok.clone()
            },
        ] {
            let err = check_options(&bad).expect_err("refused");
            assert!(matches!(err, HarnessError::Options(_)), "{bad:?}: {err}");
        }
    }

    #[test]
    fn default_user_is_the_current_one() {
        let user = FleetOptions::default().user;
        assert!(!user.is_empty());
        assert!(!user.contains(char::is_whitespace));
    }
}
