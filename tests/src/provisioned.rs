//! A test fleet set up through the real `fleet` binary as an operator sets one up, for the
//! end-to-end tests that need running agents: a trust root with root, release and order keys
//! (the order key where the controller looks for it), host keys enrolled, every node
//! provisioned and its agent daemon started, a Postgres database of the test's own for the
//! cluster's servers, releases of the project's own binaries built into a release store, and
//! `fleet` commands run with a controller data directory of their own. Also how one run of
//! `fleet` ended (`FleetRun`). Not the fleet itself (`fleet`), and not the `fleet` binary: the
//! caller names it (a test target's `CARGO_BIN_EXE_fleet`).

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::fleet::{FleetOptions, TestFleet};
use crate::http::call_with_headers;
use crate::postgres::TestDb;
use crate::release_fixture::own_binaries;

/// What one run of `fleet` did.
#[derive(Debug, Clone)]
pub struct FleetRun {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl FleetRun {
    /// Its stdout as JSON (a `--json` run); panics, showing both streams, when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }

    /// Asserts that it exited 0.
    #[track_caller]
    pub fn ok(self) -> Self {
        assert_eq!(
            self.code,
            Some(0),
            "expected success\nstdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// Asserts that it exited 1 (a failure, not a usage error).
    #[track_caller]
    pub fn fails(self) -> Self {
        assert_eq!(
            self.code,
            Some(1),
            "expected failure\nstdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        self
    }
}

impl From<Output> for FleetRun {
    fn from(o: Output) -> Self {
        Self {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Runs `fleet ARGS` (the binary `fleet_bin`) and returns how it ended.
pub fn run_fleet(fleet_bin: &Path, args: &[&str], env: &[(&str, &Path)]) -> FleetRun {
    Command::new(fleet_bin)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", fleet_bin.display()))
        .into()
}

/// Generates a root key and a release key in `keys`, and with `order_key` the order key
/// `order_key` names (`DIR/NAME.key`), then writes the trust root naming them (signed by the
/// root key) to `root`, through `fleet keys generate` and `fleet trust init`.
pub fn trust_root(fleet_bin: &Path, keys: &Path, root: &Path, order_key: Option<&Path>) {
    for name in ["root", "release"] {
        run_fleet(
            fleet_bin,
            &["keys", "generate", "--out", &s(keys), "--name", name],
            &[],
        )
        .ok();
    }
    let (root_pub, release_pub) = (s(&keys.join("root.pub")), s(&keys.join("release.pub")));
    let (sign, out) = (s(&keys.join("root.key")), s(root));
    let mut args = vec![
        "trust",
        "init",
        "--root-key",
        &root_pub,
        "--release-key",
        &release_pub,
        "--sign",
        &sign,
        "--out",
        &out,
    ];
    let order_pub;
    if let Some(key) = order_key {
        let dir = key.parent().unwrap_or(Path::new("."));
        let name = key
            .file_stem()
            .map_or_else(|| "order".into(), |n| n.to_string_lossy().into_owned());
        run_fleet(
            fleet_bin,
            &["keys", "generate", "--out", &s(dir), "--name", &name],
            &[],
        )
        .ok();
        order_pub = s(&key.with_extension("pub"));
        args.extend(["--order-key", &order_pub]);
    }
    run_fleet(fleet_bin, &args, &[]).ok();
}

/// A fleet provisioned through `fleet`, its agents running, its cluster's servers sharing a
/// database of the test's own. Dropping it stops the agents (each stopping its server), then
/// the sshd, then drops the database.
pub struct Provisioned {
    /// Declared before `db`: dropped first, so no server outlives its database.
    pub fleet: TestFleet,
    db: TestDb,
    rt: tokio::runtime::Runtime,
    fleet_bin: PathBuf,
    /// The fleet's inventory (one cluster, `test/local`).
    pub inventory: PathBuf,
    /// The controller's data directory (`FLEET_DATA_DIR`): its state store, its key and the
    /// order key (`order.key`, named in the trust root).
    pub data: PathBuf,
    /// The release store releases are built into.
    pub store: PathBuf,
    /// The root and release keys.
    pub keys: PathBuf,
    /// The trust root every node pins.
    pub root: PathBuf,
}

impl Provisioned {
    /// A fleet of `nodes` nodes with a database labelled `label`, provisioned through
    /// `fleet_bin`, every agent daemon running; panics, saying what failed, when a step does.
    pub fn start(fleet_bin: &Path, label: &str, nodes: usize) -> Provisioned {
        Self::start_with(fleet_bin, label, FleetOptions::with_nodes(nodes))
    }

    /// `start` with the fleet's options (its inventory's maintenance windows, say); their
    /// `postgres_url` is the test's database.
    pub fn start_with(fleet_bin: &Path, label: &str, opts: FleetOptions) -> Provisioned {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let db = rt.block_on(TestDb::new(label));
        let fleet = TestFleet::start(FleetOptions {
            postgres_url: db.url.clone(),
            ..opts
        })
        .unwrap_or_else(|e| panic!("the test fleet: {e}"));
        let dir = fleet.dir().to_owned();
        let inventory = dir.join("inventory.yaml");
        fleet
            .write_inventory(&inventory, &dir.join("known_hosts"))
            .expect("the inventory");
        let mut p = Provisioned {
            fleet,
            db,
            rt,
            fleet_bin: fleet_bin.to_owned(),
            inventory,
            data: dir.join("data"),
            store: dir.join("store"),
            keys: dir.join("keys"),
            root: dir.join("root.json"),
        };
        let order_key = p.data.join("order.key");
        trust_root(fleet_bin, &p.keys, &p.root, Some(&order_key));
        let bin_dir = own_binaries().unwrap_or_else(|e| panic!("{e}"));
        p.run_i(&["hosts", "trust"]).ok();
        p.run_i(&[
            "provision",
            "--trust",
            &s(&p.root),
            "--agent",
            &s(&bin_dir.join("fleet-agent")),
        ])
        .ok();
        // As an init system would: <root>/bin/fleet-agent run --root <root> on every node.
        p.fleet
            .start_agents()
            .unwrap_or_else(|e| panic!("the agents start: {e}"));
        p
    }

    /// The database the cluster's servers share.
    pub fn db(&self) -> &TestDb {
        &self.db
    }

    /// `fleet ARGS` with the controller's data directory.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.fleet_bin);
        cmd.args(args).env("FLEET_DATA_DIR", &self.data);
        cmd
    }

    /// Runs `fleet ARGS` with the controller's data directory.
    pub fn run(&self, args: &[&str]) -> FleetRun {
        self.command(args)
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", self.fleet_bin.display()))
            .into()
    }

    /// Runs `fleet ARGS -i INVENTORY` with the controller's data directory.
    pub fn run_i(&self, args: &[&str]) -> FleetRun {
        let inventory = s(&self.inventory);
        let mut all = args.to_vec();
        all.extend(["-i", &inventory]);
        self.run(&all)
    }

    /// `fleet ARGS --json -i INVENTORY`, which must succeed; its JSON.
    pub fn ok_json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        self.run_i(&all).ok().json()
    }

    /// Builds release `version` of the project's own binaries into the release store
    /// (`fleet release build --bin-dir`); FLEET_RELEASE makes each server report its own.
    pub fn build_release(&self, version: &str) {
        let bin_dir = own_binaries().unwrap_or_else(|e| panic!("{e}"));
        self.build_release_from(version, &bin_dir);
    }

    /// Builds release `version` whose `bin/etl-server` is the shell script `server` (the
    /// project's own `fleet-agent` beside it): a release that fails on purpose.
    pub fn build_release_with_server(&self, version: &str, server: &str) {
        use std::os::unix::fs::PermissionsExt;
        let own = own_binaries().unwrap_or_else(|e| panic!("{e}"));
        let bin_dir = self.fleet.dir().join(format!("bin-{version}"));
        std::fs::create_dir_all(&bin_dir).expect("a bin dir");
        std::fs::copy(own.join("fleet-agent"), bin_dir.join("fleet-agent")).expect("the agent");
        let script = bin_dir.join("etl-server");
        std::fs::write(&script, server).expect("the server script");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        self.build_release_from(version, &bin_dir);
    }

    fn build_release_from(&self, version: &str, bin_dir: &Path) {
        self.run(&[
            "release",
            "build",
            "--version",
            version,
            "--bin-dir",
            &s(bin_dir),
            "--key",
            &s(&self.keys.join("release.key")),
            "--out",
            &s(&self.store),
        ])
        .ok();
    }

    /// Pushes and activates `version` on every node, then waits until every agent supervises
    /// a healthy server of it with a heartbeat in Redis.
    pub fn activate(&self, version: &str) {
        self.ok_json(&["push", version, "--store", &s(&self.store)]);
        let activated = self.ok_json(&["activate", version]);
        for (node, server) in per_node(&activated, "server") {
            assert_eq!(server, "committed", "{node}: {activated}");
        }
        self.wait_status(
            &format!("every server healthy on {version} with a heartbeat"),
            Duration::from_secs(30),
            |n| {
                let d = &n["daemon"];
                n["active"] == version
                    && d["server"] == "healthy"
                    && d["server_release"] == version
                    && d["server_pid"].is_u64()
                    && d["heartbeat_age_ms"].is_u64()
            },
        );
    }

    /// Polls `fleet status --json` until `done` holds for every node, at most `within`.
    pub fn wait_status(
        &self,
        what: &str,
        within: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let json = self.ok_json(&["status"]);
            let nodes = json["nodes"].as_array().cloned().unwrap_or_default();
            if nodes.len() == self.fleet.nodes().len() && nodes.iter().all(&done) {
                return json;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {within:?}; last status: {json}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// An HTTP request to node `k`'s server, with the cluster's admin token as provisioning
    /// wrote it among the node's secrets.
    pub fn http(&self, k: usize, method: &str, path: &str, body: &str) -> (u16, Value) {
        let node = &self.fleet.nodes()[k];
        let auth = format!("Bearer {}", self.admin_token(k));
        let (status, text) = self.rt.block_on(call_with_headers(
            node.api.into(),
            method,
            path,
            &[("Authorization", &auth)],
            body.as_bytes(),
        ));
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    /// The cluster's admin token, as provisioning wrote it among node `k`'s secrets.
    pub fn admin_token(&self, k: usize) -> String {
        let file = self.fleet.nodes()[k]
            .root
            .join("config/secrets/admin_token");
        std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
            .trim()
            .to_owned()
    }

    /// The release node `k`'s server says it runs (`/health`'s `release`).
    pub fn serving(&self, k: usize) -> Value {
        let (status, health) = self.http(k, "GET", "/health", "");
        assert_eq!(status, 200, "node {k} /health: {health}");
        health["release"].clone()
    }

    /// Starts continuous load on the cluster (runs all along, a schedule firing every second),
    /// checked from outside until [`crate::LoadChecker::finish`].
    pub fn load(&self) -> crate::LoadChecker {
        let nodes = self
            .fleet
            .nodes()
            .iter()
            .map(|n| crate::LoadNode::new(&n.name, n.api.into()))
            .collect();
        let mut opts =
            crate::LoadOptions::new(nodes, &self.db.url, self.fleet.dir().join("shared"));
        opts.token = Some(self.admin_token(0));
        crate::LoadChecker::start(opts).unwrap_or_else(|e| panic!("load: {e}"))
    }

    /// Runs `scenario`; when it panics, panics again with the nodes' agent and server logs.
    pub fn with_logs(&mut self, scenario: impl FnOnce(&mut Provisioned)) {
        let outcome = catch_unwind(AssertUnwindSafe(|| scenario(self)));
        if let Err(panic) = outcome {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|m| (*m).to_owned()));
            match message {
                Some(m) => panic!(
                    "{m}\n\nthe nodes' agent and server logs (last lines):\n{}",
                    self.fleet.agent_logs(30)
                ),
                None => resume_unwind(panic),
            }
        }
    }
}

/// Per node of a `--json` report, `field`, in the order listed.
pub fn per_node(json: &Value, field: &str) -> Vec<(String, Value)> {
    json["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("no nodes in {json}"))
        .iter()
        .map(|n| {
            let name = n["node"].as_str().unwrap_or("?").to_owned();
            (name, n[field].clone())
        })
        .collect()
}
