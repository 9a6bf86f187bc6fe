//! Rolling upgrades carried by the agents themselves: a real cluster of `etl-server`s, each
//! supervised by its real `fleet-agent run` daemon, on this machine's Postgres (a database of
//! the test's own) and Redis (a key prefix of its own). The test signs orders and controls
//! with the trust root's order key and hands them to the nodes as the deploy key's `order`
//! and `control` requests would; from there the agents coordinate through Redis alone. A
//! sampler watches every node's daemon from outside all along: never more nodes out of
//! service than the order allows.

mod common;

use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use fleet_agent::{Layout, Request};
use fleet_release::Timestamp;
use fleet_release::order::{Action, Control, Order};
use fleet_tests::{
    PrivateRedis, Signing, TestDb, TestRedis, build_release, bundle_manifest_digest,
};
use serde_json::Value;

const CLUSTER: &str = "acme/prod";

fn free_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("a free port");
    l.local_addr().expect("its address")
}

/// `bin/etl-server` of a release that runs the real server.
fn good() -> String {
    let server = fleet_tests::own_binaries()
        .unwrap_or_else(|e| panic!("{e}"))
        .join("etl-server");
    format!("#!/bin/sh\nexec {server:?} \"$@\"\n")
}

/// `bin/etl-server` of a release that never serves.
const BROKEN: &str = "#!/bin/sh\necho 'this release is broken' >&2\nexit 3\n";

struct Node {
    name: String,
    layout: Layout,
    /// The server's API.
    api: SocketAddr,
    agent: Option<Child>,
}

/// N nodes of one cluster sharing a database, a Redis prefix and a trust root.
struct Cluster {
    dir: tempfile::TempDir,
    signing: Signing,
    nodes: Vec<Node>,
    digests: std::collections::HashMap<String, String>,
    sequence: u64,
    redis_url: String,
    prefix: String,
    /// The cluster's shared storage.
    shared: PathBuf,
    db: TestDb,
}

impl Cluster {
    async fn new(label: &str, n: usize) -> Cluster {
        let redis = TestRedis::new(label);
        Self::with_redis(label, n, &redis.url, &redis.prefix).await
    }

    /// The cluster on the Redis at `url`, under `prefix`.
    async fn with_redis(label: &str, n: usize, url: &str, prefix: &str) -> Cluster {
        let db = TestDb::new(label).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let signing = Signing::generate();
        let shared = dir.path().join("shared");
        fs::create_dir_all(&shared).expect("shared");
        let mut nodes = Vec::new();
        for i in 1..=n {
            let name = format!("n{i}");
            let layout = Layout::new(dir.path().join(&name));
            layout.ensure().expect("layout");
            fs::write(layout.trust_root(), signing.root.to_json()).expect("trust");
            let root = layout.root().to_owned();
            let secrets = root.join("config/secrets");
            fs::create_dir_all(&secrets).expect("secrets");
            fs::write(secrets.join("redis_url"), format!("{url}\n")).expect("secret");
            fs::write(secrets.join("admin_token"), "test-admin-token-0123456789\n")
                .expect("secret");
            let api = free_port();
            // Two runs at a time per server (a pool of 8 Postgres connections): two clusters
            // of this file's tests at once stay well under Postgres' default 100.
            fs::write(
                root.join("config/server.toml"),
                format!(
                    "node = {name:?}\nlisten = \"{api}\"\nshared_storage = {shared:?}\npostgres_url = {:?}\nredis_url = {:?}\nredis_prefix = {:?}\nadmin_token_file = {:?}\n[limits]\nshutdown_grace_secs = 2\nmax_running_flows = 2\n",
                    db.url,
                    url,
                    prefix,
                    secrets.join("admin_token"),
                ),
            )
            .expect("server.toml");
            fs::write(
                root.join("config/agent.toml"),
                format!(
                    "node = {name:?}\ncustomer = \"acme\"\ncluster = \"prod\"\nnode_root = {root:?}\nredis_url_file = {:?}\nmetrics_listen = \"\"\n[rollout]\nmin_healthy_secs = 1\nhealth_timeout_secs = 20\nslot_ttl_ms = 3000\npoll_ms = 200\n[supervise]\nstop_grace_secs = 5\ndrain_deadline_secs = 10\nhealth_interval_ms = 200\nheartbeat_interval_ms = 300\nheartbeat_ttl_ms = 2000\n",
                    secrets.join("redis_url"),
                ),
            )
            .expect("agent.toml");
            nodes.push(Node {
                name,
                layout,
                api,
                agent: None,
            });
        }
        Cluster {
            dir,
            signing,
            nodes,
            digests: Default::default(),
            sequence: 0,
            redis_url: url.to_owned(),
            prefix: prefix.to_owned(),
            shared,
            db,
        }
    }

    /// Builds `version` (its `bin/etl-server` is `script`) and stages it on every node.
    fn stage(&mut self, version: &str, script: &str) {
        let all: Vec<usize> = (0..self.nodes.len()).collect();
        self.stage_on(version, script, &all);
    }

    /// Builds `version` and stages it on the nodes `on` only.
    fn stage_on(&mut self, version: &str, script: &str, on: &[usize]) {
        let tree = self.dir.path().join(format!("tree-{version}"));
        fs::create_dir_all(tree.join("bin")).expect("tree");
        let server = tree.join("bin/etl-server");
        fs::write(&server, script).expect("script");
        fs::set_permissions(&server, fs::Permissions::from_mode(0o755)).expect("chmod");
        let bundle = build_release(
            version,
            &tree,
            &self.signing.release_key,
            &self.dir.path().join("store"),
            SystemTime::now(),
        );
        self.digests
            .insert(version.into(), bundle_manifest_digest(&bundle));
        let bytes = fs::read(&bundle).expect("bundle");
        for node in on.iter().map(|&k| &self.nodes[k]) {
            fleet_agent::stage(
                &node.layout,
                &version.parse().expect("version"),
                &mut &bytes[..],
                SystemTime::now(),
            )
            .expect("staged");
        }
    }

    /// Activates `version` on every node without a daemon, then starts the daemons and waits
    /// until every server is healthy.
    fn start(&mut self, version: &str) {
        for k in 0..self.nodes.len() {
            fleet_agent::activate(
                &self.nodes[k].layout,
                &version.parse().expect("version"),
                false,
            )
            .expect("activated");
            self.start_agent(k, &[]);
        }
        for k in 0..self.nodes.len() {
            self.wait(k, "the server is healthy", Duration::from_secs(60), |s| {
                s["daemon"]["server"] == "healthy"
            });
        }
    }

    /// Starts node `k`'s daemon as an init system would (its log appended to `agent.log`).
    fn start_agent(&mut self, k: usize, env: &[(&str, &str)]) {
        let node = &mut self.nodes[k];
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.layout.root().join("agent.log"))
            .expect("agent.log");
        let child = Command::new(env!("CARGO_BIN_EXE_fleet-agent"))
            .arg("run")
            .arg("--root")
            .arg(node.layout.root())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("fleet-agent run");
        node.agent = Some(child);
    }

    /// Sends `signal` to node `k`'s daemon.
    fn signal_agent(&self, k: usize, signal: rustix::process::Signal) {
        let child = self.nodes[k].agent.as_ref().expect("an agent runs");
        let pid = rustix::process::Pid::from_child(child);
        rustix::process::kill_process(pid, signal).expect("signal the agent");
    }

    /// Whether node `k`'s daemon has exited (it is reaped then).
    fn agent_exited(&mut self, k: usize) -> bool {
        let child = self.nodes[k].agent.as_mut().expect("an agent runs");
        child.try_wait().expect("wait").is_some()
    }

    /// SETs `key` (under the cluster's prefix) to `value` in the cluster's Redis.
    async fn redis_set(&self, key: &str, value: &str) {
        let client = redis::Client::open(self.redis_url.as_str()).expect("redis url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("a connection to Redis");
        redis::cmd("SET")
            .arg(format!("{}{key}", self.prefix))
            .arg(value)
            .query_async::<()>(&mut conn)
            .await
            .expect("SET");
    }

    /// The answer of node `k`'s agent to `request` (stdin: `input`), as `fleet-agent serve`
    /// prints it.
    fn ask(&self, k: usize, request: Request, input: &[u8]) -> Value {
        let line = fleet_agent::respond(
            &self.nodes[k].layout,
            request,
            || Ok(input),
            SystemTime::now(),
        )
        .line;
        serde_json::from_str(&line).expect("a JSON answer")
    }

    fn status(&self, k: usize) -> Value {
        self.ask(k, Request::Status, b"")
    }

    fn report(&self, k: usize, rollout: &str) -> Value {
        self.ask(k, Request::Rollout { id: rollout.into() }, b"")
    }

    fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let text =
                    fs::read_to_string(n.layout.root().join("agent.log")).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!("--- {} agent.log\n{}\n", n.name, tail.join("\n"))
            })
            .collect()
    }

    fn wait(&self, k: usize, what: &str, within: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let status = self.status(k);
            if done(&status) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{}: {what}: not within {within:?}; last status {status}\n{}",
                self.nodes[k].name,
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn next_sequence(&mut self) -> u64 {
        self.sequence += 1;
        self.sequence
    }

    /// An order of rollout `rollout` to `version` for every node, canary first.
    fn order(
        &mut self,
        rollout: &str,
        version: &str,
        canary: &[&str],
        max_unavailable: u32,
    ) -> Order {
        let created = Timestamp::now();
        Order {
            format: fleet_release::order::FORMAT,
            rollout: rollout.into(),
            cluster: CLUSTER.into(),
            version: version.parse().expect("version"),
            manifest_sha256: self.digests[version].clone(),
            targets: self.nodes.iter().map(|n| n.name.clone()).collect(),
            members: self.nodes.iter().map(|n| n.name.clone()).collect(),
            canary: canary.iter().map(|c| (*c).to_owned()).collect(),
            max_unavailable,
            min_healthy_secs: 1,
            health_timeout_secs: 15,
            smoke_flow: None,
            rollback_of: None,
            deadline: created.plus(Duration::from_secs(600)),
            sequence: self.next_sequence(),
            created,
            expires: created.plus(Duration::from_secs(600)),
        }
    }

    /// Hands the signed `order` to the nodes `to`; each must take it.
    fn hand(&self, order: Order, to: &[usize]) {
        let bytes = self.signing.order(order);
        for &k in to {
            let answer = self.ask(k, Request::Order, &bytes);
            assert_eq!(answer["ok"], true, "{}: {answer}", self.nodes[k].name);
        }
    }

    fn control(&mut self, rollout: &str, action: Action, to: &[usize]) {
        let control = Control {
            format: fleet_release::order::FORMAT,
            rollout: rollout.into(),
            cluster: CLUSTER.into(),
            action,
            sequence: self.next_sequence(),
            expires: Timestamp::now().plus(Duration::from_secs(600)),
        };
        let bytes = self.signing.control(control);
        for &k in to {
            let answer = self.ask(k, Request::Control, &bytes);
            assert_eq!(answer["ok"], true, "{}: {answer}", self.nodes[k].name);
        }
    }

    /// Waits until node `k`'s report on `rollout` gives every target an outcome.
    fn finished(&self, k: usize, rollout: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let report = self.report(k, rollout);
            let done = report["nodes"]
                .as_array()
                .is_some_and(|ns| ns.iter().all(|n| !n["outcome"].is_null()));
            if done {
                return report;
            }
            assert!(
                Instant::now() < deadline,
                "rollout {rollout} not over within {within:?}; last report {report}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Starts continuous load on the cluster (runs submitted all along, a schedule firing
    /// every second), checked from outside until [`fleet_tests::LoadChecker::finish`].
    fn load(&self) -> fleet_tests::LoadChecker {
        let nodes = self
            .nodes
            .iter()
            .map(|n| fleet_tests::LoadNode::new(&n.name, n.api))
            .collect();
        let opts = fleet_tests::LoadOptions::new(nodes, &self.db.url, &self.shared);
        fleet_tests::LoadChecker::start(opts)
            .unwrap_or_else(|e| panic!("load: {e}\n{}", self.logs()))
    }

    /// The release node `k`'s running server was started from.
    fn serving(&self, k: usize) -> Value {
        self.status(k)["daemon"]["server_release"].clone()
    }

    /// Samples every node's daemon from outside until stopped: the most nodes out of service
    /// at once (a server not healthy, or a step in progress), with what was seen then.
    fn sampler(&self) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let roots: Vec<(String, PathBuf)> = self
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.layout.root().to_owned()))
            .collect();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut worst = (0, String::new());
            while !flag.load(Ordering::SeqCst) {
                let mut out = Vec::new();
                for (name, root) in &roots {
                    let line = fleet_agent::respond(
                        &Layout::new(root),
                        Request::Status,
                        || Ok(std::io::empty()),
                        SystemTime::now(),
                    )
                    .line;
                    let s: Value = serde_json::from_str(&line).unwrap_or_default();
                    let d = &s["daemon"];
                    if d["server"] != "healthy" || !d["step"].is_null() {
                        out.push(format!("{name} ({}, step {})", d["server"], d["step"]));
                    }
                }
                if out.len() > worst.0 {
                    worst = (out.len(), out.join("; "));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            worst
        });
        Sampler { stop, thread }
    }
}

struct Sampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(usize, String)>,
}

impl Sampler {
    fn most_out_of_service(self) -> (usize, String) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("the sampler")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.agent.take() {
                let pid = rustix::process::Pid::from_child(&child);
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
                let _ = child.wait();
            }
        }
    }
}

fn outcomes(report: &Value) -> Vec<(String, String)> {
    report["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| {
            (
                n["node"].as_str().unwrap_or("?").to_owned(),
                n["outcome"].as_str().unwrap_or("none").to_owned(),
            )
        })
        .collect()
}

fn names(cluster: &Cluster) -> Vec<String> {
    cluster.nodes.iter().map(|n| n.name.clone()).collect()
}

fn all(outcome: &str, cluster: &Cluster, canary_first: &[&str]) -> Vec<(String, String)> {
    let mut order: Vec<String> = canary_first.iter().map(|c| (*c).to_owned()).collect();
    order.extend(
        names(cluster)
            .into_iter()
            .filter(|n| !canary_first.contains(&n.as_str())),
    );
    order.into_iter().map(|n| (n, outcome.to_owned())).collect()
}

/// Three nodes rolled 1.0.0 → 2.0.0 under load, the canary first, one node out of service at
/// a time: every node committed and serves 2.0.0, every node's report says so, the order the
/// controller handed to two nodes reached the third through Redis, verified there, and the
/// scheduler's lease moved with the upgrade of its holder without a missed or doubled fire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_roll_a_cluster_node_by_node() {
    let mut c = Cluster::new("agroll", 3).await;
    c.stage("1.0.0", &good());
    c.stage("2.0.0", &good());
    c.start("1.0.0");
    let load = c.load();
    // The node holding the scheduler's lease is upgraded too: the lease moves, and the
    // load's schedule (a fire every second) must see each second fired once.
    let (status, before) = fleet_tests::call(c.nodes[0].api, "GET", "/api/cluster", "").await;
    assert_eq!(status, 200, "{before}");
    let leader = before["leader"]
        .as_str()
        .expect("a scheduler leader")
        .to_owned();
    let sampler = c.sampler();
    let order = c.order("r1", "2.0.0", &["n2"], 1);
    // n3 is not handed its order: it takes it from Redis, after its own checks.
    c.hand(order, &[0, 1]);
    let report = c.finished(0, "r1", Duration::from_secs(180));
    let (most, when) = sampler.most_out_of_service();
    assert_eq!(outcomes(&report), all("committed", &c, &["n2"]), "{report}");
    assert!(most <= 1, "{most} nodes out of service at once: {when}");
    for k in 0..3 {
        assert_eq!(c.serving(k), "2.0.0", "{}", c.nodes[k].name);
    }
    let at = |n: &str, field: &str| {
        report["nodes"]
            .as_array()
            .and_then(|ns| ns.iter().find(|x| x["node"] == n))
            .and_then(|x| x[field].as_u64())
            .unwrap_or_else(|| panic!("no {field} for {n}: {report}"))
    };
    let started = |n: &str| at(n, "started_unix_ms");
    let ended = |n: &str| at(n, "ended_unix_ms");
    assert!(
        ended("n2") <= started("n1") && ended("n2") <= started("n3"),
        "the canary went first: {report}"
    );
    assert!(
        c.nodes[2].layout.order_record("r1").is_file(),
        "n3 took the order from Redis"
    );
    let (_, after) = fleet_tests::call(c.nodes[0].api, "GET", "/api/cluster", "").await;
    assert!(
        after["epoch"].as_i64() > before["epoch"].as_i64(),
        "the scheduler's lease never moved off {leader}: {before} then {after}"
    );
    load.finish().assert_clean(1);
}

/// A release whose server never serves: the canary rolls back to 1.0.0, the failure flag
/// goes up, no other node is switched (they are `skipped`, naming the failure), and every node
/// serves 1.0.0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_halts_the_rollout() {
    let mut c = Cluster::new("aghalt", 3).await;
    c.stage("1.0.0", &good());
    c.stage("2.0.0", BROKEN);
    c.start("1.0.0");
    let load = c.load();
    let order = c.order("r1", "2.0.0", &["n1"], 1);
    c.hand(order, &[0, 1, 2]);
    let report = c.finished(1, "r1", Duration::from_secs(120));
    assert_eq!(
        outcomes(&report),
        [
            ("n1".to_owned(), "rolled_back".to_owned()),
            ("n2".to_owned(), "skipped".to_owned()),
            ("n3".to_owned(), "skipped".to_owned())
        ],
        "{report}"
    );
    let halted = report["halted"].as_str().unwrap_or_default();
    assert!(
        halted.starts_with("n1: release 2.0.0 failed its health gate"),
        "{report}"
    );
    let skipped = report["nodes"][1]["reason"].as_str().unwrap_or_default();
    assert!(skipped.contains("the rollout halted: n1:"), "{report}");
    for k in 0..3 {
        assert_eq!(c.serving(k), "1.0.0", "{}", c.nodes[k].name);
    }
    load.finish().assert_clean(1);
}

/// Pause holds the nodes that have not begun; resume lets them go on; abort with rollback
/// returns the committed nodes to the release they ran before, one at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_and_abort_with_rollback() {
    let mut c = Cluster::new("agpause", 3).await;
    c.stage("1.0.0", &good());
    c.stage("2.0.0", &good());
    c.start("1.0.0");
    let load = c.load();
    let order = c.order("r1", "2.0.0", &[], 1);
    c.hand(order, &[0, 1, 2]);
    // Handed to n1 only: the others learn it through Redis. A node that began its step
    // before finishes it; the rest wait.
    c.control("r1", Action::Pause, &[0]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let paused = loop {
        let report = c.report(2, "r1");
        let nodes = report["nodes"].as_array().expect("nodes");
        let waiting = nodes
            .iter()
            .filter(|n| n["step"] == "waiting: paused")
            .count();
        let committed = nodes.iter().filter(|n| n["outcome"] == "committed").count();
        if waiting + committed == 3 && waiting >= 2 {
            assert_eq!(report["asked"], "pause", "{report}");
            break committed;
        }
        assert!(
            Instant::now() < deadline,
            "not paused everywhere: {report}\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    std::thread::sleep(Duration::from_secs(2));
    let on_new = (0..3).filter(|&k| c.serving(k) == "2.0.0").count();
    assert_eq!(on_new, paused, "a node moved while the rollout was paused");
    c.control("r1", Action::Resume, &[2]);
    let report = c.finished(0, "r1", Duration::from_secs(180));
    assert_eq!(outcomes(&report), all("committed", &c, &[]), "{report}");
    let sampler = c.sampler();
    c.control("r1", Action::AbortRollback, &[1]);
    let deadline = Instant::now() + Duration::from_secs(180);
    let report = loop {
        let report = c.report(0, "r1");
        if outcomes(&report) == all("rolled_back", &c, &[]) {
            break report;
        }
        assert!(
            Instant::now() < deadline,
            "not rolled back: {report}\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let (most, when) = sampler.most_out_of_service();
    assert!(most <= 1, "{most} nodes out of service at once: {when}");
    assert!(
        report["nodes"][0]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("aborted with rollback: back to 1.0.0"),
        "{report}"
    );
    for k in 0..3 {
        assert_eq!(c.serving(k), "1.0.0");
    }
    load.finish().assert_clean(1);
}

/// Five nodes, two out of service at a time at most, the canary first: every node committed,
/// and never more than two out of service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_two_at_a_time() {
    let mut c = Cluster::new("agfive", 5).await;
    c.stage("1.0.0", &good());
    c.stage("2.0.0", &good());
    c.start("1.0.0");
    let load = c.load();
    let sampler = c.sampler();
    let order = c.order("r1", "2.0.0", &["n3"], 2);
    c.hand(order, &[0, 1, 2, 3, 4]);
    let report = c.finished(4, "r1", Duration::from_secs(240));
    let (most, when) = sampler.most_out_of_service();
    assert_eq!(outcomes(&report), all("committed", &c, &["n3"]), "{report}");
    assert!(most <= 2, "{most} nodes out of service at once: {when}");
    for k in 0..5 {
        assert_eq!(c.serving(k), "2.0.0", "{}", c.nodes[k].name);
    }
    load.finish().assert_clean(2);
}

/// The first node's agent is SIGKILLed right after its journal records each step in turn
/// (drain, stop, switch, start, gate), and started again as an init system would: every
/// rollout converges, every node committed, and no other node took a slot while the killed
/// one was out (its busy mark outlives its lease).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_at_each_step_converges() {
    let mut c = Cluster::new("agkill", 3).await;
    let steps = ["drain", "stop", "switch", "start", "gate"];
    c.stage("1.0.0", &good());
    for i in 0..steps.len() {
        c.stage(&format!("{}.0.0", i + 2), &good());
    }
    c.start("1.0.0");
    let load = c.load();
    for (i, step) in steps.iter().enumerate() {
        let version = format!("{}.0.0", i + 2);
        let rollout = format!("r-{step}");
        c.signal_agent(0, rustix::process::Signal::TERM);
        while !c.agent_exited(0) {
            std::thread::sleep(Duration::from_millis(50));
        }
        c.start_agent(0, &[("FLEET_AGENT_CRASH_AT", step)]);
        c.wait(0, "the server is healthy", Duration::from_secs(60), |s| {
            s["daemon"]["server"] == "healthy"
        });
        let sampler = c.sampler();
        let order = c.order(&rollout, &version, &["n1"], 1);
        c.hand(order, &[0, 1, 2]);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !c.agent_exited(0) {
            assert!(
                Instant::now() < deadline,
                "the agent did not crash at {step}\n{}",
                c.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // Out for a while, longer than its slot's lease: nobody else moves meanwhile.
        std::thread::sleep(Duration::from_secs(4));
        let others = c.report(1, &rollout);
        let moved: Vec<&Value> = others["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .filter(|n| n["node"] != "n1" && !n["started_unix_ms"].is_null())
            .collect();
        assert!(
            moved.is_empty(),
            "a node began while n1's agent was dead ({step}): {others}"
        );
        c.start_agent(0, &[]);
        let report = c.finished(1, &rollout, Duration::from_secs(180));
        let (most, when) = sampler.most_out_of_service();
        assert_eq!(
            outcomes(&report),
            all("committed", &c, &["n1"]),
            "{step}: {report}"
        );
        assert!(
            most <= 1,
            "{step}: {most} nodes out of service at once: {when}"
        );
        for k in 0..3 {
            assert_eq!(
                c.serving(k),
                version.as_str(),
                "{step}: {}",
                c.nodes[k].name
            );
        }
    }
    load.finish().assert_clean(1);
}

/// An agent SIGSTOPped in its gate past its slot's lease, then SIGCONTed: it does not commit
/// on the stale slot (it switches back and asks again, with a new epoch), nobody else moved
/// meanwhile, and the rollout completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_agent_does_not_act_on_its_stale_slot() {
    let mut c = Cluster::new("agstop", 3).await;
    c.stage("1.0.0", &good());
    c.stage("2.0.0", &good());
    c.start("1.0.0");
    let load = c.load();
    let mut order = c.order("r1", "2.0.0", &["n1"], 1);
    order.min_healthy_secs = 4;
    let sampler = c.sampler();
    c.hand(order, &[0, 1, 2]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let first = loop {
        let r = c.report(0, "r1");
        if r["nodes"][0]["step"] == "gate" {
            break r["nodes"][0]["epoch"].as_u64().expect("an epoch");
        }
        assert!(
            Instant::now() < deadline,
            "n1 never reached its gate: {r}\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    c.signal_agent(0, rustix::process::Signal::STOP);
    std::thread::sleep(Duration::from_secs(6));
    c.signal_agent(0, rustix::process::Signal::CONT);
    let report = c.finished(1, "r1", Duration::from_secs(180));
    let (most, when) = sampler.most_out_of_service();
    assert_eq!(outcomes(&report), all("committed", &c, &["n1"]), "{report}");
    assert!(most <= 1, "{most} nodes out of service at once: {when}");
    let last = report["nodes"][0]["epoch"].as_u64().expect("an epoch");
    assert!(
        last > first,
        "n1 committed on its stale slot (epoch {first}): {report}"
    );
    let log = fs::read_to_string(c.nodes[0].layout.root().join("agent.log")).expect("log");
    assert!(
        log.contains("lost its upgrade slot before the commit"),
        "{log}"
    );
    load.finish().assert_clean(1);
}

/// Redis stopped while a node is in its step, then started empty: the step does not commit
/// without its lease (it is undone), no node is left half-switched, and the agents re-seed
/// Redis from their records (orders, progress, epochs): the rollout completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_mid_rollout() {
    let mut redis = PrivateRedis::start();
    let mut c = Cluster::with_redis("agredis", 3, &redis.url(), "roll:").await;
    c.stage("1.0.0", &good());
    c.stage("2.0.0", &good());
    c.start("1.0.0");
    let load = c.load();
    let mut order = c.order("r1", "2.0.0", &[], 1);
    order.min_healthy_secs = 3;
    c.hand(order, &[0, 1, 2]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = c.report(0, "r1");
        let in_gate = r["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .any(|n| n["step"] == "gate" && n["node"] != "n3");
        if in_gate {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no node reached its gate: {r}\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    redis.stop();
    std::thread::sleep(Duration::from_secs(5));
    redis.restart();
    let report = c.finished(2, "r1", Duration::from_secs(240));
    assert_eq!(outcomes(&report), all("committed", &c, &[]), "{report}");
    for k in 0..3 {
        let s = c.status(k);
        assert_eq!(s["active"], "2.0.0", "{s}");
        assert_eq!(s["daemon"]["server_release"], "2.0.0", "{s}");
        assert!(
            !c.nodes[k].layout.state().join("upgrade").exists(),
            "a journal left"
        );
    }
    let logs = c.logs();
    assert!(logs.contains("lost its upgrade slot"), "{logs}");
    // With Redis gone the whole cluster loses its membership: the bound on nodes out of
    // service is not the rollout's to keep then, but no run may fail or be lost.
    let load = load.finish();
    assert!(
        load.failed.is_empty() && load.lost.is_empty(),
        "runs failed or lost across the Redis restart:\n{}",
        load.summary()
    );
}

/// Orders and controls put in Redis by someone else are each verified by every agent: a
/// tampered order, one signed by a release key, one by an unknown key, a genuine old order
/// replayed below the nodes' sequence floor, and a forged control are refused; nothing
/// activates, no record is written, and the genuine rollout goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_in_redis_are_verified_by_each_agent() {
    let mut c = Cluster::new("agforge", 3).await;
    c.stage("1.0.0", &good());
    c.stage("2.0.0", &good());
    c.stage("3.0.0", &good());
    c.start("1.0.0");
    let load = c.load();
    let old = c.order("old", "3.0.0", &[], 3);
    let old = c.signing.order(old);
    let genuine = c.order("r1", "2.0.0", &[], 1);
    let evil1 = c.order("evil1", "3.0.0", &[], 3);
    let tampered = String::from_utf8(c.signing.order(evil1))
        .expect("utf-8")
        .replace("\"max_unavailable\":3", "\"max_unavailable\":2");
    let evil2 = c.order("evil2", "3.0.0", &[], 3);
    let by_release_key = fleet_tests::sign_order(evil2, &c.signing.release_key);
    let stranger = fleet_release::SecretKey::generate().expect("a key");
    let evil3 = c.order("evil3", "3.0.0", &[], 3);
    let by_stranger = fleet_tests::sign_order(evil3, &stranger);
    c.hand(genuine, &[0, 1, 2]);
    let forged_control = {
        let control = Control {
            format: fleet_release::order::FORMAT,
            rollout: "r1".into(),
            cluster: CLUSTER.into(),
            action: Action::AbortRollback,
            sequence: 99,
            expires: Timestamp::now().plus(Duration::from_secs(600)),
        };
        let mut signed = fleet_release::order::SignedControl::unsigned(control).expect("a control");
        signed.sign(&c.signing.release_key);
        signed.to_json()
    };
    c.redis_set("rollout:evil1:order", &tampered).await;
    c.redis_set(
        "rollout:evil2:order",
        std::str::from_utf8(&by_release_key).expect("utf-8"),
    )
    .await;
    c.redis_set(
        "rollout:evil3:order",
        std::str::from_utf8(&by_stranger).expect("utf-8"),
    )
    .await;
    c.redis_set(
        "rollout:old:order",
        std::str::from_utf8(&old).expect("utf-8"),
    )
    .await;
    c.redis_set("rollout:r1:control", &forged_control).await;
    let report = c.finished(0, "r1", Duration::from_secs(180));
    assert_eq!(outcomes(&report), all("committed", &c, &[]), "{report}");
    // Two more scans, then look.
    std::thread::sleep(Duration::from_secs(5));
    for k in 0..3 {
        assert_eq!(c.serving(k), "2.0.0");
        let layout = &c.nodes[k].layout;
        for id in ["evil1", "evil2", "evil3", "old"] {
            assert!(
                !layout.order_record(id).exists(),
                "{id} taken on n{}",
                k + 1
            );
        }
        let control = fleet_agent::control_record(layout, "r1").expect("read");
        assert!(
            control.is_none(),
            "the forged control was taken: {control:?}"
        );
        assert_eq!(fleet_agent::order_sequence(layout).expect("floor"), 2);
    }
    let logs = c.logs();
    for text in [
        "refused the order published in Redis: rollout order refused",
        "signed by a release key, not an order key",
        "refused the control published in Redis",
    ] {
        assert!(logs.contains(text), "no `{text}` in\n{logs}");
    }
    load.finish().assert_clean(1);
}

/// A release whose server crashes a moment after it starts, inside its `min_healthy_secs`:
/// rolled back on the canary, the failure flag up, the others skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_crashing_within_min_healthy_is_rolled_back() {
    let mut c = Cluster::new("agcrash", 3).await;
    c.stage("1.0.0", &good());
    let server = fleet_tests::own_binaries()
        .unwrap_or_else(|e| panic!("{e}"))
        .join("etl-server");
    // `$$` is the script's pid, which the exec'd server keeps: killed two seconds in.
    c.stage(
        "2.0.0",
        &format!("#!/bin/sh\n(sleep 2; kill -9 $$) &\nexec {server:?} \"$@\"\n"),
    );
    c.start("1.0.0");
    let load = c.load();
    let mut order = c.order("r1", "2.0.0", &["n2"], 1);
    order.min_healthy_secs = 5;
    c.hand(order, &[0, 1, 2]);
    let report = c.finished(0, "r1", Duration::from_secs(120));
    assert_eq!(
        outcomes(&report),
        [
            ("n2".to_owned(), "rolled_back".to_owned()),
            ("n1".to_owned(), "skipped".to_owned()),
            ("n3".to_owned(), "skipped".to_owned())
        ],
        "{report}"
    );
    let reason = report["nodes"][0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("the server exited during the gate"),
        "{report}"
    );
    for k in 0..3 {
        assert_eq!(c.serving(k), "1.0.0");
    }
    // The crashing canary was on probation through its gate (runs pinned to it only, never
    // the scheduler's leader): it lost no run and no fire, and the bound held.
    load.finish().assert_clean(1);
}

/// A smoke flow that fails on the upgraded node rolls it back (the flag up, the rest
/// skipped); one that succeeds lets every node commit, each having run it on itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_smoke_flow_gates_the_commit() {
    let mut c = Cluster::new("agsmoke", 3).await;
    c.stage("1.0.0", &good());
    c.stage("2.0.0", &good());
    c.start("1.0.0");
    let load = c.load();
    fs::create_dir_all(c.shared.join("in")).expect("in/");
    fs::write(c.shared.join("in/smoke.csv"), "id\n1\n2\n").expect("smoke.csv");
    let api = c.nodes[0].api;
    for (name, path) in [
        ("smoke-ok", "in/smoke.csv"),
        ("smoke-bad", "in/missing.csv"),
    ] {
        let flow = format!(
            "name: {name}\nsource: {{ type: csv, path: {path} }}\ntransform:\n  - cast: {{ id: int }}\ndestination: {{ type: jsonl, path: out/{name}.jsonl }}\n"
        );
        let (status, body) = fleet_tests::call(api, "POST", "/api/flows", &flow).await;
        assert!(status == 201 || status == 200, "{status} {body}");
    }
    let mut bad = c.order("r1", "2.0.0", &["n1"], 1);
    bad.smoke_flow = Some("smoke-bad".into());
    c.hand(bad, &[0, 1, 2]);
    let report = c.finished(1, "r1", Duration::from_secs(120));
    let got = outcomes(&report);
    assert_eq!(
        got[0],
        ("n1".to_owned(), "rolled_back".to_owned()),
        "{report}"
    );
    assert!(got[1..].iter().all(|(_, o)| o == "skipped"), "{report}");
    let reason = report["nodes"][0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("smoke flow smoke-bad: run"), "{report}");
    assert!(reason.contains("failed"), "{report}");
    let mut ok = c.order("r2", "2.0.0", &["n1"], 1);
    ok.smoke_flow = Some("smoke-ok".into());
    c.hand(ok, &[0, 1, 2]);
    let report = c.finished(2, "r2", Duration::from_secs(180));
    assert_eq!(outcomes(&report), all("committed", &c, &["n1"]), "{report}");
    // Each node ran the smoke flow on itself, once for r2 (and n1 once more for r1).
    let (status, runs) = fleet_tests::call(api, "GET", "/api/runs?flow=smoke-ok", "").await;
    assert_eq!(status, 200, "{runs}");
    let mut nodes: Vec<String> = runs["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .filter(|r| r["flow"] == "smoke-ok")
        .map(|r| {
            format!(
                "{} {}",
                r["node"].as_str().unwrap_or("?"),
                r["state"].as_str().unwrap_or("?")
            )
        })
        .collect();
    nodes.sort();
    assert_eq!(
        nodes,
        ["n1 succeeded", "n2 succeeded", "n3 succeeded"],
        "{runs}"
    );
    load.finish().assert_clean(1);
}

/// A member of the cluster that is not a target, down (its agent and server stopped): it
/// counts against `max_unavailable` as the order names it among the members, so no target
/// takes a slot until it is back; then every target commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_is_down_counts_though_not_a_target() {
    let mut c = Cluster::new("agmember", 4).await;
    c.stage("1.0.0", &good());
    c.stage("2.0.0", &good());
    c.start("1.0.0");
    c.signal_agent(3, rustix::process::Signal::TERM);
    while !c.agent_exited(3) {
        std::thread::sleep(Duration::from_millis(50));
    }
    // A daemon that stops takes its heartbeat with it: n4 is down from now on.
    let mut order = c.order("r1", "2.0.0", &[], 1);
    order.targets.truncate(3);
    c.hand(order, &[0, 1, 2]);
    std::thread::sleep(Duration::from_secs(6));
    let report = c.report(0, "r1");
    for n in report["nodes"].as_array().expect("nodes") {
        assert!(
            n["started_unix_ms"].is_null(),
            "{} went while n4 was down: {report}",
            n["node"]
        );
    }
    let waiting = report["nodes"][0]["step"].as_str().unwrap_or_default();
    assert!(waiting.contains("n4"), "{report}");
    c.start_agent(3, &[]);
    let report = c.finished(0, "r1", Duration::from_secs(180));
    let expected: Vec<(String, String)> = (1..=3)
        .map(|i| (format!("n{i}"), "committed".to_owned()))
        .collect();
    assert_eq!(outcomes(&report), expected, "{report}");
}

/// A target that cannot carry the order out (the release is not staged there) says so: it
/// takes the order from Redis, refuses it, publishes itself `skipped` with why, and raises the
/// failure flag, so the rollout ends instead of waiting for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_refuses_its_order_ends_skipped_and_halts() {
    let mut c = Cluster::new("agrefuse", 3).await;
    c.stage("1.0.0", &good());
    c.stage_on("2.0.0", &good(), &[0, 1]);
    c.start("1.0.0");
    let order = c.order("r1", "2.0.0", &["n1"], 1);
    c.hand(order, &[0, 1]);
    let report = c.finished(0, "r1", Duration::from_secs(120));
    let n3 = report["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["node"] == "n3")
        .cloned()
        .unwrap_or_default();
    assert_eq!(n3["outcome"], "skipped", "{report}");
    let why = n3["reason"].as_str().unwrap_or_default();
    assert!(
        why.contains("refused") && why.contains("not staged"),
        "{report}"
    );
    assert!(
        report["halted"]
            .as_str()
            .unwrap_or_default()
            .starts_with("n3: "),
        "{report}"
    );
}
