//! Several servers sharing one database and one Redis prefix: membership and dispatch.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::TestServer;
use fleet_tests::TestDb;

const FLOW: &str = "name: tiny\nsource: { type: postgres, connection: db, query: \"SELECT 1 AS x\" }\ndestination: { type: jsonl, path: out/tiny.jsonl }\n";
/// A run that takes a while, so that load builds up in a burst.
const SLOW: &str = "name: tiny\nsource: { type: postgres, connection: db, query: \"SELECT 1 AS x FROM pg_sleep(0.2)\" }\ndestination: { type: jsonl, path: out/tiny.jsonl }\n";

/// Starts servers `names` (with `weights`) under one load-balancing setting and waits until
/// every one sees all of them.
async fn cluster(db: &TestDb, names: &[&str], weights: &[u32], lb: &str) -> Vec<TestServer> {
    let mut servers = Vec::new();
    for (name, weight) in names.iter().zip(weights) {
        let extra = format!("load_balancing = \"{lb}\"\nweight = {weight}\n");
        servers.push(TestServer::start_node(db, name, &extra).await);
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
    .expect_err("unknown algorithm")
    .to_string();
    assert!(
        err.contains("round_robin, least_loaded, random, weighted"),
        "{err}"
    );
    let err =
        fleet_server::Config::parse(&format!("{base}weight = 0\n"), &dir.path().join("c.toml"))
            .expect_err("zero weight")
            .to_string();
    assert!(err.contains("weight"), "{err}");
}

const TOKEN: &str = "a-test-token-of-some-length";

async fn admin(server: &TestServer, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    let (status, body) =
        fleet_tests::call_with_headers(server.addr, "POST", path, &headers, b"").await;
    (
        status,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_hands_back_its_work_and_takes_none_until_resumed() {
    let db = TestDb::new("drain").await;
    let mut servers = Vec::new();
    for name in ["d1", "d2"] {
        let extra = format!("admin_token = \"{TOKEN}\"\n[limits]\nmax_running_flows = 1\n");
        servers.push(TestServer::start_node(&db, name, &extra).await);
    }
    for _ in 0..200 {
        let (_, c) = servers[0].call("GET", "/api/cluster", "").await;
        if c["active"].as_array().map(Vec::len) == Some(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The admin API wants the token.
    assert_eq!(admin(&servers[0], "/admin/drain", None).await.0, 401);
    assert_eq!(
        admin(
            &servers[0],
            "/admin/drain",
            Some("wrong-token-of-some-length")
        )
        .await
        .0,
        401
    );

    // Slow runs, one at a time per node: d1 has some queued when it is drained.
    let (status, _) = servers[0].call("POST", "/api/flows", SLOW).await;
    assert_eq!(status, 201);
    let mut ids = Vec::new();
    for _ in 0..8 {
        let (_, body) = servers[0].call("POST", "/api/flows/tiny/run", "").await;
        ids.push(body["run_id"].as_i64().expect("id"));
    }
    let (status, drained) = admin(&servers[0], "/admin/drain?deadline_secs=30", Some(TOKEN)).await;
    assert_eq!(status, 200, "{drained}");
    assert_eq!(drained["state"], "drained");
    assert!(
        !drained["handed_back"]
            .as_array()
            .expect("handed back")
            .is_empty(),
        "{drained}"
    );
    // Nothing runs on d1 any more, nothing is lost, and new runs go to d2 only.
    let (_, c) = servers[1].call("GET", "/api/cluster", "").await;
    assert_eq!(c["active"], serde_json::json!(["d2"]), "{c}");
    for _ in 0..4 {
        let (_, body) = servers[0].call("POST", "/api/flows/tiny/run", "").await;
        assert_eq!(body["node"], "d2", "{body}");
        ids.push(body["run_id"].as_i64().expect("id"));
    }
    for id in &ids {
        let run = servers[1].wait(*id).await;
        assert_eq!(run["state"], "succeeded", "{run}");
    }
    let (status, resumed) = admin(&servers[0], "/admin/resume", Some(TOKEN)).await;
    assert_eq!(status, 200, "{resumed}");
    let (_, body) = servers[1].call("POST", "/api/flows/tiny/run", "").await;
    let (_, body2) = servers[1].call("POST", "/api/flows/tiny/run", "").await;
    let nodes = [body["node"].clone(), body2["node"].clone()];
    assert!(
        nodes.contains(&serde_json::json!("d1")),
        "d1 takes runs again: {nodes:?}"
    );
    for s in servers {
        s.stop().await.expect("stop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_is_off_without_a_token() {
    let db = TestDb::new("noadmin").await;
    let server = TestServer::start(&db).await;
    let (status, body) = admin(&server, "/admin/drain", Some(TOKEN)).await;
    assert_eq!(status, 403, "{body}");
    server.stop().await.expect("stop");
}

/// A node whose schema is older than the database's (here: the database has a migration the
/// node does not know) claims nothing; once the schemas agree, the run goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_an_older_schema_does_not_claim() {
    let db = TestDb::new("schema").await;
    let server = TestServer::start(&db).await;
    let pool = db.pool().await;
    sqlx::query("INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES (99999999999999, 'from a newer server', true, '\\x00', 0)")
        .execute(&pool)
        .await
        .expect("a newer migration");
    let (status, _) = server.call("POST", "/api/flows", FLOW).await;
    assert_eq!(status, 201);
    let (_, body) = server.call("POST", "/api/flows/tiny/run", "").await;
    let id = body["run_id"].as_i64().expect("id");
    assert_eq!(
        body["node"],
        serde_json::Value::Null,
        "no node is eligible: {body}"
    );
    // Several claim cycles pass (the node looks every second and when poked).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_, run) = server.call("GET", &format!("/api/runs/{id}"), "").await;
    assert_eq!(run["state"], "queued", "{run}");
    let (_, c) = server.call("GET", "/api/cluster", "").await;
    assert_eq!(
        c["leader"],
        serde_json::Value::Null,
        "it does not lead either: {c}"
    );
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = 99999999999999")
        .execute(&pool)
        .await
        .expect("delete");
    let run = server.wait(id).await;
    assert_eq!(run["state"], "succeeded", "{run}");
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_of_all_nodes_merges_every_report() {
    let db = TestDb::new("allhealth").await;
    let mut servers = cluster(&db, &["h1", "h2", "h3"], &[1, 1, 1], "round_robin").await;
    let (status, all) = servers[0].call("GET", "/health?all_nodes=true", "").await;
    assert_eq!(status, 200, "{all}");
    let nodes = all["nodes"].as_object().expect("nodes");
    assert_eq!(
        nodes.keys().cloned().collect::<Vec<_>>(),
        vec!["h1", "h2", "h3"]
    );
    assert!(nodes.values().all(|n| n["status"] == "ok"), "{all}");
    // A node that stopped while its heartbeat still lives: unreachable, and the whole is 503.
    let gone = servers.pop().expect("h3");
    gone.stop().await.expect("stop");
    let (status, all) = servers[0].call("GET", "/health?all_nodes=true", "").await;
    assert_eq!(status, 503, "{all}");
    assert_eq!(all["nodes"]["h3"]["status"], "unreachable", "{all}");
    let (status, _) = servers[0].call("GET", "/health?all_nodes=maybe", "").await;
    assert_eq!(status, 400);
    for s in servers {
        s.stop().await.expect("stop");
    }
}

/// A private redis-server (the shared one must not be restarted under other tests).
struct PrivateRedis {
    child: std::process::Child,
}

impl PrivateRedis {
    fn start(port: u16) -> PrivateRedis {
        // Owned by the guard at once, so that it is killed and reaped on every path.
        let redis = PrivateRedis {
            child: std::process::Command::new("redis-server")
                .args([
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    &port.to_string(),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("redis-server is needed (apt-get install -y redis-server)"),
        };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return redis;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("redis-server did not listen on {port}");
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Redis goes away mid-load and comes back empty: no run is lost (runs and their queues are
/// rows in Postgres; without Redis a node runs what it is asked to run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_mid_load_loses_no_run() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let redis = PrivateRedis::start(port);
    let db = TestDb::new("redisrestart").await;
    let url = format!("redis://127.0.0.1:{port}");
    let mut servers = Vec::new();
    for name in ["r1", "r2"] {
        let (name, url) = (name.to_string(), url.clone());
        servers.push(
            TestServer::start_edited(&db, "", move |t| {
                t.replace("node = \"node-a\"", &format!("node = \"{name}\""))
                    .replace(fleet_tests::REDIS_URL, &url)
            })
            .await,
        );
    }
    let (status, _) = servers[0].call("POST", "/api/flows", SLOW).await;
    assert_eq!(status, 201);
    let mut ids = Vec::new();
    for _ in 0..10 {
        let (_, body) = servers[0].call("POST", "/api/flows/tiny/run", "").await;
        ids.push(body["run_id"].as_i64().expect("id"));
    }
    drop(redis);
    for _ in 0..10 {
        let (status, body) = servers[1].call("POST", "/api/flows/tiny/run", "").await;
        assert_eq!(status, 202, "runs are taken with Redis down: {body}");
        ids.push(body["run_id"].as_i64().expect("id"));
    }
    let _redis = PrivateRedis::start(port);
    for _ in 0..10 {
        let (_, body) = servers[0].call("POST", "/api/flows/tiny/run", "").await;
        ids.push(body["run_id"].as_i64().expect("id"));
    }
    for id in &ids {
        let run = servers[0].wait(*id).await;
        assert_eq!(run["state"], "succeeded", "{run}");
    }
    let pool = db.pool().await;
    let (total, done): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(*) FILTER (WHERE state = 'succeeded') FROM runs")
            .fetch_one(&pool)
            .await
            .expect("count");
    assert_eq!((total, done), (30, 30));
    for s in servers {
        s.stop().await.expect("stop");
    }
}

/// The leader now, as every server reports it (they must agree), and the epoch.
async fn leader(servers: &[TestServer]) -> Option<(String, i64)> {
    let mut seen = None;
    for s in servers {
        let (_, c) = s.call("GET", "/api/cluster", "").await;
        let now = c["leader"]
            .as_str()
            .map(|l| (l.to_owned(), c["epoch"].as_i64().expect("epoch")));
        if seen.is_some() && seen != now {
            return None;
        }
        seen = now;
    }
    seen
}

async fn wait_for_leader(servers: &[TestServer], not: Option<&str>) -> (String, i64) {
    for _ in 0..400 {
        if let Some((l, e)) = leader(servers).await
            && Some(l.as_str()) != not
        {
            return (l, e);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no leader (other than {not:?}) appeared");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_and_it_moves_with_a_higher_epoch_on_drain_and_stop() {
    let db = TestDb::new("leader").await;
    let mut servers = Vec::new();
    for name in ["l1", "l2", "l3"] {
        let extra = format!(
            "admin_token = \"{TOKEN}\"\n[cluster]\nleader_ttl_ms = 1500\nleader_renew_ms = 300\n"
        );
        servers.push(TestServer::start_node(&db, name, &extra).await);
    }
    let (first, e1) = wait_for_leader(&servers, None).await;
    assert!(e1 >= 1);
    // Draining the leader hands leadership over at once (not after the TTL).
    let at = ["l1", "l2", "l3"]
        .iter()
        .position(|n| *n == first)
        .expect("a node");
    let (status, body) = admin(&servers[at], "/admin/drain?deadline_secs=5", Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    let (second, e2) = wait_for_leader(&servers, Some(&first)).await;
    assert!(e2 > e1, "every grant has a higher epoch: {e1} then {e2}");
    // A drained node does not take it back; stopping the leader moves it again.
    let at2 = ["l1", "l2", "l3"]
        .iter()
        .position(|n| *n == second)
        .expect("a node");
    let stopped = servers.remove(at2);
    stopped.stop().await.expect("stop");
    let (third, e3) = wait_for_leader(&servers, Some(&second)).await;
    assert_ne!(third, first, "the drained node does not lead");
    assert!(e3 > e2);
    for s in servers {
        s.stop().await.expect("stop");
    }
}

#[test]
fn a_lease_shorter_than_three_renewals_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = "node = \"n\"\nshared_storage = \"s\"\npostgres_url = \"x\"\nredis_url = \"redis://127.0.0.1:6379\"\n";
    let err = fleet_server::Config::parse(
        &format!("{base}[cluster]\nleader_ttl_ms = 2000\nleader_renew_ms = 1000\n"),
        &dir.path().join("c.toml"),
    )
    .expect_err("ttl < 3 renewals")
    .to_string();
    assert!(err.contains("at least three times"), "{err}");
}

/// A schedule firing every second across a leader change: each fire time once, one run per
/// fire, and the new leader's fires carry its higher epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_fires_happen_once_across_a_leader_change() {
    let db = TestDb::new("fires").await;
    let mut servers = Vec::new();
    for name in ["s1", "s2", "s3"] {
        let extra = "[cluster]\nleader_ttl_ms = 1500\nleader_renew_ms = 300\n".to_owned();
        servers.push(TestServer::start_node(&db, name, &extra).await);
    }
    let (first, _) = wait_for_leader(&servers, None).await;
    let flow = "name: every-second\nsource: { type: postgres, connection: db, query: \"SELECT 1 AS x\" }\ndestination: { type: jsonl, path: out/s.jsonl }\nschedule: \"* * * * * *\"\n";
    let (status, body) = servers[0].call("POST", "/api/flows", flow).await;
    assert_eq!(status, 201, "{body}");
    let pool = db.pool().await;
    let fires = |pool: sqlx::PgPool| async move {
        let rows: Vec<(chrono::DateTime<chrono::Utc>, i64, Option<i64>, bool)> = sqlx::query_as(
            "SELECT fire_time, epoch, run_id, skipped FROM schedule_fires ORDER BY fire_time",
        )
        .fetch_all(&pool)
        .await
        .expect("fires");
        rows
    };
    for _ in 0..200 {
        if fires(pool.clone()).await.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let at = ["s1", "s2", "s3"]
        .iter()
        .position(|n| *n == first)
        .expect("a node");
    let before = fires(pool.clone()).await.len();
    servers.remove(at).stop().await.expect("stop the leader");
    wait_for_leader(&servers, Some(&first)).await;
    for _ in 0..200 {
        if fires(pool.clone()).await.len() >= before + 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for s in servers {
        s.stop().await.expect("stop");
    }
    let all = fires(pool.clone()).await;
    assert!(all.len() >= before + 3, "{all:?}");
    let epochs: Vec<i64> = all.iter().map(|f| f.1).collect();
    assert!(
        epochs.windows(2).all(|w| w[0] <= w[1]),
        "epochs only grow: {epochs:?}"
    );
    assert!(
        epochs.first() < epochs.last(),
        "the new leader fired too: {epochs:?}"
    );
    assert!(
        all.iter().all(|f| f.0.timestamp_subsec_nanos() == 0),
        "whole seconds: {all:?}"
    );
    // One run per fire that ran, and no run without its fire.
    let fired: Vec<i64> = all
        .iter()
        .filter(|f| !f.3)
        .map(|f| f.2.expect("a run"))
        .collect();
    let (runs,): (i64,) = sqlx::query_as("SELECT count(*) FROM runs WHERE flow = 'every-second'")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(runs as usize, fired.len(), "{all:?}");
}

/// After an outage (the flows were defined two days ago and nothing fired since), coalesce runs
/// one catch-up for the latest missed time within its grace window; skip, or a grace window
/// that is too short, passes it over (recorded, without a run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misfires_coalesce_into_one_catch_up_or_are_skipped() {
    let db = TestDb::new("misfire").await;
    let server = TestServer::start_edited(
        &db,
        "[cluster]\nleader_ttl_ms = 1500\nleader_renew_ms = 300\n",
        |t| t,
    )
    .await;
    let pool = db.pool().await;
    let flow = |name: &str, misfire: &str| {
        format!(
            "name: {name}\nsource: {{ type: postgres, connection: db, query: \"SELECT 1 AS x\" }}\ndestination: {{ type: jsonl, path: out/{name}.jsonl }}\nschedule: \"0 0 0 * * *\"\nmisfire: {misfire}\n"
        )
    };
    for (name, misfire) in [
        ("catchup", "{ coalesce: { grace_secs: 172800 } }"),
        ("skipped", "skip"),
        ("toolate", "{ coalesce: { grace_secs: 60 } }"),
    ] {
        // Stored as if defined two days ago, before the leader looks at it.
        let (status, body) = server
            .call("POST", "/api/flows", &flow(name, misfire))
            .await;
        assert_eq!(status, 201, "{body}");
        sqlx::query("UPDATE flows SET updated_at = now() - interval '2 days' WHERE name = $1")
            .bind(name)
            .execute(&pool)
            .await
            .expect("backdate");
    }
    let mut fires: Vec<(String, chrono::DateTime<chrono::Utc>, Option<i64>, bool)> = Vec::new();
    for _ in 0..200 {
        fires = sqlx::query_as(
            "SELECT flow, fire_time, run_id, skipped FROM schedule_fires ORDER BY flow",
        )
        .fetch_all(&pool)
        .await
        .expect("fires");
        if fires.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let today = chrono::Utc::now()
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .expect("midnight")
        .and_utc();
    assert_eq!(
        fires.len(),
        3,
        "one record per flow, for the latest missed time only: {fires:?}"
    );
    for (flow, time, run, skipped) in &fires {
        assert_eq!(*time, today, "{fires:?}");
        match flow.as_str() {
            "catchup" => assert!(run.is_some() && !skipped, "{fires:?}"),
            _ => assert!(run.is_none() && *skipped, "{fires:?}"),
        }
    }
    let (runs,): (i64,) = sqlx::query_as("SELECT count(*) FROM runs")
        .fetch_one(&pool)
        .await
        .expect("runs");
    assert_eq!(runs, 1);
    server.stop().await.expect("stop");
}
