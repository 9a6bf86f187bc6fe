//! A cluster's page (`/clusters/{customer}/{cluster}`: its nodes with their versions, agent and
//! server state, heartbeat age, restarts and free disk, and its rollout in flight) and a node's
//! page (`/nodes/{name}`: what it last said, its last failure, and the rollouts that named it
//! with its outcome in each). Both live like the overview: the node rows follow the
//! collector's notes.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};

use super::session::{Who, refuse, store_down};
use super::{App, pages};

/// `GET /clusters/{customer}/{cluster}`.
pub async fn cluster(
    State(app): State<Arc<App>>,
    who: axum::Extension<Who>,
    Path((customer, name)): Path<(String, String)>,
) -> Response {
    let Some(caller) = who.0.0.as_ref() else {
        return Redirect::to("/login").into_response();
    };
    let path = "/clusters";
    let Some(cluster) = app.inventory.cluster(&customer, &name) else {
        return refuse(
            path,
            StatusCode::NOT_FOUND,
            &format!("no cluster {customer}/{name} in the inventory"),
        );
    };
    let key = format!("{customer}/{name}");
    let rollout = match app.store.rollout_in_flight(&key).await {
        Ok(Some(r)) => match app.store.node_outcomes(&r.id).await {
            Ok(outcomes) => Some(super::rollouts::shown(&r, &outcomes)),
            Err(e) => return store_down(path, &e),
        },
        Ok(None) => None,
        Err(e) => return store_down(path, &e),
    };
    // Held to the end (no await below): the rows borrow from it.
    let heard = app.heard();
    let now = crate::store::now_ms();
    let nodes: Vec<super::view::NodeView<'_>> = app
        .inventory
        .nodes_of(cluster)
        .map(|n| super::view::row(n, heard.get(&n.name), now, app.options.stale_after))
        .collect();
    pages::cluster(
        caller,
        &key,
        &nodes,
        rollout.as_ref(),
        app.options.stale_after,
    )
    .into_response()
}

/// `GET /nodes/{name}`.
pub async fn node(
    State(app): State<Arc<App>>,
    who: axum::Extension<Who>,
    Path(name): Path<String>,
) -> Response {
    let Some(caller) = who.0.0.as_ref() else {
        return Redirect::to("/login").into_response();
    };
    let path = "/nodes";
    let Some(node) = app.inventory.node(&name) else {
        return refuse(
            path,
            StatusCode::NOT_FOUND,
            &format!("no node named {name} in the inventory"),
        );
    };
    let rollouts = match app.store.rollouts(false).await {
        Ok(r) => r,
        Err(e) => return store_down(path, &e),
    };
    // The rollouts that named it, newest first, each with its outcome there.
    let mut history = Vec::new();
    for r in rollouts.iter().rev().filter(|r| r.targets.contains(&name)) {
        let outcome = match app.store.node_outcomes(&r.id).await {
            Ok(o) => o.into_iter().find(|o| o.node == name),
            Err(e) => return store_down(path, &e),
        };
        history.push((r.clone(), outcome));
    }
    // What was done to it, from the audit log (newest first, the last 20).
    let changes: Vec<crate::store::AuditRow> = match app.store.audit(None).await {
        Ok(rows) => rows
            .into_iter()
            .rev()
            .filter(|r| r.entry.nodes.iter().any(|(n, _)| *n == name))
            .take(20)
            .collect(),
        Err(e) => return store_down(path, &e),
    };
    // Held to the end (no await below): the view borrows from it.
    let heard = app.heard();
    let snap = heard.get(&name);
    let view = super::view::row(node, snap, crate::store::now_ms(), app.options.stale_after);
    let status = snap.and_then(|s| s.status.as_ref()).map(|(_, v)| v);
    pages::node(
        caller,
        &view,
        status,
        &changes,
        &history,
        app.options.stale_after,
    )
    .into_response()
}
