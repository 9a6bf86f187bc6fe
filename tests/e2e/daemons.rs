//! Nodes that run the ETL server under their agent daemon: three real sshd nodes provisioned by
//! the `fleet` binary, their `fleet-agent run` started as an init system would, releases of
//! the project's own binaries pushed and activated through the upgrade step, a real 3-node
//! cluster on this machine's Postgres (a database of the test's own) and Redis (the fleet's
//! own key prefix) running a flow, then a node-by-node upgrade and a rollback of one node.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use fleet_tests::{Provisioned, per_node};
use serde_json::Value;

#[test]
fn agents_run_a_real_cluster_upgrade_it_node_by_node_and_roll_one_back() {
    let mut c = Provisioned::start(Path::new(env!("CARGO_BIN_EXE_fleet")), "e2e_daemons", 3);
    c.with_logs(scenario);
}

fn scenario(c: &mut Provisioned) {
    let idle = c.ok_json(&["status"]);
    for (node, daemon) in per_node(&idle, "daemon") {
        assert!(daemon.is_object(), "{node}: no daemon in {idle}");
    }

    // Two releases of the same binaries: FLEET_RELEASE makes each server report its own.
    for v in ["1.0.0", "1.1.0"] {
        c.build_release(v);
    }
    // Every agent supervises a healthy 1.0.0 server and its heartbeat lands in Redis.
    c.activate("1.0.0");
    for k in 0..3 {
        assert_eq!(c.serving(k), "1.0.0");
    }
    let store = c.store.to_string_lossy().into_owned();

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
    for (node, server) in per_node(&upgraded, "server") {
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
        per_node(&rolled, "server"),
        [("node-1".to_owned(), Value::from("committed"))],
        "{rolled}"
    );
    let status = c.ok_json(&["status"]);
    let active: Vec<(String, Value)> = per_node(&status, "active");
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
