//! The `etl-server` binary as a process: SIGTERM mid-run, and memory that stays flat while a
//! large file streams through.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fleet_tests::TestDb;

struct Proc {
    child: Child,
    addr: std::net::SocketAddr,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary on a free port with the given limits; waits until it answers.
async fn start(db: &TestDb, dir: &Path, limits: &str) -> Proc {
    start_node(db, dir, "node-p", limits).await
}

/// Starts node `node` (config `DIR/NODE.toml`, shared storage `DIR/shared`).
async fn start_node(db: &TestDb, dir: &Path, node: &str, limits: &str) -> Proc {
    let mut proc = spawn_node(
        db,
        dir,
        node,
        &format!("{node}.toml"),
        limits,
        Stdio::inherit(),
    );
    let addr = proc.addr;
    for _ in 0..600 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return proc;
        }
        if let Ok(Some(status)) = proc.child.try_wait() {
            panic!("etl-server exited at start: {status}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("etl-server did not listen on {addr}");
}

/// Sends SIGTERM and waits for the process to exit.
async fn terminate(mut p: Proc) -> std::process::ExitStatus {
    let pid = rustix::process::Pid::from_raw(p.child.id() as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
    tokio::task::spawn_blocking(move || p.child.wait().expect("wait"))
        .await
        .expect("join")
}

/// Spawns node `node` on a free port with config file `DIR/CONFIG` (shared storage
/// `DIR/shared`, `extra` appended), its stderr going to `stderr`; does not wait for it.
fn spawn_node(
    db: &TestDb,
    dir: &Path,
    node: &str,
    config: &str,
    extra: &str,
    stderr: Stdio,
) -> Proc {
    spawn_node_env(db, dir, node, config, extra, stderr, &[])
}

/// As `spawn_node`, with the variables `env` set (and no `FLEET_RELEASE` but one `env` gives).
fn spawn_node_env(
    db: &TestDb,
    dir: &Path,
    node: &str,
    config: &str,
    extra: &str,
    stderr: Stdio,
    env: &[(&str, &str)],
) -> Proc {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let listen = format!("127.0.0.1:{port}");
    let config = dir.join(config);
    std::fs::write(
        &config,
        common::config_text(node, db, &dir.join("shared"), &listen, extra),
    )
    .expect("config");
    let child = Command::new(env!("CARGO_BIN_EXE_etl-server"))
        .arg("--config")
        .arg(&config)
        .env("ETL_LOG", "warn")
        .env_remove("FLEET_RELEASE")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("start etl-server");
    let addr = listen.parse().expect("addr");
    Proc { child, addr }
}

fn write_csv(path: &Path, rows: u64) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    writeln!(out, "id,name,amount").expect("write");
    for i in 0..rows {
        writeln!(out, "{i},customer-{i},{}.{}", i % 1000, i % 100).expect("write");
    }
    out.flush().expect("flush");
}

async fn submit_and_start(p: &Proc, flow: &str) -> i64 {
    let (status, body) = fleet_tests::call(p.addr, "POST", "/api/flows", flow).await;
    assert_eq!(status, 201, "{body}");
    let name = body["name"].as_str().expect("name").to_owned();
    let (status, body) =
        fleet_tests::call(p.addr, "POST", &format!("/api/flows/{name}/run"), "").await;
    assert_eq!(status, 202, "{body}");
    let id = body["run_id"].as_i64().expect("id");
    for _ in 0..2400 {
        let (_, run) = fleet_tests::call(p.addr, "GET", &format!("/api/runs/{id}"), "").await;
        if run["state"] == "running" && run["rows_read"].as_i64().unwrap_or(0) > 0 {
            return id;
        }
        assert!(
            matches!(run["state"].as_str(), Some("queued" | "running")),
            "{run}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("run {id} did not start");
}

async fn run_row(db: &TestDb, id: i64) -> (String, Option<String>) {
    let pool = db.pool().await;
    sqlx::query_as("SELECT state, error FROM runs WHERE id = $1")
        .bind(id)
        .fetch_one(&pool)
        .await
        .expect("run row")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_run_stops_it_cleanly_after_the_grace_period() {
    let db = TestDb::new("sigterm").await;
    let dir = tempfile::tempdir().expect("tempdir");
    write_csv(&dir.path().join("shared/in/big.csv"), 2_000_000);
    let p = start(&db, dir.path(), "[limits]\nshutdown_grace_secs = 0\n").await;
    let id = submit_and_start(&p, "name: big\nsource: { type: csv, path: in/big.csv }\ntransform:\n  - cast: { id: int, amount: decimal }\ndestination: { type: postgres, table: big }\n").await;
    let status = terminate(p).await;
    assert!(
        status.success(),
        "etl-server exits 0 after SIGTERM: {status}"
    );
    let (state, error) = run_row(&db, id).await;
    assert_eq!(state, "failed");
    assert!(error.unwrap_or_default().contains("shut down"));
    let pool = db.pool().await;
    let (exists,): (bool,) = sqlx::query_as("SELECT to_regclass('public.big') IS NOT NULL")
        .fetch_one(&pool)
        .await
        .expect("query");
    assert!(!exists, "the stopped run's transaction was rolled back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_running_flow_finish_within_the_grace_period() {
    let db = TestDb::new("sigterm_grace").await;
    let dir = tempfile::tempdir().expect("tempdir");
    write_csv(&dir.path().join("shared/in/mid.csv"), 3_000_000);
    let p = start(&db, dir.path(), "[limits]\nshutdown_grace_secs = 300\n").await;
    let id = submit_and_start(&p, "name: mid\nsource: { type: csv, path: in/mid.csv }\ndestination: { type: jsonl, path: out/mid.jsonl }\n").await;
    let status = terminate(p).await;
    assert!(status.success(), "{status}");
    let (state, error) = run_row(&db, id).await;
    assert_eq!(state, "succeeded", "{error:?}");
    let lines = std::fs::read_to_string(dir.path().join("shared/out/mid.jsonl"))
        .expect("output")
        .lines()
        .count();
    assert_eq!(lines, 3_000_000);
}

/// Peak resident memory of a process so far (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("a number");
    kib * 1024
}

/// A 2 GiB CSV streams through a run while the server's peak RSS (VmHWM, read from /proc after
/// the run) stays under 150 MiB: rows move in batches, never the whole file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_gib_csv_streams_in_flat_memory() {
    let db = TestDb::new("flatmem").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("shared/in/wide.csv");
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    let filler = "x".repeat(1000);
    let rows: u64 = (2u64 << 30) / 1024 + 1;
    {
        let mut out = std::io::BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(&path).expect("create"),
        );
        writeln!(out, "id,payload").expect("write");
        for i in 0..rows {
            writeln!(out, "{i:016},{filler}{:06}", i % 1_000_000).expect("write");
        }
        out.flush().expect("flush");
    }
    let size = std::fs::metadata(&path).expect("size").len();
    assert!(size >= 2 << 30, "{size}");
    let p = start(&db, dir.path(), "").await;
    let (status, body) = fleet_tests::call(
        p.addr,
        "POST",
        "/api/flows",
        "name: wide\nsource: { type: csv, path: in/wide.csv }\ntransform:\n  - compute: { len: \"size(payload)\" }\n  - select: [id, len]\ndestination: { type: csv, path: out/wide.csv }\n",
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (_, body) = fleet_tests::call(p.addr, "POST", "/api/flows/wide/run", "").await;
    let id = body["run_id"].as_i64().expect("id");
    let mut run = serde_json::Value::Null;
    for _ in 0..36_000 {
        (_, run) = fleet_tests::call(p.addr, "GET", &format!("/api/runs/{id}"), "").await;
        if !matches!(run["state"].as_str(), Some("queued" | "running")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_eq!(run["rows_written"].as_u64(), Some(rows), "{run}");
    let peak = peak_rss(p.child.id());
    eprintln!(
        "etl-server peak RSS after streaming {size} bytes: {} MiB",
        peak >> 20
    );
    assert!(peak < 150 << 20, "peak RSS {} MiB", peak >> 20);
}

/// kill -9 of the node running a run: within 30 s the run is `interrupted`, and (the flow
/// allows one retry) a single retry runs to the end on another node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_run_is_interrupted_and_retried_once_elsewhere() {
    let db = TestDb::new("kill9").await;
    let dir = tempfile::tempdir().expect("tempdir");
    write_csv(&dir.path().join("shared/in/big.csv"), 3_000_000);
    let mut nodes = Vec::new();
    for name in ["k1", "k2", "k3"] {
        nodes.push((name, start_node(&db, dir.path(), name, "").await));
    }
    let entry = nodes[0].1.addr;
    // Every node sees the three before the run is asked for.
    for _ in 0..200 {
        let (_, c) = fleet_tests::call(entry, "GET", "/api/cluster", "").await;
        if c["active"].as_array().map(Vec::len) == Some(3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let flow = "name: long\nsource: { type: csv, path: in/big.csv }\ndestination: { type: jsonl, path: out/long.jsonl }\nretries: 1\n";
    let (status, body) = fleet_tests::call(entry, "POST", "/api/flows", flow).await;
    assert_eq!(status, 201, "{body}");
    let (_, body) = fleet_tests::call(entry, "POST", "/api/flows/long/run", "").await;
    let id = body["run_id"].as_i64().expect("id");
    let target = body["node"]
        .as_str()
        .expect("dispatched to a node")
        .to_owned();
    for _ in 0..600 {
        let (_, run) = fleet_tests::call(entry, "GET", &format!("/api/runs/{id}"), "").await;
        if run["state"] == "running" && run["rows_read"].as_i64().unwrap_or(0) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let victim = nodes
        .iter()
        .position(|(n, _)| *n == target)
        .expect("target is a node");
    let (_, mut killed) = nodes.remove(victim);
    killed.child.kill().expect("kill -9");
    killed.child.wait().expect("reaped");
    let ask = nodes[0].1.addr;
    // Interrupted within 30 s (a bound on the wait, not a measurement).
    let mut interrupted = serde_json::Value::Null;
    for _ in 0..300 {
        (_, interrupted) = fleet_tests::call(ask, "GET", &format!("/api/runs/{id}"), "").await;
        if interrupted["state"] != "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(interrupted["state"], "interrupted", "{interrupted}");
    assert!(
        interrupted["error"]
            .as_str()
            .expect("error")
            .contains(&target),
        "{interrupted}"
    );
    // Exactly one retry, linked to it, on another node, and it finishes.
    let (_, list) = fleet_tests::call(ask, "GET", "/api/runs?flow=long", "").await;
    let retries: Vec<&serde_json::Value> = list["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .filter(|r| r["retry_of"] == id)
        .collect();
    assert_eq!(retries.len(), 1, "{list}");
    let retry = retries[0]["id"].as_i64().expect("retry id");
    let mut done = serde_json::Value::Null;
    for _ in 0..1200 {
        (_, done) = fleet_tests::call(ask, "GET", &format!("/api/runs/{retry}"), "").await;
        if !matches!(done["state"].as_str(), Some("queued" | "running")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_ne!(done["node"], target.as_str(), "{done}");
    assert_eq!(done["rows_written"], 3_000_000);
    let (_, list) = fleet_tests::call(ask, "GET", "/api/runs?flow=long", "").await;
    assert_eq!(
        list["runs"].as_array().map(Vec::len),
        Some(2),
        "no second retry: {list}"
    );
    // The output is the retry's, whole; the killed run's temporary file went with the
    // retry's commit.
    let out = dir.path().join("shared/out");
    assert_eq!(line_count(&out.join("long.jsonl")), 3_000_000);
    assert_eq!(names_in(&out), vec!["long.jsonl"]);
}

/// Lines of a file.
fn line_count(path: &Path) -> usize {
    use std::io::BufRead;
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    std::io::BufReader::new(file).lines().count()
}

/// The names in a directory, sorted (temporary files included).
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The runs a node finished, from its `/metrics`.
async fn finished_runs(addr: std::net::SocketAddr) -> u64 {
    let (_, body) = fleet_tests::call_raw(addr, "GET", "/metrics", b"").await;
    body.lines()
        .filter(|l| l.starts_with("etl_runs_finished_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Polls run `id` through `addr` until `done` holds for it; panics after `within` (a bound on
/// the wait, not a measurement).
async fn wait_run(
    addr: std::net::SocketAddr,
    id: i64,
    within: Duration,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let until = std::time::Instant::now() + within;
    loop {
        let (_, run) = fleet_tests::call(addr, "GET", &format!("/api/runs/{id}"), "").await;
        if done(&run) {
            return run;
        }
        assert!(std::time::Instant::now() < until, "run {id}: {run}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGSTOP of the node running a run, past the heartbeat's TTL: the run is interrupted and its
/// retry finishes on the other node. Then SIGCONT: the paused node's run, which goes on where
/// it stopped, cannot rename its output or its reject file over the retry's (the same files
/// stand), and no temporary file is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_nodes_run_cannot_overwrite_its_retrys_output() {
    let db = TestDb::new("sigstop").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("shared/in/big.csv");
    write_csv(&input, 2_000_000);
    // Two bad rows at the end, for the reject file.
    let mut more = std::fs::OpenOptions::new()
        .append(true)
        .open(&input)
        .expect("append");
    more.write_all(
        b"x,bad,1
y,bad,2
",
    )
    .expect("write");
    drop(more);
    let mut nodes = Vec::new();
    for name in ["p1", "p2"] {
        nodes.push((name, start_node(&db, dir.path(), name, "").await));
    }
    let entry = nodes[0].1.addr;
    for _ in 0..200 {
        let (_, c) = fleet_tests::call(entry, "GET", "/api/cluster", "").await;
        if c["active"].as_array().map(Vec::len) == Some(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let flow = "name: long
source: { type: csv, path: in/big.csv }
transform:
  - cast: { id: int }
destination: { type: jsonl, path: out/long.jsonl }
on_error: { bad_rows: reject_file }
retries: 1
";
    let (status, body) = fleet_tests::call(entry, "POST", "/api/flows", flow).await;
    assert_eq!(status, 201, "{body}");
    let (_, body) = fleet_tests::call(entry, "POST", "/api/flows/long/run", "").await;
    let id = body["run_id"].as_i64().expect("id");
    let target = body["node"].as_str().expect("dispatched").to_owned();
    let paused = nodes
        .iter()
        .position(|(n, _)| *n == target)
        .expect("a node");
    let other = nodes[1 - paused].1.addr;
    wait_run(other, id, Duration::from_secs(60), |r| {
        r["state"] == "running" && r["rows_read"].as_i64().unwrap_or(0) > 0
    })
    .await;
    signal(&nodes[paused].1, rustix::process::Signal::STOP);

    let interrupted = wait_run(other, id, Duration::from_secs(60), |r| {
        r["state"] != "running"
    })
    .await;
    assert_eq!(interrupted["state"], "interrupted", "{interrupted}");
    let (_, list) = fleet_tests::call(other, "GET", "/api/runs?flow=long", "").await;
    let retry = list["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .find(|r| r["retry_of"] == id)
        .and_then(|r| r["id"].as_i64())
        .unwrap_or_else(|| panic!("no retry: {list}"));
    let done = wait_run(other, retry, Duration::from_secs(120), |r| {
        !matches!(r["state"].as_str(), Some("queued" | "running"))
    })
    .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["rows_written"], 2_000_000, "{done}");
    let out = dir.path().join("shared/out");
    let inode = |name: &str| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(out.join(name)).expect("output").ino()
    };
    let files = ["long.jsonl", "long.jsonl.rejects.jsonl"];
    let retrys: Vec<u64> = files.iter().map(|f| inode(f)).collect();

    signal(&nodes[paused].1, rustix::process::Signal::CONT);
    // The paused node's run ends there, one way or another.
    let until = std::time::Instant::now() + Duration::from_secs(120);
    while finished_runs(nodes[paused].1.addr).await == 0 {
        assert!(
            std::time::Instant::now() < until,
            "the paused node's run never ended"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let now: Vec<u64> = files.iter().map(|f| inode(f)).collect();
    assert_eq!(now, retrys, "the retry's output and reject file stand");
    assert_eq!(line_count(&out.join("long.jsonl")), 2_000_000);
    assert_eq!(line_count(&out.join("long.jsonl.rejects.jsonl")), 2);
    assert_eq!(names_in(&out), files.to_vec(), "no temporary file is left");
    let (state, _) = run_row(&db, id).await;
    assert_eq!(state, "interrupted");
}

/// The leader as a node reports it.
async fn leader_of(addr: std::net::SocketAddr) -> Option<String> {
    let (_, c) = fleet_tests::call(addr, "GET", "/api/cluster", "").await;
    c["leader"].as_str().map(str::to_owned)
}

fn signal(p: &Proc, sig: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(p.child.id() as i32).expect("pid");
    rustix::process::kill_process(pid, sig).expect("signal");
}

/// Scheduled fires every second while the leader is stopped past its TTL (SIGSTOP), comes back
/// (SIGCONT), and then the new leader is killed (kill -9): another node leads each time, and
/// every fire time fires once, with one run, under epochs that only grow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_survives_a_stopped_and_a_killed_leader() {
    let db = TestDb::new("failover").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = "[cluster]\nleader_ttl_ms = 1500\nleader_renew_ms = 300\n";
    let mut nodes = Vec::new();
    for name in ["f1", "f2", "f3"] {
        nodes.push((
            name.to_owned(),
            start_node(&db, dir.path(), name, settings).await,
        ));
    }
    let pool = db.pool().await;
    let count_fires = || {
        let pool = pool.clone();
        async move {
            let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM schedule_fires")
                .fetch_one(&pool)
                .await
                .expect("fires");
            n
        }
    };
    let wait_leader = |addr: std::net::SocketAddr, not: Option<String>| async move {
        for _ in 0..200 {
            if let Some(l) = leader_of(addr).await
                && Some(&l) != not.as_ref()
            {
                return l;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no new leader (other than {not:?})");
    };
    let wait_fires = |at_least: i64| async move {
        for _ in 0..200 {
            if count_fires().await >= at_least {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("fewer than {at_least} fires");
    };
    let flow = "name: tick\nsource: { type: postgres, connection: db, query: \"SELECT 1 AS x\" }\ndestination: { type: jsonl, path: out/tick.jsonl }\nschedule: \"* * * * * *\"\n";
    let (status, body) = fleet_tests::call(nodes[0].1.addr, "POST", "/api/flows", flow).await;
    assert_eq!(status, 201, "{body}");
    let first = wait_leader(nodes[0].1.addr, None).await;
    wait_fires(2).await;

    // SIGSTOP the leader past its TTL: another node leads.
    let i = nodes
        .iter()
        .position(|(n, _)| *n == first)
        .expect("leader is a node");
    signal(&nodes[i].1, rustix::process::Signal::STOP);
    let other = nodes
        .iter()
        .find(|(n, _)| *n != first)
        .expect("another")
        .1
        .addr;
    let second = wait_leader(other, Some(first.clone())).await;
    let n = count_fires().await;
    wait_fires(n + 2).await;
    // Back from the stop: it must step down, not fire under its old epoch.
    signal(&nodes[i].1, rustix::process::Signal::CONT);
    // A state that must hold over a window: the leader stays the second one for 1.5 s after
    // the old one came back, checked all along.
    let until = std::time::Instant::now() + Duration::from_millis(1500);
    while std::time::Instant::now() < until {
        assert_eq!(leader_of(other).await.as_deref(), Some(second.as_str()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // kill -9 the new leader: a third grant.
    let j = nodes
        .iter()
        .position(|(n, _)| *n == second)
        .expect("leader is a node");
    let (_, mut killed) = nodes.remove(j);
    killed.child.kill().expect("kill -9");
    killed.child.wait().expect("reaped");
    let third = wait_leader(nodes[0].1.addr, Some(second.clone())).await;
    assert_ne!(third, second);
    let n = count_fires().await;
    wait_fires(n + 2).await;

    let fires: Vec<(chrono::DateTime<chrono::Utc>, i64, Option<i64>, bool)> = sqlx::query_as(
        "SELECT fire_time, epoch, run_id, skipped FROM schedule_fires ORDER BY fire_time",
    )
    .fetch_all(&pool)
    .await
    .expect("fires");
    let epochs: Vec<i64> = fires.iter().map(|f| f.1).collect();
    assert!(
        epochs.windows(2).all(|w| w[0] <= w[1]),
        "a stale leader fired: {epochs:?}"
    );
    let distinct: std::collections::BTreeSet<i64> = epochs.iter().copied().collect();
    assert!(distinct.len() >= 3, "three leaders fired: {epochs:?}");
    let ran = fires.iter().filter(|f| !f.3).count();
    assert!(fires.iter().filter(|f| !f.3).all(|f| f.2.is_some()));
    let (runs,): (i64,) = sqlx::query_as("SELECT count(*) FROM runs WHERE flow = 'tick'")
        .fetch_one(&pool)
        .await
        .expect("runs");
    assert_eq!(runs as usize, ran, "one run per fire: {fires:?}");
}

/// A drain request waits for the drain, but never holds the shutdown up: SIGTERM during a
/// drain answers the request at once (`stopping`), and the server stops after its grace period
/// rather than after the drain's deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_drain_answers_the_drain_and_stops_after_the_grace() {
    let db = TestDb::new("sigterm_drain").await;
    let dir = tempfile::tempdir().expect("tempdir");
    write_csv(&dir.path().join("shared/in/long.csv"), 3_000_000);
    let token = fleet_tests::ADMIN_TOKEN;
    let p = start(&db, dir.path(), "[limits]\nshutdown_grace_secs = 1\n").await;
    let id = submit_and_start(&p, "name: long\nsource: { type: csv, path: in/long.csv }\ntransform:\n  - cast: { id: int, amount: decimal }\ndestination: { type: postgres, table: long }\n").await;
    let addr = p.addr;
    let drain = tokio::spawn(async move {
        let auth = format!("Bearer {token}");
        let headers = [("Authorization", auth.as_str())];
        fleet_tests::call_with_headers(
            addr,
            "POST",
            "/admin/drain?deadline_secs=3600",
            &headers,
            b"",
        )
        .await
    });
    // The drain has begun once the cluster shows this node draining.
    for _ in 0..400 {
        let (_, cluster) = fleet_tests::call(addr, "GET", "/api/cluster", "").await;
        if cluster["members"][0]["draining"] == true {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(!drain.is_finished(), "the drain waits for the running run");
    let status = terminate(p).await;
    assert!(status.success(), "{status}");
    let answer = tokio::time::timeout(Duration::from_secs(30), drain)
        .await
        .expect("the drain request is answered once the server stops")
        .expect("join");
    let (status, body) = answer;
    assert_eq!(status, 202, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).expect("a JSON answer");
    assert_eq!(body["state"], "stopping", "{body}");
    let (state, error) = run_row(&db, id).await;
    assert_eq!(
        state, "failed",
        "the grace period, not the drain's deadline, bounds the run"
    );
    assert!(error.unwrap_or_default().contains("shut down"));
}

/// Whether an HTTP server answers at `addr`. A TCP connection alone does not say so:
/// `etl-server` binds its port before it takes its node's name, so a process about to refuse
/// to start still accepts connections into the kernel's backlog.
async fn answers_http(addr: std::net::SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let request = b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    if stream.write_all(request).await.is_err() {
        return false;
    }
    let mut head = [0u8; 5];
    matches!(
        tokio::time::timeout(Duration::from_millis(200), stream.read_exact(&mut head)).await,
        Ok(Ok(_)) if &head == b"HTTP/"
    )
}

/// One process per node name: a second `etl-server` with the first one's `node` (same
/// database) exits 1 at start with an error naming the node and the process that serves it,
/// and the first one's run is left alone (still running when the second has exited, then
/// succeeds) rather than marked failed as "left running by an earlier start".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_with_the_same_node_name_refuses_to_start() {
    let db = TestDb::new("samenode").await;
    let dir = tempfile::tempdir().expect("tempdir");
    write_csv(&dir.path().join("shared/in/big.csv"), 3_000_000);
    let first = start_node(&db, dir.path(), "twin", "").await;
    let id = submit_and_start(&first, "name: big\nsource: { type: csv, path: in/big.csv }\ndestination: { type: jsonl, path: out/big.jsonl }\n").await;
    let log = dir.path().join("second.log");
    let err = std::fs::File::create(&log).expect("log");
    let mut second = spawn_node(&db, dir.path(), "twin", "twin-2.toml", "", err.into());
    // It either exits or starts serving (the bug); a minute bounds the wait.
    let mut status = None;
    for _ in 0..1200 {
        if let Some(s) = second.child.try_wait().expect("try_wait") {
            status = Some(s);
            break;
        }
        if answers_http(second.addr).await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (state, error) = run_row(&db, id).await;
    let stderr = std::fs::read_to_string(&log).expect("stderr");
    let status = status.unwrap_or_else(|| {
        panic!("the second server with the same node name started serving; the first's run is {state} ({error:?}); stderr: {stderr}")
    });
    assert_eq!(status.code(), Some(1), "{stderr}");
    let pid = format!("pid={}", first.child.id());
    assert!(
        stderr.contains("node `twin` is already served by another etl-server")
            && stderr.contains(&pid),
        "{stderr}"
    );
    assert_eq!(
        state, "running",
        "the first one's run is untouched: {error:?}"
    );
    let mut done = serde_json::Value::Null;
    for _ in 0..2400 {
        (_, done) = fleet_tests::call(first.addr, "GET", &format!("/api/runs/{id}"), "").await;
        if !matches!(done["state"].as_str(), Some("queued" | "running")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["rows_written"], 3_000_000);
}

/// The agent starts `etl-server` with `FLEET_RELEASE=<version>`: the server shows it in
/// `/health` and in its member entry of `/api/cluster`, where a server started without it (one
/// in this process, same cluster) shows none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_release_it_was_started_from_shows_in_health_and_the_cluster() {
    let db = TestDb::new("release_env").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let p = spawn_node_env(
        &db,
        dir.path(),
        "node-r",
        "node-r.toml",
        "",
        Stdio::inherit(),
        &[("FLEET_RELEASE", "1.4.2")],
    );
    let mut serving = false;
    for _ in 0..600 {
        if answers_http(p.addr).await {
            serving = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(serving, "etl-server did not answer on {}", p.addr);
    let plain = common::TestServer::start_node(&db, "node-plain", "").await;

    let (status, health) = fleet_tests::call(p.addr, "GET", "/health", "").await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["release"], "1.4.2", "{health}");
    let (_, health) = fleet_tests::call(plain.addr, "GET", "/health", "").await;
    assert!(
        health.get("release").is_some_and(|r| r.is_null()),
        "{health}"
    );

    // Both heartbeats land within a third of the TTL; ask each node for the other too.
    let mut cluster = serde_json::Value::Null;
    for _ in 0..100 {
        (_, cluster) = fleet_tests::call(plain.addr, "GET", "/api/cluster", "").await;
        if cluster["members"].as_array().is_some_and(|m| m.len() == 2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let member = |doc: &serde_json::Value, node: &str| {
        doc["members"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["node"] == node).cloned())
            .unwrap_or_else(|| panic!("{node} is not a member: {doc}"))
    };
    assert_eq!(member(&cluster, "node-r")["release"], "1.4.2", "{cluster}");
    assert!(
        member(&cluster, "node-plain")["release"].is_null(),
        "{cluster}"
    );
    let (_, cluster) = fleet_tests::call(p.addr, "GET", "/api/cluster", "").await;
    assert_eq!(member(&cluster, "node-r")["release"], "1.4.2", "{cluster}");
    plain.stop().await.expect("the in-process server stops");
}

/// SIGKILL of the node runs are pinned to: the run it was running is interrupted and not
/// retried elsewhere (its flow allows a retry), and those it had not started end failed,
/// each saying why; none hangs and none runs on another node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_pinned_to_a_killed_node_end_and_are_not_retried_elsewhere() {
    const TOKEN: &str = fleet_tests::ADMIN_TOKEN;
    let db = TestDb::new("pinkill").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let extra = "[limits]\nmax_running_flows = 1\n".to_owned();
    let mut nodes = Vec::new();
    for name in ["k1", "k2", "k3"] {
        nodes.push(start_node(&db, dir.path(), name, &extra).await);
    }
    let entry = nodes[0].addr;
    for _ in 0..200 {
        let (_, c) = fleet_tests::call(entry, "GET", "/api/cluster", "").await;
        if c["active"].as_array().map(Vec::len) == Some(3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let flow = "name: hold\nsource: { type: postgres, connection: db, query: \"SELECT 1 AS x FROM pg_sleep(30)\" }\ndestination: { type: jsonl, path: out/hold.jsonl }\nretries: 1\n";
    let (status, body) = fleet_tests::call(entry, "POST", "/api/flows", flow).await;
    assert_eq!(status, 201, "{body}");
    let auth = format!("Bearer {TOKEN}");
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (status, body) = fleet_tests::call_with_headers(
            entry,
            "POST",
            "/api/flows/hold/run?node=k2",
            &[("Authorization", &auth)],
            b"",
        )
        .await;
        assert_eq!(status, 202, "{body}");
        let body: serde_json::Value = serde_json::from_str(&body).expect("json");
        ids.push(body["run_id"].as_i64().expect("id"));
    }
    let first = wait_run(entry, ids[0], Duration::from_secs(30), |r| {
        r["state"] != "queued"
    })
    .await;
    assert_eq!(
        (&first["state"], &first["node"]),
        (&"running".into(), &"k2".into())
    );
    let mut killed = nodes.remove(1);
    killed.child.kill().expect("kill -9");
    killed.child.wait().expect("reaped");
    let ended = |r: &serde_json::Value| !matches!(r["state"].as_str(), Some("queued" | "running"));
    let run = wait_run(entry, ids[0], Duration::from_secs(60), ended).await;
    assert_eq!(run["state"], "interrupted", "{run}");
    for id in &ids[1..] {
        let run = wait_run(entry, *id, Duration::from_secs(60), ended).await;
        assert_eq!(run["state"], "failed", "{run}");
        assert_eq!(run["node"], serde_json::Value::Null, "never ran: {run}");
        assert_eq!(
            run["error"],
            "node k2 stopped sending heartbeats before the run, pinned to it, started",
            "{run}"
        );
    }
    // No retry, on any node, over a few sweeps.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (_, list) = fleet_tests::call(entry, "GET", "/api/runs?flow=hold", "").await;
    assert_eq!(list["runs"].as_array().map(Vec::len), Some(3), "{list}");
}
