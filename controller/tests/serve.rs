//! `fleet serve`'s routes, called through the router (`oneshot`, no socket) on a real SQLite
//! state store: a role × route matrix generated from the route table, CSRF, origins, session
//! fixation, logout, cookie attributes, the login rate limit, escaping, and audit rows.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, Response, StatusCode, header};
use fleet_controller::{Access, App, Role, ServeOptions, StateLocation, Store, Token, auth};
use tower::ServiceExt;

const PASSWORD: &str = "a test password of some length";

/// Two customers, three nodes; one airgapped.
const INVENTORY: &str = r#"
defaults:
  ssh: { user: ops, port: 1 }
customers:
  acme:
    mode: dedicated
    clusters:
      prod:
        redis_url: "redis://127.0.0.1:6379/0"
        postgres_url: "postgres://127.0.0.1/x"
        shared_storage: /srv/shared
        nodes:
          - { name: acme-1, host: 127.0.0.1, node_root: /srv/fleet, labels: { team: "<b>ops</b>" } }
          - { name: acme-2, host: 127.0.0.1, node_root: /srv/fleet }
  globex:
    mode: airgapped
    clusters:
      main:
        redis_url: "redis://127.0.0.1:6379/0"
        postgres_url: "postgres://127.0.0.1/x"
        shared_storage: /srv/shared
        nodes:
          - { name: globex-1, host: 127.0.0.1, node_root: /srv/fleet }
"#;

struct Site {
    _dir: tempfile::TempDir,
    store: Store,
    app: Arc<App>,
}

impl Site {
    async fn new(options: ServeOptions) -> Site {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&StateLocation::Sqlite(dir.path().join("state.db")))
            .await
            .expect("store");
        let hash = auth::hash_password(PASSWORD).expect("hash");
        for role in Role::ALL {
            store
                .add_user(role.as_str(), role, &hash)
                .await
                .expect("user");
        }
        let inventory =
            fleet_inventory::Inventory::from_str(INVENTORY, std::path::Path::new("fleet.yaml"))
                .expect("inventory");
        let app = App::new(store.clone(), Arc::new(inventory), options);
        Site {
            _dir: dir,
            store,
            app,
        }
    }

    async fn send(&self, req: Request<Body>) -> Response<Body> {
        fleet_controller::router(self.app.clone())
            .oneshot(req)
            .await
            .expect("the router answers")
    }

    /// Logs `user` in; the session id from the cookie set.
    async fn login(&self, user: &str) -> String {
        let answer = self.send(login_request(user, PASSWORD, None)).await;
        assert_eq!(answer.status(), StatusCode::SEE_OTHER, "login of {user}");
        cookie_id(&answer).expect("a session cookie")
    }

    /// A token of `role`.
    async fn token(&self, role: Role) -> String {
        let (id, token) = auth::new_token();
        let t = Token {
            id,
            name: "test".into(),
            role,
            created_by: "test".into(),
            created_ms: 0,
            expires_ms: None,
            last_used_ms: None,
        };
        self.store
            .create_token(&t, &auth::token_hash(&token))
            .await
            .expect("token");
        token
    }
}

fn login_request(user: &str, password: &str, cookie: Option<&str>) -> Request<Body> {
    let mut b =
        Request::post("/login").header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(c) = cookie {
        b = b.header(header::COOKIE, format!("fleet_session={c}"));
    }
    b.body(Body::from(format!(
        "user={user}&password={}&next=%2Fapi%2Fme",
        password.replace(' ', "+")
    )))
    .expect("request")
}

fn cookie_id(answer: &Response<Body>) -> Option<String> {
    let set = answer.headers().get(header::SET_COOKIE)?.to_str().ok()?;
    let (pair, _) = set.split_once(';')?;
    let id = pair.strip_prefix("fleet_session=")?;
    (!id.is_empty()).then(|| id.to_owned())
}

async fn body(answer: Response<Body>) -> String {
    let bytes = axum::body::to_bytes(answer.into_body(), 1 << 20)
        .await
        .expect("body");
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A form posted from the session `session`.
fn form_post(path: &str, session: &str, body: &str) -> Request<Body> {
    Request::post(path)
        .header(header::COOKIE, format!("fleet_session={session}"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(body.to_owned()))
        .expect("request")
}

/// A route's path with its parameters filled in.
fn fill(path: &str) -> String {
    path.replace("{name}", "acme-1")
        .replace("{id}", "no-such-rollout")
        .replace("{customer}", "acme")
        .replace("{cluster}", "prod")
        .replace("{action}", "pause")
}

/// How a request authenticates.
#[derive(Debug, Clone)]
enum As {
    Nobody,
    Session(String),
    Bearer(String),
}

fn request(method: &str, path: &str, who: &As, csrf: bool, json: Option<&str>) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(path);
    match who {
        As::Nobody => {}
        As::Session(id) => {
            b = b.header(header::COOKIE, format!("fleet_session={id}"));
            if csrf {
                b = b.header("x-csrf-token", auth::csrf_token(id));
            }
        }
        As::Bearer(t) => b = b.header(header::AUTHORIZATION, format!("Bearer {t}")),
    }
    match json {
        Some(j) => b
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(j.to_owned())),
        None => b.body(Body::empty()),
    }
    .expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_the_roles_it_must() {
    let site = Site::new(ServeOptions::default()).await;
    let mut callers: Vec<(Option<Role>, As)> = vec![(None, As::Nobody)];
    for role in Role::ALL {
        callers.push((Some(role), As::Session(site.login(role.as_str()).await)));
        callers.push((Some(role), As::Bearer(site.token(role).await)));
    }
    let routes = fleet_controller::routes();
    assert!(routes.len() >= 8, "{routes:?}");
    let mut checked = 0;
    for route in &routes {
        let path = fill(route.path);
        for (role, who) in &callers {
            // A body each route accepts, so that the answer is about the caller, not the body.
            let json = (route.method == "POST" && path.starts_with("/api/")).then_some(
                r#"{"name":"matrix-user","role":"viewer","password":"long enough password"}"#,
            );
            let answer = site
                .send(request(route.method, &path, who, true, json))
                .await;
            let status = answer.status();
            let what = format!(
                "{} {} as {who:?} ({role:?}): {status}",
                route.method, route.path
            );
            match (route.access, role) {
                (Access::Public, _) => {
                    assert!(
                        status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                        "{what}"
                    )
                }
                (Access::At(_), None) if path.starts_with("/api/") => {
                    assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}")
                }
                (Access::At(_), None) => {
                    assert_eq!(status, StatusCode::SEE_OTHER, "{what}");
                    let to = answer.headers()[header::LOCATION]
                        .to_str()
                        .expect("location");
                    assert!(to.starts_with("/login?next="), "{what}: {to}");
                }
                (Access::At(needed), Some(r)) if r < &needed => {
                    assert_eq!(status, StatusCode::FORBIDDEN, "{what}")
                }
                (Access::At(_), Some(_)) => assert!(
                    status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                    "{what}"
                ),
            }
            // Logging out ends the session used: log in again for the next routes.
            checked += 1;
        }
        if route.path == "/logout" {
            for (role, who) in callers.iter_mut() {
                if let (Some(r), As::Session(id)) = (role, who) {
                    *id = site.login(r.as_str()).await;
                }
            }
        }
    }
    assert_eq!(checked, routes.len() * callers.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_changes_need_this_sessions_csrf_token_and_our_origin() {
    let site = Site::new(ServeOptions::default()).await;
    let admin = site.login("admin").await;
    let other = site.login("viewer").await;
    let add = |name: &str| {
        format!(r#"{{"name":"{name}","role":"viewer","password":"long enough password"}}"#)
    };
    let post = |who: &As, csrf: Option<String>, origin: Option<&str>, name: &str| {
        let mut req = request("POST", "/api/users", who, false, Some(&add(name)));
        if let Some(c) = csrf {
            req.headers_mut()
                .insert("x-csrf-token", c.parse().expect("header"));
        }
        if let Some(o) = origin {
            req.headers_mut()
                .insert(header::ORIGIN, o.parse().expect("header"));
            req.headers_mut()
                .insert(header::HOST, "127.0.0.1:8700".parse().expect("header"));
        }
        req
    };
    let session = As::Session(admin.clone());
    // No token, another session's token: refused, nothing added.
    let answer = site.send(post(&session, None, None, "u1")).await;
    assert_eq!(answer.status(), StatusCode::FORBIDDEN);
    assert!(body(answer).await.contains("CSRF"));
    let answer = site
        .send(post(&session, Some(auth::csrf_token(&other)), None, "u1"))
        .await;
    assert_eq!(answer.status(), StatusCode::FORBIDDEN);
    // The right token from another site's page: refused.
    let answer = site
        .send(post(
            &session,
            Some(auth::csrf_token(&admin)),
            Some("https://evil.example"),
            "u1",
        ))
        .await;
    assert_eq!(answer.status(), StatusCode::FORBIDDEN);
    assert!(
        site.store
            .users()
            .await
            .expect("users")
            .iter()
            .all(|u| u.name != "u1")
    );
    // From our own origin with the token: added.
    let answer = site
        .send(post(
            &session,
            Some(auth::csrf_token(&admin)),
            Some("http://127.0.0.1:8700"),
            "u1",
        ))
        .await;
    assert_eq!(answer.status(), StatusCode::CREATED);
    // A bearer token needs no CSRF token (a browser never sends it by itself).
    let token = As::Bearer(site.token(Role::Admin).await);
    assert_eq!(
        site.send(post(&token, None, None, "u2")).await.status(),
        StatusCode::CREATED
    );
    // A form carries the token as a field: logout without it is refused, with it ends the session.
    let form = |csrf: &str| form_post("/logout", &admin, &format!("csrf={csrf}"));
    assert_eq!(
        site.send(form("wrong")).await.status(),
        StatusCode::FORBIDDEN
    );
    let answer = site.send(form(&auth::csrf_token(&admin))).await;
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    let cleared = answer.headers()[header::SET_COOKIE]
        .to_str()
        .expect("cookie");
    assert!(
        cleared.starts_with("fleet_session=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    let me = site
        .send(request("GET", "/api/me", &session, false, None))
        .await;
    assert_eq!(me.status(), StatusCode::UNAUTHORIZED, "the session ended");
    // A token that is not valid is refused, not taken for anonymous.
    let bad = As::Bearer("fleet_0000_nope".into());
    assert_eq!(
        site.send(request("GET", "/login", &bad, false, None))
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_makes_a_new_session_and_ends_the_one_it_came_with() {
    let site = Site::new(ServeOptions {
        secure_cookies: true,
        ..ServeOptions::default()
    })
    .await;
    // A session id planted before the login is never adopted.
    let answer = site
        .send(login_request(
            "viewer",
            PASSWORD,
            Some("planted-by-an-attacker"),
        ))
        .await;
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    assert_eq!(answer.headers()[header::LOCATION], "/api/me");
    let set = answer.headers()[header::SET_COOKIE]
        .to_str()
        .expect("cookie")
        .to_owned();
    for attribute in ["HttpOnly", "SameSite=Lax", "Secure", "Path=/"] {
        assert!(set.contains(attribute), "{set}");
    }
    let first = cookie_id(&answer).expect("id");
    assert_ne!(first, "planted-by-an-attacker");
    // Logging in again with that session's cookie ends it.
    let answer = site
        .send(login_request("viewer", PASSWORD, Some(&first)))
        .await;
    let second = cookie_id(&answer).expect("id");
    assert_ne!(first, second);
    let old = site
        .send(request("GET", "/api/me", &As::Session(first), false, None))
        .await;
    assert_eq!(old.status(), StatusCode::UNAUTHORIZED);
    let me = site
        .send(request(
            "GET",
            "/api/me",
            &As::Session(second.clone()),
            false,
            None,
        ))
        .await;
    assert_eq!(me.status(), StatusCode::OK);
    let me: serde_json::Value = serde_json::from_str(&body(me).await).expect("json");
    assert_eq!(
        (&me["name"], &me["role"]),
        (&"viewer".into(), &"viewer".into())
    );
    assert_eq!(me["csrf"], auth::csrf_token(&second));
    // A `next` that leaves the site goes home instead.
    let mut req = login_request("viewer", PASSWORD, None);
    *req.body_mut() = Body::from(format!(
        "user=viewer&password={}&next=%2F%2Fevil.example",
        PASSWORD.replace(' ', "+")
    ));
    assert_eq!(site.send(req).await.headers()[header::LOCATION], "/");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_limited_and_every_login_is_audited() {
    let site = Site::new(ServeOptions::default()).await;
    site.login("admin").await;
    // An unknown user is told the same as a wrong password.
    let answer = site.send(login_request("ghost", PASSWORD, None)).await;
    assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
    assert!(body(answer).await.contains("Wrong user name or password."));
    // Four more failures from the same client (oneshot has no address: one "unknown" client).
    for _ in 0..4 {
        let answer = site
            .send(login_request("operator", "wrong password!!", None))
            .await;
        assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
        assert!(cookie_id(&answer).is_none());
        assert!(body(answer).await.contains("Wrong user name or password."));
    }
    // Five failures: now even the right password waits, whoever it is for.
    for user in ["operator", "viewer"] {
        let answer = site.send(login_request(user, PASSWORD, None)).await;
        assert_eq!(answer.status(), StatusCode::TOO_MANY_REQUESTS, "{user}");
        assert!(answer.headers().contains_key(header::RETRY_AFTER));
        assert!(cookie_id(&answer).is_none());
    }
    let rows = site.store.audit(None).await.expect("audit");
    let seen: Vec<(String, String)> = rows
        .iter()
        .map(|r| (r.entry.os_user.clone(), r.entry.result.clone()))
        .collect();
    let count = |user: &str, part: &str| {
        seen.iter()
            .filter(|(u, r)| u == user && r.contains(part))
            .count()
    };
    assert_eq!(count("web:admin", "ok"), 1, "{seen:?}");
    assert_eq!(
        count("web:ghost", "wrong user name or password"),
        1,
        "{seen:?}"
    );
    assert_eq!(
        count("web:operator", "wrong user name or password"),
        4,
        "{seen:?}"
    );
    assert_eq!(count("web:operator", "too many"), 1, "{seen:?}");
    assert_eq!(count("web:viewer", "too many"), 1, "{seen:?}");
    assert!(
        !format!("{rows:?}").contains(PASSWORD),
        "a password in the audit log"
    );
    assert_eq!(site.store.verify_audit().await.expect("verify").1, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_shown_in_pages_are_escaped() {
    let site = Site::new(ServeOptions::default()).await;
    let payload = "\"><script>alert(1)</script>";
    let uri = format!(
        "/login?next={}",
        payload
            .replace('"', "%22")
            .replace('<', "%3C")
            .replace('>', "%3E")
            .replace(' ', "%20")
            .replace('(', "%28")
            .replace(')', "%29")
    );
    let page = body(
        site.send(request("GET", &uri, &As::Nobody, false, None))
            .await,
    )
    .await;
    assert!(!page.contains("<script>alert(1)"), "{page}");
    assert!(page.contains("&lt;script&gt;alert(1)"), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_show_their_last_report_its_age_and_failures_paged_on_the_server() {
    let site = Site::new(ServeOptions::default()).await;
    let viewer = As::Bearer(site.token(Role::Viewer).await);
    let operator = As::Bearer(site.token(Role::Operator).await);
    site.store
        .save_node_status(
            "acme-1",
            &serde_json::json!({ "active": "1.0.0", "daemon": { "server": "healthy", "restarts": 2 } }),
        )
        .await
        .expect("status");
    site.store
        .save_node_error("acme-2", "ssh 127.0.0.1:1: connection refused")
        .await
        .expect("error");
    site.app.reload().await.expect("reload");
    let get = |uri: &str| {
        let (site, who, uri) = (&site, viewer.clone(), uri.to_owned());
        async move {
            let answer = site.send(request("GET", &uri, &who, false, None)).await;
            let status = answer.status();
            (
                status,
                serde_json::from_str::<serde_json::Value>(&body(answer).await).expect("json"),
            )
        }
    };
    let (status, all) = get("/api/nodes").await;
    assert_eq!(status, StatusCode::OK, "{all}");
    assert_eq!(all["total"], 3);
    let states: Vec<(String, String)> = all["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap_or("?").into(),
                n["state"].as_str().unwrap_or("?").into(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("acme-1".to_owned(), "healthy".to_owned()),
            ("acme-2".to_owned(), "unreachable".to_owned()),
            ("globex-1".to_owned(), "unknown".to_owned())
        ]
    );
    let acme1 = &all["nodes"][0];
    assert_eq!(
        (&acme1["active"], &acme1["restarts"]),
        (&"1.0.0".into(), &2.into())
    );
    assert!(acme1["age_ms"].as_i64().is_some_and(|a| a >= 0), "{acme1}");
    assert_eq!(
        all["nodes"][1]["error"],
        "ssh 127.0.0.1:1: connection refused"
    );

    // Filters and pages are the server's.
    assert_eq!(get("/api/nodes?customer=acme").await.1["total"], 2);
    assert_eq!(
        get("/api/nodes?q=globex").await.1["nodes"][0]["name"],
        "globex-1"
    );
    let (_, page) = get("/api/nodes?per_page=1&page=2").await;
    assert_eq!(
        (
            page["total"].clone(),
            page["nodes"].as_array().map(Vec::len)
        ),
        (3.into(), Some(1))
    );
    assert_eq!(page["nodes"][0]["name"], "acme-2");
    let (status, bad) = get("/api/nodes?colour=red").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");

    // A report older than the staleness bound never reads healthy.
    let strict = Site::new(ServeOptions {
        stale_after: std::time::Duration::ZERO,
        ..ServeOptions::default()
    })
    .await;
    strict
        .store
        .save_node_status(
            "acme-1",
            &serde_json::json!({ "daemon": { "server": "healthy" } }),
        )
        .await
        .expect("status");
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    strict.app.reload().await.expect("reload");
    let token = As::Bearer(strict.token(Role::Viewer).await);
    let answer = strict
        .send(request("GET", "/api/nodes?q=acme-1", &token, false, None))
        .await;
    let v: serde_json::Value = serde_json::from_str(&body(answer).await).expect("json");
    assert_eq!(v["nodes"][0]["state"], "stale", "{v}");

    // Asking a node now: an operator's; never an airgapped node; only inventory nodes.
    let refresh = |name: &str, who: &As| {
        request(
            "POST",
            &format!("/api/nodes/{name}/refresh"),
            who,
            false,
            None,
        )
    };
    assert_eq!(
        site.send(refresh("acme-1", &viewer)).await.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        site.send(refresh("acme-1", &operator)).await.status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(
        site.send(refresh("globex-1", &operator)).await.status(),
        StatusCode::CONFLICT
    );
    assert_eq!(
        site.send(refresh("nope", &operator)).await.status(),
        StatusCode::NOT_FOUND
    );
    // Each ask is an audit row, refused ones too.
    let audit = site.store.audit(None).await.expect("audit");
    let refreshes: Vec<&str> = audit
        .iter()
        .filter(|r| r.entry.command == "node refresh")
        .map(|r| r.entry.result.as_str())
        .collect();
    assert_eq!(refreshes.len(), 3, "{refreshes:?}");
    assert_eq!(refreshes[0], "ok");
}

/// Reads the SSE body until `done` says what was read is enough (bounded in time).
async fn read_events(answer: Response<Body>, done: impl Fn(&str) -> bool) -> String {
    use futures_util::StreamExt;
    let mut stream = answer.into_body().into_data_stream();
    let mut text = String::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while let Some(chunk) = stream.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.expect("chunk")));
            if done(&text) {
                return;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no such event within 30 s: {text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_puts_nodes_needing_attention_first_and_escapes_what_nodes_say() {
    let site = Site::new(ServeOptions::default()).await;
    site.store
        .save_node_status(
            "acme-1",
            &serde_json::json!({ "active": "1.0.0", "daemon": { "server": "healthy" } }),
        )
        .await
        .expect("status");
    site.store
        .save_node_error("acme-2", "<script>alert('xss')</script> refused")
        .await
        .expect("error");
    site.app.reload().await.expect("reload");
    let viewer = As::Session(site.login("viewer").await);
    let answer = site.send(request("GET", "/", &viewer, false, None)).await;
    assert_eq!(answer.status(), StatusCode::OK);
    let page = body(answer).await;
    let at = |name: &str| {
        page.find(&format!("data-node=\"{name}\""))
            .unwrap_or_else(|| panic!("{name} missing: {page}"))
    };
    assert!(
        at("acme-2") < at("acme-1") && at("globex-1") < at("acme-1"),
        "attention first: {page}"
    );
    assert!(!page.contains("<script>alert"), "{page}");
    assert!(page.contains("&lt;script&gt;alert("), "{page}");
    assert!(page.contains("1.0.0: 1"), "counts by version: {page}");
    assert!(
        page.contains(": 2 nodes, <strong>1 needing attention</strong>")
            && page.contains(": 1 nodes, <strong>1 needing attention</strong>"),
        "each customer's clusters: {page}"
    );
    assert!(page.contains("/static/fleet.js"), "{page}");
    // The filters are the URL's.
    let only = body(
        site.send(request("GET", "/?customer=globex", &viewer, false, None))
            .await,
    )
    .await;
    assert!(
        only.contains("data-node=\"globex-1\"") && !only.contains("data-node=\"acme-1\""),
        "{only}"
    );
    let bad = site
        .send(request("GET", "/?colour=red", &viewer, false, None))
        .await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    // The script is served, and sets values as text only.
    let script = body(
        site.send(request("GET", "/static/fleet.js", &As::Nobody, false, None))
            .await,
    )
    .await;
    assert!(
        script.contains("EventSource") && script.contains("textContent"),
        "{script}"
    );
    assert!(!script.contains("innerHTML"), "{script}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_updates_resume_after_the_last_event_id() {
    let site = Site::new(ServeOptions::default()).await;
    let viewer = As::Bearer(site.token(Role::Viewer).await);
    let stop = tokio_util::sync::CancellationToken::new();
    let inventory = site.app.inventory.clone();
    let collector = tokio::spawn(fleet_controller::collect(
        site.app.clone(),
        inventory,
        fleet_controller::CollectOptions {
            every: std::time::Duration::from_millis(200),
            ..Default::default()
        },
        stop.clone(),
    ));
    // The collector tries acme-1 and acme-2 (nothing listens on port 1): each failure is a
    // `node` event with the node's view; globex-1 is airgapped and never tried.
    let answer = site
        .send(request("GET", "/api/events", &viewer, false, None))
        .await;
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(answer.headers()[header::CONTENT_TYPE], "text/event-stream");
    let text = read_events(answer, |t| {
        t.contains("\"acme-1\"") && t.contains("\"acme-2\"")
    })
    .await;
    assert!(text.contains("event: node"), "{text}");
    assert!(text.contains(r#""state":"unreachable""#), "{text}");
    assert!(!text.contains("globex-1"), "{text}");
    let ids: Vec<u64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("id: ").and_then(|id| id.trim().parse().ok()))
        .collect();
    assert!(ids.len() >= 2, "{text}");
    // Coming back with the last id seen: only what came after it, nothing twice.
    let last = *ids.last().expect("an id");
    let mut again = request("GET", "/api/events", &viewer, false, None);
    again
        .headers_mut()
        .insert("last-event-id", last.to_string().parse().expect("header"));
    let resumed = read_events(site.send(again).await, |t| t.contains("id: ")).await;
    let first_new: u64 = resumed
        .lines()
        .find_map(|l| l.strip_prefix("id: ").and_then(|id| id.trim().parse().ok()))
        .expect("an id");
    assert_eq!(first_new, last + 1, "{resumed}");
    // An id the server never handed out: reload.
    let mut stale = request("GET", "/api/events", &viewer, false, None);
    stale
        .headers_mut()
        .insert("last-event-id", "5".parse().expect("header"));
    let reset = read_events(site.send(stale).await, |t| t.contains("event: reset")).await;
    assert!(reset.contains("reload"), "{reset}");
    stop.cancel();
    collector.await.expect("the collector stops");
    let rows = site.store.node_snapshots().await.expect("snapshots");
    assert!(
        rows.iter().all(|r| r.node != "globex-1"),
        "an airgapped node was contacted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_matches_the_routes() {
    let site = Site::new(ServeOptions::default()).await;
    let answer = site
        .send(request(
            "GET",
            "/api/openapi.json",
            &As::Nobody,
            false,
            None,
        ))
        .await;
    assert_eq!(answer.status(), StatusCode::OK);
    let doc: serde_json::Value = serde_json::from_str(&body(answer).await).expect("json");
    let mut documented: Vec<(String, String)> = doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .expect("path item")
                .keys()
                .map(move |m| (m.to_ascii_uppercase(), path.clone()))
        })
        .collect();
    documented.sort();
    let routes = fleet_controller::routes();
    let mut api: Vec<(String, String)> = routes
        .iter()
        .filter(|r| r.path.starts_with("/api/"))
        .map(|r| (r.method.to_owned(), r.path.to_owned()))
        .collect();
    api.sort();
    assert_eq!(documented, api, "the document and the router differ");
    // Each documented operation is routed (an admin is refused by nothing) and says its role.
    let admin = As::Bearer(site.token(Role::Admin).await);
    for r in routes
        .iter()
        .filter(|r| r.path.starts_with("/api/") && r.path != "/api/events")
    {
        let op = &doc["paths"][r.path][r.method.to_ascii_lowercase()];
        match r.access {
            Access::Public => assert!(op["x-fleet-role"].is_null(), "{op}"),
            Access::At(role) => assert_eq!(op["x-fleet-role"], role.as_str(), "{op}"),
        }
        for q in r.query {
            assert!(
                op["parameters"]
                    .as_array()
                    .expect("parameters")
                    .iter()
                    .any(|p| p["name"] == *q),
                "{op}"
            );
        }
        let path = fill(r.path);
        let json = (r.method == "POST").then_some("{}");
        let answer = site
            .send(request(r.method, &path, &admin, false, json))
            .await;
        let status = answer.status();
        // A 404 must be the handler's own (JSON naming what is missing), not "no such route".
        let text = body(answer).await;
        assert!(
            status != StatusCode::NOT_FOUND || text.contains("\"error\""),
            "{} {}: {status} {text}",
            r.method,
            r.path
        );
        assert_ne!(
            status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{} {}",
            r.method,
            r.path
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_is_filtered_paged_exported_and_escaped() {
    let site = Site::new(ServeOptions::default()).await;
    site.login("admin").await;
    site.login("viewer").await;
    site.store
        .append_audit(&fleet_controller::AuditEntry {
            at_ms: 1,
            os_user: "ops".into(),
            key_fingerprints: vec![],
            command: "push".into(),
            args: vec!["push".into(), "<script>alert(1)</script>".into()],
            nodes: vec![("acme-1".into(), "=HYPERLINK(\"http://evil\")".into())],
            digests: vec![],
            result: "=1+1".into(),
        })
        .await
        .expect("row");
    let viewer = As::Session(site.login("viewer").await);
    let page = body(
        site.send(request("GET", "/audit", &viewer, false, None))
            .await,
    )
    .await;
    assert!(
        page.contains("web:admin") && page.contains("push"),
        "{page}"
    );
    assert!(!page.contains("<script>alert(1)"), "{page}");
    assert!(page.contains("&lt;script&gt;alert(1)"), "{page}");
    let logins = body(
        site.send(request(
            "GET",
            "/audit?command=login&user=admin",
            &viewer,
            false,
            None,
        ))
        .await,
    )
    .await;
    assert!(
        logins.contains("web:admin") && !logins.contains("web:viewer"),
        "{logins}"
    );
    assert!(
        logins.contains("audit.csv?command=login&amp;user=admin"),
        "the export keeps the filters: {logins}"
    );
    let bad = site
        .send(request(
            "GET",
            "/audit?since=yesterday-ish",
            &viewer,
            false,
            None,
        ))
        .await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    // CSV: every row, newest first, no cell a spreadsheet would run.
    let answer = site
        .send(request("GET", "/audit.csv", &viewer, false, None))
        .await;
    assert_eq!(answer.status(), StatusCode::OK);
    assert!(
        answer.headers()[header::CONTENT_TYPE]
            .to_str()
            .expect("type")
            .starts_with("text/csv")
    );
    let csv = body(answer).await;
    assert!(
        csv.starts_with("id,at,user,keys,command,args,nodes,digests,result,hash"),
        "{csv}"
    );
    assert!(
        csv.contains(",'=1+1,"),
        "a formula cell is neutralised: {csv}"
    );
    assert!(!csv.contains(",=1+1"), "{csv}");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 5, "header + 4 rows: {csv}");
    assert!(
        lines[1].starts_with("4,") && lines[4].starts_with("1,"),
        "{csv}"
    );
    // JSON, newest first.
    let token = As::Bearer(site.token(Role::Viewer).await);
    let json: serde_json::Value = serde_json::from_str(
        &body(
            site.send(request(
                "GET",
                "/api/audit?command=push",
                &token,
                false,
                None,
            ))
            .await,
        )
        .await,
    )
    .expect("json");
    assert_eq!(json["total"], 1);
    assert_eq!(json["rows"][0]["command"], "push");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_and_node_pages_show_what_was_heard_escaped() {
    let site = Site::new(ServeOptions::default()).await;
    site.store
        .save_node_status(
            "acme-1",
            &serde_json::json!({
                "active": "1.0.0", "previous": "0.9.0", "staged": ["1.0.0", "1.1.0"], "free_bytes": 5u64 << 30,
                "daemon": { "server": "healthy", "restarts": 1, "last_exit": "<img src=x onerror=alert(1)>", "heartbeat_age_ms": 800 }
            }),
        )
        .await
        .expect("status");
    site.store
        .start_rollout(
            "r-1",
            "acme/prod",
            "1.1.0",
            &["acme-1".to_owned(), "acme-2".to_owned()],
        )
        .await
        .expect("rollout");
    site.store
        .set_node_outcome(
            "r-1",
            &fleet_controller::NodeOutcome {
                node: "acme-1".into(),
                outcome: None,
                step: Some("gate".into()),
                reason: None,
                updated_ms: 1,
                started_ms: Some(1),
                ended_ms: None,
            },
        )
        .await
        .expect("outcome");
    site.app.reload().await.expect("reload");
    site.store
        .append_audit(&fleet_controller::AuditEntry {
            at_ms: 5,
            os_user: "ops".into(),
            key_fingerprints: vec![],
            command: "activate".into(),
            args: vec![
                "activate".into(),
                "1.0.0".into(),
                "-i".into(),
                "fleet.yaml".into(),
            ],
            nodes: vec![
                ("acme-1".into(), "committed".into()),
                ("acme-2".into(), "failed: x".into()),
            ],
            digests: vec![],
            result: "ok".into(),
        })
        .await
        .expect("audit");
    let viewer = As::Session(site.login("viewer").await);
    let get = |uri: &str| {
        let (site, who, uri) = (&site, viewer.clone(), uri.to_owned());
        async move {
            let answer = site.send(request("GET", &uri, &who, false, None)).await;
            (answer.status(), body(answer).await)
        }
    };
    let (status, page) = get("/clusters/acme/prod").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(
        page.contains("data-node=\"acme-1\"") && page.contains("data-node=\"acme-2\""),
        "{page}"
    );
    assert!(!page.contains("data-node=\"globex-1\""), "{page}");
    assert!(
        page.contains("1.0.0, 1.1.0") && page.contains("5.0 GiB"),
        "staged and free disk: {page}"
    );
    assert!(page.contains("r-1"), "the rollout in flight: {page}");
    assert_eq!(get("/clusters/acme/nope").await.0, StatusCode::NOT_FOUND);

    let (status, page) = get("/nodes/acme-1").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(
        page.contains("0.9.0") && page.contains("gate") && page.contains("r-1"),
        "{page}"
    );
    assert!(
        !page.contains("<img src=x") && page.contains("&lt;img src=x"),
        "the agent's words escaped: {page}"
    );
    assert!(
        !page.contains("<b>ops</b>") && page.contains("&lt;b&gt;ops&lt;"),
        "labels escaped: {page}"
    );
    assert!(
        page.contains("activate 1.0.0 -i fleet.yaml") && page.contains(">committed<"),
        "the audit rows naming the node, with its result: {page}"
    );
    assert!(!page.contains("failed: x"), "another node's result: {page}");
    assert_eq!(get("/nodes/nope").await.0, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_manage_users_from_the_page() {
    let site = Site::new(ServeOptions::default()).await;
    let admin = site.login("admin").await;
    let page = body(
        site.send(request(
            "GET",
            "/users",
            &As::Session(admin.clone()),
            false,
            None,
        ))
        .await,
    )
    .await;
    assert!(
        page.contains("Add user") && page.contains(">operator<"),
        "{page}"
    );
    assert!(
        page.contains("href=\"&#x2f;users\"") || page.contains("href=\"/users\""),
        "the admin's nav links the page: {page}"
    );
    let form = |path: &str, fields: &str, csrf: &str| {
        form_post(path, &admin, &format!("csrf={csrf}&{fields}"))
    };
    let csrf = auth::csrf_token(&admin);
    let added = site
        .send(form(
            "/users",
            "name=newbie&role=viewer&password=long+enough+secret",
            &csrf,
        ))
        .await;
    assert_eq!(added.status(), StatusCode::SEE_OTHER);
    assert!(
        site.store
            .users()
            .await
            .expect("users")
            .iter()
            .any(|u| u.name == "newbie")
    );
    let short = site
        .send(form(
            "/users",
            "name=other&role=viewer&password=short",
            &csrf,
        ))
        .await;
    assert_eq!(short.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body(short).await.contains("12 to 1024 characters"));
    let forged = site
        .send(form("/users/newbie/remove", "", "not-the-token"))
        .await;
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    let removed = site.send(form("/users/newbie/remove", "", &csrf)).await;
    assert_eq!(removed.status(), StatusCode::SEE_OTHER);
    assert!(
        site.store
            .users()
            .await
            .expect("users")
            .iter()
            .all(|u| u.name != "newbie")
    );
    // A viewer's pages link no users page.
    let viewer = As::Session(site.login("viewer").await);
    let overview = body(site.send(request("GET", "/", &viewer, false, None)).await).await;
    assert!(!overview.contains(">Users<"), "{overview}");
    let audit = site.store.audit(None).await.expect("audit");
    assert!(
        audit
            .iter()
            .any(|r| r.entry.command == "user add" && r.entry.os_user == "web:admin")
    );
    assert!(
        audit
            .iter()
            .any(|r| r.entry.command == "user remove" && r.entry.result == "ok")
    );
}

/// A customer_managed cluster whose only window opens two hours from now (closed while the
/// test runs), and an airgapped one.
fn windowed_inventory() -> String {
    format!(
        r#"
defaults:
  ssh: {{ user: ops, port: 1 }}
customers:
  acme:
    mode: customer_managed
    clusters:
      prod:
        redis_url: "redis://127.0.0.1:6379/0"
        postgres_url: "postgres://127.0.0.1/x"
        shared_storage: /srv/shared
        maintenance_windows: {}
        nodes:
          - {{ name: acme-1, host: 127.0.0.1, node_root: /srv/fleet }}
  globex:
    mode: airgapped
    clusters:
      main:
        redis_url: "redis://127.0.0.1:6379/0"
        postgres_url: "postgres://127.0.0.1/x"
        shared_storage: /srv/shared
        nodes:
          - {{ name: globex-1, host: 127.0.0.1, node_root: /srv/fleet }}
"#,
        fleet_tests::window_not_now()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_start_outside_the_maintenance_window_is_refused_unless_now_and_airgapped_never() {
    let releases = tempfile::tempdir().expect("tempdir");
    // Only the release's presence in the store is looked at before the window is.
    std::fs::write(releases.path().join("1.0.0.bundle"), b"").expect("bundle");
    let options = ServeOptions {
        release_store: Some(releases.path().to_owned()),
        order_key: Some(releases.path().join("no-order.key")),
        ..ServeOptions::default()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&StateLocation::Sqlite(dir.path().join("state.db")))
        .await
        .expect("store");
    let hash = auth::hash_password(PASSWORD).expect("hash");
    store
        .add_user("operator", Role::Operator, &hash)
        .await
        .expect("user");
    let inventory = fleet_inventory::Inventory::from_str(
        &windowed_inventory(),
        std::path::Path::new("fleet.yaml"),
    )
    .expect("inventory");
    let site = Site {
        _dir: dir,
        store: store.clone(),
        app: App::new(store.clone(), Arc::new(inventory), options),
    };
    let session = site.login("operator").await;
    let who = As::Session(session.clone());
    let post = |body: &str| request("POST", "/api/rollouts", &who, true, Some(body));

    // Outside the window: 409, naming the window and when it opens.
    let answer = site
        .send(post(r#"{"version":"1.0.0","cluster":"acme/prod"}"#))
        .await;
    assert_eq!(answer.status(), StatusCode::CONFLICT);
    let text = body(answer).await;
    assert!(
        text.contains("acme/prod is outside its maintenance windows (mon,tue,wed,thu,fri,sat,sun ")
            && text.contains("opens at ")
            && text.contains("check \\\"now\\\" to override"),
        "{text}"
    );
    // The form says the same (its CSRF field checked as for every form).
    let csrf = auth::csrf_token(&session);
    let answer = site
        .send(form_post(
            "/rollouts",
            &session,
            &format!("csrf={csrf}&version=1.0.0&cluster=acme%2Fprod"),
        ))
        .await;
    assert_eq!(answer.status(), StatusCode::CONFLICT);
    let answer = site
        .send(form_post(
            "/rollouts",
            &session,
            "version=1.0.0&cluster=acme%2Fprod&now=on",
        ))
        .await;
    assert_eq!(answer.status(), StatusCode::FORBIDDEN, "no CSRF field");

    // "now" passes the window: what stops it next is the missing order key, not the window.
    let answer = site
        .send(post(
            r#"{"version":"1.0.0","cluster":"acme/prod","now":true}"#,
        ))
        .await;
    assert_eq!(answer.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let text = body(answer).await;
    assert!(text.contains("no order key"), "{text}");

    // An airgapped customer's cluster is never started.
    let answer = site
        .send(post(
            r#"{"version":"1.0.0","cluster":"globex/main","now":true}"#,
        ))
        .await;
    assert_eq!(answer.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let text = body(answer).await;
    assert!(
        text.contains("globex-1: skipped: customer globex is airgapped: never contacted over SSH"),
        "{text}"
    );

    // Each attempt is an audit row as web:operator, the override asked for in its arguments.
    let rows = store.audit(None).await.expect("audit");
    let starts: Vec<_> = rows
        .iter()
        .filter(|r| r.entry.command == "rollout start")
        .collect();
    assert_eq!(starts.len(), 4, "{rows:?}");
    assert!(
        starts[0]
            .entry
            .result
            .contains("outside its maintenance windows")
    );
    assert_eq!(starts[0].entry.os_user, "web:operator");
    assert_eq!(starts[2].entry.args, ["1.0.0 acme/prod now"]);
}
