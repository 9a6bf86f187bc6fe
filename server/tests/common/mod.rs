//! Helpers for the server's tests only: a server on a free loopback port with its config; the
//! per-test database, the Redis address and the HTTP client are `fleet-tests`' (shared by every
//! package's tests).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use fleet_tests::{ADMIN_TOKEN, REDIS_URL, TestDb, call, call_raw};
use serde_json::Value;

/// The text of a server config for `db`, shared storage `storage`, listening on `listen`; the
/// Redis key prefix is the database's name, so every test has its own cluster. The operator's
/// admin token is `fleet_tests::ADMIN_TOKEN` (what `call` presents). Postgres
/// sources read the test's database through the connection `db` (a dotted key, so `extra`
/// may still add top-level keys and tables, `[sources.other]` included).
pub fn config_text(node: &str, db: &TestDb, storage: &Path, listen: &str, extra: &str) -> String {
    format!(
        "node = \"{node}\"\nlisten = \"{listen}\"\nshared_storage = \"{}\"\npostgres_url = \"{}\"\nredis_url = \"{REDIS_URL}\"\nredis_prefix = \"{}:\"\nadmin_token = \"{ADMIN_TOKEN}\"\nsources.db.server_database = true\n{extra}",
        storage.display(),
        db.url,
        db.name
    )
}

/// The shared storage of the servers of database `db`: one folder for all of them, as a real
/// cluster has, removed when the last of them is dropped.
fn shared_storage(db: &TestDb) -> Arc<tempfile::TempDir> {
    static SHARED: Mutex<Vec<(String, Weak<tempfile::TempDir>)>> = Mutex::new(Vec::new());
    let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    shared.retain(|(_, w)| w.strong_count() > 0);
    if let Some(dir) = shared
        .iter()
        .find(|(name, _)| *name == db.name)
        .and_then(|(_, w)| w.upgrade())
    {
        return dir;
    }
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    shared.push((db.name.clone(), Arc::downgrade(&dir)));
    dir
}

/// A server running in this test's runtime until dropped (or `stop`). The servers of one
/// test database share one storage folder.
pub struct TestServer {
    pub addr: SocketAddr,
    pub storage: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), fleet_server::ServerError>>>,
    _dir: tempfile::TempDir,
    _shared: Arc<tempfile::TempDir>,
}

impl TestServer {
    pub async fn start(db: &TestDb) -> TestServer {
        Self::start_with(db, "").await
    }

    pub async fn start_with(db: &TestDb, extra: &str) -> TestServer {
        Self::start_edited(db, extra, |text| text).await
    }

    /// Starts node `name` (the usual config otherwise).
    pub async fn start_node(db: &TestDb, name: &str, extra: &str) -> TestServer {
        let node = format!("node = \"{name}\"");
        Self::start_edited(db, extra, move |t| t.replace("node = \"node-a\"", &node)).await
    }

    /// Starts with the config text `edit` makes of the usual one.
    pub async fn start_edited(
        db: &TestDb,
        extra: &str,
        edit: impl FnOnce(String) -> String,
    ) -> TestServer {
        Self::start_tweaked(db, extra, edit, |_| {}).await
    }

    /// Starts node `name` on probation, as its agent starts it for a health gate
    /// (`FLEET_PROBATION=1`).
    pub async fn start_on_probation(db: &TestDb, name: &str, extra: &str) -> TestServer {
        let node = format!("node = \"{name}\"");
        Self::start_tweaked(
            db,
            extra,
            move |t| t.replace("node = \"node-a\"", &node),
            |c| c.probation = true,
        )
        .await
    }

    /// Starts with the config text `edit` makes of the usual one, then `tweak` applied to
    /// the parsed config (what `main` sets from the environment).
    async fn start_tweaked(
        db: &TestDb,
        extra: &str,
        edit: impl FnOnce(String) -> String,
        tweak: impl FnOnce(&mut fleet_server::Config),
    ) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let shared = shared_storage(db);
        let storage = shared.path().join("shared");
        let text = edit(config_text("node-a", db, &storage, "127.0.0.1:0", extra));
        let mut config =
            fleet_server::Config::parse(&text, &dir.path().join("server.toml")).expect("config");
        tweak(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(fleet_server::run(config, listener, async move {
            let _ = rx.await;
        }));
        let server = TestServer {
            addr,
            storage,
            stop: Some(tx),
            task: Some(task),
            _dir: dir,
            _shared: shared,
        };
        // Serving means migrated: `run` binds nothing new, but answers only after connecting.
        for _ in 0..400 {
            if server.task.as_ref().is_some_and(|t| t.is_finished()) {
                panic!("the server stopped at start");
            }
            if tokio::time::timeout(
                Duration::from_millis(200),
                call_raw(addr, "GET", "/health", b""),
            )
            .await
            .is_ok()
            {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the server did not answer on {addr}");
    }

    /// Asks the server to shut down and waits until `run` returns.
    pub async fn stop(mut self) -> Result<(), fleet_server::ServerError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task
            .take()
            .expect("running")
            .await
            .expect("server task")
    }

    pub fn write(&self, rel: &str, text: &str) {
        let p = self.storage.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.storage.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    pub async fn call(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        call(self.addr, method, path, body).await
    }

    /// Creates the flow (panics unless accepted) and runs it to its end; the run's record.
    pub async fn run_flow(&self, flow: &str) -> Value {
        let (status, answer) = self.call("POST", "/api/flows", flow).await;
        assert!(status == 201 || status == 200, "{status} {answer}");
        let name = answer["name"].as_str().expect("name").to_owned();
        let (status, answer) = self
            .call("POST", &format!("/api/flows/{name}/run"), "")
            .await;
        assert_eq!(status, 202, "{answer}");
        self.wait(answer["run_id"].as_i64().expect("run id")).await
    }

    /// Polls the run until it ends (at most two minutes: a hung run fails the test).
    pub async fn wait(&self, id: i64) -> Value {
        for _ in 0..2400 {
            let (status, run) = self.call("GET", &format!("/api/runs/{id}"), "").await;
            assert_eq!(status, 200, "{run}");
            if !matches!(run["state"].as_str(), Some("queued" | "running")) {
                return run;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("run {id} did not end");
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}
