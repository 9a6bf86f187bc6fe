//! Helpers for the server's tests: a database of its own per test (on the Postgres at
//! 127.0.0.1:5432), a server on a free loopback port, and a small HTTP client.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";

/// A database that exists for one test and is dropped after it.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn new(label: &str) -> TestDb {
        let name = format!(
            "etl_{label}_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .subsec_nanos()
        );
        let admin = sqlx::PgPool::connect(ADMIN_URL).await.unwrap_or_else(|e| {
            panic!(
                "Postgres at 127.0.0.1:5432 (user postgres, trust auth) is needed: {e}; start it with \
                 `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`"
            )
        });
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&admin)
            .await
            .expect("create database");
        admin.close().await;
        TestDb {
            url: format!("postgres://postgres@127.0.0.1:5432/{name}"),
            name,
        }
    }

    pub async fn pool(&self) -> sqlx::PgPool {
        sqlx::PgPool::connect(&self.url)
            .await
            .expect("connect to the test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside any runtime: a thread with its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok(admin) = sqlx::PgPool::connect(ADMIN_URL).await {
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                    )))
                    .execute(&admin)
                    .await;
                    admin.close().await;
                }
            });
        })
        .join();
    }
}

/// The text of a server config for `db`, shared storage `storage`, listening on `listen`; the
/// Redis key prefix is the database's name, so every test has its own cluster.
pub fn config_text(node: &str, db: &TestDb, storage: &Path, listen: &str, extra: &str) -> String {
    format!(
        "node = \"{node}\"\nlisten = \"{listen}\"\nshared_storage = \"{}\"\npostgres_url = \"{}\"\nredis_url = \"{REDIS_URL}\"\nredis_prefix = \"{}:\"\n{extra}",
        storage.display(),
        db.url,
        db.name
    )
}

/// A server running in this test's runtime until dropped (or `stop`).
pub struct TestServer {
    pub addr: SocketAddr,
    pub storage: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), fleet_server::ServerError>>>,
    _dir: tempfile::TempDir,
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
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = dir.path().join("shared");
        let text = edit(config_text("node-a", db, &storage, "127.0.0.1:0", extra));
        let config =
            fleet_server::Config::parse(&text, &dir.path().join("server.toml")).expect("config");
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

/// One HTTP/1.1 request; the status and the body (JSON when it parses, else a string).
pub async fn call(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, Value) {
    let (status, text) = call_raw(addr, method, path, body.as_bytes()).await;
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

pub async fn call_raw(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the server");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("send");
    stream.write_all(body).await.expect("send body");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.expect("read answer");
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    // Bodies come chunked or with a length; the tests only need the payload.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n.min(rest.len())]);
        s = rest.get(n + 2..).unwrap_or("");
    }
    out
}
