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

const TOKEN: &str = fleet_tests::ADMIN_TOKEN;

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
        let extra = "[limits]\nmax_running_flows = 1\n".to_owned();
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
    // No `admin_token` in the config: that text is no token at all, and the database has
    // none with the admin role.
    let server = TestServer::start_edited(&db, "", |t| {
        t.replace(&format!("admin_token = \"{TOKEN}\"\n"), "")
    })
    .await;
    let (status, body) = admin(&server, "/admin/drain", Some(TOKEN)).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = admin(&server, "/admin/drain", None).await;
    assert_eq!(status, 401, "{body}");
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
    // A state that must hold over a window: the run stays queued through several claim
    // cycles (the node looks every second and when poked), checked all along.
    let until = std::time::Instant::now() + Duration::from_millis(2500);
    while std::time::Instant::now() < until {
        let (_, run) = server.call("GET", &format!("/api/runs/{id}"), "").await;
        assert_eq!(run["state"], "queued", "{run}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
                    // `DEBUG SLEEP` makes it slow on purpose.
                    "--enable-debug-command",
                    "local",
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
        let extra = "[cluster]\nleader_ttl_ms = 1500\nleader_renew_ms = 300\n".to_owned();
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

/// The runs of a flow as (id, node, started, finished), oldest first.
type Span = (
    i64,
    Option<String>,
    Option<chrono::DateTime<chrono::Utc>>,
    Option<chrono::DateTime<chrono::Utc>>,
);

async fn spans(pool: &sqlx::PgPool, flow: &str) -> Vec<Span> {
    sqlx::query_as("SELECT id, node, started_at, finished_at FROM runs WHERE flow = $1 ORDER BY id")
        .bind(flow)
        .fetch_all(pool)
        .await
        .expect("runs")
}

/// `concurrency: 1`, cluster-wide: of two runs asked for at once and dispatched to two nodes,
/// the other is never running while the first is (checked at every sample until the first
/// ends: it is queued, or already finished when it went first); by the database's timestamps
/// one started after the other finished, in whichever order the nodes took them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_one_flow_runs_one_at_a_time_across_the_cluster() {
    let db = TestDb::new("concurrency").await;
    let servers = cluster(&db, &["c1", "c2"], &[1, 1], "round_robin").await;
    let flow = "name: single\nsource: { type: postgres, connection: db, query: \"SELECT 1 AS x FROM pg_sleep(1.5)\" }\ndestination: { type: jsonl, path: out/single.jsonl }\nconcurrency: 1\n";
    let (status, body) = servers[0].call("POST", "/api/flows", flow).await;
    assert_eq!(status, 201, "{body}");
    let mut ids = Vec::new();
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let (status, body) = servers[0].call("POST", "/api/flows/single/run", "").await;
        assert_eq!(status, 202, "{body}");
        ids.push(body["run_id"].as_i64().expect("id"));
        nodes.push(body["node"].as_str().expect("a node").to_owned());
    }
    assert_ne!(nodes[0], nodes[1], "round robin sends them to two nodes");
    // Until the first ends: whenever the first is running, the second is queued.
    let mut seen_running = false;
    for _ in 0..1200 {
        let (_, a) = servers[0]
            .call("GET", &format!("/api/runs/{}", ids[0]), "")
            .await;
        let (_, b) = servers[0]
            .call("GET", &format!("/api/runs/{}", ids[1]), "")
            .await;
        match a["state"].as_str() {
            Some("running") => {
                seen_running = true;
                // Read after the first: if the first still runs now, it ran when `b` was read.
                let (_, a2) = servers[0]
                    .call("GET", &format!("/api/runs/{}", ids[0]), "")
                    .await;
                if a2["state"] == "running" {
                    assert_ne!(b["state"], "running", "both run at once: {a2} {b}");
                }
            }
            Some("queued") => {}
            _ => break,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen_running, "the first run was seen running");
    let first = servers[0].wait(ids[0]).await;
    let second = servers[0].wait(ids[1]).await;
    assert_eq!(first["state"], "succeeded", "{first}");
    assert_eq!(second["state"], "succeeded", "{second}");
    let pool = db.pool().await;
    let s = spans(&pool, "single").await;
    assert!(
        s[1].2 >= s[0].3 || s[0].2 >= s[1].3,
        "one started after the other finished: {s:?}"
    );
    for s in servers {
        s.stop().await.expect("stop");
    }
}

/// A scheduled flow is `concurrency: 1` unless it says otherwise: fired every second, with
/// runs that take 1.5 s, no two of its runs overlap (by the database's timestamps).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_of_a_scheduled_flow_never_overlap() {
    let db = TestDb::new("schedsingle").await;
    let server = TestServer::start_with(
        &db,
        "[cluster]\nleader_ttl_ms = 1500\nleader_renew_ms = 300\n",
    )
    .await;
    let flow = "name: ticking\nsource: { type: postgres, connection: db, query: \"SELECT 1 AS x FROM pg_sleep(1.5)\" }\ndestination: { type: jsonl, path: out/t.jsonl }\nschedule: \"* * * * * *\"\n";
    let (status, body) = server.call("POST", "/api/flows", flow).await;
    assert_eq!(status, 201, "{body}");
    let pool = db.pool().await;
    for _ in 0..600 {
        let s = spans(&pool, "ticking").await;
        if s.iter().filter(|r| r.3.is_some()).count() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await.expect("stop");
    let s = spans(&pool, "ticking").await;
    let ran: Vec<&Span> = s.iter().filter(|r| r.2.is_some()).collect();
    assert!(ran.len() >= 3, "{s:?}");
    for (i, a) in ran.iter().enumerate() {
        for b in &ran[i + 1..] {
            let (a0, a1, b0, b1) = (a.2, a.3, b.2, b.3);
            let apart = a1.is_some_and(|a1| Some(a1) <= b0) || b1.is_some_and(|b1| Some(b1) <= a0);
            assert!(apart, "runs {} and {} overlap: {s:?}", a.0, b.0);
        }
    }
}

/// A free loopback port.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// One server, named `node-a`, on the private Redis at `port`, with `extra` config.
async fn on_private_redis(db: &TestDb, port: u16, name: &str, extra: &str) -> TestServer {
    let url = format!("redis://127.0.0.1:{port}");
    let node = format!("node = \"{name}\"");
    TestServer::start_edited(db, extra, move |t| {
        t.replace("node = \"node-a\"", &node)
            .replace(fleet_tests::REDIS_URL, &url)
    })
    .await
}

fn signal_redis(redis: &PrivateRedis, sig: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(redis.child.id() as i32).expect("pid");
    rustix::process::kill_process(pid, sig).expect("signal redis-server");
}

/// No Redis call while a transaction holds the leadership lock: a fire's transaction is held
/// at its insert (the test locks `schedule_fires`), Redis is frozen (SIGSTOP) while it waits,
/// and then it goes on. Its run is still dispatched to the live node: membership was read
/// before the transaction began, not inside it (where a frozen Redis answers nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fire_reads_membership_before_its_transaction() {
    let port = free_port();
    let redis = PrivateRedis::start(port);
    let db = TestDb::new("firetx").await;
    let server = on_private_redis(
        &db,
        port,
        "node-a",
        "[cluster]\nleader_ttl_ms = 60000\nleader_renew_ms = 1000\n",
    )
    .await;
    wait_for_leader(std::slice::from_ref(&server), None).await;
    let pool = db.pool().await;
    let mut hold = pool.begin().await.expect("begin");
    sqlx::query("LOCK TABLE schedule_fires IN SHARE MODE")
        .execute(&mut *hold)
        .await
        .expect("lock");
    let flow = "name: held\nsource: { type: postgres, connection: db, query: \"SELECT 1 AS x\" }\ndestination: { type: jsonl, path: out/h.jsonl }\nschedule: \"* * * * * *\"\n";
    let (status, body) = server.call("POST", "/api/flows", flow).await;
    assert_eq!(status, 201, "{body}");
    // The leader's fire waits for the table inside its transaction.
    let mut waiting = false;
    for _ in 0..400 {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM pg_locks WHERE relation = 'schedule_fires'::regclass AND NOT granted",
        )
        .fetch_one(&pool)
        .await
        .expect("locks");
        if n > 0 {
            waiting = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(waiting, "the fire never reached its insert");
    signal_redis(&redis, rustix::process::Signal::STOP);
    hold.commit().await.expect("release");
    let mut target = None;
    for _ in 0..400 {
        target = sqlx::query_as::<_, (Option<String>,)>(
            "SELECT r.target_node FROM schedule_fires s JOIN runs r ON r.id = s.run_id ORDER BY s.fire_time LIMIT 1",
        )
        .fetch_optional(&pool)
        .await
        .expect("fire");
        if target.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    signal_redis(&redis, rustix::process::Signal::CONT);
    let (target,) = target.expect("the held fire committed with its run");
    assert_eq!(target.as_deref(), Some("node-a"));
    server.stop().await.expect("stop");
}

/// Sends `DEBUG SLEEP secs` to the Redis at `port` and waits for its answer.
fn debug_sleep(port: u16, secs: u32) {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let arg = secs.to_string();
    write!(
        c,
        "*3\r\n$5\r\nDEBUG\r\n$5\r\nSLEEP\r\n${}\r\n{arg}\r\n",
        arg.len()
    )
    .expect("send");
    let mut answer = [0u8; 5];
    c.read_exact(&mut answer).expect("answer");
    assert_eq!(&answer, b"+OK\r\n");
}

/// A Redis that answers nothing for 2 s (`DEBUG SLEEP 2`, far less than the 6 s lease) does
/// not unseat a healthy leader: for a whole lease after Redis answers again (checked every
/// 100 ms), every node reports the same leader under the same epoch (never none, never a new
/// grant).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_redis_does_not_unseat_the_leader() {
    let port = free_port();
    let _redis = PrivateRedis::start(port);
    let db = TestDb::new("slowredis").await;
    let extra = "[cluster]\nleader_ttl_ms = 6000\nleader_renew_ms = 1000\n";
    let servers = vec![
        on_private_redis(&db, port, "w1", extra).await,
        on_private_redis(&db, port, "w2", extra).await,
    ];
    let before = wait_for_leader(&servers, None).await;
    tokio::task::spawn_blocking(move || debug_sleep(port, 2))
        .await
        .expect("join");
    for _ in 0..70 {
        let now = leader(&servers).await;
        assert_eq!(now.as_ref(), Some(&before), "the leader after a slow Redis");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for s in servers {
        s.stop().await.expect("stop");
    }
}

/// Schedules are due by the database's clock, not the leader's: in this database `now()` is a
/// day behind the real time (a `clock.now()` ahead of `pg_catalog` in its search path), and
/// a daily flow last changed two real days ago fires for the database's midnight, not for
/// the process clock's. It proves that the scheduler takes "now" from its Postgres session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_are_due_by_the_databases_clock() {
    let db = TestDb::new("dbclock").await;
    let pool = db.pool().await;
    for sql in [
        "CREATE SCHEMA clock".to_owned(),
        "CREATE FUNCTION clock.now() RETURNS timestamptz LANGUAGE sql STABLE AS $$ SELECT pg_catalog.now() - interval '1 day' $$".to_owned(),
        format!("ALTER DATABASE \"{}\" SET search_path = public, clock, pg_catalog", db.name),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .expect("fake clock");
    }
    let server = TestServer::start_with(
        &db,
        "[cluster]\nleader_ttl_ms = 1500\nleader_renew_ms = 300\n",
    )
    .await;
    let flow = "name: daily\nsource: { type: postgres, connection: db, query: \"SELECT 1 AS x\" }\ndestination: { type: jsonl, path: out/d.jsonl }\nschedule: \"0 0 0 * * *\"\nmisfire: { coalesce: { grace_secs: 259200 } }\n";
    let (status, body) = server.call("POST", "/api/flows", flow).await;
    assert_eq!(status, 201, "{body}");
    sqlx::query("UPDATE flows SET updated_at = pg_catalog.now() - interval '2 days'")
        .execute(&pool)
        .await
        .expect("backdate");
    let mut fire = None;
    for _ in 0..400 {
        fire = sqlx::query_as::<_, (chrono::DateTime<chrono::Utc>,)>(
            "SELECT fire_time FROM schedule_fires WHERE flow = 'daily' ORDER BY fire_time LIMIT 1",
        )
        .fetch_optional(&pool)
        .await
        .expect("fires");
        if fire.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (fired,) = fire.expect("a fire");
    let (db_midnight,): (chrono::DateTime<chrono::Utc>,) =
        sqlx::query_as("SELECT date_trunc('day', clock.now(), 'UTC')")
            .fetch_one(&pool)
            .await
            .expect("midnight");
    assert_eq!(
        fired, db_midnight,
        "the database's midnight, a day before the process's"
    );
    server.stop().await.expect("stop");
}

/// The backend holding this database's node-name lock other than `not`, and its
/// `application_name`.
async fn name_lock_holder(pool: &sqlx::PgPool, not: Option<i32>) -> Option<(i32, String)> {
    sqlx::query_as(
        "SELECT a.pid, a.application_name FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid
         WHERE a.datname = current_database() AND a.application_name LIKE 'etl-server pid=%'
           AND l.locktype = 'advisory' AND l.granted AND a.pid IS DISTINCT FROM $1",
    )
    .bind(not)
    .fetch_optional(pool)
    .await
    .expect("pg_locks")
}

/// The node name's lock survives its session: when the session that holds it is killed, the
/// server takes the name again on a new session (same process) and goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_name_lock_session_is_replaced() {
    let db = TestDb::new("namelost").await;
    let server = TestServer::start(&db).await;
    let pool = db.pool().await;
    let (pid, app) = name_lock_holder(&pool, None)
        .await
        .expect("the name is held");
    sqlx::query("SELECT pg_terminate_backend($1, 5000)")
        .bind(pid)
        .execute(&pool)
        .await
        .expect("terminate");
    let mut again = None;
    for _ in 0..400 {
        again = name_lock_holder(&pool, Some(pid)).await;
        if again.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (_, app2) = again.expect("the name is held again");
    assert_eq!(app2, app, "by the same process");
    let (status, _) = server.call("GET", "/health", "").await;
    assert_eq!(status, 200);
    server.stop().await.expect("stop");
}

/// When another process takes the node's name while this server's session for it is lost
/// (here the test's own session, standing for a second etl-server), the server shuts down and
/// `run` answers why, naming the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_whose_name_was_taken_meanwhile_shuts_down() {
    let db = TestDb::new("nametaken").await;
    let server = TestServer::start(&db).await;
    let pool = db.pool().await;
    let (pid, _) = name_lock_holder(&pool, None)
        .await
        .expect("the name is held");
    let (key,): (i64,) = sqlx::query_as(
        "SELECT (classid::bigint << 32) | objid::bigint FROM pg_locks WHERE pid = $1 AND locktype = 'advisory'",
    )
    .bind(pid)
    .fetch_one(&pool)
    .await
    .expect("the server's lock");
    // The test's session queues for the name first, so it is granted the lock the moment the
    // server's session ends, before the server can notice and ask again.
    let mut other = pool.acquire().await.expect("a session");
    let taker = tokio::spawn(async move {
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(key)
            .execute(&mut *other)
            .await
            .expect("take the name");
        other
    });
    let mut queued = false;
    for _ in 0..400 {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
        )
        .fetch_one(&pool)
        .await
        .expect("pg_locks");
        if n > 0 {
            queued = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(queued, "the test's session waits for the name");
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .execute(&pool)
        .await
        .expect("terminate");
    let _other = taker.await.expect("the test holds the name");
    let mut stopped = false;
    for _ in 0..400 {
        if tokio::net::TcpStream::connect(server.addr).await.is_err() {
            stopped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(stopped, "the server stopped serving");
    let err = server
        .stop()
        .await
        .expect_err("the name was taken")
        .to_string();
    assert!(
        err.starts_with("node `node-a` is already served by another etl-server"),
        "{err}"
    );
}

/// `POST /api/flows/{flow}/run?node=NODE` from `entry` with the admin token (`token`).
async fn pin(
    entry: &TestServer,
    flow: &str,
    node: &str,
    token: Option<&str>,
) -> (u16, serde_json::Value) {
    admin(entry, &format!("/api/flows/{flow}/run?node={node}"), token).await
}

/// Runs pinned to one node of three, asked through every node, all run there, while the
/// runs asked without a node keep their exact round robin (a pin does not move the cursor).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_runs_execute_on_their_node_only() {
    let db = TestDb::new("pinned").await;
    let mut servers = Vec::new();
    for name in ["p1", "p2", "p3"] {
        let extra = String::new();
        servers.push(TestServer::start_node(&db, name, &extra).await);
    }
    for _ in 0..200 {
        let (_, c) = servers[0].call("GET", "/api/cluster", "").await;
        if c["active"].as_array().map(Vec::len) == Some(3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = servers[0].call("POST", "/api/flows", FLOW).await;
    assert_eq!(status, 201, "{body}");
    let (mut pinned, mut free) = (Vec::new(), Vec::new());
    for i in 0..30 {
        let entry = &servers[i % 3];
        let (status, body) = pin(entry, "tiny", "p2", Some(TOKEN)).await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["node"], "p2", "{body}");
        assert_eq!(body["pinned"], true, "{body}");
        pinned.push(body["run_id"].as_i64().expect("id"));
        let (status, body) = entry.call("POST", "/api/flows/tiny/run", "").await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["pinned"], false, "{body}");
        free.push(body["run_id"].as_i64().expect("id"));
    }
    for id in &pinned {
        let run = servers[0].wait(*id).await;
        assert_eq!(run["state"], "succeeded", "{run}");
        assert_eq!(run["node"], "p2", "{run}");
        assert_eq!(run["pinned"], true, "{run}");
    }
    let mut per_node = BTreeMap::new();
    for id in &free {
        let run = servers[0].wait(*id).await;
        assert_eq!(run["state"], "succeeded", "{run}");
        *per_node
            .entry(run["node"].as_str().expect("node").to_owned())
            .or_insert(0) += 1;
    }
    assert_eq!(
        per_node.values().copied().collect::<Vec<_>>(),
        vec![10, 10, 10],
        "{per_node:?}"
    );
    for s in servers {
        s.stop().await.expect("stop");
    }
}

/// A node on probation (started by its agent for a health gate) is a live member that takes
/// only runs pinned to it and does not run for leader; `/admin/resume` lifts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_on_probation_takes_only_pinned_runs_and_does_not_lead_until_resumed() {
    let db = TestDb::new("probation").await;
    let extra = "[cluster]\nleader_ttl_ms = 1500\nleader_renew_ms = 300\n".to_owned();
    let mut servers = vec![TestServer::start_node(&db, "o1", &extra).await];
    servers.push(TestServer::start_on_probation(&db, "o2", &extra).await);
    for _ in 0..200 {
        let (_, c) = servers[0].call("GET", "/api/cluster", "").await;
        if c["members"].as_array().map(Vec::len) == Some(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, c) = servers[1].call("GET", "/api/cluster", "").await;
    assert_eq!(c["active"], serde_json::json!(["o1"]), "{c}");
    let o2 = c["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["node"] == "o2"))
        .unwrap_or_else(|| panic!("o2 is a member: {c}"));
    assert_eq!(o2["probation"], true, "{c}");
    assert_eq!(o2["draining"], false, "{c}");
    let (_, health) = servers[1].call("GET", "/health", "").await;
    assert_eq!(health["probation"], true, "{health}");
    assert_eq!(wait_for_leader(&servers, None).await.0, "o1");

    // Runs asked through the node on probation go to the other; one pinned to it runs there.
    let (status, body) = servers[1].call("POST", "/api/flows", FLOW).await;
    assert_eq!(status, 201, "{body}");
    for _ in 0..4 {
        let (status, body) = servers[1].call("POST", "/api/flows/tiny/run", "").await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["node"], "o1", "{body}");
        let run = servers[1].wait(body["run_id"].as_i64().expect("id")).await;
        assert_eq!(run["node"], "o1", "{run}");
    }
    let (status, body) = pin(&servers[0], "tiny", "o2", Some(TOKEN)).await;
    assert_eq!(status, 202, "{body}");
    let run = servers[0].wait(body["run_id"].as_i64().expect("id")).await;
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_eq!(run["node"], "o2", "{run}");

    // With o1 drained no node takes dispatched runs: a run asked now is for any node, and
    // waits. The node on probation neither claims it nor takes the lease o1 gave up, for
    // several lease lifetimes.
    let (status, drained) = admin(&servers[0], "/admin/drain?deadline_secs=5", Some(TOKEN)).await;
    assert_eq!(status, 200, "{drained}");
    let (status, body) = servers[1].call("POST", "/api/flows/tiny/run", "").await;
    assert_eq!(status, 202, "{body}");
    let waiting = body["run_id"].as_i64().expect("id");
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(leader(&servers).await, None, "nobody leads");
        let (_, run) = servers[1]
            .call("GET", &format!("/api/runs/{waiting}"), "")
            .await;
        assert_eq!(run["state"], "queued", "{run}");
    }

    // Lifted: o2 takes the waiting run, leads, and is an active member.
    let (status, body) = admin(&servers[1], "/admin/resume", Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    let run = servers[1].wait(waiting).await;
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_eq!(run["node"], "o2", "{run}");
    assert_eq!(wait_for_leader(&servers, None).await.0, "o2");
    let (_, c) = servers[0].call("GET", "/api/cluster", "").await;
    assert_eq!(c["active"], serde_json::json!(["o2"]), "{c}");
    let (_, health) = servers[1].call("GET", "/health", "").await;
    assert_eq!(health["probation"], false, "{health}");
    for s in servers {
        s.stop().await.expect("stop");
    }
}

/// A pin needs the admin token and a live node that takes runs: each refusal names why, and
/// nothing is queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_to_an_unknown_or_draining_node_or_without_the_token_is_refused() {
    let db = TestDb::new("pinrefuse").await;
    let mut servers = Vec::new();
    for name in ["r1", "r2"] {
        let extra = String::new();
        servers.push(TestServer::start_node(&db, name, &extra).await);
    }
    for _ in 0..200 {
        let (_, c) = servers[0].call("GET", "/api/cluster", "").await;
        if c["active"].as_array().map(Vec::len) == Some(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _) = servers[0].call("POST", "/api/flows", FLOW).await;
    assert_eq!(status, 201);
    let (status, body) = pin(&servers[0], "tiny", "r2", None).await;
    assert_eq!((status, &body["field"]), (401, &"authorization".into()));
    let (status, body) = pin(
        &servers[0],
        "tiny",
        "r2",
        Some("wrong-token-of-some-length"),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = pin(&servers[0], "tiny", "r9", Some(TOKEN)).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["field"], "node", "{body}");
    assert_eq!(
        body["error"], "node `r9` is not a live member of the cluster (no heartbeat)",
        "{body}"
    );
    let (status, body) = pin(&servers[0], "tiny", "", Some(TOKEN)).await;
    assert_eq!((status, &body["field"]), (400, &"node".into()), "{body}");
    let (status, body) = pin(&servers[0], "nothing", "r2", Some(TOKEN)).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"], "no flow `nothing`", "{body}");
    let (status, body) = admin(&servers[0], "/api/flows/tiny/run?nod=r2", Some(TOKEN)).await;
    assert_eq!((status, &body["field"]), (400, &"query".into()), "{body}");

    let (status, drained) = admin(&servers[1], "/admin/drain", Some(TOKEN)).await;
    assert_eq!(status, 200, "{drained}");
    for entry in &servers {
        let (status, body) = pin(entry, "tiny", "r2", Some(TOKEN)).await;
        assert_eq!(status, 409, "{body}");
        assert_eq!(
            body["error"], "node `r2` is draining: it takes no runs",
            "{body}"
        );
    }
    let (_, list) = servers[0].call("GET", "/api/runs", "").await;
    assert_eq!(
        list["runs"],
        serde_json::json!([]),
        "nothing queued: {list}"
    );
    let (status, _) = admin(&servers[1], "/admin/resume", Some(TOKEN)).await;
    assert_eq!(status, 200);
    let (status, body) = pin(&servers[0], "tiny", "r2", Some(TOKEN)).await;
    assert_eq!(status, 202, "{body}");
    let run = servers[0].wait(body["run_id"].as_i64().expect("id")).await;
    assert_eq!(
        (&run["state"], &run["node"]),
        (&"succeeded".into(), &"r2".into())
    );
    for s in servers {
        s.stop().await.expect("stop");
    }
}

/// Runs pinned to a node that drains before starting them are not handed to another node:
/// they end failed, saying so; the one it was running finishes there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_pinned_to_a_drained_node_end_failed_not_elsewhere() {
    let db = TestDb::new("pindrain").await;
    let mut servers = Vec::new();
    for name in ["q1", "q2"] {
        let extra = "[limits]\nmax_running_flows = 1\n".to_owned();
        servers.push(TestServer::start_node(&db, name, &extra).await);
    }
    for _ in 0..200 {
        let (_, c) = servers[0].call("GET", "/api/cluster", "").await;
        if c["active"].as_array().map(Vec::len) == Some(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A second each, one at a time: most are still queued when the drain comes.
    let flow = SLOW.replace("pg_sleep(0.2)", "pg_sleep(1)");
    let (status, _) = servers[0].call("POST", "/api/flows", &flow).await;
    assert_eq!(status, 201);
    let mut ids = Vec::new();
    for _ in 0..4 {
        let (status, body) = pin(&servers[0], "tiny", "q1", Some(TOKEN)).await;
        assert_eq!(status, 202, "{body}");
        ids.push(body["run_id"].as_i64().expect("id"));
    }
    let (status, drained) = admin(&servers[0], "/admin/drain?deadline_secs=30", Some(TOKEN)).await;
    assert_eq!(status, 200, "{drained}");
    assert_eq!(drained["handed_back"], serde_json::json!([]), "{drained}");
    let (mut succeeded, mut failed) = (0, 0);
    for id in &ids {
        let run = servers[1].wait(*id).await;
        match run["state"].as_str() {
            Some("succeeded") => {
                assert_eq!(run["node"], "q1", "{run}");
                succeeded += 1;
            }
            Some("failed") => {
                assert_eq!(run["node"], serde_json::Value::Null, "never ran: {run}");
                assert_eq!(
                    run["error"], "node q1 was drained before the run, pinned to it, started",
                    "{run}"
                );
                failed += 1;
            }
            _ => panic!("{run}"),
        }
    }
    // One at a time on q1: the drain found at least one not started.
    assert!(
        failed >= 1 && succeeded + failed == 4,
        "{succeeded} {failed}"
    );
    for s in servers {
        s.stop().await.expect("stop");
    }
}
