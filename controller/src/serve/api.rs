//! The JSON API of `fleet serve` (each route's role is in the route table, `routes.rs`).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::session::{Who, refuse, store_down, store_failed};
use super::{App, auth};
use crate::store::{Role, StoreError};

/// `GET /api/me`: who the caller is, and the CSRF token of their session.
pub async fn me(who: axum::Extension<Who>) -> Response {
    match &who.0.0 {
        Some(c) => Json(json!({
            "name": c.principal.name,
            "role": c.principal.role,
            "csrf": c.session.as_ref().map(|(_, csrf)| csrf),
        }))
        .into_response(),
        None => refuse("/api/me", StatusCode::UNAUTHORIZED, "not logged in"),
    }
}

/// `GET /api/users`.
pub async fn users(State(app): State<Arc<App>>) -> Response {
    match app.store.users().await {
        Ok(users) => Json(json!({ "users": users })).into_response(),
        Err(e) => store_down("/api/", &e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    name: String,
    role: Role,
    password: String,
    /// A form's CSRF field (checked by the guard).
    #[serde(default)]
    #[allow(dead_code)]
    csrf: Option<String>,
}

/// Adds a user for `by`, audited; the status and reason when it cannot.
async fn add(app: &App, by: &str, new: NewUser) -> Result<(), (StatusCode, String)> {
    if let Some(problem) =
        auth::user_name_problem(&new.name).or_else(|| auth::password_problem(&new.password))
    {
        return Err((StatusCode::UNPROCESSABLE_ENTITY, problem));
    }
    let password = new.password;
    let hash = match tokio::task::spawn_blocking(move || auth::hash_password(&password)).await {
        Ok(Ok(hash)) => hash,
        _ => {
            return Err((
                StatusCode::INTERNAL_SERVER_ERROR,
                "hashing the password failed".into(),
            ));
        }
    };
    let added = match app.store.add_user(&new.name, new.role, &hash).await {
        Ok(()) => Ok(()),
        Err(e @ StoreError::UserExists { .. }) => Err((StatusCode::CONFLICT, e.to_string())),
        Err(e) => return Err(store_failed(&e)),
    };
    let result = match &added {
        Ok(()) => "ok".to_owned(),
        Err((_, why)) => format!("failed: {why}"),
    };
    app.audit_web(by, "user add", &new.name, &result).await;
    added
}

/// Removes a user for `by`, audited; the status and reason when it cannot.
async fn remove(app: &App, by: &str, name: &str) -> Result<(), (StatusCode, String)> {
    match app.store.remove_user(name).await {
        Ok(true) => {
            app.audit_web(by, "user remove", name, "ok").await;
            Ok(())
        }
        Ok(false) => Err((StatusCode::NOT_FOUND, format!("no user named {name}"))),
        Err(e) => Err(store_failed(&e)),
    }
}

fn by(who: &Who) -> &str {
    who.0.as_ref().map_or("?", |c| c.principal.name.as_str())
}

/// `POST /api/users`: adds a user (201), 422 naming the problem, 409 when the name is taken.
pub async fn add_user(
    State(app): State<Arc<App>>,
    who: axum::Extension<Who>,
    body: Result<Json<NewUser>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(new) = match body {
        Ok(b) => b,
        Err(e) => {
            return refuse(
                "/api/users",
                StatusCode::UNPROCESSABLE_ENTITY,
                &e.body_text(),
            );
        }
    };
    let (name, role) = (new.name.clone(), new.role);
    match add(&app, by(&who.0), new).await {
        Ok(()) => (
            StatusCode::CREATED,
            Json(json!({ "name": name, "role": role })),
        )
            .into_response(),
        Err((status, why)) => refuse("/api/users", status, &why),
    }
}

/// `DELETE /api/users/{name}`.
pub async fn remove_user(
    State(app): State<Arc<App>>,
    who: axum::Extension<Who>,
    Path(name): Path<String>,
) -> Response {
    match remove(&app, by(&who.0), &name).await {
        Ok(()) => Json(json!({ "removed": name })).into_response(),
        Err((status, why)) => refuse("/api/users", status, &why),
    }
}

/// `GET /users`: the users, a form to add one and a button to remove each.
pub async fn users_page(State(app): State<Arc<App>>, who: axum::Extension<Who>) -> Response {
    let Some(caller) = who.0.0.as_ref() else {
        return axum::response::Redirect::to("/login").into_response();
    };
    match app.store.users().await {
        Ok(users) => super::pages::users(caller, &users).into_response(),
        Err(e) => store_down("/users", &e),
    }
}

/// `POST /users` (the add form): back to the list, or the reason.
pub async fn add_user_form(
    State(app): State<Arc<App>>,
    who: axum::Extension<Who>,
    form: Result<axum::Form<NewUser>, axum::extract::rejection::FormRejection>,
) -> Response {
    let axum::Form(new) = match form {
        Ok(f) => f,
        Err(e) => return refuse("/users", StatusCode::UNPROCESSABLE_ENTITY, &e.body_text()),
    };
    match add(&app, by(&who.0), new).await {
        Ok(()) => axum::response::Redirect::to("/users").into_response(),
        Err((status, why)) => refuse("/users", status, &why),
    }
}

/// `POST /users/{name}/remove` (a button's form): back to the list, or the reason.
pub async fn remove_user_form(
    State(app): State<Arc<App>>,
    who: axum::Extension<Who>,
    Path(name): Path<String>,
) -> Response {
    match remove(&app, by(&who.0), &name).await {
        Ok(()) => axum::response::Redirect::to("/users").into_response(),
        Err((status, why)) => refuse("/users", status, &why),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeQuery {
    #[serde(default)]
    customer: String,
    #[serde(default)]
    cluster: String,
    /// A part of the node's name.
    #[serde(default)]
    q: String,
    page: Option<usize>,
    per_page: Option<usize>,
}

/// The most nodes one page holds.
const PER_PAGE_MAX: usize = 500;

/// `GET /api/nodes`: the inventory's nodes with what the collector last heard, filtered and
/// paged on the server (`customer`, `cluster`, `q`, `page` from 1, `per_page` up to 500).
pub async fn nodes(
    State(app): State<Arc<App>>,
    query: Result<axum::extract::Query<NodeQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = match query {
        Ok(axum::extract::Query(q)) => q,
        Err(e) => return refuse("/api/nodes", StatusCode::BAD_REQUEST, &e.body_text()),
    };
    let per_page = q.per_page.unwrap_or(50).clamp(1, PER_PAGE_MAX);
    let page = q.page.unwrap_or(1).max(1);
    let now = crate::store::now_ms();
    let (total, nodes) = {
        let heard = app.heard();
        let selected: Vec<&fleet_inventory::Node> = app
            .inventory
            .nodes()
            .iter()
            .filter(|n| super::view::selected(n, &q.customer, &q.cluster, &q.q))
            .collect();
        let nodes: Vec<serde_json::Value> = selected
            .iter()
            .skip((page - 1).saturating_mul(per_page))
            .take(per_page)
            .map(|n| super::view::node(n, heard.get(&n.name), now, app.options.stale_after))
            .collect();
        (selected.len(), nodes)
    };
    Json(json!({ "total": total, "page": page, "per_page": per_page, "nodes": nodes }))
        .into_response()
}

/// `POST /api/nodes/{name}/refresh`: the collector asks the node now (202).
pub async fn refresh_node(
    State(app): State<Arc<App>>,
    who: axum::Extension<Who>,
    Path(name): Path<String>,
) -> Response {
    let answer = match app.inventory.node(&name) {
        None => refuse(
            "/api/nodes",
            StatusCode::NOT_FOUND,
            &format!("no node named {name} in the inventory"),
        ),
        Some(n) if n.mode == fleet_inventory::Mode::Airgapped => refuse(
            "/api/nodes",
            StatusCode::CONFLICT,
            &format!("{name} is airgapped: it is never contacted"),
        ),
        Some(_) => {
            app.collect_now(&name);
            (
                StatusCode::ACCEPTED,
                Json(json!({ "node": name, "refresh": "asked" })),
            )
                .into_response()
        }
    };
    let result = if answer.status().is_success() {
        "ok".to_owned()
    } else {
        format!("failed: {}", answer.status())
    };
    app.audit_web(by(&who.0), "node refresh", &name, &result)
        .await;
    answer
}
