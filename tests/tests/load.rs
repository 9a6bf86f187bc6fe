//! The load checker against a real 3-node cluster of `etl-server` processes (the project's
//! own binary, beside this test) on this machine's Postgres and Redis, driven the way the
//! rolling-upgrade tests drive it, from synchronous code: a clean load reports clean; a
//! server killed mid-load shows out of service, with the runs it lost as the database has
//! them; a drained node counts out of service and loses nothing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fleet_tests::{
    LoadChecker, LoadError, LoadNode, LoadOptions, LoadReport, REDIS_URL, TestDb, TestRedis, call,
    call_with_headers, own_binaries,
};

const TOKEN: &str = fleet_tests::ADMIN_TOKEN;

/// One cluster at a time: three servers and the load each take a core's share, and a
/// starved leader would miss a second of the schedule for reasons of this machine's own.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// An `etl-server` process this test started; killed and reaped on drop.
struct Server {
    name: String,
    api: SocketAddr,
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Three servers sharing a database, a Redis prefix and a storage folder.
struct Cluster {
    servers: Vec<Server>,
    storage: PathBuf,
    db: TestDb,
    _redis: TestRedis,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn spawn(binary: &Path, dir: &Path, name: &str, db: &TestDb, redis: &TestRedis) -> Server {
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "node = \"{name}\"\nlisten = \"{api}\"\nshared_storage = \"{}\"\npostgres_url = \"{}\"\nredis_url = \"{REDIS_URL}\"\nredis_prefix = \"{}\"\nadmin_token = \"{TOKEN}\"\n",
            dir.join("shared").display(),
            db.url,
            redis.prefix
        ),
    )
    .expect("config");
    let child = Command::new(binary)
        .arg("--config")
        .arg(&config)
        .env("ETL_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
    Server {
        name: name.to_owned(),
        api,
        child,
    }
}

impl Cluster {
    /// Starts l1, l2, l3 and waits until each sees all three and one leads the scheduler.
    fn start(label: &str) -> Cluster {
        let binary = own_binaries()
            .unwrap_or_else(|e| panic!("{e}"))
            .join("etl-server");
        let db = block(TestDb::new(label));
        let redis = TestRedis::new(label);
        let dir = tempfile::tempdir().expect("tempdir");
        let servers: Vec<Server> = ["l1", "l2", "l3"]
            .iter()
            .map(|n| spawn(&binary, dir.path(), n, &db, &redis))
            .collect();
        let until = Instant::now() + Duration::from_secs(60);
        block(async {
            loop {
                let mut ready = true;
                for s in &servers {
                    ready &= tokio::net::TcpStream::connect(s.api).await.is_ok() && {
                        let (status, c) = call(s.api, "GET", "/api/cluster", "").await;
                        status == 200
                            && c["active"].as_array().map(Vec::len) == Some(3)
                            && c["leader"].is_string()
                    };
                }
                if ready {
                    return;
                }
                assert!(
                    Instant::now() < until,
                    "the cluster did not form within 60 s"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Cluster {
            storage: dir.path().join("shared"),
            servers,
            db,
            _redis: redis,
            _dir: dir,
        }
    }

    fn options(&self) -> LoadOptions {
        let nodes = self
            .servers
            .iter()
            .map(|s| LoadNode::new(&s.name, s.api))
            .collect();
        LoadOptions::new(nodes, &self.db.url, &self.storage)
    }

    fn leader(&self) -> String {
        let (_, c) = block(call(self.servers[0].api, "GET", "/api/cluster", ""));
        c["leader"].as_str().expect("a leader").to_owned()
    }

    fn admin(&self, k: usize, path: &str) -> (u16, String) {
        let auth = format!("Bearer {TOKEN}");
        block(call_with_headers(
            self.servers[k].api,
            "POST",
            path,
            &[("Authorization", &auth)],
            b"",
        ))
    }

    /// The load flow's runs in the database, by state.
    fn states(&self, flow: &str) -> Vec<(String, i64)> {
        block(async {
            let pool = self.db.pool().await;
            let rows = sqlx::query_as(
                "SELECT state, count(*) FROM runs WHERE flow = $1 GROUP BY state ORDER BY state",
            )
            .bind(flow)
            .fetch_all(&pool)
            .await
            .expect("runs by state");
            pool.close().await;
            rows
        })
    }
}

fn run_for(load: LoadChecker, secs: u64) -> (LoadReport, String) {
    std::thread::sleep(Duration::from_secs(secs));
    let flow = load.flow().to_owned();
    (load.finish(), flow)
}

#[test]
fn a_clean_load_reports_clean() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = Cluster::start("load_clean");
    let load = LoadChecker::start(cluster.options()).expect("the load starts");
    let (report, flow) = run_for(load, 5);
    println!("{}", report.summary());
    report.assert_clean(0);
    assert!(report.submitted > 0, "{}", report.summary());
    assert_eq!(report.succeeded, report.submitted, "{}", report.summary());
    assert_eq!(report.retried, 0, "{:?}", report.refusals);
    assert!(report.schedule.fired_once >= 3, "{}", report.summary());
    assert_eq!(
        cluster.states(&flow),
        vec![("succeeded".to_owned(), report.submitted as i64)]
    );
}

#[test]
fn a_server_killed_mid_load_shows_out_of_service_with_what_it_lost() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut cluster = Cluster::start("load_kill");
    // Not the leader: the schedule's seconds are another test's matter.
    let leader = cluster.leader();
    let victim = cluster
        .servers
        .iter()
        .position(|s| s.name != leader)
        .expect("a node that does not lead");
    let victim_name = cluster.servers[victim].name.clone();
    let load = LoadChecker::start(cluster.options()).expect("the load starts");
    std::thread::sleep(Duration::from_secs(2));
    let server = &mut cluster.servers[victim];
    server.child.kill().expect("SIGKILL");
    server.child.wait().expect("reaped");
    // Past the heartbeat's TTL and a sweep, so its runs are handed over before the end.
    let (report, flow) = run_for(load, 8);
    println!("{}", report.summary());

    assert_eq!(report.max_out_of_service, 1, "{}", report.summary());
    let peak = report.peak.as_ref().expect("a peak");
    assert_eq!(peak.nodes.len(), 1, "{peak:?}");
    assert_eq!(peak.nodes[0].0, victim_name, "{peak:?}");
    assert!(peak.nodes[0].1.starts_with("/health"), "{peak:?}");
    assert_eq!(
        report.out_of_service(),
        [victim_name.clone()].into_iter().collect(),
        "{}",
        report.summary()
    );
    assert!(
        report.retried > 0,
        "its submissions went elsewhere: {report:?}"
    );
    assert!(
        report
            .refusals
            .keys()
            .all(|k| k.starts_with(&format!("{victim_name}: "))),
        "{:?}",
        report.refusals
    );
    assert_eq!(report.not_accepted, Vec::<String>::new());
    assert_eq!(report.lost, vec![], "{}", report.summary());
    // What it lost is what the database says: runs it was running, interrupted.
    for run in &report.failed {
        assert_eq!(run.state, "interrupted", "{run}");
        assert_eq!(run.node.as_deref(), Some(victim_name.as_str()), "{run}");
    }
    let states = cluster.states(&flow);
    let count = |s: &str| {
        states
            .iter()
            .find(|(state, _)| state == s)
            .map_or(0, |(_, n)| *n as usize)
    };
    assert_eq!(count("interrupted"), report.failed.len(), "{states:?}");
    assert_eq!(count("succeeded"), report.succeeded, "{states:?}");
    assert_eq!(
        report.submitted + report.unacknowledged.len(),
        states.iter().map(|(_, n)| *n as usize).sum::<usize>(),
        "{states:?}"
    );
    // Within max_unavailable 1 only the lost runs are problems; with 0 the outage is one.
    for problem in report.problems(1) {
        assert!(
            problem.starts_with("failed: run") || problem.starts_with("scheduled run failed"),
            "{problem}"
        );
    }
    let strict = report.problems(0);
    assert!(
        strict[0].starts_with("1 nodes out of service at once, more than max_unavailable 0")
            && strict[0].contains(&victim_name),
        "{strict:?}"
    );
    let panic = std::panic::catch_unwind(|| report.assert_clean(0)).expect_err("not clean");
    let text = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(text.contains(&victim_name), "{text}");
}

#[test]
fn a_draining_node_counts_out_of_service_and_loses_nothing() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = Cluster::start("load_drain");
    let load = LoadChecker::start(cluster.options()).expect("the load starts");
    std::thread::sleep(Duration::from_secs(2));
    let (status, drained) = cluster.admin(1, "/admin/drain?deadline_secs=30");
    assert_eq!(status, 200, "{drained}");
    std::thread::sleep(Duration::from_secs(2));
    let (status, resumed) = cluster.admin(1, "/admin/resume");
    assert_eq!(status, 200, "{resumed}");
    let (report, _) = run_for(load, 2);
    println!("{}", report.summary());
    report.assert_clean(1);
    assert_eq!(report.max_out_of_service, 1, "{}", report.summary());
    assert_eq!(
        report.out_of_service(),
        ["l2".to_owned()].into_iter().collect(),
        "{}",
        report.summary()
    );
    assert!(
        report.periods.iter().all(|p| p.reason == "draining"),
        "{:?}",
        report.periods
    );
    let strict = report.problems(0);
    assert_eq!(strict.len(), 1, "{strict:?}");
    assert!(strict[0].contains("l2 (draining)"), "{strict:?}");
}

#[test]
fn a_load_no_node_takes_fails_to_start_saying_why() {
    let db = block(TestDb::new("load_none"));
    let dir = tempfile::tempdir().expect("tempdir");
    let nobody: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let opts = LoadOptions::new(vec![LoadNode::new("gone", nobody)], &db.url, dir.path());
    let err = match LoadChecker::start(opts) {
        Err(e) => e,
        Ok(_) => panic!("a load started on no server"),
    };
    assert!(matches!(err, LoadError::Define { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("no node took the definition") && text.contains("gone: "),
        "{text}"
    );
    let none = LoadChecker::start(LoadOptions::new(vec![], &db.url, dir.path()));
    assert!(matches!(none, Err(LoadError::NoNodes)));
}
