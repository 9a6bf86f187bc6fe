//! Nodes that run the ETL server under their agent daemon: three real sshd nodes provisioned by
//! the `fleet` binary, their `fleet-agent run` started as an init system would, releases of
//! the project's own binaries pushed and activated through the upgrade step, a real 3-node
//! cluster on this machine's Postgres (a database of the test's own) and Redis (the fleet's
//! own key prefix) running a flow, then a node-by-node upgrade and a rollback of one node.

use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::path::Path;
use std::time::{Duration, Instant};

use fleet_tests::{FleetOptions, TestDb, TestFleet, call, own_binaries};
use serde_json::Value;

use crate::support::{Run, run, run_on, trust_root};

/// The fleet, its files, and a runtime for the HTTP calls.
struct Cluster {
    fleet: TestFleet,
    inv: String,
    store: String,
    release_key: String,
    rt: tokio::runtime::Runtime,
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

impl Cluster {
    /// `fleet ARGS -i INVENTORY`, the controller's key in the fleet's folder.
    fn fleet_cmd(&self, args: &[&str]) -> Run {
        run_on(&self.inv, &self.fleet.dir().join("data"), args)
    }

    /// `fleet ARGS --json -i INVENTORY`, which must succeed; its JSON.
    fn ok_json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        self.fleet_cmd(&all).ok().json()
    }

    /// Per node of a `--json` report, `field`, node order as listed.
    fn per_node(json: &Value, field: &str) -> Vec<(String, Value)> {
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

    fn http(&self, k: usize, method: &str, path: &str, body: &str) -> (u16, Value) {
        let addr = self.fleet.nodes()[k].api.into();
        self.rt.block_on(call(addr, method, path, body))
    }

    /// Polls `fleet status --json` until `done` holds for every node, at most `within`.
    fn wait_status(&self, what: &str, within: Duration, done: impl Fn(&Value) -> bool) -> Value {
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

    /// The release node `k`'s server says it runs (`/health`'s `release`).
    fn serving(&self, k: usize) -> Value {
        let (status, health) = self.http(k, "GET", "/health", "");
        assert_eq!(status, 200, "node {k} /health: {health}");
        health["release"].clone()
    }
}

#[test]
fn agents_run_a_real_cluster_upgrade_it_node_by_node_and_roll_one_back() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // Declared first, dropped last: the agents stop their servers before the database goes.
    let db = rt.block_on(TestDb::new("e2e_daemons"));
    let fleet = TestFleet::start(FleetOptions {
        nodes: 3,
        postgres_url: db.url.clone(),
        ..FleetOptions::default()
    })
    .expect("test fleet");
    let dir = fleet.dir().to_owned();
    let inv = dir.join("inventory.yaml");
    fleet
        .write_inventory(&inv, &dir.join("known_hosts"))
        .expect("inventory");
    let keys = dir.join("keys");
    let mut cluster = Cluster {
        fleet,
        inv: s(&inv),
        store: s(&dir.join("store")),
        release_key: s(&keys.join("release.key")),
        rt,
    };
    let outcome = catch_unwind(AssertUnwindSafe(|| scenario(&mut cluster, &keys)));
    if let Err(panic) = outcome {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|m| (*m).to_owned()));
        match message {
            Some(m) => panic!(
                "{m}\n\nthe nodes' agent and server logs (last lines):\n{}",
                cluster.fleet.agent_logs(30)
            ),
            None => resume_unwind(panic),
        }
    }
}

fn scenario(c: &mut Cluster, keys: &Path) {
    let bin_dir = own_binaries().unwrap_or_else(|e| panic!("{e}"));
    let root = c.fleet.dir().join("root.json");
    trust_root(keys, &root);
    c.fleet_cmd(&["hosts", "trust"]).ok();
    c.fleet_cmd(&[
        "provision",
        "--trust",
        &s(&root),
        "--agent",
        &s(&bin_dir.join("fleet-agent")),
    ])
    .ok();

    // As an init system would: <root>/bin/fleet-agent run --root <root> on every node.
    c.fleet.start_agents().expect("the agents start");
    let idle = c.ok_json(&["status"]);
    for (node, daemon) in Cluster::per_node(&idle, "daemon") {
        assert!(daemon.is_object(), "{node}: no daemon in {idle}");
    }

    // Two releases of the same binaries: FLEET_RELEASE makes each server report its own.
    for v in ["1.0.0", "1.1.0"] {
        run(&[
            "release",
            "build",
            "--version",
            v,
            "--bin-dir",
            &s(&bin_dir),
            "--key",
            &c.release_key,
            "--out",
            &c.store,
        ])
        .ok();
    }
    let store = c.store.clone();
    c.ok_json(&["push", "1.0.0", "--store", &store]);
    let activated = c.ok_json(&["activate", "1.0.0"]);
    for (node, server) in Cluster::per_node(&activated, "server") {
        assert_eq!(server, "committed", "{node}: {activated}");
    }

    // Every agent supervises a healthy 1.0.0 server and its heartbeat lands in Redis.
    let status = c.wait_status(
        "every server healthy on 1.0.0 with a heartbeat",
        Duration::from_secs(30),
        |n| {
            let d = &n["daemon"];
            n["active"] == "1.0.0"
                && d["server"] == "healthy"
                && d["server_release"] == "1.0.0"
                && d["server_pid"].is_u64()
                && d["heartbeat_age_ms"].is_u64()
        },
    );
    for k in 0..3 {
        assert_eq!(c.serving(k), "1.0.0", "{status}");
    }

    // A flow defined on node-1 and run through node-1's API spreads over the cluster.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, cl) = c.http(0, "GET", "/api/cluster", "");
        let members = cl["members"].as_array().map_or(0, Vec::len);
        if members == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/api/cluster lists {members} members, not 3: {cl}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let shared = c.fleet.dir().join("shared");
    fs::write(shared.join("orders.csv"), "id,amount\n1,10\n2,250\n3,40\n").expect("csv");
    let flow = r#"{"name": "orders", "source": {"type": "csv", "path": "orders.csv", "header": true},
        "transform": [{"cast": {"id": "int", "amount": "int"}}, {"filter": "amount > 20"}],
        "destination": {"type": "jsonl", "path": "out/orders.jsonl"}}"#;
    let (code, body) = c.http(0, "POST", "/api/flows", flow);
    assert!(code == 201 || code == 200, "define the flow: {code} {body}");
    let mut ran_on = Vec::new();
    for _ in 0..3 {
        let (code, body) = c.http(0, "POST", "/api/flows/orders/run", "");
        assert_eq!(code, 202, "run: {body}");
        let id = body["run_id"].as_i64().expect("a run id");
        let deadline = Instant::now() + Duration::from_secs(30);
        let run = loop {
            let (_, run) = c.http(0, "GET", &format!("/api/runs/{id}"), "");
            if run["state"] == "succeeded" {
                break run;
            }
            assert!(
                run["state"] != "failed" && Instant::now() < deadline,
                "run {id} did not succeed: {run}"
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        assert_eq!(run["rows_written"], 2, "{run}");
        ran_on.push(run["node"].as_str().unwrap_or("?").to_owned());
    }
    ran_on.sort();
    assert_eq!(
        ran_on,
        ["node-1", "node-2", "node-3"],
        "round robin over the 3 members"
    );

    // 1.1.0 node by node (--parallel 1): each node drains, restarts and passes its health gate
    // (min_healthy_secs 2) before the next one starts.
    c.ok_json(&["push", "1.1.0", "--store", &store]);
    let started = Instant::now();
    let upgraded = c.ok_json(&["activate", "1.1.0", "--parallel", "1"]);
    let took = started.elapsed();
    for (node, server) in Cluster::per_node(&upgraded, "server") {
        assert_eq!(server, "committed", "{node}: {upgraded}");
    }
    assert!(
        took >= Duration::from_secs(6),
        "three health gates of 2 s one after the other took {took:?}: not one node at a time"
    );
    for k in 0..3 {
        assert_eq!(c.serving(k), "1.1.0");
    }

    // node-1 back to 1.0.0 through the upgrade step; the others stay on 1.1.0.
    let rolled = c.ok_json(&["rollback", "--limit", "node-1"]);
    assert_eq!(
        Cluster::per_node(&rolled, "server"),
        [("node-1".to_owned(), Value::from("committed"))],
        "{rolled}"
    );
    let status = c.ok_json(&["status"]);
    let active: Vec<(String, Value)> = Cluster::per_node(&status, "active");
    assert_eq!(
        active,
        [
            ("node-1".to_owned(), Value::from("1.0.0")),
            ("node-2".to_owned(), Value::from("1.1.0")),
            ("node-3".to_owned(), Value::from("1.1.0")),
        ],
        "{status}"
    );
    assert_eq!(c.serving(0), "1.0.0");
    assert_eq!(c.serving(1), "1.1.0");

    // Stopped as an init system stops them: each agent stops its server first.
    c.fleet.stop_agents().expect("the agents stop");
    for n in c.fleet.nodes() {
        assert!(
            std::net::TcpStream::connect_timeout(&n.api.into(), Duration::from_secs(1)).is_err(),
            "{}: a server still answers at {} after its agent stopped",
            n.name,
            n.api
        );
    }
}
