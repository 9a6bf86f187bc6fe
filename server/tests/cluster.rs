//! Several servers sharing one database and one Redis prefix: membership and dispatch.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{TestDb, TestServer};

const FLOW: &str = "name: tiny\nsource: { type: postgres, query: \"SELECT 1 AS x\" }\ndestination: { type: jsonl, path: out/tiny.jsonl }\n";
/// A run that takes a while, so that load builds up in a burst.
const SLOW: &str = "name: tiny\nsource: { type: postgres, query: \"SELECT 1 AS x FROM pg_sleep(0.2)\" }\ndestination: { type: jsonl, path: out/tiny.jsonl }\n";

/// Starts servers `names` (with `weights`) under one load-balancing setting and waits until
/// every one sees all of them.
async fn cluster(db: &TestDb, names: &[&str], weights: &[u32], lb: &str) -> Vec<TestServer> {
    let mut servers = Vec::new();
    for (name, weight) in names.iter().zip(weights) {
        let extra = format!("load_balancing = \"{lb}\"\nweight = {weight}\n");
        let name = name.to_string();
        servers.push(
            TestServer::start_edited(db, &extra, move |t| {
                t.replace("node = \"node-a\"", &format!("node = \"{name}\""))
            })
            .await,
        );
    }
    for _ in 0..200 {
        let mut all = true;
        for s in &servers {
            let (status, c) = s.call("GET", "/api/cluster", "").await;
            all &= status == 200 && c["active"].as_array().map(Vec::len) == Some(names.len());
        }
        if all {
            return servers;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the members never saw each other");
}

/// Submits `n` runs to `entry` at once and waits for all; the count of runs per executing node.
async fn burst(
    servers: &[TestServer],
    entry: usize,
    n: usize,
    flow: &str,
) -> BTreeMap<String, usize> {
    let (status, body) = servers[entry].call("POST", "/api/flows", flow).await;
    assert!(status == 201 || status == 200, "{body}");
    let mut ids = Vec::new();
    for _ in 0..n {
        let (status, body) = servers[entry].call("POST", "/api/flows/tiny/run", "").await;
        assert_eq!(status, 202, "{body}");
        ids.push(body["run_id"].as_i64().expect("id"));
    }
    let mut per_node = BTreeMap::new();
    for id in ids {
        let run = servers[entry].wait(id).await;
        assert_eq!(run["state"], "succeeded", "{run}");
        assert_eq!(run["node"], run["target_node"], "{run}");
        *per_node
            .entry(run["node"].as_str().expect("node").to_owned())
            .or_insert(0) += 1;
    }
    per_node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_over_thirty_runs_sent_to_one_node_is_exactly_even() {
    let db = TestDb::new("rr").await;
    let servers = cluster(&db, &["n1", "n2", "n3"], &[1, 1, 1], "round_robin").await;
    let per_node = burst(&servers, 0, 30, FLOW).await;
    assert_eq!(
        per_node.values().copied().collect::<Vec<_>>(),
        vec![10, 10, 10],
        "{per_node:?}"
    );
    let (_, c) = servers[1].call("GET", "/api/cluster", "").await;
    assert_eq!(c["load_balancing"], "round_robin");
    let names: Vec<&str> = c["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| m["node"].as_str().expect("node"))
        .collect();
    assert_eq!(names, vec!["n1", "n2", "n3"]);
    for s in servers {
        s.stop().await.expect("stop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_loaded_keeps_a_burst_within_two() {
    let db = TestDb::new("least").await;
    let servers = cluster(&db, &["n1", "n2", "n3"], &[1, 1, 1], "least_loaded").await;
    let per_node = burst(&servers, 1, 30, SLOW).await;
    let counts: Vec<usize> = per_node.values().copied().collect();
    assert_eq!(counts.len(), 3, "{per_node:?}");
    let (min, max) = (
        counts.iter().min().expect("min"),
        counts.iter().max().expect("max"),
    );
    assert!(max - min <= 2, "{per_node:?}");
    for s in servers {
        s.stop().await.expect("stop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_shares_follow_the_weights() {
    let db = TestDb::new("weighted").await;
    let servers = cluster(&db, &["n1", "n2", "n3"], &[1, 2, 3], "weighted").await;
    let per_node = burst(&servers, 2, 30, FLOW).await;
    assert_eq!(
        per_node.values().copied().collect::<Vec<_>>(),
        vec![5, 10, 15],
        "{per_node:?}"
    );
    for s in servers {
        s.stop().await.expect("stop");
    }
}

#[test]
fn an_unknown_load_balancing_or_a_zero_weight_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = "node = \"n\"\nshared_storage = \"s\"\npostgres_url = \"x\"\nredis_url = \"redis://127.0.0.1:6379\"\n";
    let err = fleet_server::Config::parse(
        &format!("{base}load_balancing = \"fastest\"\n"),
        &dir.path().join("c.toml"),
    )
    .expect_err("unknown algorithm");
    assert!(
        err.contains("round_robin, least_loaded, random, weighted"),
        "{err}"
    );
    let err =
        fleet_server::Config::parse(&format!("{base}weight = 0\n"), &dir.path().join("c.toml"))
            .expect_err("zero weight");
    assert!(err.contains("weight"), "{err}");
}
