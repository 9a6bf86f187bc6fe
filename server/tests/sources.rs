//! Postgres sources cannot touch the server's own machinery: each run reads through a session
//! of its own on a named connection (`[sources.NAME]`), read-only, under a statement timeout,
//! closed at the run's end; its errors do not show what the query read; cancel and drain stop
//! a query that never ends. And the server's own sessions give up waiting for a lock.

mod common;

use std::time::{Duration, Instant};

use common::TestServer;
use fleet_tests::TestDb;
use serde_json::Value;
use sqlx::Connection;

/// The key of the server's dispatch lock (`runs::store::lock_dispatch`), the one the issue's
/// hostile flow took.
const DISPATCH_LOCK: i64 = 7133401;

const TOKEN: &str = fleet_tests::ADMIN_TOKEN;

/// A flow reading `query` through the test config's connection `db` (the test's database).
fn flow(name: &str, query: &str) -> String {
    format!(
        "name: {name}\nsource: {{ type: postgres, connection: db, query: {query:?} }}\ndestination: {{ type: jsonl, path: out/{name}.jsonl }}\n"
    )
}

/// Creates the flow and asks for a run; the run's id.
async fn start_run(server: &TestServer, flow: &str) -> i64 {
    let (status, answer) = server.call("POST", "/api/flows", flow).await;
    assert!(status == 201 || status == 200, "{status} {answer}");
    let name = answer["name"].as_str().expect("name").to_owned();
    let (status, answer) = server
        .call("POST", &format!("/api/flows/{name}/run"), "")
        .await;
    assert_eq!(status, 202, "{answer}");
    answer["run_id"].as_i64().expect("run id")
}

/// Polls `check` until it answers `Some`, for at most `within`.
async fn wait_for<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> F,
) -> T {
    let until = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < until, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The run's record once it ended, waiting at most `within`.
async fn ended(server: &TestServer, id: i64, within: Duration) -> Value {
    wait_for(&format!("run {id} ends"), within, || async move {
        let (status, run) = server.call("GET", &format!("/api/runs/{id}"), "").await;
        assert_eq!(status, 200, "{run}");
        (!matches!(run["state"].as_str(), Some("queued" | "running"))).then_some(run)
    })
    .await
}

/// How many backends of this database sleep in `pg_sleep` (their statement is the cursor's
/// `FETCH`, so the sleep is found by what they wait for).
async fn sleepers(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
         AND wait_event = 'PgSleep'",
    )
    .fetch_one(pool)
    .await
    .expect("pg_stat_activity")
}

/// Waits until a backend of this database sleeps in `pg_sleep`.
async fn wait_sleeping(pool: &sqlx::PgPool) {
    wait_for("a backend sleeps", Duration::from_secs(30), || async move {
        (sleepers(pool).await > 0).then_some(())
    })
    .await
}

/// Waits until no backend of this database sleeps in `pg_sleep`.
async fn wait_no_sleeper(pool: &sqlx::PgPool) {
    wait_for(
        "no backend sleeps",
        Duration::from_secs(30),
        || async move { (sleepers(pool).await == 0).then_some(()) },
    )
    .await
}

async fn admin(server: &TestServer, path: &str) -> (u16, Value) {
    let auth = format!("Bearer {TOKEN}");
    let (status, body) = fleet_tests::call_with_headers(
        server.addr,
        "POST",
        path,
        &[("Authorization", auth.as_str())],
        b"",
    )
    .await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// The reproduction: a source that takes the server's dispatch lock for its session.
/// The run ends, its session with it, so the lock is free and run requests answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_session_ends_with_its_run_and_keeps_no_lock() {
    let db = TestDb::new("srclock").await;
    let pool = db.pool().await;
    let server = TestServer::start(&db).await;
    let run = server
        .run_flow(&flow(
            "grab",
            &format!("SELECT pg_advisory_lock({DISPATCH_LOCK}) AS x"),
        ))
        .await;
    assert_eq!(run["state"], "succeeded", "{run}");
    // The lock is free: a session of this test can take it (the server takes it only for
    // a moment, in a transaction, so a busy answer is retried), and gives it back.
    let pool_ref = &pool;
    wait_for(
        "the dispatch lock is free",
        Duration::from_secs(10),
        || async move {
            let mut conn = pool_ref.acquire().await.expect("session");
            let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(DISPATCH_LOCK)
                .fetch_one(&mut *conn)
                .await
                .expect("try lock");
            if got {
                let freed: bool = sqlx::query_scalar("SELECT pg_advisory_unlock($1)")
                    .bind(DISPATCH_LOCK)
                    .fetch_one(&mut *conn)
                    .await
                    .expect("unlock");
                assert!(freed, "the same session gives the lock back");
            }
            got.then_some(())
        },
    )
    .await;
    // And a run request answers (it takes the dispatch lock).
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        server.call("POST", "/api/flows/grab/run", ""),
    )
    .await
    .expect("the run request answers");
    assert_eq!(answer.0, 202, "{}", answer.1);
    let run = server
        .wait(answer.1["run_id"].as_i64().expect("run id"))
        .await;
    assert_eq!(run["state"], "succeeded", "{run}");
    server.stop().await.expect("clean stop");
}

/// Postgres quotes the value it could not read in its message; the run's error keeps the
/// message and the SQLSTATE, not the value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_error_does_not_show_what_the_query_read() {
    let db = TestDb::new("srcleak").await;
    let server = TestServer::start(&db).await;
    let run = server
        .run_flow(&flow(
            "leak",
            "SELECT pg_read_file('/etc/passwd')::int AS x",
        ))
        .await;
    assert_eq!(run["state"], "failed", "{run}");
    let error = run["error"].as_str().expect("error");
    assert_eq!(
        error, "source query: invalid input syntax for type integer: \"…\" (SQLSTATE 22P02)",
        "{run}"
    );
    // A quoted name the query itself wrote is kept: it tells nothing the author did not know.
    let run = server
        .run_flow(&flow("nope", "SELECT nope FROM pg_class"))
        .await;
    assert_eq!(
        run["error"], "source query: column \"nope\" does not exist (SQLSTATE 42703)",
        "{run}"
    );
    server.stop().await.expect("clean stop");
}

/// A source query that never ends is stopped by a cancel: the run ends canceled and its
/// query no longer runs in Postgres.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_source_query_that_never_ends() {
    let db = TestDb::new("srccancel").await;
    let pool = db.pool().await;
    let server = TestServer::start(&db).await;
    let id = start_run(&server, &flow("sleepy", "SELECT pg_sleep(1e6) AS x")).await;
    wait_sleeping(&pool).await;
    let (status, answer) = server
        .call("POST", &format!("/api/runs/{id}/cancel"), "")
        .await;
    assert_eq!(status, 202, "{answer}");
    let run = ended(&server, id, Duration::from_secs(30)).await;
    assert_eq!(run["state"], "canceled", "{run}");
    wait_no_sleeper(&pool).await;
    server.stop().await.expect("clean stop");
}

/// A drain whose deadline passes stops a source query that never ends: the run fails saying
/// why, and the drain completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_stops_a_source_query_that_never_ends() {
    let db = TestDb::new("srcdrain").await;
    let pool = db.pool().await;
    let server = TestServer::start(&db).await;
    let id = start_run(&server, &flow("sleepy", "SELECT pg_sleep(1e6) AS x")).await;
    wait_sleeping(&pool).await;
    let (status, drained) = tokio::time::timeout(
        Duration::from_secs(30),
        admin(&server, "/admin/drain?deadline_secs=1"),
    )
    .await
    .expect("the drain answers");
    assert_eq!(status, 200, "{drained}");
    assert_eq!(drained["state"], "drained", "{drained}");
    let run = ended(&server, id, Duration::from_secs(30)).await;
    assert_eq!(run["state"], "failed", "{run}");
    assert_eq!(
        run["error"], "the node was drained before the run finished",
        "{run}"
    );
    wait_no_sleeper(&pool).await;
    server.stop().await.expect("clean stop");
}

/// Every statement of a source session is under the connection's `statement_timeout_ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_query_is_stopped_by_its_statement_timeout() {
    let db = TestDb::new("srctimeout").await;
    let server = TestServer::start_with(
        &db,
        "[sources.quick]\nserver_database = true\nstatement_timeout_ms = 300\n",
    )
    .await;
    let flow = "name: slow\nsource: { type: postgres, connection: quick, query: \"SELECT pg_sleep(1e6) AS x\" }\ndestination: { type: jsonl, path: out/slow.jsonl }\n";
    let id = start_run(&server, flow).await;
    let run = ended(&server, id, Duration::from_secs(30)).await;
    assert_eq!(run["state"], "failed", "{run}");
    assert_eq!(
        run["error"], "source query: canceling statement due to statement timeout (SQLSTATE 57014)",
        "{run}"
    );
    server.stop().await.expect("clean stop");
}

/// A flow must name a connection the node has: refused at definition time with the field and
/// the connections there are, and at run time (a definition stored elsewhere) with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_naming_an_unknown_connection_is_refused() {
    let db = TestDb::new("srcunknown").await;
    let pool = db.pool().await;
    let server = TestServer::start(&db).await;
    let text = "name: lost\nsource: { type: postgres, connection: dbb, query: \"SELECT 1 AS x\" }\ndestination: { type: jsonl, path: out/lost.jsonl }\n";
    let (status, answer) = server.call("POST", "/api/flows", text).await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["field"], "source.connection", "{answer}");
    assert_eq!(
        answer["error"],
        "body:2:39: source.connection: no connection `dbb` on this node ([sources.dbb] in its config) (hint: did you mean `db`?)",
        "{answer}"
    );
    // Stored by a node that knows it, run by one that does not.
    let definition = serde_json::json!({
        "name": "lost",
        "source": { "type": "postgres", "connection": "dbb", "query": "SELECT 1 AS x" },
        "destination": { "type": "jsonl", "path": "out/lost.jsonl" },
    });
    sqlx::query("INSERT INTO flows (name, definition) VALUES ('lost', $1)")
        .bind(definition)
        .execute(&pool)
        .await
        .expect("store the flow");
    let (status, answer) = server.call("POST", "/api/flows/lost/run", "").await;
    assert_eq!(status, 202, "{answer}");
    let run = server
        .wait(answer["run_id"].as_i64().expect("run id"))
        .await;
    assert_eq!(run["state"], "failed", "{run}");
    assert_eq!(
        run["error"],
        "source.connection: no connection `dbb` on node node-a ([sources.dbb] in its config)",
        "{run}"
    );
    server.stop().await.expect("clean stop");
}

/// A lock held elsewhere makes a server operation fail with a clear answer after
/// `postgres.lock_timeout_ms`, not hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_held_elsewhere_fails_a_request_instead_of_hanging_it() {
    let db = TestDb::new("locktimeout").await;
    let server = TestServer::start_with(&db, "[postgres]\nlock_timeout_ms = 300\n").await;
    let (status, answer) = server
        .call("POST", "/api/flows", &flow("f", "SELECT 1 AS x"))
        .await;
    assert_eq!(status, 201, "{answer}");
    let mut holder = sqlx::PgConnection::connect(&db.url).await.expect("connect");
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(DISPATCH_LOCK)
        .execute(&mut holder)
        .await
        .expect("lock");
    let (status, answer) = tokio::time::timeout(
        Duration::from_secs(10),
        server.call("POST", "/api/flows/f/run", ""),
    )
    .await
    .expect("the run request answers");
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["code"], "database_busy", "{answer}");
    holder.close().await.expect("close");
    let (status, answer) = server.call("POST", "/api/flows/f/run", "").await;
    assert_eq!(status, 202, "{answer}");
    server.stop().await.expect("clean stop");
}
