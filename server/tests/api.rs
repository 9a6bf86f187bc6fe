//! The API's answers to good and bad requests, `/health` and `/metrics`.

mod common;

use common::TestServer;
use fleet_tests::TestDb;

const GOOD: &str = "name: f1\nsource: { type: csv, path: in/a.csv }\ndestination: { type: jsonl, path: out/a.jsonl }\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_are_created_listed_replaced_and_deleted() {
    let db = TestDb::new("crud").await;
    let server = TestServer::start(&db).await;
    let (status, body) = server.call("POST", "/api/flows", GOOD).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["created"], true);
    // JSON works as well as YAML, and the stored definition reads back to the same flow.
    let (_, got) = server.call("GET", "/api/flows/f1", "").await;
    let json = got["definition"].to_string();
    let (status, body) = server.call("POST", "/api/flows", &json).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["created"], false);
    assert_eq!(body["definition"], got["definition"]);
    let (status, list) = server.call("GET", "/api/flows", "").await;
    assert_eq!(status, 200);
    assert_eq!(list["flows"].as_array().map(Vec::len), Some(1));
    let (status, _) = server.call("DELETE", "/api/flows/f1", "").await;
    assert_eq!(status, 204);
    let (status, body) = server.call("GET", "/api/flows/f1", "").await;
    assert_eq!(status, 404);
    assert_eq!(body["field"], "name");
    let (status, _) = server.call("DELETE", "/api/flows/f1", "").await;
    assert_eq!(status, 404);
    let (status, body) = server.call("POST", "/api/flows/f1/run", "").await;
    assert_eq!(status, 404, "{body}");
    server.stop().await.expect("stop");
}

/// Each malformed definition is refused with 422 and the exact place of its first problem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_flow_definitions_are_refused_with_their_place() {
    let db = TestDb::new("malformed").await;
    let server = TestServer::start(&db).await;
    let cases: &[(&str, &str, (u64, u64), &str)] = &[
        (
            "name: a\nsource: { type: csv, path: in/a.csv, delimeter: ';' }\ndestination: { type: jsonl, path: o.jsonl }\n",
            "source.delimeter",
            (2, 38),
            "did you mean `delimiter`",
        ),
        (
            "name: a\nsource: { type: csv, path: in/a.csv }\ntransform:\n  - filter: \"amount >\"\ndestination: { type: jsonl, path: o.jsonl }\n",
            "transform[0].filter",
            (4, 13),
            "invalid expression at 1:9",
        ),
        (
            "name: a\nsource: { type: csv, path: in/a.csv }\ntransform:\n  - cast: { id: integer }\ndestination: { type: jsonl, path: o.jsonl }\n",
            "transform[0].cast.id",
            (4, 17),
            "unknown type `integer`",
        ),
        (
            "name: a\nsource: { type: csv, path: ../etc/passwd }\ndestination: { type: jsonl, path: o.jsonl }\n",
            "source.path",
            (2, 28),
            "leaves shared storage",
        ),
        (
            "name: a\nsource: { type: csv, path: /etc/passwd }\ndestination: { type: jsonl, path: o.jsonl }\n",
            "source.path",
            (2, 28),
            "absolute",
        ),
        (
            "name: a\nsource: { type: csv, path: a.csv }\ntransform:\n  - select: [id, amount]\n  - filter: \"price > 1\"\ndestination: { type: jsonl, path: o.jsonl }\n",
            "transform[1].filter",
            (5, 13),
            "no column `price`",
        ),
        (
            "name: a\nsource: { type: xml, path: a.xml }\ndestination: { type: jsonl, path: o.jsonl }\n",
            "source.type",
            (2, 17),
            "unknown type `xml`",
        ),
        (
            "name: a\nsource: { type: csv, path: a.csv }\ndestination: { type: postgres, table: t, mode: upsert }\n",
            "destination",
            (3, 14),
            "needs `key`",
        ),
        (
            "name: a\nsource: { type: csv, path: a.csv }\ndestination: { type: jsonl, path: o.jsonl }\nschedule: \"every 5 minutes\"\n",
            "schedule",
            (4, 11),
            "not a cron schedule",
        ),
        (
            "{\"name\": \"a\", \"source\": {\"type\": \"csv\", \"path\": \"a.csv\"}, \"destination\": {\"type\": \"jsonl\", \"path\": \"o.jsonl\"}, \"extra\": 1}",
            "extra",
            (1, 112),
            "unknown key `extra`",
        ),
        (
            "name: a\nsource: { type: csv, path: a.csv }\ndestination: { type: jsonl, path: o.jsonl }\nmisfire: later\n",
            "misfire",
            (4, 10),
            "expected coalesce or skip",
        ),
        (
            "name: a\nsource: { type: csv, path: a.csv }\ndestination: { type: jsonl, path: o.jsonl }\nretries: 9\n",
            "retries",
            (4, 10),
            "from 0 to 3",
        ),
        (
            "name: a\nsource: [unclosed\n",
            "source[1]",
            (3, 1),
            "invalid YAML",
        ),
    ];
    for (text, field, (line, column), message) in cases {
        let (status, body) = server.call("POST", "/api/flows", text).await;
        assert_eq!(status, 422, "{text}: {body}");
        let first = &body["problems"][0];
        assert_eq!(first["field"], *field, "{text}: {body}");
        assert_eq!(
            (first["line"].as_u64(), first["column"].as_u64()),
            (Some(*line), Some(*column)),
            "{text}: {body}"
        );
        assert!(
            body["error"].as_str().expect("error").contains(message),
            "{text}: {body}"
        );
    }
    // Every problem of a definition is reported at once.
    let (_, body) = server
        .call("POST", "/api/flows", "name: 'bad name'\nsource: { type: csv }\ndestination: { type: jsonl, path: o.jsonl, mode: x }\n")
        .await;
    assert_eq!(body["problems"].as_array().map(Vec::len), Some(3), "{body}");
    let (_, list) = server.call("GET", "/api/flows", "").await;
    assert_eq!(
        list["flows"],
        serde_json::json!([]),
        "nothing refused was stored"
    );
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_a_json_4xx_naming_the_field() {
    let db = TestDb::new("badreq").await;
    let server = TestServer::start_with(&db, "[limits]\nmax_body_bytes = 4096\n").await;
    let cases: &[(&str, &str, &[u8], u16, &str)] = &[
        ("GET", "/api/runs/abc", b"", 400, "id"),
        ("GET", "/api/runs/-1", b"", 400, "id"),
        ("GET", "/api/runs/999999", b"", 404, "id"),
        ("POST", "/api/runs/999999/cancel", b"", 404, "id"),
        ("GET", "/api/runs?state=done", b"", 400, "state"),
        ("GET", "/api/runs?limit=0", b"", 400, "limit"),
        ("GET", "/api/runs?limit=ten", b"", 400, "limit"),
        ("GET", "/api/runs?color=red", b"", 400, "query"),
        ("POST", "/api/flows", b"\xff\xfe not utf-8", 400, "body"),
        ("POST", "/api/flows", b"", 422, ""),
        ("POST", "/api/flows", b"[1, 2]", 422, ""),
        ("GET", "/api/nothing", b"", 404, ""),
    ];
    for (method, path, body, status, field) in cases {
        let (got, text) = fleet_tests::call_raw(server.addr, method, path, body).await;
        assert_eq!(got, *status, "{method} {path}: {text}");
        let json: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{method} {path}: not JSON: {text}"));
        assert!(json["error"].is_string(), "{method} {path}: {text}");
        if !field.is_empty() {
            assert_eq!(json["field"], *field, "{method} {path}: {text}");
        }
    }
    let big = vec![b'#'; 10_000];
    let (got, _) = fleet_tests::call_raw(server.addr, "POST", "/api/flows", &big).await;
    assert_eq!(got, 413, "a body over max_body_bytes");
    // The server is still there.
    let (status, _) = server.call("GET", "/api/flows", "").await;
    assert_eq!(status, 200);
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_says_what_is_down_and_metrics_count_runs() {
    let db = TestDb::new("health").await;
    let server = TestServer::start(&db).await;
    let (status, health) = server.call("GET", "/health", "").await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["status"], "ok");
    assert_eq!(health["database"]["ok"], true);
    assert_eq!(health["redis"]["ok"], true);
    assert!(
        health["shared_storage"]["free_bytes"]
            .as_u64()
            .expect("free")
            > 0
    );
    assert_eq!(health["running_flows"], 0);
    assert_eq!(health["node"], "node-a");

    server.write("in/a.csv", "id\n1\n2\n");
    let run = server.run_flow(GOOD).await;
    assert_eq!(run["state"], "succeeded", "{run}");
    let (status, text) = fleet_tests::call_raw(server.addr, "GET", "/metrics", b"").await;
    assert_eq!(status, 200);
    assert!(
        text.contains("etl_runs_finished_total{state=\"succeeded\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("etl_rows_total{kind=\"written\"} 2"),
        "{text}"
    );
    assert!(text.contains("# TYPE etl_running_flows gauge"), "{text}");
    server.stop().await.expect("stop");

    // Redis unreachable (nothing listens on port 1): 503, and it says which.
    let down = TestServer::start_edited(&db, "", |t| {
        t.replace(fleet_tests::REDIS_URL, "redis://127.0.0.1:1")
    })
    .await;
    let (status, health) = down.call("GET", "/health", "").await;
    assert_eq!(status, 503, "{health}");
    assert_eq!(health["status"], "degraded");
    assert_eq!(health["redis"]["ok"], false);
    assert_eq!(health["database"]["ok"], true);
    down.stop().await.expect("stop");
}

#[test]
fn config_errors_name_the_file_and_the_key_and_never_the_password() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("server.toml");
    let base = "node = \"n\"\nshared_storage = \"s\"\nredis_url = \"redis://127.0.0.1:6379\"\n";
    let err = fleet_server::Config::parse(base, &path)
        .expect_err("no postgres url")
        .to_string();
    assert!(
        err.contains("server.toml") && err.contains("postgres_url"),
        "{err}"
    );
    let err = fleet_server::Config::parse(
        &format!("{base}postgres_url = \"postgres://u:hunter2@h/db\"\nlisten = \"nowhere\"\n"),
        &path,
    )
    .expect_err("bad listen")
    .to_string();
    assert!(err.contains("listen") && !err.contains("hunter2"), "{err}");
    let err = fleet_server::Config::parse(
        &format!("{base}postgres_url = \"x\"\nlisteen = \"1\"\n"),
        &path,
    )
    .expect_err("typo")
    .to_string();
    assert!(err.contains("listeen"), "{err}");
    std::fs::write(dir.path().join("pg"), "postgres://u:hunter2@h/db\n").expect("write");
    let ok = fleet_server::Config::parse(&format!("{base}postgres_url_file = \"pg\"\n"), &path)
        .expect("from a file");
    assert_eq!(ok.postgres_url, "postgres://u:hunter2@h/db");
    assert!(!format!("{ok:?}").contains("hunter2"));
}

/// The node's name goes into Redis keys and the leader's lease token (`node:random`), whose
/// holder is read back by splitting at `:`: names follow the inventory's rule.
#[test]
fn a_node_name_outside_the_inventorys_rule_is_refused() {
    let path = std::path::Path::new("/etc/etl/server.toml");
    let rest =
        "shared_storage = \"s\"\nredis_url = \"redis://127.0.0.1:6379\"\npostgres_url = \"x\"\n";
    for bad in ["a:b", "line\\nbreak", "Upper", "", "-dash"] {
        let err = fleet_server::Config::parse(&format!("node = \"{bad}\"\n{rest}"), path)
            .expect_err(bad)
            .to_string();
        assert!(
            err.starts_with("/etc/etl/server.toml: node ")
                && err.contains("is not a valid node name (names match [a-z0-9][a-z0-9_.-]*"),
            "{bad}: {err}"
        );
    }
    fleet_server::Config::parse(&format!("node = \"etl-1.prod_a\"\n{rest}"), path)
        .expect("a valid name");
}

/// Three servers starting at once on a new database: migrations run once, all three serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_servers_can_start_at_once_on_a_new_database() {
    let db = TestDb::new("together").await;
    let (a, b, c) = tokio::join!(
        TestServer::start_node(&db, "t1", ""),
        TestServer::start_node(&db, "t2", ""),
        TestServer::start_node(&db, "t3", "")
    );
    for s in [&a, &b, &c] {
        let (status, health) = s.call("GET", "/health", "").await;
        assert_eq!(status, 200, "{health}");
    }
    let pool = db.pool().await;
    // Each migration applied exactly once, up to the newest this server knows.
    let (applied, distinct, newest): (i64, i64, Option<i64>) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT version), max(version) FROM _sqlx_migrations WHERE success",
    )
    .fetch_one(&pool)
    .await
    .expect("migrations");
    assert_eq!(applied, distinct);
    assert_eq!(newest, Some(fleet_server::schema_version()));
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .expect("migrations dir")
        .count();
    assert_eq!(applied as usize, files);
    for s in [a, b, c] {
        s.stop().await.expect("stop");
    }
}

/// Mangled definitions (every byte of a good one replaced in turn, and cut at every length)
/// get an answer below 500, and the server keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mangled_definitions_never_break_the_server() {
    let db = TestDb::new("mangled").await;
    let server = TestServer::start(&db).await;
    let good = "name: m\nsource: { type: csv, path: in/a.csv, delimiter: ';' }\ntransform:\n  - filter: \"a > 1\"\n  - cast: { a: int }\ndestination: { type: postgres, table: t, mode: upsert, key: [a] }\n";
    let mut bodies: Vec<Vec<u8>> = Vec::new();
    for i in 0..good.len() {
        for b in [b'{', b'\'', b'\0', 0xff, b'*'] {
            let mut body = good.as_bytes().to_vec();
            body[i] = b;
            bodies.push(body);
        }
        bodies.push(good.as_bytes()[..i].to_vec());
    }
    for body in &bodies {
        let (status, text) = fleet_tests::call_raw(server.addr, "POST", "/api/flows", body).await;
        assert!(
            status < 500,
            "{status} for {:?}: {text}",
            String::from_utf8_lossy(body)
        );
    }
    let (status, _) = server.call("GET", "/health", "").await;
    assert_eq!(status, 200);
    server.stop().await.expect("stop");
}
