//! The agent daemon (`fleet-agent run`) against real processes: the real `fleet-agent` binary
//! as the daemon (and once in-process), the real `etl-server` on this machine's Postgres and
//! Redis as the server it supervises, each test with its own node root, database and Redis
//! prefix. A "good" release's `bin/etl-server` is a two-line script that execs the
//! workspace's `etl-server` (the process keeps the script's pid, so the agent supervises the
//! real server); broken releases are scripts that exit, hang or ignore SIGTERM.

mod common;

use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use fleet_agent::{Layout, Request};
use fleet_tests::{Signing, TestDb, TestRedis, build_release};
use serde_json::Value;

/// The workspace's `etl-server`, beside this test's executable.
fn etl_server() -> PathBuf {
    fleet_tests::own_binaries()
        .unwrap_or_else(|e| panic!("{e}"))
        .join("etl-server")
}

fn free_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("a free port");
    l.local_addr().expect("its address")
}

fn pid_alive(pid: u32) -> bool {
    fleet_agent::daemon::start_time(pid).is_ok()
}

/// A node root with its configs, a trust root and staged releases, and the daemon when it runs.
struct TestNode {
    dir: tempfile::TempDir,
    layout: Layout,
    signing: Signing,
    name: String,
    server: SocketAddr,
    metrics: SocketAddr,
    redis: TestRedis,
    _db: TestDb,
    agent: Option<Child>,
}

/// `bin/etl-server` of a release that runs the real server.
fn good() -> String {
    format!("#!/bin/sh\nexec {:?} \"$@\"\n", etl_server())
}

impl TestNode {
    async fn new(label: &str, agent_extra: &str) -> TestNode {
        let db = TestDb::new(label).await;
        let redis = TestRedis::new(label);
        let common::Node {
            dir,
            signing,
            layout,
        } = common::node();
        let root = layout.root().to_owned();
        let (server, metrics) = (free_port(), free_port());
        let name = format!("{label}-node");
        let secrets = root.join("config/secrets");
        fs::create_dir_all(&secrets).expect("secrets");
        fs::create_dir_all(dir.path().join("shared")).expect("shared");
        fs::write(secrets.join("redis_url"), format!("{}\n", redis.url)).expect("secret");
        fs::write(secrets.join("admin_token"), "test-admin-token-0123456789\n").expect("secret");
        fs::write(
            root.join("config/server.toml"),
            format!(
                "node = {name:?}\nlisten = \"{server}\"\nshared_storage = {:?}\npostgres_url = {:?}\nredis_url = {:?}\nredis_prefix = {:?}\nadmin_token_file = {:?}\nsources.db.server_database = true\n[limits]\nshutdown_grace_secs = 2\n",
                dir.path().join("shared"),
                db.url,
                redis.url,
                redis.prefix,
                secrets.join("admin_token"),
            ),
        )
        .expect("server.toml");
        fs::write(
            root.join("config/agent.toml"),
            format!(
                "node = {name:?}\nnode_root = {root:?}\nredis_url_file = {:?}\nmetrics_listen = \"{metrics}\"\n[rollout]\nmin_healthy_secs = 2\nhealth_timeout_secs = 20\n[supervise]\nstop_grace_secs = 5\nhealth_interval_ms = 200\nheartbeat_interval_ms = 300\nheartbeat_ttl_ms = 3000\n{agent_extra}",
                secrets.join("redis_url"),
            ),
        )
        .expect("agent.toml");
        TestNode {
            dir,
            layout,
            signing,
            name,
            server,
            metrics,
            redis,
            _db: db,
            agent: None,
        }
    }

    /// Stages `version` whose `bin/etl-server` is `script`.
    fn stage(&self, version: &str, script: &str) {
        self.stage_with(version, script, |_| {});
    }

    /// Stages `version` whose `bin/etl-server` is `script`, after `more` added to its tree.
    fn stage_with(&self, version: &str, script: &str, more: impl FnOnce(&Path)) {
        let tree = self.dir.path().join(format!("tree-{version}"));
        fs::create_dir_all(tree.join("bin")).expect("tree");
        more(&tree);
        let server = tree.join("bin/etl-server");
        fs::write(&server, script).expect("script");
        fs::set_permissions(&server, fs::Permissions::from_mode(0o755)).expect("chmod");
        let store = self.dir.path().join("store");
        let bundle = build_release(
            version,
            &tree,
            &self.signing.release_key,
            &store,
            SystemTime::now(),
        );
        let bytes = fs::read(bundle).expect("bundle");
        fleet_agent::stage(
            &self.layout,
            &version.parse().expect("version"),
            &mut &bytes[..],
            SystemTime::now(),
        )
        .expect("staged");
    }

    /// Makes `version` current without a daemon (as the one-shot agent does).
    fn activate_offline(&self, version: &str) {
        fleet_agent::activate(&self.layout, &version.parse().expect("version"), false)
            .expect("activated");
    }

    /// Starts the real daemon, its log in `agent.log`.
    fn start_agent(&mut self, env: &[(&str, &str)]) {
        self.start_agent_from(Path::new(env!("CARGO_BIN_EXE_fleet-agent")), env);
    }

    /// Starts the daemon from `binary`.
    fn start_agent_from(&mut self, binary: &Path, env: &[(&str, &str)]) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .expect("agent.log");
        let mut cmd = Command::new(binary);
        cmd.arg("run")
            .arg("--root")
            .arg(self.layout.root())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.agent = Some(cmd.spawn().expect("fleet-agent run"));
        self.wait("the control socket answers", Duration::from_secs(10), |s| {
            s["daemon"].is_object()
        });
    }

    fn agent_log(&self) -> String {
        fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    fn signal_agent(&mut self, signal: rustix::process::Signal) -> std::process::ExitStatus {
        let mut child = self.agent.take().expect("an agent runs");
        let pid = rustix::process::Pid::from_child(&child);
        rustix::process::kill_process(pid, signal).expect("signal the agent");
        child.wait().expect("the agent ends")
    }

    /// The line `fleet-agent serve` would print for `words`, parsed.
    fn ask(&self, words: &[&str]) -> Value {
        let request = Request::parse(words).expect("a request");
        let line = fleet_agent::respond(
            &self.layout,
            request,
            || Ok(std::io::empty()),
            SystemTime::now(),
        )
        .line;
        serde_json::from_str(&line).expect("a JSON answer")
    }

    fn status(&self) -> Value {
        self.ask(&["status"])
    }

    /// Polls `status` until `done` holds, at most `within`; panics with the last status.
    fn wait(&self, what: &str, within: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let status = self.status();
            if done(&status) {
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "{what}: not within {within:?}; last status {status}\nagent log:\n{}",
                    self.agent_log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn healthy(&self) -> Value {
        self.wait("the server is healthy", Duration::from_secs(30), |s| {
            s["daemon"]["server"] == "healthy"
        })
    }

    /// The server's pid as the pid file records it.
    fn pid_file(&self) -> Option<u32> {
        fs::read_to_string(self.layout.state().join("server.pid"))
            .ok()
            .and_then(|t| t.split_whitespace().next().and_then(|p| p.parse().ok()))
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(mut child) = self.agent.take() {
            let pid = rustix::process::Pid::from_child(&child);
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            let _ = child.wait();
        }
        // A server left by an agent that was killed: the pid file names exactly it.
        if let Some(pid) = self.pid_file()
            && let Some(pid) = rustix::process::Pid::from_raw(pid as i32)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}

fn pid_of(status: &Value) -> u32 {
    status["daemon"]["server_pid"]
        .as_u64()
        .expect("a server pid") as u32
}

/// A killed server is restarted, and the restart, its reason, the heartbeat in Redis and the
/// metrics say so; a second daemon for the same root refuses to start, naming the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_is_restarted_and_reported() {
    let mut node = TestNode::new("agsup", "").await;
    node.stage("1.0.0", &good());
    node.activate_offline("1.0.0");
    node.start_agent(&[]);
    let first = node.healthy();
    let pid = pid_of(&first);
    assert_eq!(first["daemon"]["restarts"], 0, "{first}");
    assert_eq!(first["daemon"]["server_release"], "1.0.0", "{first}");
    assert_eq!(first["active"], "1.0.0", "{first}");

    let second = Command::new(env!("CARGO_BIN_EXE_fleet-agent"))
        .args(["run", "--root"])
        .arg(node.layout.root())
        .output()
        .expect("a second daemon");
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{said}");
    let agent_pid = node.agent.as_ref().expect("agent").id();
    assert!(
        said.contains("another fleet-agent daemon runs for")
            && said.contains(&format!("(pid {agent_pid})")),
        "{said}"
    );

    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).expect("pid"),
        rustix::process::Signal::KILL,
    )
    .expect("kill the server");
    let after = node.wait("restarted and healthy", Duration::from_secs(30), |s| {
        s["daemon"]["restarts"] == 1 && s["daemon"]["server"] == "healthy"
    });
    assert_ne!(pid_of(&after), pid, "{after}");
    let exit = after["daemon"]["last_exit"].as_str().unwrap_or_default();
    assert!(exit.contains("signal 9"), "{after}");

    // The heartbeat: the same report in Redis, under the node's key, with a TTL.
    let client = redis::Client::open(node.redis.url.as_str()).expect("redis");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let key = node.redis.key(&format!("agent:{}", node.name));
    let deadline = Instant::now() + Duration::from_secs(10);
    let report: Value = loop {
        let text: Option<String> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .expect("GET");
        if let Some(report) = text.and_then(|t| serde_json::from_str::<Value>(&t).ok())
            && report["daemon"]["restarts"] == 1
        {
            break report;
        }
        assert!(Instant::now() < deadline, "no heartbeat under {key}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(report["active"], "1.0.0", "{report}");
    assert_eq!(report["daemon"]["node"], node.name.as_str(), "{report}");
    assert!(report["reported_at_unix_ms"].as_u64().is_some(), "{report}");
    assert!(report["free_bytes"].as_u64().is_some(), "{report}");
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .expect("PTTL");
    assert!(ttl > 0 && ttl <= 3000, "TTL {ttl}");

    let (status, metrics) = fleet_tests::call_raw(node.metrics, "GET", "/metrics", b"").await;
    assert_eq!(status, 200, "{metrics}");
    let line = format!(
        "fleet_agent_server_restarts_total{{node=\"{}\"}} 1",
        node.name
    );
    assert!(metrics.contains(&line), "{metrics}");
    assert!(
        metrics.contains(&format!(
            "fleet_agent_server_state{{node=\"{}\",state=\"healthy\"}} 1",
            node.name
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("fleet_agent_health_check_latency_seconds{"),
        "{metrics}"
    );
    assert!(metrics.contains("fleet_agent_uptime_seconds{"), "{metrics}");
    let (status, _) = fleet_tests::call_raw(node.metrics, "GET", "/other", b"").await;
    assert_eq!(status, 404);

    // SIGTERM stops the daemon and its server.
    let server = pid_of(&after);
    assert!(node.signal_agent(rustix::process::Signal::TERM).success());
    assert!(!pid_alive(server), "the server outlived a clean stop");
    let down = node.status();
    assert!(down["daemon"].is_null(), "answered from disk: {down}");
    assert_eq!(down["active"], "1.0.0", "{down}");
}

/// A server that exits at once is restarted with growing delays and shown as crash-looping;
/// it is never given up on, and never restarted in a busy loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_exits_at_once_is_crashlooping_with_growing_delays() {
    let mut node = TestNode::new("agloop", "").await;
    node.stage("1.0.0", "#!/bin/sh\necho 'cannot start' >&2\nexit 3\n");
    node.activate_offline("1.0.0");
    node.start_agent(&[]);
    let started = Instant::now();
    // The longest wait seen before each restart.
    let mut delays: Vec<u64> = Vec::new();
    let mut looping = None;
    while started.elapsed() < Duration::from_secs(9) {
        let s = node.status();
        let restarts = s["daemon"]["restarts"].as_u64().unwrap_or(0) as usize;
        if let Some(wait) = s["daemon"]["restart_in_ms"].as_u64() {
            if delays.len() <= restarts {
                delays.resize(restarts + 1, 0);
            }
            delays[restarts] = delays[restarts].max(wait);
        }
        if s["daemon"]["server"] == "crashlooping" && looping.is_none() {
            looping = Some(s.clone());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let looping = looping.expect("crashlooping was shown");
    assert_eq!(looping["daemon"]["last_exit"], "exit status 3", "{looping}");
    // 0.5 s, 1 s, 2 s, 4 s (each ±20 %): at most five starts in nine seconds.
    let s = node.status();
    let restarts = s["daemon"]["restarts"].as_u64().expect("restarts");
    assert!(
        (3..=5).contains(&restarts),
        "{restarts} restarts in 9 s: {s}"
    );
    assert!(delays.len() >= 4, "delays seen: {delays:?}");
    for pair in delays[..4].windows(2) {
        assert!(
            pair[1] > pair[0],
            "each delay longer than the one before: {delays:?}"
        );
    }
    assert!(
        delays[3] >= 1600,
        "the fourth wait is about 2 s: {delays:?}"
    );
    let log = fs::read_to_string(node.layout.root().join("logs/etl-server.log")).expect("log");
    assert!(
        log.contains("cannot start"),
        "the server's output is kept: {log}"
    );
}

/// A server that ignores SIGTERM is killed after the grace when the daemon stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_ignores_sigterm_is_killed_after_the_grace() {
    let mut node = TestNode::new("agterm", "").await;
    node.stage("1.0.0", "#!/bin/sh\ntrap '' TERM\nexec sleep 1000\n");
    node.activate_offline("1.0.0");
    // A grace of 1 s instead of 5 (the last key of the table wins).
    let path = node.layout.root().join("config/agent.toml");
    let text = fs::read_to_string(&path).expect("agent.toml");
    fs::write(
        &path,
        text.replace("stop_grace_secs = 5", "stop_grace_secs = 1"),
    )
    .expect("edit");
    node.start_agent(&[]);
    let s = node.wait("the server runs", Duration::from_secs(10), |s| {
        s["daemon"]["server_pid"].is_u64()
    });
    let pid = pid_of(&s);
    let stopping = Instant::now();
    assert!(node.signal_agent(rustix::process::Signal::TERM).success());
    let took = stopping.elapsed();
    assert!(!pid_alive(pid), "the server still runs");
    assert!(
        took >= Duration::from_secs(1),
        "stopped after {took:?}, before the grace"
    );
    let log = node.agent_log();
    assert!(
        log.contains("did not stop within the grace: SIGKILL"),
        "{log}"
    );
}

/// An agent killed and started again adopts the server that still runs (same pid, no second
/// server, no restart); a pid file naming a process that is not the server (a recycled pid)
/// is not adopted and that process is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_adopts_its_server_and_never_a_recycled_pid() {
    let mut node = TestNode::new("agadopt", "").await;
    node.stage("1.0.0", &good());
    node.activate_offline("1.0.0");
    node.start_agent(&[]);
    let pid = pid_of(&node.healthy());
    node.signal_agent(rustix::process::Signal::KILL);
    assert!(pid_alive(pid), "the server survives its agent");
    node.start_agent(&[]);
    let s = node.healthy();
    assert_eq!(pid_of(&s), pid, "adopted: {s}");
    std::thread::sleep(Duration::from_secs(2));
    let s = node.status();
    assert_eq!(pid_of(&s), pid, "{s}");
    assert_eq!(
        s["daemon"]["restarts"], 0,
        "no second server was started: {s}"
    );
    assert!(node.agent_log().contains("adopted the running server"));

    // The same pid file, naming another process with another start time.
    node.signal_agent(rustix::process::Signal::KILL);
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).expect("pid"),
        rustix::process::Signal::KILL,
    )
    .expect("kill the server");
    let mut other = Command::new("sleep").arg("1000").spawn().expect("sleep");
    let started = fleet_agent::daemon::start_time(other.id()).expect("start time");
    fs::write(
        node.layout.state().join("server.pid"),
        format!("{} {} 1.0.0\n", other.id(), started + 1),
    )
    .expect("pid file");
    node.start_agent(&[]);
    let s = node.healthy();
    assert_ne!(pid_of(&s), other.id(), "{s}");
    assert!(pid_alive(other.id()), "the other process was signalled");
    assert!(node.agent_log().contains("not adopted, not signalled"));
    let _ = other.kill();
    let _ = other.wait();
}

/// The daemon run in-process, as a library function with a shutdown future: status over its
/// control socket, then a clean stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_runs_in_process_and_stops_with_its_future() {
    let node = TestNode::new("aginproc", "").await;
    node.stage("1.0.0", &good());
    node.activate_offline("1.0.0");
    let config = fleet_agent::daemon::DaemonConfig::load(node.layout.root()).expect("config");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(fleet_agent::daemon::run(config, async {
        let _ = stopped.await;
    }));
    let layout = node.layout.clone();
    let s = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let line = fleet_agent::daemon::ask_daemon(&layout, &Request::Status).map(|f| f.line);
            if let Some(s) = line.and_then(|l| serde_json::from_str::<Value>(&l).ok())
                && s["daemon"]["server"] == "healthy"
            {
                return s;
            }
            assert!(Instant::now() < deadline, "not healthy in time");
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .expect("status");
    let pid = pid_of(&s);
    assert_eq!(s["daemon"]["agent_pid"], std::process::id(), "{s}");
    let _ = stop.send(());
    let exit = daemon.await.expect("the task").expect("the daemon");
    assert_eq!(exit, fleet_agent::daemon::Exit::Stopped);
    assert!(!pid_alive(pid), "the server was stopped");
    assert!(!fleet_agent::daemon::socket_path(&node.layout).exists());
}

/// `activate` through the daemon runs the whole step: a good release commits after its gate,
/// a release that never answers /health rolls back to the previous one, which serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upgrade_step_commits_a_good_release_and_rolls_back_a_silent_one() {
    let mut node = TestNode::new("agstep", "").await;
    node.stage("1.0.0", &good());
    node.stage("1.1.0", &good());
    node.stage("1.2.0", "#!/bin/sh\nexec sleep 100000\n");
    node.activate_offline("1.0.0");
    node.start_agent(&[]);
    let old = pid_of(&node.healthy());
    // What the server says of itself through the step: (release, on probation).
    let seen = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
    let watching = tokio::spawn({
        let (seen, addr) = (seen.clone(), node.server);
        async move {
            loop {
                let (status, h) = fleet_tests::call(addr, "GET", "/health", "").await;
                if status == 200 {
                    let release = h["release"].as_str().unwrap_or("?").to_owned();
                    let probation = h["probation"].as_bool().expect("probation in /health");
                    seen.lock().expect("seen").insert((release, probation));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let asked = Instant::now();
    let answer = node.ask(&["activate", "1.1.0"]);
    watching.abort();
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(answer["server"], "committed", "{answer}");
    // The new release was gated on probation (it took no dispatched runs and did not lead),
    // the old one never was, and the commit lifted it.
    let seen = seen.lock().expect("seen").clone();
    assert!(seen.contains(&("1.1.0".into(), true)), "{seen:?}");
    assert!(!seen.contains(&("1.0.0".into(), true)), "{seen:?}");
    let (_, h) = fleet_tests::call(node.server, "GET", "/health", "").await;
    assert_eq!(
        (&h["release"], &h["probation"]),
        (&"1.1.0".into(), &false.into()),
        "{h}"
    );
    assert_eq!(answer["active"], "1.1.0", "{answer}");
    assert_eq!(answer["previous"], "1.0.0", "{answer}");
    assert!(
        asked.elapsed() >= Duration::from_secs(2),
        "gated for min_healthy_secs"
    );
    let s = node.status();
    assert_eq!(s["daemon"]["server_release"], "1.1.0", "{s}");
    assert_eq!(s["daemon"]["server"], "healthy", "{s}");
    assert_ne!(pid_of(&s), old);
    assert!(!pid_alive(old), "the old server was stopped");
    let last = s["daemon"]["last_step"].as_str().unwrap_or_default();
    assert!(last.starts_with("committed 1.1.0"), "{s}");

    // Health timeout of 20 s: the silent release is given that long, then rolled back.
    let answer = node.ask(&["activate", "1.2.0"]);
    assert_eq!(answer["ok"], false, "{answer}");
    assert_eq!(answer["code"], "rolled_back", "{answer}");
    let error = answer["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("release 1.2.0 failed its health gate"),
        "{error}"
    );
    assert!(error.contains("rolled back to 1.1.0"), "{error}");
    let s = node.healthy();
    assert_eq!(s["active"], "1.1.0", "{s}");
    assert_eq!(s["daemon"]["server_release"], "1.1.0", "{s}");
    let (_, h) = fleet_tests::call(node.server, "GET", "/health", "").await;
    assert_eq!(
        h["probation"], false,
        "the rollback's end lifts probation too: {h}"
    );
}

/// A release that passes /health once and then crashes within min_healthy is rolled back; a
/// previous release that cannot start either ends `rollback_failed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_within_min_healthy_rolls_back_and_a_dead_previous_is_rollback_failed() {
    let mut node = TestNode::new("agcrash", "").await;
    let flag = node.dir.path().join("broken");
    // 1.0.0 serves until the flag file exists.
    node.stage(
        "1.0.0",
        &format!(
            "#!/bin/sh\n[ -e {flag:?} ] && exit 7\nexec {:?} \"$@\"\n",
            etl_server()
        ),
    );
    // 1.1.0 serves for a moment, then its server dies.
    node.stage(
        "1.1.0",
        &format!(
            "#!/bin/sh\n{:?} \"$@\" &\nchild=$!\nsleep 1.5\nkill -9 $child\nexit 1\n",
            etl_server()
        ),
    );
    // min_healthy 4 s: 1.1.0 is healthy before its crash, but not for long enough.
    let path = node.layout.root().join("config/agent.toml");
    let text = fs::read_to_string(&path).expect("agent.toml");
    fs::write(
        &path,
        text.replace("min_healthy_secs = 2", "min_healthy_secs = 4"),
    )
    .expect("edit");
    node.activate_offline("1.0.0");
    node.start_agent(&[]);
    node.healthy();
    let answer = node.ask(&["activate", "1.1.0"]);
    assert_eq!(answer["code"], "rolled_back", "{answer}");
    let error = answer["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("the server exited during the gate"),
        "{error}"
    );
    let s = node.healthy();
    assert_eq!(s["active"], "1.0.0", "{s}");

    fs::write(&flag, "").expect("flag");
    let answer = node.ask(&["activate", "1.1.0"]);
    assert_eq!(answer["code"], "rollback_failed", "{answer}");
    let error = answer["error"].as_str().unwrap_or_default();
    assert!(error.contains("does not serve either"), "{error}");
}

/// Without a daemon, `activate` switches as before and says that no server was restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_daemon_activate_only_switches_and_says_so() {
    let node = TestNode::new("agnodaemon", "").await;
    node.stage("1.0.0", &good());
    let answer = node.ask(&["activate", "1.0.0"]);
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(answer["server"], "not_restarted", "{answer}");
    let s = node.status();
    assert!(s["daemon"].is_null(), "{s}");
}

/// The daemon killed at each step of an upgrade and started again settles the step: before
/// the switch it is undone, after it the gate runs again; always one server, and `current`
/// names the release that serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_at_any_step_settles_it_when_it_starts_again() {
    let mut node = TestNode::new("agjournal", "").await;
    node.stage("1.0.0", &good());
    node.stage("1.1.0", &good());
    node.activate_offline("1.0.0");
    for (step, outcome, active) in [
        ("drain", "rolled_back", "1.0.0"),
        ("stop", "rolled_back", "1.0.0"),
        ("switch", "rolled_back", "1.0.0"),
        ("start", "committed", "1.1.0"),
        ("gate", "committed", "1.1.0"),
    ] {
        // Every round starts from 1.0.0 serving.
        if node.status()["active"] != "1.0.0" {
            node.start_agent(&[]);
            let back = node.ask(&["rollback"]);
            assert_eq!(back["ok"], true, "{back}");
            node.signal_agent(rustix::process::Signal::TERM);
        }
        node.start_agent(&[("FLEET_AGENT_CRASH_AT", step)]);
        node.healthy();
        let answer = node.ask(&["activate", "1.1.0"]);
        assert_eq!(answer["code"], "daemon_lost", "{step}: {answer}");
        let status = node.agent.as_mut().expect("agent").wait().expect("it died");
        assert!(!status.success(), "{step}");
        node.agent = None;
        assert!(
            node.layout.state().join("upgrade").exists(),
            "{step}: a journal"
        );
        node.start_agent(&[]);
        let s = node.wait(
            &format!("{step}: the step settles"),
            Duration::from_secs(40),
            |s| {
                s["daemon"]["step"].is_null()
                    && s["daemon"]["last_step"].is_string()
                    && s["daemon"]["server"] == "healthy"
            },
        );
        let last = s["daemon"]["last_step"].as_str().unwrap_or_default();
        assert!(last.starts_with(outcome), "{step}: {s}");
        assert_eq!(s["active"], active, "{step}: {s}");
        assert_eq!(s["daemon"]["server_release"], active, "{step}: {s}");
        assert!(!node.layout.state().join("upgrade").exists(), "{step}");
        // One server: the one the pid file and the daemon name.
        assert_eq!(node.pid_file(), Some(pid_of(&s)), "{step}: {s}");
        node.signal_agent(rustix::process::Signal::TERM);
        let stray = Command::new("pgrep")
            .args([
                "-f",
                &format!(
                    "--config {}",
                    node.layout.root().join("config/server.toml").display()
                ),
            ])
            .output()
            .expect("pgrep");
        assert!(
            String::from_utf8_lossy(&stray.stdout).trim().is_empty(),
            "{step}: a server outlived its daemon: {}",
            String::from_utf8_lossy(&stray.stdout)
        );
    }
}

/// A committed release that carries another `bin/fleet-agent` replaces the daemon (the same
/// process, by exec) and the deploy key's forced command, while the server keeps its pid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_with_a_new_agent_replaces_the_daemon_and_keeps_the_server() {
    let mut node = TestNode::new("agexec", "").await;
    let agent = fs::read(env!("CARGO_BIN_EXE_fleet-agent")).expect("the agent");
    let installed = node.layout.root().join("bin/fleet-agent");
    fs::create_dir_all(installed.parent().expect("bin")).expect("bin");
    fs::write(&installed, &agent).expect("install");
    fs::set_permissions(&installed, fs::Permissions::from_mode(0o755)).expect("chmod");
    // Another build of the agent: the same program with bytes appended (still runs).
    let mut newer = agent.clone();
    newer.extend_from_slice(b"\0fleet-agent 1.1.0\0");
    node.stage("1.0.0", &good());
    node.stage_with("1.1.0", &good(), |tree| {
        let path = tree.join("bin/fleet-agent");
        fs::write(&path, &newer).expect("new agent");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
    });
    node.activate_offline("1.0.0");
    node.start_agent_from(&installed, &[]);
    let agent_pid = node.agent.as_ref().expect("agent").id();
    node.healthy();
    let answer = node.ask(&["activate", "1.1.0"]);
    assert_eq!(answer["server"], "committed", "{answer}");
    // The daemon may be between its two images: the pid file names the server.
    let server = node.pid_file().expect("the server's pid file");
    assert_eq!(
        fs::read(&installed).expect("installed"),
        newer,
        "the forced command is the new agent"
    );
    let mode = fs::metadata(&installed).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o755);
    // The new image answers (its uptime starts again) and adopted the same server.
    let s = node.wait("the new agent answers", Duration::from_secs(20), |s| {
        s["daemon"]["agent_uptime_ms"]
            .as_u64()
            .is_some_and(|ms| ms < 5000)
            && s["daemon"]["server"] == "healthy"
            && s["daemon"]["last_step"].is_null()
    });
    assert_eq!(
        s["daemon"]["agent_pid"], agent_pid,
        "exec keeps the pid: {s}"
    );
    assert_eq!(pid_of(&s), server, "the server kept its pid: {s}");
    assert_eq!(s["daemon"]["restarts"], 0, "{s}");
    let log = node.agent_log();
    assert_eq!(
        log.matches("adopted the running server").count(),
        1,
        "{log}"
    );
    assert!(log.contains("carries a new agent"), "{log}");
    assert!(pid_alive(agent_pid));
}

/// Redis going away does not touch supervision; the outage is logged once and heartbeats
/// resume by themselves when it is back (a private redis-server, stopped and started again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_resume_after_a_redis_outage() {
    let mut node = TestNode::new("agredis", "").await;
    let mut redis = fleet_tests::PrivateRedis::start();
    let url = redis.url();
    fs::write(node.layout.root().join("config/secrets/redis_url"), &url).expect("secret");
    node.stage("1.0.0", &good());
    node.activate_offline("1.0.0");
    node.start_agent(&[]);
    let s = node.wait("a heartbeat", Duration::from_secs(30), |s| {
        s["daemon"]["heartbeat_age_ms"].is_u64() && s["daemon"]["server"] == "healthy"
    });
    let server = pid_of(&s);
    redis.stop();
    let s = node.wait("the outage is seen", Duration::from_secs(10), |s| {
        s["daemon"]["redis_error"].is_string()
    });
    std::thread::sleep(Duration::from_secs(2));
    let s2 = node.status();
    assert_eq!(
        s2["daemon"]["server"], "healthy",
        "supervision goes on: {s2}"
    );
    assert_eq!(pid_of(&s2), server);
    assert!(s2["daemon"]["heartbeat_age_ms"].as_u64() > s["daemon"]["heartbeat_age_ms"].as_u64());
    let log = node.agent_log();
    assert_eq!(
        log.matches("heartbeat to Redis failed").count(),
        1,
        "logged once: {log}"
    );

    redis.restart();
    node.wait("heartbeats resume", Duration::from_secs(15), |s| {
        s["daemon"]["redis_error"].is_null()
            && s["daemon"]["heartbeat_age_ms"]
                .as_u64()
                .is_some_and(|ms| ms < 1000)
    });
    assert!(node.agent_log().contains("heartbeats resumed"));
    let client = redis::Client::open(url.as_str()).expect("redis");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let report: Option<String> = redis::cmd("GET")
        .arg(node.redis.key(&format!("agent:{}", node.name)))
        .query_async(&mut conn)
        .await
        .expect("GET");
    assert!(
        report.is_some(),
        "the heartbeat is back in the restarted Redis"
    );
    node.signal_agent(rustix::process::Signal::TERM);
}

/// A run in progress when the step begins is not failed: the drain lets it finish before the
/// server is stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_in_progress_finishes_before_the_upgrade_stops_its_server() {
    let mut node = TestNode::new("agrun", "").await;
    node.stage("1.0.0", &good());
    node.stage("1.1.0", &good());
    node.activate_offline("1.0.0");
    node.start_agent(&[]);
    node.healthy();
    let flow = "name: slow\nsource: { type: postgres, connection: db, query: \"SELECT pg_sleep(3) AS x\" }\ndestination: { type: jsonl, path: out/slow.jsonl }\n";
    let (status, answer) = fleet_tests::call(node.server, "POST", "/api/flows", flow).await;
    assert!(status == 201 || status == 200, "{status} {answer}");
    let (status, answer) = fleet_tests::call(node.server, "POST", "/api/flows/slow/run", "").await;
    assert_eq!(status, 202, "{answer}");
    let id = answer["run_id"].as_i64().expect("run id");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, run) = fleet_tests::call(node.server, "GET", &format!("/api/runs/{id}"), "").await;
        if run["state"] == "running" {
            break;
        }
        assert!(Instant::now() < deadline, "the run never started: {run}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let layout = node.layout.clone();
    let answer = tokio::task::spawn_blocking(move || {
        let forwarded = fleet_agent::daemon::ask_daemon(
            &layout,
            &Request::parse(&["activate", "1.1.0"]).expect("request"),
        )
        .expect("a daemon");
        serde_json::from_str::<Value>(&forwarded.line).expect("json")
    })
    .await
    .expect("activate");
    assert_eq!(answer["server"], "committed", "{answer}");
    let (_, run) = fleet_tests::call(node.server, "GET", &format!("/api/runs/{id}"), "").await;
    assert_eq!(run["state"], "succeeded", "{run}");
}
