//! Flows end to end through the API: real Postgres (a database per test), real files.

mod common;

use common::TestServer;
use fleet_tests::TestDb;
use serde_json::Value;

const ORDERS: &str = "id,customer,amount,created_at,note\n\
1,acme,150.50,2024-01-02 03:04:05,first\n\
2,globex,99,2024-01-03 00:00:00,small\n\
3,,500,2024-01-04 00:00:00,no customer\n\
4,initech,1200.25,2024-01-05T10:00:00Z,\"quoted, with comma\"\n";

async fn rows(pool: &sqlx::PgPool, sql: &str) -> Vec<Vec<String>> {
    use sqlx::Row;
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_all(pool)
        .await
        .expect(sql);
    rows.iter()
        .map(|r| {
            (0..r.len())
                .map(|i| {
                    r.try_get::<Option<String>, _>(i)
                        .expect("text column")
                        .unwrap_or_else(|| "NULL".into())
                })
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_flow_loads_postgres_with_every_transformation() {
    let db = TestDb::new("example").await;
    let server = TestServer::start(&db).await;
    server.write("incoming/orders.csv", ORDERS);
    let run = server
        .run_flow(
            r#"
name: orders-to-pg
source: { type: csv, path: incoming/orders.csv, header: true }
transform:
  - select: [id, customer, amount, created_at]
  - rename: { customer: customer_name }
  - filter: "amount > 100 && customer_name != ''"
  - compute: { amount_eur: "amount * 0.92" }
  - cast: { id: int, amount: decimal, created_at: timestamp }
destination: { type: postgres, table: public.orders, mode: upsert, key: [id] }
on_error: { bad_rows: reject_file, max_bad_rows: 100 }
schedule: "*/5 * * * *"
"#,
        )
        .await;
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_eq!(run["rows_read"], 4);
    assert_eq!(run["rows_written"], 2);
    assert_eq!(run["rows_rejected"], 0);
    assert_eq!(run["node"], "node-a");
    let pool = db.pool().await;
    assert_eq!(
        rows(&pool, "SELECT id::text, customer_name, amount::text, created_at::text, amount_eur::text FROM orders ORDER BY id").await,
        vec![
            vec!["1", "acme", "150.50", "2024-01-02 03:04:05+00", "138.46"],
            vec!["4", "initech", "1200.25", "2024-01-05 10:00:00+00", "1104.23"],
        ]
    );
    // The table was made from the flow's types.
    assert_eq!(
        rows(&pool, "SELECT column_name::text, data_type::text FROM information_schema.columns WHERE table_name = 'orders' ORDER BY ordinal_position").await,
        vec![
            vec!["id", "bigint"],
            vec!["customer_name", "text"],
            vec!["amount", "numeric"],
            vec!["created_at", "timestamp with time zone"],
            vec!["amount_eur", "double precision"],
        ]
    );
    server.stop().await.expect("clean stop");
}

/// Every source with every destination: the same three rows arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_source_with_each_destination() {
    let db = TestDb::new("pairs").await;
    let pool = db.pool().await;
    sqlx::raw_sql("CREATE TABLE src (id bigint, name text, score numeric); INSERT INTO src VALUES (1, 'a', 1.5), (2, 'b\tc', 2), (3, NULL, 3.25)")
        .execute(&pool)
        .await
        .expect("source table");
    let server = TestServer::start(&db).await;
    server.write(
        "in/src.csv",
        "id,name,score\n1,a,1.5\n2,\"b\tc\",2\n3,,3.25\n",
    );
    server.write(
        "in/src.jsonl",
        "{\"id\":1,\"name\":\"a\",\"score\":1.5}\n{\"id\":2,\"name\":\"b\\tc\",\"score\":2}\n{\"id\":3,\"name\":null,\"score\":3.25}\n",
    );
    let sources = [
        ("csv", "{ type: csv, path: in/src.csv }"),
        ("jsonl", "{ type: jsonl, path: in/src.jsonl }"),
        (
            "pg",
            "{ type: postgres, connection: db, query: \"SELECT id, name, score FROM src ORDER BY id\" }",
        ),
    ];
    for (sname, source) in sources {
        let dests = [
            ("pg", format!("{{ type: postgres, table: out_{sname} }}")),
            ("csv", format!("{{ type: csv, path: out/{sname}.csv }}")),
            (
                "jsonl",
                format!("{{ type: jsonl, path: out/{sname}.jsonl }}"),
            ),
        ];
        for (dname, dest) in dests {
            let flow = format!(
                "name: {sname}-to-{dname}\nsource: {source}\ntransform:\n  - cast: {{ id: int, score: decimal, name: text }}\ndestination: {dest}\n"
            );
            let run = server.run_flow(&flow).await;
            assert_eq!(run["state"], "succeeded", "{sname} -> {dname}: {run}");
            assert_eq!(run["rows_written"], 3, "{sname} -> {dname}: {run}");
            match dname {
                "pg" => {
                    // An empty CSV field is an empty text: CSV has no null.
                    let third = if sname == "csv" { "" } else { "NULL" };
                    assert_eq!(
                        rows(
                            &pool,
                            &format!(
                                "SELECT id::text, name, score::text FROM out_{sname} ORDER BY id"
                            )
                        )
                        .await,
                        vec![
                            vec!["1", "a", "1.5"],
                            vec!["2", "b\tc", "2"],
                            vec!["3", third, "3.25"]
                        ],
                        "{sname} -> {dname}"
                    )
                }
                "csv" => {
                    let text = server.read(&format!("out/{sname}.csv"));
                    // A null text is an empty field; CSV cannot tell it from an empty string.
                    assert_eq!(
                        text, "id,name,score\n1,a,1.5\n2,b\tc,2\n3,,3.25\n",
                        "{sname} -> {dname}"
                    );
                }
                _ => {
                    let lines: Vec<Value> = server
                        .read(&format!("out/{sname}.jsonl"))
                        .lines()
                        .map(|l| serde_json::from_str(l).expect("JSON line"))
                        .collect();
                    let third_name = if sname == "csv" {
                        Value::String(String::new())
                    } else {
                        Value::Null
                    };
                    assert_eq!(
                        lines,
                        vec![
                            serde_json::json!({"id": 1, "name": "a", "score": "1.5"}),
                            serde_json::json!({"id": 2, "name": "b\tc", "score": "2"}),
                            serde_json::json!({"id": 3, "name": third_name, "score": "3.25"}),
                        ],
                        "{sname} -> {dname}"
                    );
                }
            }
        }
    }
    // No temporary files are left beside the outputs.
    let leftovers: Vec<String> = std::fs::read_dir(server.storage.join("out"))
        .expect("out dir")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upsert_twice_is_idempotent_and_the_last_row_for_a_key_wins() {
    let db = TestDb::new("upsert").await;
    let server = TestServer::start(&db).await;
    server.write("in/a.csv", "id,v\n1,one\n2,two\n2,two-again\n");
    let flow = "name: up\nsource: { type: csv, path: in/a.csv }\ntransform:\n  - cast: { id: int }\ndestination: { type: postgres, table: kv, mode: upsert, key: [id] }\n";
    let pool = db.pool().await;
    for _ in 0..2 {
        let run = server.run_flow(flow).await;
        assert_eq!(run["state"], "succeeded", "{run}");
        assert_eq!(
            rows(&pool, "SELECT id::text, v FROM kv ORDER BY id").await,
            vec![vec!["1", "one"], vec!["2", "two-again"]]
        );
    }
    server.write("in/a.csv", "id,v\n2,changed\n3,three\n");
    let run = server.run_flow(flow).await;
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_eq!(
        rows(&pool, "SELECT id::text, v FROM kv ORDER BY id").await,
        vec![vec!["1", "one"], vec!["2", "changed"], vec!["3", "three"]]
    );
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_is_atomic_a_failing_run_leaves_the_old_table() {
    let db = TestDb::new("replace").await;
    let server = TestServer::start(&db).await;
    let pool = db.pool().await;
    let flow = "name: rep\nsource: { type: csv, path: in/r.csv }\ntransform:\n  - cast: { id: int }\ndestination: { type: postgres, table: r, mode: replace }\n";
    server.write("in/r.csv", "id,v\n1,a\n2,b\n");
    assert_eq!(server.run_flow(flow).await["state"], "succeeded");
    server.write("in/r.csv", "id,v\n3,c\n");
    assert_eq!(server.run_flow(flow).await["state"], "succeeded");
    assert_eq!(
        rows(&pool, "SELECT id::text, v FROM r").await,
        vec![vec!["3", "c"]]
    );
    // Many good rows, then a bad one: the run fails and the table is as it was.
    let mut text = String::from("id,v\n");
    for i in 0..20_000 {
        text.push_str(&format!("{i},x\n"));
    }
    text.push_str("oops,y\n");
    server.write("in/r.csv", &text);
    let run = server.run_flow(flow).await;
    assert_eq!(run["state"], "failed", "{run}");
    let error = run["error"].as_str().expect("error");
    assert!(
        error.contains("row 20002")
            && error.contains("`id`")
            && error.contains("\"oops\" is not an integer"),
        "{error}"
    );
    assert_eq!(
        rows(&pool, "SELECT id::text, v FROM r").await,
        vec![vec!["3", "c"]]
    );
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rows_fail_skip_or_go_to_the_reject_file_with_exact_counts() {
    let db = TestDb::new("badrows").await;
    let server = TestServer::start(&db).await;
    // Line 3: not an int; line 4: too few fields; line 5: bad date; line 6 fine.
    server.write(
        "in/b.csv",
        "id,d\n1,2024-01-01\nx,2024-01-02\n3\n4,2024-02-30\n5,2024-03-01\n",
    );
    let flow = |name: &str, policy: &str| {
        format!(
            "name: {name}\nsource: {{ type: csv, path: in/b.csv }}\ntransform:\n  - cast: {{ id: int, d: date }}\ndestination: {{ type: jsonl, path: out/{name}.jsonl }}\non_error: {policy}\n"
        )
    };
    let fail = server.run_flow(&flow("fail", "{ bad_rows: fail }")).await;
    assert_eq!(fail["state"], "failed", "{fail}");
    assert!(
        fail["error"]
            .as_str()
            .expect("error")
            .contains("row 3, column `id`"),
        "{fail}"
    );
    assert!(
        !server.storage.join("out/fail.jsonl").exists(),
        "a failed run leaves no output"
    );

    let skip = server.run_flow(&flow("skip", "{ bad_rows: skip }")).await;
    assert_eq!(skip["state"], "succeeded", "{skip}");
    assert_eq!(
        (
            skip["rows_read"].as_i64(),
            skip["rows_written"].as_i64(),
            skip["rows_rejected"].as_i64()
        ),
        (Some(5), Some(2), Some(3))
    );
    let bad: Vec<(i64, Option<String>)> = skip["bad_rows"]
        .as_array()
        .expect("bad rows")
        .iter()
        .map(|b| {
            (
                b["row"].as_i64().expect("row"),
                b["column"].as_str().map(str::to_owned),
            )
        })
        .collect();
    assert_eq!(
        bad,
        vec![(3, Some("id".into())), (4, None), (5, Some("d".into()))]
    );
    assert_eq!(server.read("out/skip.jsonl").lines().count(), 2);

    let rejected = server
        .run_flow(&flow("rej", "{ bad_rows: reject_file }"))
        .await;
    assert_eq!(rejected["state"], "succeeded", "{rejected}");
    assert_eq!(rejected["reject_file"], "out/rej.jsonl.rejects.jsonl");
    let lines: Vec<Value> = server
        .read("out/rej.jsonl.rejects.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    assert_eq!(lines.len(), 3);
    assert!(
        lines.iter().any(|l| l["row"] == 5
            && l["column"] == "d"
            && l["reason"].as_str().expect("reason").contains("not a date")),
        "{lines:?}"
    );

    let capped = server
        .run_flow(&flow("cap", "{ bad_rows: skip, max_bad_rows: 2 }"))
        .await;
    assert_eq!(capped["state"], "failed", "{capped}");
    assert!(
        capped["error"]
            .as_str()
            .expect("error")
            .contains("more than 2 bad rows"),
        "{capped}"
    );

    // The run history, filtered.
    let (status, list) = server
        .call("GET", "/api/runs?state=failed&limit=10", "")
        .await;
    assert_eq!(status, 200, "{list}");
    let flows: Vec<&str> = list["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .map(|r| r["flow"].as_str().expect("flow"))
        .collect();
    assert_eq!(flows, vec!["cap", "fail"], "newest first");
    let (_, list) = server.call("GET", "/api/runs?flow=skip", "").await;
    assert_eq!(list["runs"].as_array().map(Vec::len), Some(1), "{list}");
    let (_, list) = server.call("GET", "/api/runs?limit=1", "").await;
    assert_eq!(list["runs"][0]["flow"], "cap", "{list}");

    // A source file that is not there fails the run, naming it.
    let missing = server
        .run_flow("name: gone\nsource: { type: csv, path: in/nothing.csv }\ndestination: { type: jsonl, path: out/gone.jsonl }\n")
        .await;
    assert_eq!(missing["state"], "failed", "{missing}");
    assert!(
        missing["error"]
            .as_str()
            .expect("error")
            .contains("in/nothing.csv"),
        "{missing}"
    );
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_flow_can_be_canceled_and_leaves_nothing() {
    let db = TestDb::new("cancel").await;
    let server = TestServer::start(&db).await;
    let mut text = String::from("id,v\n");
    for i in 0..400_000 {
        text.push_str(&format!("{i},value-{i}\n"));
    }
    server.write("in/big.csv", &text);
    let (status, _) = server
        .call("POST", "/api/flows", "name: big\nsource: { type: csv, path: in/big.csv }\ntransform:\n  - cast: { id: int }\ndestination: { type: postgres, table: big }\n")
        .await;
    assert_eq!(status, 201);
    let (_, started) = server.call("POST", "/api/flows/big/run", "").await;
    let id = started["run_id"].as_i64().expect("id");
    loop {
        let (_, run) = server.call("GET", &format!("/api/runs/{id}"), "").await;
        if run["state"] == "running" {
            break;
        }
        assert_eq!(run["state"], "queued", "{run}");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let (status, answer) = server
        .call("POST", &format!("/api/runs/{id}/cancel"), "")
        .await;
    assert_eq!(status, 202, "{answer}");
    let run = server.wait(id).await;
    assert_eq!(run["state"], "canceled", "{run}");
    assert!(run["rows_read"].as_i64().expect("read") < 400_000, "{run}");
    let pool = db.pool().await;
    let exists: (bool,) = sqlx::query_as("SELECT to_regclass('public.big') IS NOT NULL")
        .fetch_one(&pool)
        .await
        .expect("query");
    assert!(!exists.0, "a canceled run's table was rolled back");
    // Canceling again: the run has ended.
    let (status, answer) = server
        .call("POST", &format!("/api/runs/{id}/cancel"), "")
        .await;
    assert_eq!(status, 409, "{answer}");
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_refusing_a_row_names_the_source_row_and_column() {
    let db = TestDb::new("pgrefuse").await;
    let pool = db.pool().await;
    sqlx::raw_sql(
        "CREATE TABLE short (id bigint, v varchar(3)); INSERT INTO short VALUES (0, 'old')",
    )
    .execute(&pool)
    .await
    .expect("table");
    let server = TestServer::start(&db).await;
    let mut text = String::from("id,v\n");
    for i in 1..=1000 {
        text.push_str(&format!(
            "{i},{}\n",
            if i == 700 { "toolong" } else { "ok" }
        ));
    }
    server.write("in/s.csv", &text);
    let run = server
        .run_flow("name: s\nsource: { type: csv, path: in/s.csv }\ndestination: { type: postgres, table: short }\n")
        .await;
    assert_eq!(run["state"], "failed", "{run}");
    let error = run["error"].as_str().expect("error");
    // Line 701 of the file is the 700th row.
    assert!(
        error.contains("row 701, column `v`") && error.contains("too long"),
        "{error}"
    );
    assert_eq!(
        rows(&pool, "SELECT count(*)::text FROM short").await,
        vec![vec!["1"]],
        "nothing of the run was kept"
    );

    // A table without a column the flow writes: said before anything is written.
    let run = server
        .run_flow("name: s2\nsource: { type: csv, path: in/s.csv }\ntransform:\n  - compute: { extra: \"1\" }\ndestination: { type: postgres, table: short }\n")
        .await;
    assert_eq!(run["state"], "failed", "{run}");
    assert!(
        run["error"]
            .as_str()
            .expect("error")
            .contains("has no column extra"),
        "{run}"
    );
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_source_runs_one_read_only_query() {
    let db = TestDb::new("pgsource").await;
    let pool = db.pool().await;
    sqlx::raw_sql("CREATE TABLE t (id int)")
        .execute(&pool)
        .await
        .expect("table");
    let server = TestServer::start(&db).await;
    let cases = [
        (
            "SELECT 1 AS a; DROP TABLE t",
            "cannot insert multiple commands",
        ),
        ("DELETE FROM t RETURNING id", "syntax error"),
        ("SELECT nope FROM t", "column \"nope\" does not exist"),
    ];
    for (i, (query, message)) in cases.iter().enumerate() {
        let flow = format!(
            "name: q{i}\nsource: {{ type: postgres, connection: db, query: {query:?} }}\ndestination: {{ type: jsonl, path: out/q{i}.jsonl }}\n"
        );
        let run = server.run_flow(&flow).await;
        assert_eq!(run["state"], "failed", "{query}: {run}");
        assert!(
            run["error"].as_str().expect("error").contains(message),
            "{query}: {run}"
        );
    }
    assert_eq!(
        rows(&pool, "SELECT to_regclass('public.t')::text").await,
        vec![vec!["t"]],
        "the table is still there"
    );
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_delimiter_quote_and_headerless_files() {
    let db = TestDb::new("csvopts").await;
    let server = TestServer::start(&db).await;
    server.write("in/semi.csv", "id;note\n1;'a;b'\n2;'it''s'\n");
    let run = server
        .run_flow("name: semi\nsource: { type: csv, path: in/semi.csv, delimiter: ';', quote: \"'\" }\ndestination: { type: csv, path: out/semi.csv, delimiter: tab }\n")
        .await;
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_eq!(server.read("out/semi.csv"), "id\tnote\n1\ta;b\n2\tit's\n");
    // Without a header the columns are c1, c2, ...
    server.write("in/bare.csv", "7,x\n8,y\n");
    let run = server
        .run_flow("name: bare\nsource: { type: csv, path: in/bare.csv, header: false }\ntransform:\n  - rename: { c1: id }\ndestination: { type: jsonl, path: out/bare.jsonl }\n")
        .await;
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_eq!(
        server.read("out/bare.jsonl"),
        "{\"id\":\"7\",\"c2\":\"x\"}\n{\"id\":\"8\",\"c2\":\"y\"}\n"
    );
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_keep_their_key_order_and_bad_lines_are_bad_rows() {
    let db = TestDb::new("jsonorder").await;
    let server = TestServer::start(&db).await;
    server.write(
        "in/z.jsonl",
        "{\"zeta\": 1, \"alpha\": \"a\"}\n[1, 2]\n{\"zeta\": 2, \"alpha\": \"b\", \"extra\": true}\n{\"zeta\": 3\n{\"alpha\": \"c\", \"zeta\": 4}\n",
    );
    let run = server
        .run_flow("name: z\nsource: { type: jsonl, path: in/z.jsonl }\ndestination: { type: csv, path: out/z.csv }\non_error: { bad_rows: skip }\n")
        .await;
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_eq!(server.read("out/z.csv"), "zeta,alpha\n1,a\n4,c\n");
    let bad: Vec<(i64, String)> = run["bad_rows"]
        .as_array()
        .expect("bad rows")
        .iter()
        .map(|b| {
            (
                b["row"].as_i64().expect("row"),
                b["reason"].as_str().expect("reason").to_owned(),
            )
        })
        .collect();
    assert_eq!(bad.len(), 3, "{bad:?}");
    assert_eq!(bad[0].0, 2);
    assert!(
        bad[0].1.contains("expected a JSON object, found an array"),
        "{bad:?}"
    );
    assert_eq!(bad[1].0, 3);
    assert!(bad[1].1.contains("`extra`"), "{bad:?}");
    assert_eq!(bad[2].0, 4);
    assert!(bad[2].1.contains("invalid JSON"), "{bad:?}");
    server.stop().await.expect("clean stop");
}
