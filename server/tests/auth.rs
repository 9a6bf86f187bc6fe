//! Who may do what, and where: the route × role × tenant matrix walked from the server's own
//! route table, the tenant boundary for names, ids, paths, tables and sources, rate limiting
//! of failed attempts per client address, tokens absent from logs, answers and run records,
//! a noisy tenant that cannot starve another, and the tokenless-loopback transition option.
//! Real servers on loopback, real Postgres and Redis.

mod common;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::TestServer;
use fleet_server::auth::{Role, TokenStore};
use fleet_server::{Access, routes};
use fleet_tests::TestDb;
use serde_json::Value;

/// Every log line of this test binary's servers (one subscriber for the process).
fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || Capture(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber");
        buf
    })
    .clone()
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const TENANTS: &str = "[tenants.acme]\n[tenants.globex]\n";
const LENIENT: &str = "[auth]\nfailed_attempts_per_minute = 100000\n";

/// One request with `token` (none: no Authorization header).
async fn ask(
    server: &TestServer,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    fleet_tests::call_with_headers(server.addr, method, path, &headers, body.as_bytes()).await
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

/// Makes a token in the server's database: its text.
async fn token(db: &TestDb, role: Role, tenant: Option<&str>) -> String {
    let pool = db.pool().await;
    let (made, _) = TokenStore::new(&pool)
        .create(role, tenant, "test", None)
        .await
        .expect("token");
    made.text
}

fn flow(name: &str, source: &str, destination: &str) -> String {
    format!("name: {name}\nsource: {source}\ndestination: {destination}\n")
}

const JSONL_IN: &str = "{ type: jsonl, path: in/x.jsonl }";
const JSONL_OUT: &str = "{ type: jsonl, path: out/x.jsonl }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_who_it_must_for_every_role_and_tenant() {
    let _logs = logs();
    let db = TestDb::new("authmatrix").await;
    let server = TestServer::start_with(&db, &format!("{TENANTS}{LENIENT}")).await;
    let mut callers: Vec<(String, Option<String>, Option<Role>, bool)> = vec![
        ("nobody".into(), None, None, false),
        (
            "garbage".into(),
            Some(format!("etl_{}_{}", "0".repeat(12), "0".repeat(64))),
            None,
            false,
        ),
        ("not a token".into(), Some("hunter2".into()), None, false),
    ];
    for role in Role::ALL {
        callers.push((
            format!("acme {role}"),
            Some(token(&db, role, Some("acme")).await),
            Some(role),
            true,
        ));
        callers.push((
            format!("operator {role}"),
            Some(token(&db, role, None).await),
            Some(role),
            false,
        ));
    }
    let table = routes();
    assert!(table.len() >= 16, "{table:?}");
    for route in &table {
        let path = route
            .path
            .replace("{name}", "nosuch")
            .replace("{id}", "999999");
        let body = match (route.method, route.path) {
            ("POST", "/api/flows") => flow("m", JSONL_IN, JSONL_OUT),
            ("POST", "/api/tokens") => r#"{"role":"read"}"#.into(),
            _ => String::new(),
        };
        for (who, token, role, tenant) in &callers {
            let (status, answer) = ask(&server, route.method, &path, token.as_deref(), &body).await;
            let what = format!("{} {path} as {who}: {status} {answer}", route.method);
            match (route.access, role) {
                (Access::Public, _) => assert!(
                    !matches!(status, 401 | 403 | 429),
                    "a public route refused: {what}"
                ),
                (_, None) => {
                    assert_eq!(status, 401, "{what}");
                    assert_eq!(json(&answer)["field"], "authorization", "{what}");
                }
                (Access::Tenant(needed) | Access::Operator(needed), Some(role))
                    if role < &needed =>
                {
                    assert_eq!(status, 403, "{what}")
                }
                (Access::Operator(_), Some(_)) if *tenant => {
                    assert_eq!(status, 403, "a tenant reached an operator's route: {what}")
                }
                _ => assert!(
                    !matches!(status, 401 | 403 | 429) && status < 500,
                    "refused or failed: {what}"
                ),
            }
        }
    }
    // `/health` and `/metrics` name no tenant, flow or run (a run of acme's exists now).
    let acme = token(&db, Role::Run, Some("acme")).await;
    server.write("tenants/acme/in/x.jsonl", "{\"a\":1}\n");
    let (status, _) = ask(
        &server,
        "POST",
        "/api/flows",
        Some(&acme),
        &flow("secret-flow", JSONL_IN, JSONL_OUT),
    )
    .await;
    assert_eq!(status, 201);
    let (status, _) = ask(
        &server,
        "POST",
        "/api/flows/secret-flow/run",
        Some(&acme),
        "",
    )
    .await;
    assert_eq!(status, 202);
    for path in ["/health", "/metrics"] {
        let (status, answer) = ask(&server, "GET", path, None, "").await;
        assert_eq!(status, 200, "{path}: {answer}");
        for word in ["acme", "globex", "secret-flow", "tenant"] {
            assert!(!answer.contains(word), "{path} shows {word}: {answer}");
        }
    }
    // `/health?all_nodes=true` calls every node: it needs a token.
    let (status, _) = ask(&server, "GET", "/health?all_nodes=true", None, "").await;
    assert_eq!(status, 401);
    let (status, answer) = ask(&server, "GET", "/health?all_nodes=true", Some(&acme), "").await;
    assert_eq!(status, 200, "{answer}");
    // A path outside the table is no route at all.
    let (status, _) = ask(&server, "GET", "/api/secrets", Some(&acme), "").await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_sees_and_touches_only_its_own_flows_runs_files_tables_and_sources() {
    let _logs = logs();
    let db = TestDb::new("authtenants").await;
    let server = TestServer::start_with(&db, &format!("{TENANTS}{LENIENT}")).await;
    let acme = token(&db, Role::Run, Some("acme")).await;
    let globex = token(&db, Role::Admin, Some("globex")).await;
    let operator = fleet_tests::ADMIN_TOKEN;

    server.write("tenants/acme/in/x.jsonl", "{\"a\":1}\n{\"a\":2}\n");
    let (status, answer) = ask(
        &server,
        "POST",
        "/api/flows",
        Some(&acme),
        &flow("orders", JSONL_IN, JSONL_OUT),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(json(&answer)["tenant"], "acme");
    let (status, answer) = ask(&server, "POST", "/api/flows/orders/run", Some(&acme), "").await;
    assert_eq!(status, 202, "{answer}");
    let id = json(&answer)["run_id"].as_i64().expect("id");
    let run = server.wait(id).await;
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_eq!(run["tenant"], "acme", "{run}");
    // Its files are in its folder.
    assert!(server.read("tenants/acme/out/x.jsonl").contains("\"a\":2"));

    // Every route naming a flow or a run, walked from the table: another tenant's token (an
    // admin's, the strongest) gets 404 for acme's name and id, as for names that do not exist.
    for route in routes() {
        if !matches!(route.access, Access::Tenant(_))
            || !(route.path.contains("{name}") || route.path.contains("{id}"))
        {
            continue;
        }
        let path = route
            .path
            .replace("{name}", "orders")
            .replace("{id}", &id.to_string());
        let (status, answer) = ask(&server, route.method, &path, Some(&globex), "").await;
        assert_eq!(status, 404, "{} {path} as globex: {answer}", route.method);
        // ...and naming acme with ?tenant= does not help.
        let (status, answer) = ask(
            &server,
            route.method,
            &format!("{path}?tenant=acme"),
            Some(&globex),
            "",
        )
        .await;
        assert_eq!(
            status, 404,
            "{} {path}?tenant=acme as globex: {answer}",
            route.method
        );
    }
    for path in ["/api/flows", "/api/runs", "/api/runs?flow=orders"] {
        let (status, answer) = ask(&server, "GET", path, Some(&globex), "").await;
        assert_eq!(status, 200, "{answer}");
        assert!(!answer.contains("orders"), "{path} as globex: {answer}");
    }
    // The run is still acme's, untouched.
    let (status, answer) = ask(&server, "GET", &format!("/api/runs/{id}"), Some(&acme), "").await;
    assert_eq!(
        (status, json(&answer)["state"].clone()),
        (200, "succeeded".into())
    );
    // The same name in another tenant is another flow.
    let (status, answer) = ask(
        &server,
        "POST",
        "/api/flows",
        Some(&globex),
        &flow("orders", JSONL_IN, JSONL_OUT),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    // The operator sees every tenant's, and acts in one with ?tenant= (the default tenant
    // otherwise, which has no `orders`).
    let (_, answer) = ask(&server, "GET", "/api/flows", Some(operator), "").await;
    let listed = json(&answer);
    let tenants: Vec<&str> = listed["flows"]
        .as_array()
        .expect("flows")
        .iter()
        .map(|f| f["tenant"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(tenants, ["acme", "globex"], "{answer}");
    let (status, _) = ask(&server, "GET", "/api/flows/orders", Some(operator), "").await;
    assert_eq!(status, 404);
    let (status, answer) = ask(
        &server,
        "GET",
        "/api/flows/orders?tenant=acme",
        Some(operator),
        "",
    )
    .await;
    assert_eq!(
        (status, json(&answer)["tenant"].clone()),
        (200, "acme".into()),
        "{answer}"
    );
    let (status, _) = ask(
        &server,
        "GET",
        "/api/flows?tenant=nosuch",
        Some(operator),
        "",
    )
    .await;
    assert_eq!(status, 200);

    // Paths: no absolute path, no `..`, and the default tenant stays out of `tenants/`.
    for (source, who) in [
        ("{ type: jsonl, path: /etc/passwd }", acme.as_str()),
        ("{ type: jsonl, path: ../globex/in/x.jsonl }", acme.as_str()),
        ("{ type: jsonl, path: tenants/acme/in/x.jsonl }", operator),
    ] {
        let (status, answer) = ask(
            &server,
            "POST",
            "/api/flows",
            Some(who),
            &flow("bad", source, JSONL_OUT),
        )
        .await;
        assert_eq!(status, 422, "{source}: {answer}");
        assert!(answer.contains("source.path"), "{answer}");
    }
    // A symbolic link out of its folder, to a file or through a directory, is not followed.
    server.write("tenants/globex/in/secret.jsonl", "{\"secret\":1}\n");
    let root = server.storage.clone();
    std::os::unix::fs::symlink(
        root.join("tenants/globex/in/secret.jsonl"),
        root.join("tenants/acme/in/file-link.jsonl"),
    )
    .expect("link");
    std::os::unix::fs::symlink(
        root.join("tenants/globex/in"),
        root.join("tenants/acme/dir-link"),
    )
    .expect("link");
    for (name, path) in [
        ("via-file", "in/file-link.jsonl"),
        ("via-dir", "dir-link/secret.jsonl"),
    ] {
        let f = flow(
            name,
            &format!("{{ type: jsonl, path: {path} }}"),
            &format!("{{ type: jsonl, path: out/{name}.jsonl }}"),
        );
        let (status, answer) = ask(&server, "POST", "/api/flows", Some(&acme), &f).await;
        assert_eq!(status, 201, "{answer}");
        let (_, answer) = ask(
            &server,
            "POST",
            &format!("/api/flows/{name}/run"),
            Some(&acme),
            "",
        )
        .await;
        let run = server
            .wait(json(&answer)["run_id"].as_i64().expect("id"))
            .await;
        assert_eq!(run["state"], "failed", "{run}");
        assert!(
            run["error"]
                .as_str()
                .unwrap_or("")
                .contains("symbolic link"),
            "{run}"
        );
        assert!(!run.to_string().contains("\"secret\""), "{run}");
    }

    // Tables: in the tenant's own schema, never another's; sources: only those it is given.
    for (destination, field) in [
        (
            "{ type: postgres, table: tenant_globex.t }",
            "destination.table",
        ),
        ("{ type: postgres, table: sales.t }", "destination.table"),
    ] {
        let (status, answer) = ask(
            &server,
            "POST",
            "/api/flows",
            Some(&acme),
            &flow("bad", JSONL_IN, destination),
        )
        .await;
        assert_eq!(status, 422, "{destination}: {answer}");
        assert_eq!(json(&answer)["field"], field, "{answer}");
    }
    let pg = "{ type: postgres, connection: db, query: \"SELECT token FROM api_tokens\" }";
    let (status, answer) = ask(
        &server,
        "POST",
        "/api/flows",
        Some(&acme),
        &flow("bad", pg, JSONL_OUT),
    )
    .await;
    assert_eq!(
        (status, json(&answer)["field"].clone()),
        (422, "source.connection".into()),
        "{answer}"
    );
    let (status, answer) = ask(
        &server,
        "POST",
        "/api/flows",
        Some(&acme),
        &flow("to-table", JSONL_IN, "{ type: postgres, table: events }"),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    let (_, answer) = ask(&server, "POST", "/api/flows/to-table/run", Some(&acme), "").await;
    let run = server
        .wait(json(&answer)["run_id"].as_i64().expect("id"))
        .await;
    assert_eq!(run["state"], "succeeded", "{run}");
    let pool = db.pool().await;
    let schemas: Vec<String> = sqlx::query_scalar(
        "SELECT table_schema::text FROM information_schema.tables WHERE table_name = 'events'",
    )
    .fetch_all(&pool)
    .await
    .expect("tables");
    assert_eq!(schemas, ["tenant_acme"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_attempts_are_limited_per_client_address_and_tokens_never_leak() {
    let logs = logs();
    let db = TestDb::new("authlimit").await;
    let server = TestServer::start_with(
        &db,
        &format!("{TENANTS}[auth]\nfailed_attempts_per_minute = 3\n"),
    )
    .await;
    let good = token(&db, Role::Run, Some("acme")).await;
    let wrong = format!("{}{}", &good[..good.len() - 4], "0000");
    let mut bodies = Vec::new();
    // A run made with the token: its record holds no token (checked below with every answer
    // and log line).
    server.write("tenants/acme/in/x.jsonl", "{\"a\":1}\n");
    let (status, body) = ask(
        &server,
        "POST",
        "/api/flows",
        Some(&good),
        &flow("f", JSONL_IN, JSONL_OUT),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = ask(&server, "POST", "/api/flows/f/run", Some(&good), "").await;
    assert_eq!(status, 202, "{body}");
    let run = server
        .wait(json(&body)["run_id"].as_i64().expect("id"))
        .await;
    bodies.push(body);
    for _ in 0..3 {
        let (status, body) = ask(&server, "GET", "/api/flows", Some(&wrong), "").await;
        assert_eq!(status, 401, "{body}");
        bodies.push(body);
    }
    // The fourth attempt, and then even a good token, from this address: 429 with Retry-After.
    let (status, body) = ask(&server, "GET", "/api/flows", Some(&wrong), "").await;
    assert_eq!(status, 429, "{body}");
    bodies.push(body);
    let (status, body) = ask(&server, "GET", "/api/flows", Some(&good), "").await;
    assert_eq!(status, 429, "{body}");
    let head = raw_head(&server, "127.0.0.1", &good).await;
    assert!(head.to_ascii_lowercase().contains("retry-after:"), "{head}");
    // Another client address is not limited.
    let head = raw_head(&server, "127.0.0.2", &good).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // /health stays open to everyone.
    let (status, _) = ask(&server, "GET", "/health", None, "").await;
    assert_eq!(status, 200);

    let secret = &good[17..];
    let wrong_secret = &wrong[17..];
    for text in bodies.iter().chain([&run.to_string()]) {
        assert!(
            !text.contains(secret) && !text.contains(wrong_secret),
            "{text}"
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let logged =
        String::from_utf8_lossy(&logs.lock().unwrap_or_else(|e| e.into_inner())).into_owned();
    assert!(
        logged.contains("too many failed authentication attempts"),
        "the limit is not logged"
    );
    assert!(
        !logged.contains(secret)
            && !logged.contains(wrong_secret)
            && !logged.contains(fleet_tests::ADMIN_TOKEN),
        "a token in the logs"
    );
}

/// GET /api/flows from `source` (a loopback address of this machine) with `token`: the
/// answer's status line and headers.
async fn raw_head(server: &TestServer, source: &str, token: &str) -> String {
    let answer = raw_request(server, source, "GET", "/api/flows", token, "").await;
    answer.split("\r\n\r\n").next().unwrap_or("").to_owned()
}

/// One request from `source`: the whole answer as text.
async fn raw_request(
    server: &TestServer,
    source: &str,
    method: &str,
    path: &str,
    token: &str,
    body: &str,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{source}:0").parse().expect("addr"))
        .expect("bind");
    let mut stream = socket.connect(server.addr).await.expect("connect");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.expect("read");
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_noisy_tenant_fills_only_its_own_slots() {
    let _logs = logs();
    let db = TestDb::new("authnoisy").await;
    let extra = "[limits]\nmax_running_flows = 3\n[tenants.noisy]\nmax_running_flows = 1\nsources = [\"db\"]\n[tenants.quiet]\nsources = [\"db\"]\n";
    let server = TestServer::start_with(&db, extra).await;
    let noisy = token(&db, Role::Run, Some("noisy")).await;
    let quiet = token(&db, Role::Run, Some("quiet")).await;
    let slow = |name: &str| {
        flow(
            name,
            "{ type: postgres, connection: db, query: \"SELECT 1 AS x FROM pg_sleep(1.5)\" }",
            &format!("{{ type: jsonl, path: out/{name}.jsonl }}"),
        )
    };
    for (t, name) in [(&noisy, "loud"), (&quiet, "calm")] {
        let (status, answer) = ask(&server, "POST", "/api/flows", Some(t), &slow(name)).await;
        assert_eq!(status, 201, "{answer}");
    }
    let mut loud = Vec::new();
    for _ in 0..4 {
        let (_, answer) = ask(&server, "POST", "/api/flows/loud/run", Some(&noisy), "").await;
        loud.push(json(&answer)["run_id"].as_i64().expect("id"));
    }
    let (_, answer) = ask(&server, "POST", "/api/flows/calm/run", Some(&quiet), "").await;
    let calm = json(&answer)["run_id"].as_i64().expect("id");
    // While noisy's runs queue behind its one slot, quiet's starts at once; noisy never has
    // more than one running.
    let pool = db.pool().await;
    let mut calm_started = false;
    for _ in 0..200 {
        let running: Vec<(String, i64)> = sqlx::query_as(
            "SELECT tenant, count(*) FROM runs WHERE state = 'running' GROUP BY tenant",
        )
        .fetch_all(&pool)
        .await
        .expect("counts");
        for (tenant, n) in &running {
            if tenant == "noisy" {
                assert!(*n <= 1, "noisy runs {n} at once");
            }
        }
        let (state,): (String,) = sqlx::query_as("SELECT state FROM runs WHERE id = $1")
            .bind(calm)
            .fetch_one(&pool)
            .await
            .expect("state");
        if state != "queued" {
            calm_started = true;
        }
        let (queued,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM runs WHERE state IN ('queued', 'running')")
                .fetch_one(&pool)
                .await
                .expect("count");
        if queued == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(calm_started);
    for id in loud.iter().chain([&calm]) {
        assert_eq!(server.wait(*id).await["state"], "succeeded");
    }
    // The quiet run ended before the last noisy ones: it did not wait for them.
    let ends: Vec<(i64,)> = sqlx::query_as("SELECT id FROM runs ORDER BY finished_at")
        .fetch_all(&pool)
        .await
        .expect("ends");
    let calm_at = ends.iter().position(|(id,)| *id == calm).expect("calm");
    assert!(calm_at < 2, "quiet's run ended {calm_at}th: {ends:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenless_loopback_requests_are_the_operators_only_when_allowed() {
    let _logs = logs();
    let db = TestDb::new("authloopback").await;
    let off = TestServer::start_with(&db, LENIENT).await;
    let (status, _) = ask(&off, "GET", "/api/flows", None, "").await;
    assert_eq!(status, 401);
    off.stop().await.expect("stop");
    let on =
        TestServer::start_with(&db, &format!("allow_tokenless_loopback = true\n{LENIENT}")).await;
    let (status, answer) = ask(
        &on,
        "POST",
        "/api/flows",
        None,
        &flow("legacy", JSONL_IN, JSONL_OUT),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(json(&answer)["tenant"], "default");
    // ...with the run role, never admin.
    let (status, _) = ask(&on, "POST", "/admin/resume", None, "").await;
    assert_eq!(status, 403);
    // Plain HTTP on an address others reach needs saying so.
    let text = common::config_text(
        "node-a",
        &db,
        std::path::Path::new("/tmp/x"),
        "0.0.0.0:8080",
        "",
    );
    let err = fleet_server::Config::parse(&text, std::path::Path::new("server.toml"))
        .expect_err("refused");
    assert!(err.to_string().contains("plain_http_on_network"), "{err}");
    let text = common::config_text(
        "node-a",
        &db,
        std::path::Path::new("/tmp/x"),
        "0.0.0.0:8080",
        "plain_http_on_network = true\n",
    );
    fleet_server::Config::parse(&text, std::path::Path::new("server.toml")).expect("allowed");
}

/// A cluster upgraded from before tenants keeps its flows and runs: they are the default
/// tenant's, the operator's token reaches them as before, a tenant's does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_and_runs_from_before_tenants_are_the_default_tenants() {
    let _logs = logs();
    let db = TestDb::new("authmigrate").await;
    // The database as a server from before tenants left it: migrations 1 to 5, a flow and a
    // finished run of it.
    let before = tempfile::tempdir().expect("tempdir");
    let migrations = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    for entry in std::fs::read_dir(&migrations).expect("migrations") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        if name.as_str() < "0006" {
            std::fs::copy(&path, before.path().join(&name)).expect("copy");
        }
    }
    let pool = db.pool().await;
    sqlx::migrate::Migrator::new(before.path())
        .await
        .expect("migrations 1-5")
        .run(&pool)
        .await
        .expect("migrated to 5");
    sqlx::query("INSERT INTO flows (name, definition) VALUES ('legacy', '{\"name\":\"legacy\"}')")
        .execute(&pool)
        .await
        .expect("flow");
    let (id,): (i64,) = sqlx::query_as(
        "INSERT INTO runs (flow, definition, state, finished_at) VALUES ('legacy', '{}', 'succeeded', now()) RETURNING id",
    )
    .fetch_one(&pool)
    .await
    .expect("run");

    let server = TestServer::start_with(&db, TENANTS).await;
    let (status, flow) = server.call("GET", "/api/flows/legacy", "").await;
    assert_eq!(status, 200, "{flow}");
    assert_eq!(flow["tenant"], "default");
    let (status, run) = server.call("GET", &format!("/api/runs/{id}"), "").await;
    assert_eq!(
        (status, run["tenant"].clone()),
        (200, "default".into()),
        "{run}"
    );
    let acme = token(&db, Role::Admin, Some("acme")).await;
    let (status, _) = ask(&server, "GET", "/api/flows/legacy", Some(&acme), "").await;
    assert_eq!(status, 404);
    let (status, _) = ask(&server, "GET", &format!("/api/runs/{id}"), Some(&acme), "").await;
    assert_eq!(status, 404);
}

/// `/api/tokens`: the operator's admin makes a token (its text in that answer only), lists it
/// without its secret, and revokes it, after which it is refused at once on this node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_makes_lists_and_revokes_tokens() {
    let _logs = logs();
    let db = TestDb::new("authapi").await;
    let server = TestServer::start_with(&db, &format!("{TENANTS}{LENIENT}")).await;
    let (status, made) = server
        .call(
            "POST",
            "/api/tokens",
            r#"{"role":"read","tenant":"acme","expires_in":"1h"}"#,
        )
        .await;
    assert_eq!(status, 201, "{made}");
    let text = made["token"].as_str().expect("token").to_owned();
    let id = made["details"]["id"].as_str().expect("id").to_owned();
    assert_eq!(
        made["details"]["created_by"],
        fleet_server::auth::ADMIN_TOKEN_ID
    );
    assert!(made["details"]["expires_at"].is_string(), "{made}");
    let (status, _) = ask(&server, "GET", "/api/runs", Some(&text), "").await;
    assert_eq!(status, 200);
    let (_, listed) = server.call("GET", "/api/tokens", "").await;
    assert!(
        listed.to_string().contains(&id) && !listed.to_string().contains(&text[17..]),
        "{listed}"
    );
    for (body, field) in [
        (r#"{"role":"root"}"#, "role"),
        (r#"{"role":"read","tenant":"nobody"}"#, "tenant"),
        (r#"{"role":"read","expires_in":"1w"}"#, "expires_in"),
    ] {
        let (status, answer) = server.call("POST", "/api/tokens", body).await;
        assert_eq!(
            (status, answer["field"].as_str()),
            (422, Some(field)),
            "{body}: {answer}"
        );
    }
    let (status, _) = server
        .call("DELETE", &format!("/api/tokens/{id}"), "")
        .await;
    assert_eq!(status, 200);
    let (status, _) = ask(&server, "GET", "/api/runs", Some(&text), "").await;
    assert_eq!(status, 401, "a revoked token still works");
    let (status, answer) = server
        .call("DELETE", &format!("/api/tokens/{text}"), "")
        .await;
    assert_eq!(status, 404);
    assert!(!answer.to_string().contains(&text[17..]), "{answer}");
}
