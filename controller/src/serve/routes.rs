//! The route table of `fleet serve`: every route with its method, path, who may call it and
//! what it does. The router is built from it (each route behind `session::guard` with its
//! access), and the tests generate their role × route matrix from it, so a route cannot be
//! added without saying who may call it.

use std::sync::Arc;

use axum::Router;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post};

use super::session;
use super::{App, api, pages};
use crate::store::Role;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (the login page).
    Public,
    /// A session or token with at least this role.
    At(Role),
}

/// One route of the table.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub method: &'static str,
    /// axum's syntax (`/api/users/{name}`).
    pub path: &'static str,
    pub access: Access,
    pub summary: &'static str,
    /// The query parameters it reads (all optional).
    pub query: &'static [&'static str],
}

fn spec(
    method: &'static str,
    path: &'static str,
    access: Access,
    summary: &'static str,
) -> RouteSpec {
    RouteSpec {
        method,
        path,
        access,
        summary,
        query: &[],
    }
}

impl RouteSpec {
    fn query(mut self, names: &'static [&'static str]) -> Self {
        self.query = names;
        self
    }
}

/// The OpenAPI document of the JSON API (every `/api/` route of the table), served at
/// `/api/openapi.json`: each operation with its summary, path and query parameters, the role
/// it needs (`x-fleet-role`) and how a caller authenticates.
pub fn openapi() -> serde_json::Value {
    use serde_json::{Map, Value, json};
    let mut paths = Map::new();
    for r in routes().into_iter().filter(|r| r.path.starts_with("/api/")) {
        let mut parameters: Vec<Value> = r
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
            .collect();
        parameters.extend(
            r.query
                .iter()
                .map(|name| json!({ "name": name, "in": "query", "required": false, "schema": { "type": "string" } })),
        );
        let (role, security) = match r.access {
            Access::Public => (Value::Null, json!([])),
            Access::At(role) => (
                role.as_str().into(),
                json!([{ "session": [] }, { "bearer": [] }]),
            ),
        };
        let operation = json!({
            "summary": r.summary,
            "operationId": format!("{} {}", r.method, r.path),
            "parameters": parameters,
            "security": security,
            "x-fleet-role": role,
            "responses": {
                "default": { "description": "JSON; errors are {\"error\": \"...\"}" }
            },
        });
        paths
            .entry(r.path.to_owned())
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("a path item is an object")
            .insert(r.method.to_ascii_lowercase(), operation);
    }
    json!({
        "openapi": "3.1.0",
        "info": { "title": "fleet serve", "version": env!("CARGO_PKG_VERSION") },
        "components": { "securitySchemes": {
            "session": { "type": "apiKey", "in": "cookie", "name": session::COOKIE },
            "bearer": { "type": "http", "scheme": "bearer" },
        }},
        "paths": paths,
    })
}

async fn openapi_document() -> Response {
    axum::Json(openapi()).into_response()
}

/// The table with each route's handler.
fn table() -> Vec<(RouteSpec, MethodRouter<Arc<App>>)> {
    use Access::{At, Public};
    use Role::{Admin, Operator, Viewer};
    vec![
        (
            spec("GET", "/login", Public, "the login page"),
            get(login_page),
        ),
        (
            spec(
                "POST",
                "/login",
                Public,
                "log in (form: user, password, next)",
            ),
            post(session::login),
        ),
        (
            spec("POST", "/logout", At(Viewer), "log out: the session ends"),
            post(session::logout),
        ),
        (
            spec("GET", "/", At(Viewer), "the overview")
                .query(&["customer", "cluster", "q", "state", "page"]),
            get(pages::overview),
        ),
        (
            spec(
                "GET",
                "/api/openapi.json",
                Public,
                "this API's OpenAPI document",
            ),
            get(openapi_document),
        ),
        (
            spec("GET", "/audit", At(Viewer), "the audit log")
                .query(&["command", "user", "since", "page"]),
            get(super::audit::page),
        ),
        (
            spec("GET", "/audit.csv", At(Viewer), "the audit log as CSV")
                .query(&["command", "user", "since"]),
            get(super::audit::csv),
        ),
        (
            spec(
                "GET",
                "/api/audit",
                At(Viewer),
                "the audit log, newest first",
            )
            .query(&["command", "user", "since", "page"]),
            get(super::audit::json),
        ),
        (
            spec(
                "GET",
                "/clusters/{customer}/{cluster}",
                At(Viewer),
                "a cluster's nodes and its rollout, live",
            ),
            get(super::nodes::cluster),
        ),
        (
            spec(
                "GET",
                "/nodes/{name}",
                At(Viewer),
                "a node: its last report, last failure and rollouts",
            ),
            get(super::nodes::node),
        ),
        (
            spec("GET", "/releases", At(Viewer), "the releases in the store"),
            get(super::releases::page),
        ),
        (
            spec(
                "GET",
                "/api/releases",
                At(Viewer),
                "the releases in the store",
            ),
            get(super::releases::json),
        ),
        (
            spec(
                "GET",
                "/users",
                At(Admin),
                "the users, with forms to add and remove",
            ),
            get(api::users_page),
        ),
        (
            spec(
                "POST",
                "/users",
                At(Admin),
                "add a user (form: name, role, password)",
            ),
            post(api::add_user_form),
        ),
        (
            spec(
                "POST",
                "/users/{name}/remove",
                At(Admin),
                "remove a user (form)",
            ),
            post(api::remove_user_form),
        ),
        (
            spec(
                "GET",
                "/rollouts",
                At(Viewer),
                "the rollouts, in flight first",
            ),
            get(super::rollouts::list_page),
        ),
        (
            spec(
                "POST",
                "/rollouts",
                At(Operator),
                "start a rollout (form: version, cluster, canary, max_unavailable, min_healthy_secs, now: start outside the maintenance windows; 409 outside them without it)",
            ),
            post(super::rollouts::start_form),
        ),
        (
            spec(
                "GET",
                "/rollouts/{id}",
                At(Viewer),
                "a rollout's per-node progress, live",
            ),
            get(super::rollouts::one_page),
        ),
        (
            spec(
                "GET",
                "/api/rollouts",
                At(Viewer),
                "the rollouts, in flight first",
            ),
            get(super::rollouts::list_json),
        ),
        (
            spec(
                "POST",
                "/api/rollouts",
                At(Operator),
                "start a rollout (JSON: version, cluster, canary, max_unavailable, min_healthy_secs, now: start outside the maintenance windows; 409 outside them without it)",
            ),
            post(super::rollouts::start_json),
        ),
        (
            spec(
                "GET",
                "/api/rollouts/{id}",
                At(Viewer),
                "a rollout and each target's outcome",
            ),
            get(super::rollouts::one_json),
        ),
        (
            spec(
                "POST",
                "/api/rollouts/{id}/{action}",
                At(Operator),
                "pause, resume, abort or abort-rollback a rollout",
            ),
            post(super::rollouts::control),
        ),
        (
            spec("GET", "/static/fleet.js", Public, "the pages' script"),
            get(pages::script),
        ),
        (
            spec(
                "GET",
                "/api/events",
                At(Viewer),
                "live updates (Server-Sent Events, Last-Event-ID)",
            ),
            get(super::events::stream),
        ),
        (
            spec(
                "GET",
                "/api/me",
                At(Viewer),
                "the caller: name, role, CSRF token",
            ),
            get(api::me),
        ),
        (
            spec(
                "GET",
                "/api/nodes",
                At(Viewer),
                "the nodes with their last status",
            )
            .query(&["customer", "cluster", "q", "page", "per_page"]),
            get(api::nodes),
        ),
        (
            spec(
                "POST",
                "/api/nodes/{name}/refresh",
                At(Operator),
                "ask a node's status now",
            ),
            post(api::refresh_node),
        ),
        (
            spec("GET", "/api/users", At(Admin), "the users and their roles"),
            get(api::users),
        ),
        (
            spec(
                "POST",
                "/api/users",
                At(Admin),
                "add a user (JSON: name, role, password)",
            ),
            post(api::add_user),
        ),
        (
            spec(
                "DELETE",
                "/api/users/{name}",
                At(Admin),
                "remove a user; their sessions end",
            ),
            delete(api::remove_user),
        ),
    ]
}

/// The route table (for documents and tests).
pub fn routes() -> Vec<RouteSpec> {
    table().into_iter().map(|(s, _)| s).collect()
}

/// The router: every route behind the guard, with its access.
pub fn router(app: Arc<App>) -> Router {
    let mut router = Router::new();
    for (spec, handler) in table() {
        let guarded = handler.route_layer(axum::middleware::from_fn_with_state(
            (app.clone(), spec.access),
            session::guard,
        ));
        router = router.route(spec.path, guarded);
    }
    router.with_state(app)
}

async fn login_page(
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Response {
    pages::login(q.get("next").map_or("/", String::as_str), None).into_response()
}
