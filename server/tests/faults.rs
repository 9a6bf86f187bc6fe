//! Hostile files and runs that do not cooperate, through the API with real files and Postgres:
//! a symbolic link swapped in while runs open their files never leads a read or a write
//! outside storage; a FIFO is refused; a run stuck where it cannot see a cancel still ends.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::TestServer;
use fleet_tests::TestDb;

/// Every file under `dir` with its content, sorted.
fn files_under(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let entry = entry.expect("entry");
        let path = entry.path();
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| format!("<{e}>"));
        out.push((entry.file_name().to_string_lossy().into_owned(), text));
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_swapped_in_after_the_check_never_leads_outside_storage() {
    let db = TestDb::new("swap").await;
    let server = TestServer::start(&db).await;
    // Outside storage: a file by the same name, with five good rows that must never be read,
    // and nothing else, which must stay so.
    let outside = tempfile::tempdir().expect("tempdir");
    let secret = "id,v\n1,SECRET\n2,SECRET\n3,SECRET\n4,SECRET\n5,SECRET\n";
    std::fs::write(outside.path().join("d.csv"), secret).expect("write");
    // Inside: two good rows and a bad one (it goes to a reject file beside the output).
    server.write("in/d.csv", "id,v\n1,inside\nx,bad\n2,inside\n");
    std::os::unix::fs::symlink(outside.path(), server.storage.join("swap")).expect("symlink");
    let (status, answer) = server
        .call(
            "POST",
            "/api/flows",
            "name: swap\nsource: { type: csv, path: in/d.csv }\ntransform:\n  - cast: { id: int }\ndestination: { type: csv, path: in/out.csv }\non_error: { bad_rows: reject_file }\n",
        )
        .await;
    assert_eq!(status, 201, "{answer}");

    // `in` is, by turns, the real directory and a link to outside: exchanged atomically, as
    // fast as a thread can, while runs check and open their files.
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicU64::new(0));
    let swapper = {
        let (stop, swaps) = (stop.clone(), swaps.clone());
        let (a, b) = (server.storage.join("in"), server.storage.join("swap"));
        std::thread::spawn(move || {
            use rustix::fs::{CWD, RenameFlags, renameat_with};
            while !stop.load(Ordering::Relaxed) {
                renameat_with(CWD, &a, CWD, &b, RenameFlags::EXCHANGE).expect("exchange");
                swaps.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let mut outcomes = Vec::new();
    for _ in 0..60 {
        let (status, answer) = server.call("POST", "/api/flows/swap/run", "").await;
        assert_eq!(status, 202, "{answer}");
        let run = server.wait(answer["run_id"].as_i64().expect("id")).await;
        outcomes.push(run);
    }
    stop.store(true, Ordering::Relaxed);
    swapper.join().expect("swapper");
    assert!(swaps.load(Ordering::Relaxed) > 0);

    for run in &outcomes {
        match run["state"].as_str() {
            // What it read was the file inside: 3 rows, one of them bad.
            Some("succeeded") => assert_eq!(
                (
                    run["rows_read"].as_i64(),
                    run["rows_written"].as_i64(),
                    run["rows_rejected"].as_i64()
                ),
                (Some(3), Some(2), Some(1)),
                "{run}"
            ),
            // Refused because `in` was the link when the run opened it.
            Some("failed") => assert!(
                run["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("symbolic link")),
                "{run}"
            ),
            _ => panic!("{run}"),
        }
    }
    // Nothing was written outside: not the output, not its temporary file, not the rejects.
    assert_eq!(
        files_under(outside.path()),
        vec![("d.csv".to_owned(), secret.to_owned())]
    );
    server.stop().await.expect("clean stop");
}

/// Polls run `id` until it ends; panics if it has not after `within` (a hung run, not a
/// timing check: the bound is far above what the run needs).
async fn wait_within(server: &TestServer, id: i64, within: Duration) -> serde_json::Value {
    let until = Instant::now() + within;
    loop {
        let (status, run) = server.call("GET", &format!("/api/runs/{id}"), "").await;
        assert_eq!(status, 200, "{run}");
        if !matches!(run["state"].as_str(), Some("queued" | "running")) {
            return run;
        }
        assert!(
            Instant::now() < until,
            "run {id} still {} after {within:?}: {run}",
            run["state"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Opens the FIFO for writing and closes it when dropped, so a reader stuck opening it
/// (as the server was before FIFOs were refused) gets an end of file and the test can end.
struct Unstick(std::path::PathBuf);

impl Drop for Unstick {
    fn drop(&mut self) {
        use std::os::unix::fs::OpenOptionsExt;
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_source_is_refused_and_the_server_goes_on() {
    let db = TestDb::new("fifo").await;
    let server = TestServer::start(&db).await;
    server.write("in/ok.csv", "a\n1\n");
    let fifo = server.storage.join("in/pipe.csv");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .expect("mkfifo");
    let _unstick = Unstick(fifo);
    let flow = |name: &str, path: &str| {
        format!(
            "name: {name}\nsource: {{ type: csv, path: {path} }}\ndestination: {{ type: csv, path: out/{name}.csv }}\n"
        )
    };
    let (status, answer) = server
        .call("POST", "/api/flows", &flow("pipe", "in/pipe.csv"))
        .await;
    assert_eq!(status, 201, "{answer}");
    let (status, answer) = server.call("POST", "/api/flows/pipe/run", "").await;
    assert_eq!(status, 202, "{answer}");
    let id = answer["run_id"].as_i64().expect("id");
    let run = wait_within(&server, id, Duration::from_secs(30)).await;
    assert_eq!(run["state"], "failed", "{run}");
    assert_eq!(
        run["error"], "`in/pipe.csv` is not a regular file (it is a FIFO): refused",
        "{run}"
    );
    // The server answers and runs the next flow.
    let ok = server.run_flow(&flow("ok", "in/ok.csv")).await;
    assert_eq!(ok["state"], "succeeded", "{ok}");
    tokio::time::timeout(Duration::from_secs(60), server.stop())
        .await
        .expect("the server stops")
        .expect("clean stop");
}

/// The admin token of the stuck-run test's server.
const ADMIN_TOKEN: &str = fleet_tests::ADMIN_TOKEN;

/// Backends of this test's database sleeping in the destination's trigger.
async fn sleeping(pool: &sqlx::PgPool) -> i64 {
    let (n,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event = 'PgSleep'",
    )
    .fetch_one(pool)
    .await
    .expect("pg_stat_activity");
    n
}

/// Starts the flow and waits until its destination is asleep in the trigger.
async fn start_stuck(server: &TestServer, pool: &sqlx::PgPool) -> i64 {
    let before = sleeping(pool).await;
    let (status, answer) = server.call("POST", "/api/flows/stuck/run", "").await;
    assert_eq!(status, 202, "{answer}");
    let until = Instant::now() + Duration::from_secs(60);
    while sleeping(pool).await <= before {
        assert!(
            Instant::now() < until,
            "the destination never reached the trigger"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    answer["run_id"].as_i64().expect("id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_does_not_stop_is_recorded_failed_after_cancel_drain_and_at_shutdown() {
    let db = TestDb::new("stuck").await;
    let server = TestServer::start_with(&db, "[limits]\nshutdown_grace_secs = 0\n").await;
    let pool = db.pool().await;
    // A destination whose every row waits an hour in Postgres: the run's task waits on it
    // and never looks at its cancel flag.
    sqlx::raw_sql(
        "CREATE TABLE stuck (id int);
         CREATE FUNCTION stall() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(3600); RETURN NEW; END $$;
         CREATE TRIGGER stall BEFORE INSERT ON stuck FOR EACH ROW EXECUTE FUNCTION stall();",
    )
    .execute(&pool)
    .await
    .expect("trigger");
    server.write("in/one.csv", "id\n1\n");
    let (status, answer) = server
        .call(
            "POST",
            "/api/flows",
            "name: stuck\nsource: { type: csv, path: in/one.csv }\ndestination: { type: postgres, table: stuck }\n",
        )
        .await;
    assert_eq!(status, 201, "{answer}");

    let canceled = start_stuck(&server, &pool).await;
    let (status, answer) = server
        .call("POST", &format!("/api/runs/{canceled}/cancel"), "")
        .await;
    assert_eq!(status, 202, "{answer}");
    let run = wait_within(&server, canceled, Duration::from_secs(60)).await;
    assert_eq!(run["state"], "failed", "{run}");
    assert_eq!(
        run["error"], "the run did not stop within 5 s after it was canceled: abandoned",
        "{run}"
    );

    // A drain whose deadline has passed stops a run the same way, and answers drained.
    let drained = start_stuck(&server, &pool).await;
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let admin = |path: &'static str| {
        let headers = [("Authorization", bearer.as_str())];
        let addr = server.addr;
        async move { fleet_tests::call_with_headers(addr, "POST", path, &headers, b"").await }
    };
    let (status, answer) = admin("/admin/drain?deadline_secs=1").await;
    assert_eq!(status, 200, "{answer}");
    let run = wait_within(&server, drained, Duration::from_secs(60)).await;
    assert_eq!(run["state"], "failed", "{run}");
    assert_eq!(
        run["error"], "the run did not stop within 5 s after the node began draining: abandoned",
        "{run}"
    );
    let (status, answer) = admin("/admin/resume").await;
    assert_eq!(status, 200, "{answer}");

    // The server goes on; a second stuck run does not hold its shutdown up.
    let at_shutdown = start_stuck(&server, &pool).await;
    tokio::time::timeout(Duration::from_secs(60), server.stop())
        .await
        .expect("the server stops")
        .expect("clean stop");
    let (state, error): (String, Option<String>) =
        sqlx::query_as("SELECT state, error FROM runs WHERE id = $1")
            .bind(at_shutdown)
            .fetch_one(&pool)
            .await
            .expect("run");
    assert_eq!(
        (state.as_str(), error.as_deref()),
        (
            "failed",
            Some("the run did not stop within 5 s after the server began shutting down: abandoned")
        )
    );
}
